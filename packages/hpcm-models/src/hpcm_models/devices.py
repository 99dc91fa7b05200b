"""Devices: the one reading of ``--device`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``), the one
wait for a device's queued work, and the settings that make its arithmetic reproducible."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

import torch

from .acceleration import fp32_precision
from .errors import DeviceError

__all__ = ["deterministic_coding", "resolve_device", "synchronize"]

_CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")


def resolve_device(spec: str | torch.device, *, allow_auto: bool = False) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` → a device that exists here.

    Args:
        spec: the device name (or a device).
        allow_auto: also accept ``"auto"``: CUDA if torch sees a GPU, else the CPU.

    Raises:
        DeviceError: for other names, or CUDA without a (matching) GPU.
    """
    if allow_auto and spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    expected = "auto, cpu, cuda or cuda:N" if allow_auto else "cpu, cuda or cuda:N"
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown device {spec!r}; expected {expected}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {spec!r} was requested but no CUDA GPU is available to torch "
                f"{torch.__version__}; use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {spec!r} was requested but there are {torch.cuda.device_count()} GPU(s)"
            )
    elif device.type != "cpu":
        raise DeviceError(f"unsupported device {spec!r}; expected {expected}")
    return device


def synchronize(device: torch.device) -> None:
    """Wait until ``device`` has run everything queued on it (a no-op on the CPU), e.g. before
    reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def deterministic_coding(device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the enclosed code with deterministic, full-precision float32 settings; restore after.

    Sets ``torch.use_deterministic_algorithms(True)``, every ``fp32_precision`` of
    ``torch.backends`` to ``"ieee"`` (no TF32 for matmuls and convolutions on CUDA, no bf16 in
    oneDNN on CPU), and makes cuDNN deterministic without autotuning. On CUDA, cuBLAS is
    deterministic on one stream; PyTorch additionally asks for ``CUBLAS_WORKSPACE_CONFIG=:4096:8``
    (read at the first matmul of the process; ``hpcm compress/decompress`` set it). Without it,
    PyTorch's warning about it is silenced and deterministic mode only warns for ops without a
    deterministic implementation (none in HPCM's inference). Either way the latent hash refuses
    any image whose latents the decoder did not reproduce.

    On the CPU, coding runs on one thread: oneDNN/MKL split reductions (e.g. the K dimension of a
    matrix product) by thread count, and OpenMP may hand out fewer threads under load, so the
    entropy parameters — and the bytes — would otherwise depend on the machine and its load.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    saved_threads = torch.get_num_threads()
    if not cuda:
        torch.set_num_threads(1)
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    warn_only = cuda and os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in _CUBLAS_DETERMINISTIC
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*CuBLAS.*", category=UserWarning)
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
        # Deterministic mode would fill every torch.empty with NaN; no op here reads such memory.
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        try:
            with fp32_precision("ieee"):
                yield
        finally:
            torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
            torch.utils.deterministic.fill_uninitialized_memory = saved[2]
            torch.backends.cudnn.deterministic = saved[3]
            torch.backends.cudnn.benchmark = saved[4]
            torch.set_num_threads(saved_threads)
