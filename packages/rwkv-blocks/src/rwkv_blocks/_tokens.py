"""The map interface shared by the modules that mix raster-order tokens."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ._checks import check_map


class TokenMixer(nn.Module):
    """Base of SpatialMix, ChannelMix and BiRWKVBlock: each implements :meth:`forward_tokens` on
    raster-order tokens ``[B, H·W, C]``; :meth:`forward` takes maps ``[B, C, H, W]``. Subclasses
    set ``self.dim``."""

    dim: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the module to ``x`` ``[B, C, H, W]``; returns ``[B, C, H, W]``."""
        H, W = check_map(x, self.dim)
        y = self.forward_tokens(rearrange(x, "b c h w -> b (h w) c"), (H, W))
        return rearrange(y, "b (h w) c -> b c h w", h=H, w=W)

    def forward_tokens(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError
