"""BiRWKVBlock: the pre-norm residual Bi-RWKV block of LALIC."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ._checks import check_dim, check_tokens
from ._tokens import TokenMixer
from .channel_mix import ChannelMix
from .spatial_mix import SpatialMix

__all__ = ["BiRWKVBlock"]


class BiRWKVBlock(TokenMixer):
    """Pre-norm residual Bi-RWKV block (LALIC, Feng et al., CVPR 2025, fig. 2; Vision-RWKV).

        x ← x + γ1 ⊙ SpatialMix(LN1(x))
        x ← x + γ2 ⊙ ChannelMix(LN2(x))

    ``LN1``, ``LN2`` are ``nn.LayerNorm(dim)`` over the channels of each position (each pixel's
    C-vector is normalized on its own; ε = 1e-5, learnable affine). ``γ1``, ``γ2`` are learnable
    per-channel ``[C]`` scales initialized to 1.

    Args:
        dim: number of channels C.
        hidden_rate: ChannelMix hidden width relative to ``dim``.
        use_checkpoint: recompute the block in backward instead of storing its activations
            (non-reentrant ``torch.utils.checkpoint``; same values and gradients).
        device, dtype: factory kwargs for the parameters.

    Shape:
        ``[B, C, H, W] -> [B, C, H, W]`` for any H, W >= 1; :meth:`forward_tokens` takes
        ``[B, T, C]``.
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
        self.use_checkpoint = bool(use_checkpoint)
        self.ln1 = nn.LayerNorm(dim, **factory)
        self.ln2 = nn.LayerNorm(dim, **factory)
        self.spatial_mix = SpatialMix(dim, **factory)
        self.channel_mix = ChannelMix(dim, hidden_rate, **factory)
        self.gamma1 = nn.Parameter(torch.ones(dim, **factory))
        self.gamma2 = nn.Parameter(torch.ones(dim, **factory))

    def forward_tokens(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Apply the block to the raster-order tokens ``x`` ``[B, H·W, C]`` of an H×W map."""
        check_tokens(x, self.dim, size)
        if self.use_checkpoint and torch.is_grad_enabled():
            # Checkpoint whenever autograd records, not only when `x` requires grad (LALIC's test):
            # the first block of a network sees an input without grad but still owns parameters.
            return checkpoint(self._residual, x, tuple(size), use_reentrant=False)
        return self._residual(x, tuple(size))

    def _residual(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = x + self.gamma1 * self.spatial_mix.forward_tokens(self.ln1(x), size)
        return x + self.gamma2 * self.channel_mix.forward_tokens(self.ln2(x), size)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, use_checkpoint={self.use_checkpoint}"
