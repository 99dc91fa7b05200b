"""RWKVContextCell and RWKVFusionNet: Bi-RWKV replacements for HPCM's context modules."""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import nn

from ._checks import check_dim, check_map
from .block import BiRWKVBlock

__all__ = ["RWKVContextCell", "RWKVFusionNet"]


class RWKVContextCell(nn.Module):
    """Recurrent context cell: merges the current context and the previous state, Bi-RWKV style.

        h_t = Conv1x1_out(BiRWKVBlock(Conv1x1_in([x_t ; h_prev])))

    ``[x_t ; h_prev]`` concatenates on channels (``2·dim``); ``Conv1x1_in`` maps ``2·dim → dim`` and
    ``Conv1x1_out`` maps ``dim → dim`` (both with bias, PyTorch's default init). A drop-in for the
    ``CrossAttentionCell(input_dim, hidden_dim, ...)`` of HPCM (Li et al., 2025): same call
    ``cell(x_t, h_prev)``, same shapes, but global (whole-map) context at linear cost instead of
    windowed attention, and no constraint tying H and W to a window size.

    Args:
        dim: channels of ``x_t``, ``h_prev`` and ``h_t``.
        hidden_rate: ChannelMix hidden width of the block, relative to ``dim``.
        use_checkpoint: checkpoint the block (see :class:`BiRWKVBlock`).
        device, dtype: factory kwargs for the parameters.

    Shape:
        ``x_t, h_prev: [B, dim, H, W] -> h_t: [B, dim, H, W]`` for any H, W >= 1.
    """

    def __init__(
        self,
        dim: int,
        hidden_rate: float = 4,
        use_checkpoint: bool = False,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.dim = check_dim(dim)
        self.in_proj = nn.Conv2d(2 * dim, dim, 1, **factory)
        self.block = BiRWKVBlock(dim, hidden_rate, use_checkpoint, **factory)
        self.out_proj = nn.Conv2d(dim, dim, 1, **factory)

    def forward(self, x_t: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        """The new state ``h_t`` ``[B, dim, H, W]`` from ``x_t`` and ``h_prev`` (same shape)."""
        check_map(x_t, self.dim, "x_t")
        check_map(h_prev, self.dim, "h_prev")
        if x_t.shape != h_prev.shape:
            raise ValueError(
                f"expected x_t and h_prev of the same shape [B, {self.dim}, H, W], "
                f"got {list(x_t.shape)} and {list(h_prev.shape)}"
            )
        return self.out_proj(self.block(self.in_proj(torch.cat([x_t, h_prev], dim=1))))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class RWKVFusionNet(nn.Module):
    """``num_blocks`` Bi-RWKV blocks followed by a 1x1 conv: a drop-in for a ``conv1x1(dim, dim)``.

    Replaces the 1x1 convolutions of HPCM's ``context_net``, which fuse the context carried from one
    coding step to the next, with a module that also mixes globally across the map.
    ``num_blocks=0`` leaves just the 1x1 conv (bias, PyTorch's default init), for ablations.

    Args:
        dim: number of channels C (input and output).
        num_blocks: number of :class:`BiRWKVBlock` before the 1x1 conv.
        hidden_rate: ChannelMix hidden width of each block, relative to ``dim``.
        use_checkpoint: checkpoint each block (see :class:`BiRWKVBlock`).
        device, dtype: factory kwargs for the parameters.

    Shape:
        ``[B, C, H, W] -> [B, C, H, W]`` for any H, W >= 1.
    """

    def __init__(
        self,
        dim: int,
        num_blocks: int = 1,
        hidden_rate: float = 4,
        use_checkpoint: bool = False,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.dim = check_dim(dim)
        if (
            isinstance(num_blocks, bool)
            or not isinstance(num_blocks, numbers.Integral)
            or num_blocks < 0
        ):
            raise ValueError(f"expected num_blocks to be an int >= 0, got {num_blocks!r}")
        self.blocks = nn.Sequential(
            *(BiRWKVBlock(dim, hidden_rate, use_checkpoint, **factory) for _ in range(num_blocks))
        )
        self.proj = nn.Conv2d(dim, dim, 1, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fuse ``x`` ``[B, C, H, W]``; returns ``[B, C, H, W]``."""
        check_map(x, self.dim)
        return self.proj(self.blocks(x))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_blocks={len(self.blocks)}"
