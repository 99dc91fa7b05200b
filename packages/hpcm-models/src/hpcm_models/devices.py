"""Devices: the one reading of ``--device`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``) and the one
wait for a device's queued work."""

from __future__ import annotations

import torch

from .errors import DeviceError

__all__ = ["resolve_device", "synchronize"]


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
