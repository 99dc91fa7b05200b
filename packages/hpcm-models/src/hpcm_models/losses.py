"""The rate–distortion loss HPCM trains with (CompressAI's ``RateDistortionLoss``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MS_SSIM_MIN_SIDE", "RateDistortionLoss"]

#: pytorch-msssim's 5-scale MS-SSIM with an 11-tap window needs both sides > (11 - 1) · 2⁴.
MS_SSIM_MIN_SIDE = 161


class RateDistortionLoss(nn.Module):
    """CompressAI's rate–distortion loss, as HPCM trains with it.

        mse:     L = λ · 255² · MSE(x̂, x) + bpp
        ms-ssim: L = λ · (1 − MS-SSIM(x̂, x)) + bpp

    with ``bpp = Σ −log₂ p / (B·H·W)`` over the likelihoods of ``y`` and ``z``. Computed in float32
    whatever dtype the model ran in (bf16 autocast).

    Args:
        lmbda: λ (HPCM's MSE models: 0.0018 … 0.0483; MS-SSIM models: 2.4 … 60.5).
        metric: ``"mse"`` or ``"ms-ssim"``.

    Shape:
        ``output = {"x_hat": [B, 3, H, W], "likelihoods": {...}}``, ``target: [B, 3, H, W]``; for
        MS-SSIM both H and W must be at least 161.
    """

    def __init__(self, lmbda: float, metric: str = "mse") -> None:
        super().__init__()
        if not (isinstance(lmbda, int | float) and math.isfinite(lmbda) and lmbda > 0):
            raise ValueError(f"expected lmbda to be a finite number > 0, got {lmbda!r}")
        if metric not in ("mse", "ms-ssim"):
            raise ValueError(f"expected metric 'mse' or 'ms-ssim', got {metric!r}")
        self.lmbda = float(lmbda)
        self.metric = metric

    def forward(
        self, output: Mapping[str, Any], target: torch.Tensor, num_pixels: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Loss terms: ``loss``, ``bpp``, ``y_bpp``, ``z_bpp``, ``mse``, ``psnr`` and, for the
        MS-SSIM metric, ``ms_ssim``; all scalars.

        Args:
            output: the model's ``forward`` result.
            target: the original images.
            num_pixels: pixels the rate is spread over (default ``B·H·W`` of ``target``; pass the
                unpadded count when the input was padded).
        """
        B, _, H, W = target.shape
        pixels = num_pixels if num_pixels is not None else B * H * W
        rates = {
            name: torch.log2(lik.float()).sum().neg() / pixels
            for name, lik in output["likelihoods"].items()
        }
        x_hat = output["x_hat"].float()
        mse = F.mse_loss(x_hat, target.float())
        out = {
            "bpp": sum(rates.values()),
            "y_bpp": rates.get("y", torch.zeros((), device=target.device)),
            "z_bpp": rates.get("z", torch.zeros((), device=target.device)),
            "mse": mse,
            "psnr": -10 * torch.log10(mse.detach().clamp_min(1e-20)),
        }
        if self.metric == "mse":
            out["loss"] = self.lmbda * 255**2 * mse + out["bpp"]
        else:
            if min(H, W) < MS_SSIM_MIN_SIDE:
                raise ValueError(
                    f"MS-SSIM (5 scales, 11-tap window) needs images of at least "
                    f"{MS_SSIM_MIN_SIDE}x{MS_SSIM_MIN_SIDE} pixels, got {H}x{W}; use larger "
                    "patches (e.g. --patch-size 256)"
                )
            from pytorch_msssim import ms_ssim

            value = ms_ssim(x_hat, target.float(), data_range=1.0)
            out["ms_ssim"] = value
            out["loss"] = self.lmbda * (1 - value) + out["bpp"]
        return out
