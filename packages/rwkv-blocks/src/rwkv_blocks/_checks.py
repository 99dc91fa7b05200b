"""Argument and shape checks shared by the modules: clear `ValueError`s, never deep tracebacks."""

from __future__ import annotations

import math
import numbers

import torch


def check_dim(dim: object, name: str = "dim") -> int:
    """A positive channel count."""
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
        raise ValueError(f"expected {name} to be a positive int, got {dim!r}")
    return int(dim)


def check_rate(value: object, name: str, *, allow_zero: bool = False) -> float:
    """A finite real number > 0 (>= 0 with ``allow_zero``), returned as given (an int stays an
    int, so reprs and saved configurations keep it)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"expected {name} to be a finite number {bound}, got {value!r}")
    return value  # type: ignore[return-value]


def hidden_dim(dim: int, hidden_rate: object) -> int:
    """``int(hidden_rate * dim)``, the width of ChannelMix's hidden layer; must be at least 1."""
    if isinstance(hidden_rate, bool) or not isinstance(hidden_rate, numbers.Real):
        raise ValueError(f"expected hidden_rate to be a positive number, got {hidden_rate!r}")
    hidden = int(hidden_rate * dim)
    if not hidden_rate > 0 or hidden < 1:
        raise ValueError(
            f"expected hidden_rate > 0 with int(hidden_rate * dim) >= 1, "
            f"got hidden_rate={hidden_rate!r} for dim={dim}"
        )
    return hidden


def check_map(x: object, dim: int, name: str = "x") -> tuple[int, int]:
    """Check that ``x`` is a ``[B, dim, H, W]`` tensor with H, W >= 1; return ``(H, W)``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected {name} to be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != dim:
        raise ValueError(f"expected {name} of shape [B, C={dim}, H, W], got {list(x.shape)}")
    H, W = x.shape[-2:]
    if H < 1 or W < 1:
        raise ValueError(f"expected {name} with H, W >= 1, got {list(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected {name} to be a floating-point tensor, got {x.dtype}")
    return H, W


def check_tokens(x: object, dim: int, size: tuple[int, int], name: str = "x") -> tuple[int, int]:
    """Check that ``x`` is a ``[B, H*W, dim]`` token tensor for ``size == (H, W)``; return it."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected {name} to be a torch.Tensor, got {type(x).__name__}")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"expected size=(H, W) with H, W >= 1, got {size!r}")
    H, W = size
    if x.dim() != 3 or x.shape[1] != H * W or x.shape[2] != dim:
        raise ValueError(
            f"expected {name} of shape [B, T=H*W={H * W}, C={dim}] for size=({H}, {W}), "
            f"got {list(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"expected {name} to be a floating-point tensor, got {x.dtype}")
    return H, W
