"""Building blocks of HPCM (Li et al., ICCV 2025), with the authors' parameter names.

The module and attribute names (``branch``, ``pconv``, ``conv_q`` …) are those of the official
implementation, so its checkpoints load with ``strict=True``; :mod:`hpcm_models.hpcm` assembles
them. All modules work on channels-first maps ``[B, C, H, W]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = [
    "Conv1x1",
    "CrossAttentionCell",
    "DWConvRB",
    "PConvRB",
    "PartialConv3x3",
    "SpatialPrior",
    "conv1x1",
    "conv2x2_down",
    "conv4x4_down",
    "deconv2x2_up",
    "deconv4x4_up",
]


class Conv1x1(nn.Conv2d):
    """Pointwise convolution with bias: an ``nn.Conv2d`` (same parameters and state_dict) whose
    IEEE-float32 CUDA path for a single image is one cuBLAS matrix product with the bias fused.

    cuDNN runs a float32 1×1 convolution as an implicit GEMM followed by a separate bias kernel;
    ``addmm`` on the ``[C, H·W]`` view is one kernel, and made HPCM's float32 coding schedule
    25 % faster on an H200 (docs/performance.md). Used only where it is that case: a CUDA,
    float32, contiguous batch of one, outside autocast, with TF32 off for cuDNN (the codec's
    setting); everything else (CPU, training batches, bf16, TF32) goes to ``nn.Conv2d``. Both
    are float32 with float32 accumulation; they differ by summation order only.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(in_ch, out_ch, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.is_cuda
            and x.dtype == torch.float32
            and x.dim() == 4
            and x.shape[0] == 1
            and x.is_contiguous()
            and self.weight.dtype == torch.float32
            and not torch.is_autocast_enabled(x.device.type)
            and torch.backends.cudnn.conv.fp32_precision == "ieee"
        ):
            _, C, H, W = x.shape
            weight = self.weight.view(self.out_channels, C)
            out = torch.addmm(self.bias[:, None], weight, x.view(C, H * W))
            return out.view(1, self.out_channels, H, W)
        return super().forward(x)


def conv1x1(in_ch: int, out_ch: int) -> Conv1x1:
    """Pointwise convolution (with bias), see :class:`Conv1x1`."""
    return Conv1x1(in_ch, out_ch)


def conv2x2_down(in_ch: int, out_ch: int) -> nn.Conv2d:
    """Patch-merging 2× downsampling: ``[B, in, H, W] -> [B, out, H/2, W/2]``."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=2, stride=2)


def deconv2x2_up(in_ch: int, out_ch: int) -> nn.ConvTranspose2d:
    """2× upsampling, the transpose of :func:`conv2x2_down`."""
    return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)


def conv4x4_down(in_ch: int, out_ch: int) -> nn.Conv2d:
    """Overlapping 2× downsampling (kernel 4, stride 2, padding 1)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1)


def deconv4x4_up(in_ch: int, out_ch: int) -> nn.ConvTranspose2d:
    """Overlapping 2× upsampling (kernel 4, stride 2, padding 1), the transpose of
    :func:`conv4x4_down`."""
    return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1)


class PartialConv3x3(nn.Module):
    """3×3 convolution of the first ``partial`` channels only; the others pass through.

    The partial convolution of FasterNet (Chen et al., CVPR 2023).

    Args:
        dim: channels C of the map.
        partial: channels convolved (the first ``partial`` of the C).

    Shape:
        ``[B, C, H, W] -> [B, C, H, W]``.
    """

    def __init__(self, dim: int, partial: int) -> None:
        super().__init__()
        if not 0 < partial <= dim:
            raise ValueError(f"expected 0 < partial <= dim, got partial={partial}, dim={dim}")
        self.dim = dim
        self.partial = partial
        self.pconv = nn.Conv2d(partial, partial, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head, tail = x.split([self.partial, self.dim - self.partial], dim=1)
        return torch.cat((self.pconv(head), tail), dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, partial={self.partial}"


class PConvRB(nn.Module):
    """Partial-convolution residual block of HPCM's transforms.

        x + Conv1x1(LeakyReLU(Conv1x1(PConv3x3(x))))

    with hidden width ``mlp_ratio · dim`` and a 3×3 convolution over ``dim // partial_ratio``
    channels. LeakyReLU has PyTorch's default slope 0.01.

    Shape:
        ``[B, dim, H, W] -> [B, dim, H, W]``.
    """

    def __init__(self, dim: int, mlp_ratio: int = 4, partial_ratio: int = 4) -> None:
        super().__init__()
        hidden = dim * mlp_ratio
        self.branch = nn.Sequential(
            PartialConv3x3(dim, dim // partial_ratio),
            conv1x1(dim, hidden),
            nn.LeakyReLU(inplace=True),
            conv1x1(hidden, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class DWConvRB(nn.Module):
    """Depthwise-convolution residual block of HPCM's spatial priors.

        x + Conv1x1(LeakyReLU(Conv1x1(DWConv3x3(x))))

    with hidden width ``mlp_ratio · dim``.

    Shape:
        ``[B, dim, H, W] -> [B, dim, H, W]``.
    """

    def __init__(self, dim: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        hidden = dim * mlp_ratio
        self.branch = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim),
            conv1x1(dim, hidden),
            nn.LeakyReLU(),
            conv1x1(hidden, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class SpatialPrior(nn.Module):
    """HPCM's spatial prior: entropy parameters from the (adapted) context of one coding step.

        prior(x, quant_step) = branch_2(branch_1(x) ⊙ quant_step)

    ``branch_1`` is ``depths[0]`` :class:`DWConvRB`; ``branch_2`` is ``depths[1]`` :class:`DWConvRB`
    then a 1×1 convolution to ``out_dim`` channels (scales and means). ``quant_step`` is the
    step's learned channel gain (one of ``adaptive_params_list``).

    Args:
        dim: input channels (3M: context of 2M channels and the M decoded latents).
        out_dim: output channels (2M).
        depths: number of DWConvRB in ``branch_1`` and ``branch_2``.

    Shape:
        ``x: [B, dim, H, W]``, ``quant_step: [1, dim, 1, 1] -> [B, out_dim, H, W]``.
    """

    def __init__(self, dim: int, out_dim: int, depths: tuple[int, int]) -> None:
        super().__init__()
        self.branch_1 = nn.Sequential(*(DWConvRB(dim) for _ in range(depths[0])))
        self.branch_2 = nn.Sequential(
            *(DWConvRB(dim) for _ in range(depths[1])), conv1x1(dim, out_dim)
        )

    def forward(self, x: torch.Tensor, quant_step: torch.Tensor) -> torch.Tensor:
        return self.branch_2(self.branch_1(x) * quant_step)


class CrossAttentionCell(nn.Module):
    """HPCM's context cell: windowed multi-head cross-attention from the context to the state.

        h_t = WindowAttention(q = W_q x_t, k = W_k h_prev, v = W_v h_prev) + W_out x_t

    Attention runs inside non-overlapping ``window_size``² windows (HPCM §3.3, "progressive
    context fusion"); ``W_*`` are ``kernel_size``² convolutions (1×1 in HPCM).

    Maps whose sides are not multiples of ``window_size`` are zero-padded to the next multiple and
    the padded keys are excluded from the softmax, so every query attends only to real positions
    of its window; outputs at padded positions are dropped. On sizes that are multiples of the
    window nothing is padded and the result is the authors' cell exactly.

    Args:
        dim: channels of ``x_t``, ``h_prev`` and ``h_t`` (2M in HPCM).
        window_size: side of the attention windows.
        num_heads: attention heads; must divide ``dim``.
        kernel_size: kernel of the q/k/v/out projections (odd).

    Shape:
        ``x_t, h_prev: [B, dim, H, W] -> h_t: [B, dim, H, W]``.
    """

    def __init__(
        self, dim: int, window_size: int, num_heads: int = 32, kernel_size: int = 1
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"expected dim divisible by num_heads={num_heads}, got dim={dim}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size

        def projection() -> nn.Conv2d:
            if kernel_size == 1:
                return conv1x1(dim, dim)
            return nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2)

        self.conv_q = projection()
        self.conv_k = projection()
        self.conv_v = projection()
        self.conv_out = projection()

    def forward(self, x_t: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        if x_t.dim() != 4 or x_t.shape[1] != self.dim or x_t.shape != h_prev.shape:
            raise ValueError(
                f"expected x_t and h_prev of the same shape [B, {self.dim}, H, W], "
                f"got {list(x_t.shape)} and {list(h_prev.shape)}"
            )
        _, _, H, W = x_t.shape
        ws = self.window_size
        pad_h, pad_w = -H % ws, -W % ws
        q_in, kv_in = x_t, h_prev
        if pad_h or pad_w:
            q_in = F.pad(x_t, (0, pad_w, 0, pad_h))
            kv_in = F.pad(h_prev, (0, pad_w, 0, pad_h))
        rows, cols = (H + pad_h) // ws, (W + pad_w) // ws

        def windows(t: torch.Tensor) -> torch.Tensor:
            return rearrange(t, "b c (r p1) (s p2) -> (b r s) c p1 p2", p1=ws, p2=ws)

        # Projections run on the windowed maps, as in the official cell, so that float round-off
        # (and therefore every rounding decision downstream) matches it.
        q_w, kv_w = windows(q_in), windows(kv_in)
        n = ws * ws
        q = self.conv_q(q_w).view(-1, self.num_heads, self.head_dim, n).transpose(2, 3)
        k = self.conv_k(kv_w).view(-1, self.num_heads, self.head_dim, n)
        v = self.conv_v(kv_w).view(-1, self.num_heads, self.head_dim, n).transpose(2, 3)
        scores = torch.matmul(q, k) / math.sqrt(self.head_dim)
        if pad_h or pad_w:
            real = torch.zeros(H + pad_h, W + pad_w, dtype=torch.bool, device=x_t.device)
            real[:H, :W] = True
            real = rearrange(real, "(r p1) (s p2) -> (r s) 1 1 (p1 p2)", p1=ws, p2=ws)
            real = real.repeat(x_t.shape[0], 1, 1, 1)
            scores = scores.masked_fill(~real, float("-inf"))
        out = torch.matmul(F.softmax(scores, dim=-1), v)
        out = out.transpose(2, 3).contiguous().view(-1, self.dim, ws, ws)
        out = rearrange(out, "(b r s) c p1 p2 -> b c (r p1) (s p2)", r=rows, s=cols)
        if pad_h or pad_w:
            out = out[:, :, :H, :W]
        return out + self.conv_out(x_t)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"
