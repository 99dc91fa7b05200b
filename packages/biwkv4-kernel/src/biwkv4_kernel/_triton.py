"""Guarded loading of the Triton kernels, the GPU path that needs no CUDA toolkit.

Triton ships with torch's CUDA wheels; it compiles the kernels of :mod:`._triton_kernels` for the
GPU at first use, with its own bundled ``ptxas`` (it needs only a host C compiler, ``cc``, for its
launcher). Nothing here imports triton at import time. On first use on a GPU the kernels are run
once on a tiny input and compared with the PyTorch scan; if triton is missing, fails to import or
to compile, or disagrees, the Triton path is unavailable and :func:`triton_kernel_status` says why.

Where ``TRITON_INTERPRET=1`` was set before triton was first imported, Triton's interpreter runs
the kernels on CPU tensors (slowly): that is how the tests check them on machines without a GPU
(tests/conftest.py sets it there).

Environment: ``BIWKV4_DISABLE_TRITON=1`` turns the Triton path off (read on every call).
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType

import torch

from ._availability import availability

__all__ = [
    "DISABLE_ENV",
    "TritonUnavailable",
    "load_kernels",
    "triton_kernel_available",
    "triton_kernel_status",
]

DISABLE_ENV = "BIWKV4_DISABLE_TRITON"
# Triton 3.0 ships with torch 2.4, the oldest torch this package supports.
_MIN_TRITON = (3, 0)

_FIX = (
    "Install a CUDA build of torch (its `triton` dependency comes with it; triton 3.0 also needs "
    "`pip install setuptools`) and a host C compiler (`cc`), or build the CUDA kernel (see "
    "cuda_kernel_status())."
)


class TritonUnavailable(RuntimeError):
    """Triton cannot run the kernels here; the message says why."""


_LOCK = threading.Lock()
_MODULE: list[ModuleType] = []
_STATUS: dict[str, object] = {}


def load_kernels() -> ModuleType:
    """The Triton kernels module (``forward``, ``backward``; see :mod:`._triton_kernels`).

    Raises:
        TritonUnavailable: triton is not installed, too old, or fails to import.
    """
    with _LOCK:
        if not _MODULE:
            try:
                import triton
            except Exception as exc:  # triton 3.0 raises ModuleNotFoundError for setuptools
                raise TritonUnavailable(
                    f"triton cannot be imported ({type(exc).__name__}: {exc})"
                ) from exc
            version = tuple(int(x) for x in triton.__version__.split(".")[:2])
            if version < _MIN_TRITON:
                raise TritonUnavailable(
                    f"triton {triton.__version__} is older than {'.'.join(map(str, _MIN_TRITON))}"
                )
            try:
                _MODULE.append(importlib.import_module(f"{__package__}._triton_kernels"))
            except Exception as exc:
                raise TritonUnavailable(
                    f"the Triton kernels failed to load ({type(exc).__name__}: {exc})"
                ) from exc
    return _MODULE[0]


def _self_test() -> None:
    """Forward and backward once on a GPU, against the PyTorch scan (compiles every kernel)."""
    from .scan import scan_backward, scan_forward

    kernels = load_kernels()
    g = torch.Generator().manual_seed(0)
    w, u = torch.randn(2, 3, generator=g).div(20).cuda()
    k, v, gy = torch.randn(3, 1, 37, 3, generator=g).cuda()
    got = kernels.forward(w, u, k, v, True)
    got = (*got, *kernels.backward(w, u, k, v, *got, gy))
    want = scan_forward(w, u, k, v, True)
    want = (*want, *scan_backward(w, u, k, v, *want, gy))
    for name, a, b in zip(("y", "lse", "gw", "gu", "gk", "gv"), got, want, strict=True):
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
            error = (a - b).abs().max().item()
            raise TritonUnavailable(
                f"the Triton kernels disagree with the PyTorch scan ({name}: {error:.1e})"
            )


def _tested_version() -> str:
    _self_test()
    return f"triton {load_kernels().triton.__version__}"


def _availability() -> tuple[bool, str]:
    # Any failure to import, compile or run the kernels leaves the PyTorch path.
    return availability(_STATUS, DISABLE_ENV, _tested_version, (Exception,), f". {_FIX}")


def triton_kernel_available() -> bool:
    """Whether CUDA tensors can run the Triton kernels: a GPU is visible, ``BIWKV4_DISABLE_TRITON``
    is not set, and triton compiles and runs them correctly (tried once per process)."""
    return _availability()[0]


def triton_kernel_status() -> str:
    """One line saying why the Triton kernels are or are not usable."""
    return _availability()[1]
