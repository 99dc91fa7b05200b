"""The public bidirectional WKV op and its registration as a PyTorch custom op.

Two internal ops live in the ``biwkv4_kernel`` namespace (docs/kernel.md, "The custom op"):

- ``biwkv4_kernel::forward(Tensor w, Tensor u, Tensor k, Tensor v, bool need_stats)
  -> (Tensor y, Tensor lse)``
- ``biwkv4_kernel::backward(Tensor w, Tensor u, Tensor k, Tensor v, Tensor y, Tensor lse,
  Tensor gy) -> (Tensor gw, Tensor gu, Tensor gk, Tensor gv)``

Each has a default implementation (the blocked scan of :mod:`biwkv4_kernel.scan`, for every device),
a CUDA implementation and a fake implementation; the forward has a registered autograd formula that
calls the backward op. So the op works under ``torch.compile(fullgraph=True)``, ``torch.export`` and
CUDA-graph capture. On CUDA tensors the first available of these runs (:func:`gpu_backend`): the
compiled CUDA kernel (:mod:`._ext`), the Triton kernels (:mod:`._triton`, no CUDA toolkit needed),
the scan (with one warning that says how to get a kernel).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

# Neither builds nor imports anything at import: the CUDA extension is compiled, and triton
# imported, on the first CUDA call.
from . import _ext, _triton, scan
from ._availability import disabled_by_env

__all__ = ["DISABLE_CUDA_ENV", "DISABLE_TRITON_ENV", "biwkv4", "gpu_backend"]

#: Set this environment variable to ``1`` to never use the compiled CUDA kernel (``0``, ``false``,
#: ``no``, ``off`` or empty leave it on). It is read on every call of the op.
DISABLE_CUDA_ENV = "BIWKV4_DISABLE_CUDA"
#: Likewise for the Triton kernels. With both set, CUDA tensors run the PyTorch scan, silently.
DISABLE_TRITON_ENV = _triton.DISABLE_ENV

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


_WARNED: list[str] = []


def _warn_pytorch_path_on_gpu() -> None:
    """Once per process: CUDA tensors run the scan, though nobody asked for it; how to fix it."""
    if _WARNED or (disabled_by_env(DISABLE_CUDA_ENV) and disabled_by_env(DISABLE_TRITON_ENV)):
        return
    message = (
        "biwkv4: no GPU kernel is usable, so CUDA tensors run the PyTorch scan, which is "
        "hundreds of times slower. To get the Triton kernels, which need no CUDA toolkit, "
        "install a CUDA build of torch with its triton (triton 3.0 also needs setuptools) and a C "
        "compiler; to get the compiled kernel, install a CUDA toolkit matching torch's CUDA major "
        "version (for CUDA 13: pip install nvidia-cuda-nvcc). Set BIWKV4_DISABLE_CUDA=1 and "
        f"BIWKV4_DISABLE_TRITON=1 to silence this.\nTriton: {_triton.triton_kernel_status()}\n"
        f"CUDA kernel: {_ext.cuda_kernel_status()}"
    )
    _WARNED.append(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _cuda_path(k: Tensor) -> str:
    """What runs for these CUDA tensors: ``"cuda"`` (compiled), ``"triton"`` or ``"pytorch"``.

    Neither kernel has a float64 path.
    """
    if k.dtype == torch.float64:
        return "pytorch"
    if not disabled_by_env(DISABLE_CUDA_ENV) and _ext.cuda_kernel_available():
        return "cuda"
    if _triton.triton_kernel_available():
        return "triton"
    _warn_pytorch_path_on_gpu()
    return "pytorch"


def gpu_backend() -> str:
    """What CUDA tensors of float16, bfloat16 and float32 run now: ``"cuda"`` (the compiled
    kernel), ``"triton"`` or ``"pytorch"`` (the scan; also always for float64), or ``"none"``
    where torch sees no GPU. The first call may build the CUDA kernel and compile the Triton ones.
    """
    if not torch.cuda.is_available():
        return "none"
    return _cuda_path(torch.empty(0, dtype=torch.float32))


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_op_args(w: Tensor, u: Tensor, k: Tensor, v: Tensor) -> None:
    """The internal ops' preconditions (the public :func:`biwkv4` establishes them)."""
    if k.dim() != 3 or v.shape != k.shape or w.shape != (k.shape[2],) or u.shape != w.shape:
        raise ValueError(
            "biwkv4_kernel ops expect w, u of shape [C] and k, v of shape [B, T, C], got "
            f"{list(w.shape)}, {list(u.shape)}, {list(k.shape)}, {list(v.shape)}"
        )
    if k.dtype not in _DTYPES or v.dtype != k.dtype:
        raise ValueError(
            f"biwkv4_kernel ops expect k, v of one float dtype, got {k.dtype}, {v.dtype}"
        )
    stats = _stats_dtype(k.dtype)
    if w.dtype != stats or u.dtype != stats:
        raise ValueError(
            f"biwkv4_kernel ops expect w, u of dtype {stats} for k of dtype {k.dtype}, "
            f"got {w.dtype}, {u.dtype}"
        )


# Explicit schemas: torch 2.4 cannot infer one from postponed (string) annotations.
_FORWARD_SCHEMA = "(Tensor w, Tensor u, Tensor k, Tensor v, bool need_stats) -> (Tensor, Tensor)"
_BACKWARD_SCHEMA = (
    "(Tensor w, Tensor u, Tensor k, Tensor v, Tensor y, Tensor lse, Tensor gy) "
    "-> (Tensor, Tensor, Tensor, Tensor)"
)


@torch.library.custom_op("biwkv4_kernel::forward", mutates_args=(), schema=_FORWARD_SCHEMA)
def _forward_op(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, need_stats: bool
) -> tuple[Tensor, Tensor]:
    _check_op_args(w, u, k, v)
    return scan.scan_forward(w, u, k, v, need_stats)


@_forward_op.register_kernel("cuda")
def _forward_cuda(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, need_stats: bool
) -> tuple[Tensor, Tensor]:
    _check_op_args(w, u, k, v)
    path = _cuda_path(k)
    if path == "pytorch":
        return scan.scan_forward(w, u, k, v, need_stats)
    # The kernels read dense rows; the public op already passes contiguous tensors.
    w, u, k, v = (t.contiguous() for t in (w, u, k, v))
    kernels = _ext.load_extension() if path == "cuda" else _triton.load_kernels()
    y, lse = kernels.forward(w, u, k, v, need_stats)
    return y, lse


@_forward_op.register_fake
def _forward_fake(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, need_stats: bool
) -> tuple[Tensor, Tensor]:
    _check_op_args(w, u, k, v)
    y = torch.empty_like(k, memory_format=torch.contiguous_format)
    lse = k.new_empty(k.shape if need_stats else (0,), dtype=_stats_dtype(k.dtype))
    return y, lse


@torch.library.custom_op("biwkv4_kernel::backward", mutates_args=(), schema=_BACKWARD_SCHEMA)
def _backward_op(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, y: Tensor, lse: Tensor, gy: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _check_op_args(w, u, k, v)
    return scan.scan_backward(w, u, k, v, y, lse, gy)


@_backward_op.register_kernel("cuda")
def _backward_cuda(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, y: Tensor, lse: Tensor, gy: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _check_op_args(w, u, k, v)
    path = _cuda_path(k)
    if path == "pytorch":
        return scan.scan_backward(w, u, k, v, y, lse, gy)
    w, u, k, v, y, lse, gy = (t.contiguous() for t in (w, u, k, v, y, lse, gy))
    kernels = _ext.load_extension() if path == "cuda" else _triton.load_kernels()
    gw, gu, gk, gv = kernels.backward(w, u, k, v, y, lse, gy)
    return gw, gu, gk, gv


@_backward_op.register_fake
def _backward_fake(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, y: Tensor, lse: Tensor, gy: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _check_op_args(w, u, k, v)
    return (
        torch.empty_like(w),
        torch.empty_like(u),
        torch.empty_like(k, memory_format=torch.contiguous_format),
        torch.empty_like(v, memory_format=torch.contiguous_format),
    )


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: tuple) -> None:
    w, u, k, v, _ = inputs
    y, lse = output
    # lse is a statistic for the backward, not a result: no gradient flows through it.
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(w, u, k, v, y, lse)


def _backward(
    ctx: torch.autograd.function.FunctionCtx, gy: Tensor, _glse: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor, None]:
    w, u, k, v, y, lse = ctx.saved_tensors  # type: ignore[attr-defined]
    if lse.dim() != 3:
        # The forward ran without statistics (need_stats=False while grads were needed).
        y, lse = torch.ops.biwkv4_kernel.forward(w, u, k, v, True)
    gw, gu, gk, gv = torch.ops.biwkv4_kernel.backward(w, u, k, v, y, lse, gy.contiguous())
    return gw, gu, gk, gv, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def _shape(t: Tensor) -> str:
    return str(list(t.shape))


def _validate(w: Tensor, u: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("w", w), ("u", u), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"expected {name} to be a torch.Tensor, got {type(t).__name__}")
    if k.dim() != 3:
        raise ValueError(f"expected k of shape [B, T, C], got {_shape(k)}")
    B, T, C = k.shape
    if B == 0 or T == 0 or C == 0:
        raise ValueError(f"expected k of shape [B, T, C] with B, T, C >= 1, got {_shape(k)}")
    if v.shape != k.shape:
        raise ValueError(f"expected v of shape [B, T, C]=[{B}, {T}, {C}] (as k), got {_shape(v)}")
    for name, t in (("w", w), ("u", u)):
        if t.shape != (C,):
            raise ValueError(f"expected {name} of shape [C]=[{C}], got {_shape(t)}")
    if k.dtype not in _DTYPES:
        raise ValueError(
            f"expected k of dtype float16, bfloat16, float32 or float64, got {k.dtype}"
        )
    if v.dtype != k.dtype:
        raise ValueError(f"expected v of dtype {k.dtype} (the dtype of k), got {v.dtype}")
    for name, t in (("w", w), ("u", u)):
        if not t.is_floating_point():
            raise ValueError(f"expected {name} of a floating-point dtype, got {t.dtype}")
    for name, t in (("w", w), ("u", u), ("v", v)):
        if t.device != k.device:
            raise ValueError(f"expected {name} on {k.device} (the device of k), got {t.device}")


def biwkv4(w: Tensor, u: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Bidirectional WKV (Vision-RWKV's Bi-WKV, eq. 4), exact, with gradients for all inputs.

    ``y[b,t,c]`` is the mean of ``v[b,:,c]`` under the weights ``exp(-(|t-i|-1)·w[c] + k[b,i,c])``
    for ``i ≠ t`` and ``exp(u[c] + k[b,t,c])`` for ``i = t``, computed stably for any sign of w.
    On CUDA tensors runs the compiled CUDA kernel if it builds, else the Triton kernels, else
    (warning once) the PyTorch scan (see :func:`gpu_backend`); elsewhere the O(B·T·C) scan.

    Args:
        w: [C] decay per position, any float dtype (callers pass decay / T, as Vision-RWKV does).
        u: [C] bonus of the current position, any float dtype (callers pass bonus / T).
        k: [B, T, C] keys: float16, bfloat16, float32 or float64; any strides.
        v: [B, T, C] values, dtype of k.

    Returns:
        y: [B, T, C] in k's dtype. Accumulation is in float32 (float64 for float64 inputs);
        w and u are used in that precision, and their gradients come back in their own dtype.

    Raises:
        ValueError: shapes, dtypes or devices that do not fit the above, or an empty B, T or C.
        TypeError: an argument that is not a tensor.
    """
    _validate(w, u, k, v)
    cd = _stats_dtype(k.dtype)
    need_stats = torch.is_grad_enabled() and any(t.requires_grad for t in (w, u, k, v))
    y, _ = torch.ops.biwkv4_kernel.forward(
        w.to(cd).contiguous(), u.to(cd).contiguous(), k.contiguous(), v.contiguous(), need_stats
    )
    return y
