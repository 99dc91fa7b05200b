"""Public entry point of the bidirectional WKV op.

PROVISIONAL (workspace skeleton): validates inputs and calls the reference. Issue 3 replaces this
with the torch.library op (CPU scan + CUDA kernel).
"""

from __future__ import annotations

import torch

from .naive import naive_biwkv4

__all__ = ["biwkv4", "cuda_kernel_available"]


def cuda_kernel_available() -> bool:
    """Whether the compiled CUDA kernel can be used in this process."""
    return False


def biwkv4(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bidirectional WKV. w, u: [C]; k, v: [B, T, C] -> y: [B, T, C] (dtype of k)."""
    if k.dim() != 3 or v.shape != k.shape:
        raise ValueError(
            f"expected k and v of shape [B, T, C], got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    C = k.shape[-1]
    if w.shape != (C,) or u.shape != (C,):
        raise ValueError(
            f"expected w and u of shape [{C}], got {tuple(w.shape)} and {tuple(u.shape)}"
        )
    return naive_biwkv4(w.float(), u.float(), k.float(), v.float()).to(k.dtype)
