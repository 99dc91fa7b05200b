"""The generalized Gaussian entropy model and its rANS tables."""

from __future__ import annotations

import math
import os
import subprocess
import sys

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


# The default table, the config hash of a model loaded from argv[1], and the float32
# exp(linspace(...)) the table used to be computed with, as a process that may run other ATen
# kernels (ATEN_CPU_CAPABILITY) prints them.
_TABLE_AND_HASH = """
import math, sys, torch
from hpcm_models import HPCM_MICRO, get_model
from hpcm_models.entropy import default_scale_table
from hpcm_models.hashes import config_hash
model = get_model("hpcm-base", M=16, N=8, config=HPCM_MICRO)
model.load_state_dict(torch.load(sys.argv[1], weights_only=True))
model.update(force=True)
print(default_scale_table().view(torch.int32).tolist(), config_hash(model, "hpcm-base").hex())
print(torch.exp(torch.linspace(math.log(0.12), math.log(64.0), 60)).view(torch.int32).tolist())
"""


def _run_with(capability: str, state_path) -> list[str]:
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability, PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, "-c", _TABLE_AND_HASH, str(state_path)],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    return result.stdout.splitlines()


@pytest.mark.slow  # fresh Python processes (importing torch) with other ATen kernels
def test_default_scale_table_and_config_hash_are_the_same_on_every_cpu(tmp_path) -> None:
    """The default table is a constant, so ATen's scalar kernels (ATEN_CPU_CAPABILITY=default),
    whose float32 exp(linspace(...)) rounds differently, give the same table, rANS tables and
    config hash. The constant is what ATen's AVX2 kernels computed (most x86-64 CPUs), so files
    made with the computed table there keep their config hash."""
    from hpcm_models import HPCM_MICRO, get_model
    from hpcm_models.hashes import config_hash

    model = get_model("hpcm-base", M=16, N=8, config=HPCM_MICRO)
    torch.save(model.state_dict(), tmp_path / "state.pt")
    model.update(force=True)
    table = str(default_scale_table().view(torch.int32).tolist())
    here = f"{table} {config_hash(model, 'hpcm-base').hex()}"
    table_and_hash, computed = _run_with("default", tmp_path / "state.pt")
    assert table_and_hash == here
    assert computed != table  # what the scalar kernels compute: not the table
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        table_and_hash, computed = _run_with("avx2", tmp_path / "state.pt")
        assert table_and_hash == here
        assert computed == table


def test_other_scale_tables_are_computed_in_float64() -> None:
    other = default_scale_table(0.11, 64.0, 60)
    low, high = math.log(0.11), math.log(64.0)
    expected = [math.exp(low + (high - low) * i / 59) for i in range(60)]
    assert torch.equal(other, torch.tensor(expected, dtype=torch.float32))
    with pytest.raises(ValueError, match="0 < min < max"):
        default_scale_table(2.0, 1.0, 60)


def test_tables_are_bounded_before_they_are_allocated() -> None:
    ggm = GeneralizedGaussian()
    with pytest.raises(ValueError, match="1 <= S <= 4096"):
        ggm.quantized_cdfs(torch.linspace(0.2, 2.0, 5000))
    with pytest.raises(ValueError, match="would need tables of 2 x"):
        ggm.quantized_cdfs(torch.tensor([1.0, 1e12]))
    with pytest.raises(ValueError, match="would need tables"):
        ggm.quantized_cdfs(torch.tensor([1.0, float("nan")]))
    cdf, _, _ = ggm.quantized_cdfs(torch.tensor([0.5, 300.0]))  # 2 x 3259 entries: fine
    assert cdf.shape[0] == 2
