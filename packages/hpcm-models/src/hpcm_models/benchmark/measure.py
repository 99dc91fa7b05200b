"""What every benchmark measures with: FLOPs (``FlopCounterMode`` plus the analytic Bi-WKV
count), dispatched ops, wall times synchronized with the device, peak memory, the machine."""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..devices import synchronize

__all__ = [
    "BIWKV4_BACKWARD_FLOPS_PER_ELEMENT",
    "BIWKV4_FORWARD_FLOPS_PER_ELEMENT",
    "as_dict",
    "biwkv4_flops",
    "count_flops",
    "count_ops",
    "count_params",
    "fmt",
    "machine_info",
    "parse_size",
    "peak_mib",
    "time_ms",
]

#: FLOPs per element ``(b, t, c)`` of the forward Bi-WKV (Vision-RWKV eq. 4 as a two-pass
#: recurrence; exp and division count one each):
#:
#: - left-to-right pass: ``e^k`` (1); ``a ← e^{-w}·a + e^k·v`` (3); ``s ← e^{-w}·s + e^k`` (2)
#: - right-to-left pass: the same with ``e^k`` reused (5)
#: - output: ``e^{u+k}`` (2); ``(a_l + a_r + e^{u+k}·v) / (s_l + s_r + e^{u+k})`` (6)
BIWKV4_FORWARD_FLOPS_PER_ELEMENT = 19


#: The backward (gradients of k, v, w and u) counted as twice the forward, the convention
#: ``FlopCounterMode`` also uses for the backward of matrix products.
BIWKV4_BACKWARD_FLOPS_PER_ELEMENT = 2 * BIWKV4_FORWARD_FLOPS_PER_ELEMENT


def biwkv4_flops(B: int, T: int, C: int, *, backward: bool = False) -> int:
    """Analytic FLOPs of one Bi-WKV call on ``k, v: [B, T, C]``: ``19·B·T·C`` forward,
    ``38·B·T·C`` backward (see :data:`BIWKV4_FORWARD_FLOPS_PER_ELEMENT`). Linear in T: the
    reference definition (a softmax over all T positions per output) would be O(B·T²·C)."""
    per = BIWKV4_BACKWARD_FLOPS_PER_ELEMENT if backward else BIWKV4_FORWARD_FLOPS_PER_ELEMENT
    return per * B * T * C


def _biwkv4_forward_formula(w_shape, u_shape, k_shape, *args: Any, **kwargs: Any) -> int:
    return biwkv4_flops(*k_shape)


def _biwkv4_backward_formula(w_shape, u_shape, k_shape, *args: Any, **kwargs: Any) -> int:
    return biwkv4_flops(*k_shape, backward=True)


def _biwkv4_ops() -> dict[Any, Callable[..., int]]:
    import biwkv4_kernel  # noqa: F401  (registers torch.ops.biwkv4_kernel)

    return {
        torch.ops.biwkv4_kernel.forward: _biwkv4_forward_formula,
        torch.ops.biwkv4_kernel.backward: _biwkv4_backward_formula,
    }


def count_flops(fn: Callable[[], Any]) -> tuple[int, int]:
    """Run ``fn()`` under ``FlopCounterMode``; returns ``(counted, biwkv4)``: FLOPs of the ops the
    counter knows (matmul, conv, attention) and the analytic FLOPs of the Bi-WKV calls."""
    from torch.utils.flop_counter import FlopCounterMode

    ops = _biwkv4_ops()
    counter = FlopCounterMode(display=False, custom_mapping=ops)
    with counter:
        fn()
    by_op = counter.get_flop_counts().get("Global", {})
    wkv = sum(v for op, v in by_op.items() if op in ops or str(op).startswith("biwkv4_kernel."))
    return int(counter.get_total_flops() - wkv), int(wkv)


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        computes = any(str(r.type) in ("Tensor", "Tensor[]") for r in returns) and not any(
            r.alias_info is not None for r in returns
        )
        if computes and func.overloadpacket not in _NO_WORK_OPS:
            self.count += 1
        return out


# Ops that return fresh tensors without running a kernel.
_NO_WORK_OPS = (torch.ops.aten.empty, torch.ops.aten.empty_like, torch.ops.aten.empty_strided)


def count_ops(fn: Callable[[], Any]) -> int:
    """Number of ops ``fn()`` dispatches that compute something: every ATen (or custom) op that
    returns a new tensor, not views, aliases or empty allocations. A device-independent proxy for
    kernel launches: on CUDA most such ops are one kernel (a custom op such as Bi-WKV's runs
    3-4, a cuDNN convolution may add a bias kernel)."""
    counter = _OpCounter()
    with counter:
        fn()
    return counter.count


def parse_size(text: str) -> tuple[int, int]:
    """``"768x512"`` → ``(768, 512)`` (width, height).

    Raises:
        ValueError: for anything but two positive integers joined by ``x``.
    """
    parts = text.lower().split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"expected a size WIDTHxHEIGHT such as 768x512, got {text!r}") from None
    if width < 1 or height < 1:
        raise ValueError(f"expected a positive size WIDTHxHEIGHT, got {text!r}")
    return width, height


def machine_info(device: torch.device) -> dict[str, Any]:
    """Machine, device and versions, for the JSON of a benchmark."""
    import biwkv4_kernel
    import hpcm_models
    import rwkv_blocks

    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "hpcm_models": hpcm_models.__version__,
        "rwkv_blocks": rwkv_blocks.__version__,
        "biwkv4_kernel": biwkv4_kernel.__version__,
        "biwkv4_cuda_kernel": biwkv4_kernel.cuda_kernel_available(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
        )
    return info


def time_ms(fn: Callable[[], Any], device: torch.device, repeat: int, warmup: int) -> list[float]:
    """Wall times (ms) of ``repeat`` calls of ``fn()`` after ``warmup`` untimed ones, each
    synchronized with the device (CUDA)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def peak_mib(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Peak allocated memory during ``fn()`` (MiB), including what was allocated before."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def as_dict(result: Any) -> dict[str, Any]:
    """A result as a JSON-ready dict, with the total ``flops``."""
    out = dataclasses.asdict(result)
    out["flops"] = result.flops
    return out


def fmt(value: float | None, spec: str) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else format(value, spec)
    )
