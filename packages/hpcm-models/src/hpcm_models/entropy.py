"""The generalized Gaussian entropy model of HPCM and its rANS tables.

HPCM codes every latent with a zero-mean generalized Gaussian of shape β = 1.5 (Zhang et al.,
"On Generalized Gaussian Models for Learned Image Compression", 2024), discretized on the integer
grid:

    p(x | α) = F((x + ½) / α) − F((x − ½) / α),
    F(u) = ½ (1 + sign(u) · P(1/β, |u|^β)),

with P the regularized lower incomplete gamma function, α the scale (bounded below by 0.12) and
p bounded below by 1e-9. Entropy coding uses CompressAI's rANS with one quantized CDF per entry of
a scale table, as CompressAI's ``GaussianConditional`` does for Gaussians.
"""

from __future__ import annotations

import math

import scipy.stats
import torch
from compressai._CXX import pmf_to_quantized_cdf
from compressai.ops import LowerBound
from torch import nn

__all__ = [
    "GeneralizedGaussian",
    "default_scale_table",
    "generalized_gaussian_cdf",
    "generalized_gaussian_cdf_reference",
]

# The scale table of the official test script: 60 log-spaced scales from 0.12 to 64.
SCALE_TABLE_MIN = 0.12
SCALE_TABLE_MAX = 64.0
SCALE_TABLE_LEVELS = 60


def default_scale_table(
    min_scale: float = SCALE_TABLE_MIN,
    max_scale: float = SCALE_TABLE_MAX,
    levels: int = SCALE_TABLE_LEVELS,
) -> torch.Tensor:
    """``exp(linspace(log min, log max, levels))``: the scales that get a quantized CDF."""
    return torch.exp(torch.linspace(math.log(min_scale), math.log(max_scale), levels))


class _GeneralizedGaussianCDF(torch.autograd.Function):
    """Standard generalized Gaussian CDF with the closed-form derivative (its density)."""

    @staticmethod
    def forward(ctx, beta: torch.Tensor, u: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # Same float operations, in the same order, as the official model (parity depends on it).
        power = torch.pow(torch.abs(u), beta)
        ctx.save_for_backward(beta, power)
        return (1 + torch.sign(u) * torch.special.gammainc(1 / beta, power)) / 2

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:  # type: ignore[override]
        beta, power = ctx.saved_tensors
        density = torch.exp(-power - torch.special.gammaln(1 / beta)) * beta / 2
        return None, grad * density


def generalized_gaussian_cdf(u: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """CDF of the standard (unit-scale) generalized Gaussian of shape ``beta``, elementwise.

    ``F(u) = ½ (1 + sign(u) · P(1/β, |u|^β))``. The gradient is the closed-form density
    ``β / (2Γ(1/β)) · exp(−|u|^β)`` (no gradient for ``beta``), which stays finite at ``u = 0``
    where differentiating through ``|u|^β`` would not.

    Args:
        u: standardized values, any shape.
        beta: shape parameter, a tensor broadcastable to ``u`` (``[1]`` in HPCM).
    """
    return _GeneralizedGaussianCDF.apply(beta, u)


def generalized_gaussian_cdf_reference(u: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """:func:`generalized_gaussian_cdf` through plain autograd (the reference for tests)."""
    return (1 + torch.sign(u) * torch.special.gammainc(1 / beta, torch.abs(u) ** beta)) / 2


class GeneralizedGaussian(nn.Module):
    """Discretized zero-mean generalized Gaussian likelihoods (the official ``GGM``).

    Buffers (saved in checkpoints): ``beta`` [1], ``scale_lower_bound.bound`` [1],
    ``likelihood_lower_bound.bound`` [1].

    Args:
        beta: shape parameter β (1.5 in HPCM; 2 is a Gaussian, 1 a Laplacian).
        scale_bound: lower bound on scales α.
        likelihood_bound: lower bound on returned likelihoods.
    """

    def __init__(
        self, beta: float = 1.5, scale_bound: float = 0.12, likelihood_bound: float = 1e-9
    ) -> None:
        super().__init__()
        self.scale_lower_bound = LowerBound(scale_bound)
        self.likelihood_lower_bound = LowerBound(likelihood_bound)
        self.register_buffer("beta", torch.tensor([float(beta)]))

    def forward(
        self, inputs: torch.Tensor, scales: torch.Tensor, means: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Likelihood of each element of ``inputs`` (broadcast against ``scales``/``means``).

        Args:
            inputs: values (integers when coding; noisy values when training).
            scales: scales α, broadcastable to ``inputs``.
            means: optional means subtracted first.

        Returns:
            likelihoods in ``[likelihood_bound, 1]``, the broadcast shape.
        """
        values = inputs - means if means is not None else inputs
        scales = self.scale_lower_bound(scales)
        upper = generalized_gaussian_cdf((values + 0.5) / scales, self.beta)
        lower = generalized_gaussian_cdf((values - 0.5) / scales, self.beta)
        return self.likelihood_lower_bound(upper - lower)

    @torch.no_grad()
    def quantized_cdfs(
        self, scales: torch.Tensor, tail_mass: float = 1e-6, precision: int = 16
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """rANS tables for the distributions of the given scales, CompressAI's layout.

        Each scale α gets a pmf over the integers ``[-c, c]`` with ``c = ceil(α · q)``, ``q`` the
        ``1 − tail_mass/2`` quantile of the unit distribution, plus one escape symbol that carries
        the tails; the pmf is quantized to ``precision`` bits by
        CompressAI's ``pmf_to_quantized_cdf``. Computed in float64.

        Args:
            scales: ``[S]`` scales (bounded below by the module's scale bound).
            tail_mass: probability left outside ``[-c, c]`` (coded by the escape symbol).
            precision: bits of the quantized CDFs (16 for CompressAI's rANS).

        Returns:
            ``(cdf, cdf_length, offset)``: int32 ``[S, L + 2]``, ``[S]`` and ``[S]``, where ``L`` is
            the longest pmf; row ``i`` holds ``cdf_length[i]`` valid entries and symbol ``s`` maps
            to CDF entry ``s - offset[i]``.
        """
        if scales.dim() != 1 or scales.numel() == 0:
            raise ValueError(f"expected scales of shape [S] with S >= 1, got {list(scales.shape)}")
        beta = float(self.beta.item())
        bound = float(self.scale_lower_bound.bound)
        scales64 = scales.detach().double().cpu().clamp_min(bound)
        multiplier = -float(scipy.stats.gennorm.ppf(tail_mass / 2, beta))
        center = torch.ceil(scales64 * multiplier).to(torch.int32)
        pmf_length = 2 * center + 1
        max_length = int(pmf_length.max())

        samples = torch.arange(max_length, dtype=torch.float64) - center[:, None].double()
        beta64 = torch.tensor([beta], dtype=torch.float64)
        upper = generalized_gaussian_cdf_reference((samples + 0.5) / scales64[:, None], beta64)
        lower = generalized_gaussian_cdf_reference((samples - 0.5) / scales64[:, None], beta64)
        pmf = upper - lower
        tail = lower[:, 0] + (1 - upper.gather(1, (pmf_length - 1).long()[:, None])[:, 0])

        cdf = torch.zeros(len(scales64), max_length + 2, dtype=torch.int32)
        for i in range(len(scales64)):
            n = int(pmf_length[i])
            row = pmf_to_quantized_cdf([*pmf[i, :n].tolist(), float(tail[i])], precision)
            cdf[i, : len(row)] = torch.tensor(row, dtype=torch.int32)
        device = scales.device
        return cdf.to(device), (pmf_length + 2).to(device), (-center).to(device)

    def extra_repr(self) -> str:
        return f"beta={float(self.beta.item()):g}"
