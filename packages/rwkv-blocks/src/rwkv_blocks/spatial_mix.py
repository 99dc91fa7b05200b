"""SpatialMix: global token mixing with the bidirectional WKV op (Vision-RWKV's attention)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from biwkv4_kernel import biwkv4

from ._checks import check_dim, check_tokens
from ._tokens import TokenMixer
from .omnishift import OmniShift

__all__ = ["SpatialMix"]


@torch.no_grad()
def init_wkv_parameters(decay: torch.Tensor, boost: torch.Tensor) -> None:
    """Vision-RWKV's "fancy" first-layer init of the ``[C]`` WKV parameters, in place:
    ``decay_c = -5 + 8·(c / (C - 1))^0.7`` and ``boost_c = ln 0.3 + 0.5·((c + 1) mod 3 - 1)``."""
    dim = decay.shape[0]
    ratio = torch.linspace(0.0, 1.0, dim, dtype=torch.float64)
    decay.copy_(-5.0 + 8.0 * ratio**0.7)
    zigzag = torch.tensor([(c + 1) % 3 - 1 for c in range(dim)], dtype=torch.float64)
    boost.copy_(math.log(0.3) + 0.5 * zigzag)


def wkv_tokens(
    decay: torch.Tensor, boost: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """``Bi-WKV(decay / T, boost / T, k, v)`` of raster-order tokens ``k, v: [B, T, C]``."""
    T = k.shape[1]
    # The op accumulates in (at least) float32 whatever k's dtype; hand it w and u in at least
    # float32 too, so a bfloat16 model does not round decay/T and boost/T first.
    wkv_dtype = torch.promote_types(decay.dtype, torch.float32)
    return biwkv4(decay.to(wkv_dtype) / T, boost.to(wkv_dtype) / T, k, v)


class SpatialMix(TokenMixer):
    """Bidirectional WKV attention over a map: the Spatial Mix of Vision-RWKV (Duan et al., 2024).

    With ``x̃ = OmniShift(x)`` flattened to ``T = H·W`` tokens in raster order,

        k, v, r = x̃ W_k, x̃ W_v, x̃ W_r                                   (no biases)
        y       = W_o (sigmoid(r) ⊙ Bi-WKV(decay / T, boost / T, k, v))

    where ``Bi-WKV`` averages the values of all tokens with weights
    ``exp(-(|t - i| - 1)·decay/T + k_i)`` (``exp(boost/T + k_t)`` for the token itself), see
    :func:`biwkv4_kernel.biwkv4`. Dividing by T makes the decay a fraction of the whole sequence,
    so the same parameters work at every resolution.

    ``decay`` and ``boost`` are learnable per-channel ``[C]`` parameters, initialized as in
    Vision-RWKV's "fancy" init for its first layer: ``decay_c = -5 + 8·(c / (C - 1))^0.7`` (from
    channels that favour distant tokens to channels that favour near ones) and
    ``boost_c = ln 0.3 + 0.5·((c + 1) mod 3 - 1)``. Give them their own learning rate with
    :func:`rwkv_blocks.rwkv_param_groups`.

    Args:
        dim: number of channels C.
        device, dtype: factory kwargs for the parameters.

    Shape:
        ``[B, C, H, W] -> [B, C, H, W]`` for any H, W >= 1; :meth:`forward_tokens` takes
        ``[B, T, C]``.
    """

    def __init__(
        self,
        dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.dim = check_dim(dim)
        self.omni_shift = OmniShift(dim, **factory)
        self.key = nn.Linear(dim, dim, bias=False, **factory)
        self.value = nn.Linear(dim, dim, bias=False, **factory)
        self.receptance = nn.Linear(dim, dim, bias=False, **factory)
        self.output = nn.Linear(dim, dim, bias=False, **factory)
        self.decay = nn.Parameter(torch.empty(dim, **factory))
        self.boost = nn.Parameter(torch.empty(dim, **factory))
        self.reset_wkv_parameters()

    def reset_wkv_parameters(self) -> None:
        """Re-initialize ``decay`` and ``boost`` (see the class docstring)."""
        init_wkv_parameters(self.decay, self.boost)

    def forward_tokens(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Mix raster-order tokens ``x`` ``[B, H·W, C]`` of an ``size = (H, W)`` map."""
        H, W = check_tokens(x, self.dim, size)
        x = self.omni_shift.forward_tokens(x, (H, W))
        k, v, r = self.key(x), self.value(x), self.receptance(x)
        return self.output(torch.sigmoid(r) * wkv_tokens(self.decay, self.boost, k, v))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
