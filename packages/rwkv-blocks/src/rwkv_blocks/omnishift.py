"""OmniShift: a reparameterizable depthwise 5x5 token shift, and `reparameterize_model`."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ._checks import check_dim, check_map, check_tokens

__all__ = ["OmniShift", "reparameterize_model"]


class OmniShift(nn.Module):
    """Depthwise multi-scale token shift: Restore-RWKV's Omni-Shift (Yang et al., 2024), in LALIC.

    While training it computes ``α0·x + α1·DW1x1(x) + α2·DW3x3(x) + α3·DW5x5(x)`` with learnable
    scalars ``α`` and bias-free depthwise convolutions (zero padding, stride 1: H and W are kept).
    All four branches are linear in ``x``, so they equal one depthwise 5x5 convolution whose kernel
    is the α-weighted sum of the zero-padded branch kernels; :meth:`reparameterize` replaces the
    branches by that single convolution for inference (as timm's MobileOne blocks do).

    Args:
        dim: number of channels C.
        device, dtype: factory kwargs for the parameters.

    Shape:
        ``[B, C, H, W] -> [B, C, H, W]`` for any H, W >= 1.
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
        self.conv1x1 = nn.Conv2d(dim, dim, 1, groups=dim, bias=False, **factory)
        self.conv3x3 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False, **factory)
        self.conv5x5 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim, bias=False, **factory)
        # α = 1 keeps the identity branch at full strength at init; the convolutions keep PyTorch's
        # default (Kaiming-uniform) init. LALIC draws α from N(0, 1), which can start with the
        # identity branch switched off or negated.
        self.alpha = nn.Parameter(torch.ones(4, **factory))
        self.reparam_conv: nn.Conv2d | None = None

    @property
    def is_reparameterized(self) -> bool:
        """Whether the branches have been fused into :attr:`reparam_conv`."""
        return self.reparam_conv is not None

    def fused_weight(self) -> torch.Tensor:
        """The depthwise 5x5 kernel ``[C, 1, 5, 5]`` equal to the four branches (differentiable)."""
        if self.reparam_conv is not None:
            return self.reparam_conv.weight
        weight = self.alpha[3] * self.conv5x5.weight
        weight = weight + self.alpha[2] * F.pad(self.conv3x3.weight, (1, 1, 1, 1))
        # The 1x1 branch and the identity both live on the centre tap.
        centre = self.alpha[1] * self.conv1x1.weight + self.alpha[0]
        return weight + F.pad(centre, (2, 2, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shift ``x`` ``[B, C, H, W]``; returns ``[B, C, H, W]``."""
        check_map(x, self.dim)
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        # One convolution with the combined kernel instead of three plus a weighted sum: the same
        # function, but backward needs only `x` saved (not every branch output, which the gradient
        # of each α would otherwise keep alive).
        return F.conv2d(x, self.fused_weight(), padding=2, groups=self.dim)

    def forward_tokens(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Shift the raster-order tokens ``x`` ``[B, H·W, C]`` of an ``size = (H, W)`` map;
        returns tokens. (A ``[B, T, C]`` tensor seen as ``[B, C, H, W]`` is a channels-last view:
        no copy either way.)"""
        H, W = check_tokens(x, self.dim, size)
        y = self(rearrange(x, "b (h w) c -> b c h w", h=H, w=W))
        return rearrange(y, "b c h w -> b (h w) c")

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fuse the branches into one depthwise 5x5 conv, in place; idempotent.

        Deletes ``conv1x1``, ``conv3x3``, ``conv5x5`` and ``alpha`` and adds ``reparam_conv``, so
        the state_dict changes: a fused checkpoint loads only into a fused model (docs/blocks.md,
        "Reparameterization"). The fused kernel stays trainable.
        """
        if self.reparam_conv is not None:
            return
        weight = self.fused_weight().detach()
        conv = nn.Conv2d(
            self.dim,
            self.dim,
            5,
            padding=2,
            groups=self.dim,
            bias=False,
            device=weight.device,
            dtype=weight.dtype,
        )
        conv.weight.copy_(weight)
        conv.train(self.training)
        for name in ("conv1x1", "conv3x3", "conv5x5", "alpha"):
            delattr(self, name)
        self.reparam_conv = conv

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A fused and an unfused OmniShift have disjoint state_dict keys; say how to fix it instead
        # of leaving the user with a list of missing and unexpected keys.
        fused_ckpt = f"{prefix}reparam_conv.weight" in state_dict
        branch_ckpt = f"{prefix}alpha" in state_dict
        if fused_ckpt and not self.is_reparameterized:
            error_msgs.append(
                f"OmniShift '{prefix.rstrip('.')}': the state_dict holds a reparameterized (fused) "
                "OmniShift but this module still has its training branches; call "
                "rwkv_blocks.reparameterize_model(model, inplace=True) before load_state_dict."
            )
        elif branch_ckpt and self.is_reparameterized:
            error_msgs.append(
                f"OmniShift '{prefix.rstrip('.')}': the state_dict holds the training branches "
                "but this module is already reparameterized; load the state_dict first, then call "
                "rwkv_blocks.reparameterize_model(model, inplace=True)."
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, reparameterized={self.is_reparameterized}"


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fuse every :class:`OmniShift` in ``model`` (timm's ``reparameterize_model`` pattern).

    Args:
        model: any module; its OmniShifts are fused, nothing else changes.
        inplace: fuse ``model`` itself; by default a deep copy is fused and ``model`` is untouched.

    Returns:
        The fused model (``model`` itself when ``inplace``). Calling it again is a no-op.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, OmniShift):
            module.reparameterize()
    return model
