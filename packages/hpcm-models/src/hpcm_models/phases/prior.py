"""RWKVSpatialPrior: HPCM's spatial prior with Bi-RWKV blocks in place of its DWConvRBs."""

from __future__ import annotations

import numbers

import torch
from torch import nn

from rwkv_blocks import BiRWKVBlock

from ..layers import conv1x1

__all__ = ["RWKVSpatialPrior"]


def _check_depths(depths: object) -> tuple[int, int]:
    if (
        not isinstance(depths, tuple | list)
        or len(depths) != 2
        or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 0 for d in depths)
    ):
        raise ValueError(f"expected depths to be two ints >= 0, got {depths!r}")
    return int(depths[0]), int(depths[1])


class RWKVSpatialPrior(nn.Module):
    """Entropy parameters of one coding step from its adapted context, with global token mixing.

        prior(x, quant_step) = proj(blocks_2(blocks_1(x) ⊙ quant_step))

    The computation of HPCM's :class:`~hpcm_models.layers.SpatialPrior` (Li et al., ICCV 2025,
    §3.3) with each DWConvRB (a 3×3 depthwise convolution and an MLP) replaced by a
    :class:`~rwkv_blocks.BiRWKVBlock` (LALIC, Feng et al., CVPR 2025), block for block:
    ``blocks_1`` holds ``depths[0]`` blocks, ``blocks_2`` ``depths[1]``, and ``proj`` is the
    final 1×1 convolution to ``out_dim`` channels (scales, then means). Every position sees the
    whole map instead of a 3×3 neighbourhood.

    The submodule names differ from SpatialPrior's (``branch_1``, ``branch_2``) on purpose: a
    baseline checkpoint must not load into any part of this module, not even into ``proj``, whose
    shape happens to match the baseline's last convolution.

    Args:
        dim: input channels (3M: the 2M context channels and the M decoded latents).
        out_dim: output channels (2M).
        depths: Bi-RWKV blocks before and after the multiplication by ``quant_step``.
        hidden_rate: ChannelMix hidden width of each block, relative to ``dim``. The default 2 is
            the hidden width of the DWConvRBs it replaces.
        use_checkpoint: checkpoint each block (see :class:`~rwkv_blocks.BiRWKVBlock`).

    Shape:
        ``x: [B, dim, H, W]``, ``quant_step: [1, dim, 1, 1] -> [B, out_dim, H, W]``, any H, W ≥ 1.
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        depths: tuple[int, int],
        hidden_rate: float = 2,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        d1, d2 = _check_depths(depths)
        self.dim = dim
        self.out_dim = out_dim
        self.blocks_1 = nn.Sequential(
            *(BiRWKVBlock(dim, hidden_rate, use_checkpoint) for _ in range(d1))
        )
        self.blocks_2 = nn.Sequential(
            *(BiRWKVBlock(dim, hidden_rate, use_checkpoint) for _ in range(d2))
        )
        self.proj = conv1x1(dim, out_dim)

    def forward(self, x: torch.Tensor, quant_step: torch.Tensor) -> torch.Tensor:
        """Scales and means ``[B, out_dim, H, W]`` from ``x`` ``[B, dim, H, W]`` and the step's
        channel gain ``quant_step`` ``[1, dim, 1, 1]``."""
        if x.dim() != 4 or x.shape[1] != self.dim:
            raise ValueError(f"expected x of shape [B, {self.dim}, H, W], got {list(x.shape)}")
        if quant_step.shape != (1, self.dim, 1, 1):
            raise ValueError(
                f"expected quant_step of shape [1, {self.dim}, 1, 1], got {list(quant_step.shape)}"
            )
        return self.proj(self.blocks_2(self.blocks_1(x) * quant_step))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, out_dim={self.out_dim}, "
            f"depths=({len(self.blocks_1)}, {len(self.blocks_2)})"
        )
