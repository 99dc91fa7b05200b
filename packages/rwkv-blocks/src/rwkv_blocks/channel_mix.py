"""ChannelMix: RWKV's gated squared-ReLU feed-forward, after an OmniShift."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._checks import check_dim, check_tokens, hidden_dim
from ._tokens import TokenMixer
from .omnishift import OmniShift

__all__ = ["ChannelMix"]


class ChannelMix(TokenMixer):
    """Per-token gated feed-forward: the Channel Mix of RWKV-4 and Vision-RWKV (Duan et al., 2024).

    With ``x̃ = OmniShift(x)`` and ``hidden = int(hidden_rate · C)``,

        y = sigmoid(x̃ W_r) ⊙ (ReLU(x̃ W_k)² W_v)

    with ``W_k: C → hidden``, ``W_v: hidden → C``, ``W_r: C → C``, all without bias.

    Args:
        dim: number of channels C.
        hidden_rate: width of the hidden layer relative to ``dim``.
        device, dtype: factory kwargs for the parameters.

    Shape:
        ``[B, C, H, W] -> [B, C, H, W]`` for any H, W >= 1; :meth:`forward_tokens` takes
        ``[B, T, C]``.
    """

    def __init__(
        self,
        dim: int,
        hidden_rate: float = 4,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.dim = check_dim(dim)
        self.hidden_rate = hidden_rate
        self.hidden_dim = hidden_dim(self.dim, hidden_rate)
        self.omni_shift = OmniShift(dim, **factory)
        self.key = nn.Linear(dim, self.hidden_dim, bias=False, **factory)
        self.value = nn.Linear(self.hidden_dim, dim, bias=False, **factory)
        self.receptance = nn.Linear(dim, dim, bias=False, **factory)

    def forward_tokens(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Mix raster-order tokens ``x`` ``[B, H·W, C]`` of an ``size = (H, W)`` map."""
        H, W = check_tokens(x, self.dim, size)
        x = self.omni_shift.forward_tokens(x, (H, W))
        k = torch.square(torch.relu(self.key(x)))
        return torch.sigmoid(self.receptance(x)) * self.value(k)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden_rate={self.hidden_rate}, hidden_dim={self.hidden_dim}"
