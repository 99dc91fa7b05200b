"""RWKVContextCell, RWKVContextCellLite and RWKVFusionNet: Bi-RWKV replacements for HPCM's context
modules."""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ._checks import check_dim, check_map, hidden_dim
from .block import BiRWKVBlock
from .omnishift import OmniShift
from .spatial_mix import init_wkv_parameters, wkv_tokens

__all__ = ["RWKVContextCell", "RWKVContextCellLite", "RWKVFusionNet"]


def _check_pair(x_t: torch.Tensor, h_prev: torch.Tensor, dim: int) -> None:
    """``x_t`` and ``h_prev``: maps ``[B, dim, H, W]`` of one shape."""
    check_map(x_t, dim, "x_t")
    check_map(h_prev, dim, "h_prev")
    if x_t.shape != h_prev.shape:
        raise ValueError(
            f"expected x_t and h_prev of the same shape [B, {dim}, H, W], "
            f"got {list(x_t.shape)} and {list(h_prev.shape)}"
        )


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
        _check_pair(x_t, h_prev, self.dim)
        return self.out_proj(self.block(self.in_proj(torch.cat([x_t, h_prev], dim=1))))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class RWKVContextCellLite(nn.Module):
    """A light recurrent context cell: Bi-WKV cross-attention from the context to the state.

        k, v = W_k h̃, W_v h̃          h̃ = h_prev (or OmniShift(h_prev) with ``shift=True``)
        r    = W_r x_t
        h_t  = x_t + W_o (sigmoid(r) ⊙ Bi-WKV(decay / T, boost / T, k, v)) + b_o

    on ``T = H·W`` raster-order tokens, with ``W_r, W_k, W_v: dim → hidden`` (no bias),
    ``W_o: hidden → dim`` (with bias) and ``hidden = int(hidden_rate · dim)``. It mirrors HPCM's
    ``CrossAttentionCell`` — queries from the context ``x_t``, keys and values from the state
    ``h_prev`` — with the windowed softmax attention replaced by the global, linear-time Bi-WKV
    of :class:`SpatialMix` (same ``decay``/``boost`` init), at a narrower width, without the
    ChannelMix of :class:`RWKVContextCell`, and with an identity skip instead of a projection of
    ``x_t``. Its linear layers cost ``8·T·dim·hidden`` FLOPs, against ``8·T·dim²`` (plus the
    windowed attention) for the cross-attention cell: 0.48× at ``hidden_rate=0.5``
    (``docs/blocks.md``).

    Args:
        dim: channels of ``x_t``, ``h_prev`` and ``h_t``.
        hidden_rate: width of ``k, v, r`` (the Bi-WKV channels) relative to ``dim``.
        use_checkpoint: recompute the cell in backward instead of storing its activations.
        shift: an :class:`OmniShift` (depthwise 5x5) on ``h_prev`` before ``W_k, W_v``, for 2-D
            locality in the keys and values.
        device, dtype: factory kwargs for the parameters.

    Shape:
        ``x_t, h_prev: [B, dim, H, W] -> h_t: [B, dim, H, W]`` for any H, W >= 1.
    """

    def __init__(
        self,
        dim: int,
        hidden_rate: float = 0.5,
        use_checkpoint: bool = False,
        *,
        shift: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.dim = check_dim(dim)
        self.hidden_rate = hidden_rate
        self.hidden_dim = hidden = hidden_dim(self.dim, hidden_rate)
        self.use_checkpoint = bool(use_checkpoint)
        self.omni_shift = OmniShift(dim, **factory) if shift else None
        self.receptance = nn.Linear(dim, hidden, bias=False, **factory)
        self.key = nn.Linear(dim, hidden, bias=False, **factory)
        self.value = nn.Linear(dim, hidden, bias=False, **factory)
        self.output = nn.Linear(hidden, dim, **factory)
        self.decay = nn.Parameter(torch.empty(hidden, **factory))
        self.boost = nn.Parameter(torch.empty(hidden, **factory))
        self.reset_wkv_parameters()

    def reset_wkv_parameters(self) -> None:
        """Re-initialize ``decay`` and ``boost`` (as :class:`SpatialMix`)."""
        init_wkv_parameters(self.decay, self.boost)

    def forward(self, x_t: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        """The new state ``h_t`` ``[B, dim, H, W]`` from ``x_t`` and ``h_prev`` (same shape)."""
        _check_pair(x_t, h_prev, self.dim)
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._cell, x_t, h_prev, use_reentrant=False)
        return self._cell(x_t, h_prev)

    def _cell(self, x_t: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x_t.shape
        if self.omni_shift is not None:
            h_prev = self.omni_shift(h_prev)
        # Token views [B, T, C] of the maps: no copy; for B = 1 the matrix products read a
        # channels-first map as a transposed operand, so nothing is copied at all.
        x_tokens = x_t.flatten(2).transpose(1, 2)
        h_tokens = h_prev.flatten(2).transpose(1, 2)
        if B > 1:
            # A batch of token views cannot be folded into one matrix without a copy: make it
            # once for both projections of h instead of once in each.
            h_tokens = h_tokens.contiguous()
        k, v = self.key(h_tokens), self.value(h_tokens)
        gated = torch.sigmoid(self.receptance(x_tokens)) * wkv_tokens(self.decay, self.boost, k, v)
        update = self.output(gated).transpose(1, 2).view(B, C, H, W)
        # x_t first: the sum takes x_t's memory layout, not the update's transposed one.
        return x_t + update

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, hidden_rate={self.hidden_rate}, hidden_dim={self.hidden_dim}, "
            f"shift={self.omni_shift is not None}, use_checkpoint={self.use_checkpoint}"
        )


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
