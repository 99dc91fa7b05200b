"""The generalized Gaussian entropy model and its rANS tables."""

from __future__ import annotations

import math

import pytest
import torch
from compressai.ans import BufferedRansEncoder, RansDecoder

from hpcm_models import GeneralizedGaussian, default_scale_table
from hpcm_models.entropy import generalized_gaussian_cdf, generalized_gaussian_cdf_reference


def test_cdf_value_and_gradient_match_autograd_reference() -> None:
    torch.manual_seed(0)
    # Away from 0, where plain autograd through |u|^β is finite.
    u = torch.randn(500, dtype=torch.float64) * 3
    u = (u + 0.1 * u.sign()).requires_grad_()
    beta = torch.tensor([1.5], dtype=torch.float64)
    fast = generalized_gaussian_cdf(u, beta)
    ref = generalized_gaussian_cdf_reference(u, beta)
    torch.testing.assert_close(fast, ref)
    (g_fast,) = torch.autograd.grad(fast.sum(), u)
    (g_ref,) = torch.autograd.grad(ref.sum(), u)
    torch.testing.assert_close(g_fast, g_ref)
    # …and at 0 the closed form still gives the density there.
    zero = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    (g0,) = torch.autograd.grad(generalized_gaussian_cdf(zero, beta).sum(), zero)
    assert g0.item() == pytest.approx(1.5 / (2 * math.gamma(1 / 1.5)))
    assert torch.autograd.gradcheck(lambda t: generalized_gaussian_cdf(t, beta), (u[:20],))


def test_cdf_special_cases() -> None:
    u = torch.linspace(-4, 4, 81, dtype=torch.float64)
    # β = 2: a Gaussian of standard deviation 1/√2; β = 1: a Laplacian.
    gauss = generalized_gaussian_cdf(u, torch.tensor([2.0], dtype=torch.float64))
    torch.testing.assert_close(gauss, torch.special.ndtr(u * math.sqrt(2)))
    laplace = generalized_gaussian_cdf(u, torch.tensor([1.0], dtype=torch.float64))
    torch.testing.assert_close(laplace, 0.5 + 0.5 * u.sign() * (1 - torch.exp(-u.abs())))


def test_likelihoods_form_a_distribution_and_are_bounded() -> None:
    model = GeneralizedGaussian()
    assert model.beta.item() == 1.5
    assert model.scale_lower_bound.bound.item() == pytest.approx(0.12)
    assert model.likelihood_lower_bound.bound.item() == pytest.approx(1e-9)
    values = torch.arange(-400, 401, dtype=torch.float32)[:, None]
    for scale in (0.01, 0.12, 1.0, 30.0):
        lik = model(values, torch.full((1, 1), scale))
        assert lik.sum().item() == pytest.approx(1.0, abs=1e-4)
    # Scales below 0.12 act as 0.12; far tails hit the 1e-9 floor.
    torch.testing.assert_close(
        model(values, torch.full((1, 1), 0.01)), model(values, torch.full((1, 1), 0.12))
    )
    assert model(torch.tensor([50.0]), torch.tensor([0.12])).item() == pytest.approx(1e-9)
    # Means are subtracted first.
    torch.testing.assert_close(
        model(values + 3, torch.ones(1, 1), torch.full((1, 1), 3.0)),
        model(values, torch.ones(1, 1)),
    )


def test_quantized_cdfs_are_valid_and_code_losslessly() -> None:
    model = GeneralizedGaussian()
    scales = default_scale_table()
    assert scales.shape == (60,)
    assert scales[0].item() == pytest.approx(0.12)
    assert scales[-1].item() == pytest.approx(64)
    cdf, length, offset = model.quantized_cdfs(scales)
    assert cdf.dtype == length.dtype == offset.dtype == torch.int32
    assert cdf.shape == (60, int(length.max()))
    assert torch.equal(offset, -(length - 3) // 2)
    for row, n in zip(cdf, length.tolist(), strict=True):
        assert row[0] == 0
        assert row[n - 1] == 1 << 16
        assert bool((row[1:n].diff() > 0).all())  # every symbol, escape included, is codable

    # Samples far outside the tables go through the escape path and still come back.
    symbols = torch.randint(-3000, 3000, (4000,)).tolist()
    indexes = torch.randint(0, 60, (4000,)).tolist()
    tables = (cdf.tolist(), length.tolist(), offset.tolist())
    encoder = BufferedRansEncoder()
    encoder.encode_with_indexes(symbols, indexes, *tables)
    decoder = RansDecoder()
    decoder.set_stream(encoder.flush())
    assert decoder.decode_stream(indexes, *tables) == symbols


def test_quantized_pmf_approximates_the_model() -> None:
    model = GeneralizedGaussian()
    cdf, length, offset = model.quantized_cdfs(torch.tensor([2.0]))
    n = int(length[0])
    pmf = cdf[0, 1 : n - 1].diff(prepend=cdf[0, :1]).double() / (1 << 16)
    values = torch.arange(n - 2, dtype=torch.float32) + offset[0].item()
    expected = model(values, torch.tensor([2.0])).double()
    assert (pmf - expected).abs().max().item() < 1e-3


def test_quantized_cdfs_reject_bad_scales() -> None:
    with pytest.raises(ValueError, match=r"scales of shape \[S\]"):
        GeneralizedGaussian().quantized_cdfs(torch.ones(2, 2))
