"""Bjøntegaard deltas (pchip) against cases whose answer is known in closed form."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hpcm_models.cli import main
from hpcm_models.errors import ResultsFormatError
from hpcm_models.evaluation import (
    bd_psnr,
    bd_rate,
    load_curve,
    ms_ssim_db,
    psnr,
    reference_curves,
)

# HPCM-Base's published Kodak points: a realistic, curved RD curve.
RATES = [0.1211, 0.1757, 0.2729, 0.4125, 0.5898, 0.8209]
PSNRS = [29.4022, 30.7547, 32.4012, 34.2063, 36.0145, 37.7525]


@pytest.mark.parametrize("factor", [0.8, 0.95, 1.0, 1.3])
def test_scaled_rates_give_exactly_that_bd_rate(factor: float) -> None:
    # Same quality at `factor` times the rate everywhere: log-rate is shifted by log(factor), and
    # pchip is affine-equivariant, so the mean gap is exactly log(factor).
    scaled = [r * factor for r in RATES]
    assert bd_rate(RATES, PSNRS, scaled, PSNRS) == pytest.approx(100 * (factor - 1), abs=1e-9)
    assert bd_rate(scaled, PSNRS, RATES, PSNRS) == pytest.approx(100 * (1 / factor - 1), abs=1e-9)


@pytest.mark.parametrize("delta", [-0.7, 0.0, 0.25])
def test_shifted_quality_gives_exactly_that_bd_psnr(delta: float) -> None:
    shifted = [q + delta for q in PSNRS]
    assert bd_psnr(RATES, PSNRS, RATES, shifted) == pytest.approx(delta, abs=1e-12)


def test_crossing_lines_in_log_rate_match_the_closed_form() -> None:
    # A: q = 10 + 5·ln R, B: q = 8 + 6·ln R. pchip reproduces straight lines, so the deltas are the
    # means of linear functions over the overlaps, i.e. their values at the midpoints.
    lr_a, lr_b = np.array([-2.0, -1.0, 0.0, 1.0]), np.array([-1.5, -0.5, 0.5, 1.5])
    q_a, q_b = 10 + 5 * lr_a, 8 + 6 * lr_b
    rates_a, rates_b = np.exp(lr_a), np.exp(lr_b)
    # Quality overlap [0, 15]; ln R_B(q) − ln R_A(q) = (q − 8)/6 − (q − 10)/5 at q = 7.5.
    gap = (7.5 - 8) / 6 - (7.5 - 10) / 5
    assert bd_rate(rates_a, q_a, rates_b, q_b) == pytest.approx(100 * math.expm1(gap), rel=1e-12)
    # Log-rate overlap [-1.5, 1]; q_B − q_A = −2 + ln R at ln R = −0.25.
    assert bd_psnr(rates_a, q_a, rates_b, q_b) == pytest.approx(-2.25, rel=1e-12)


def test_point_order_does_not_matter() -> None:
    rng = np.random.default_rng(0)
    order = rng.permutation(len(RATES))
    better = [q + 0.1 * (1 + i) for i, q in enumerate(PSNRS)]
    expected = bd_rate(RATES, PSNRS, RATES, better)
    assert expected < 0  # higher quality at the same rates: fewer bits at the same quality
    shuffled = bd_rate(np.take(RATES, order), np.take(PSNRS, order), RATES, better)
    assert shuffled == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([0.1], [30.0], [0.1, 0.2], [30.0, 31.0]), "at least 2 points"),
        (([0.1, 0.2], [30.0, 31.0], [0.3, 0.4], [32.0, 33.0]), "do not overlap"),
        (([0.1, -0.2], [30.0, 31.0], [0.1, 0.2], [30.0, 31.0]), "positive rates"),
        (([0.1, 0.2], [30.0, 30.0], [0.1, 0.2], [30.0, 31.0]), "distinct values"),
        (([0.1, 0.2], [30.0, float("nan")], [0.1, 0.2], [30.0, 31.0]), "finite values"),
    ],
)
def test_bad_curves_are_rejected(args, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bd_rate(*args)


def test_metrics() -> None:
    a = np.zeros((4, 4, 3), dtype=np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255  # one error of 255 in 48 samples: MSE = 255² / 48
    assert psnr(a, b) == pytest.approx(10 * math.log10(48))
    assert psnr(a, a) == math.inf
    # Tensors are channels-first, floats in [0, 1]: the same images give the same PSNR.
    ta, tb = (torch.from_numpy(v).permute(2, 0, 1).float() / 255 for v in (a, b))
    assert psnr(ta, tb) == pytest.approx(10 * math.log10(48))
    assert ms_ssim_db(0.99) == pytest.approx(20.0)


def test_bundled_references_and_results_files(tmp_path: Path) -> None:
    base, large = reference_curves("kodak", "psnr")
    assert base.rates == tuple(RATES)
    assert base.quality == tuple(PSNRS)
    assert load_curve("ref:HPCM-Large:kodak").name == large.name
    assert len(reference_curves("tecnick", "ms-ssim")) == 2
    with pytest.raises(ResultsFormatError, match="no bundled reference"):
        load_curve("ref:HPCM-Huge:kodak")
    path = tmp_path / "r.json"
    path.write_text(
        json.dumps({"name": "x", "results": {"bpp": [0.1, 0.2], "ms-ssim-rgb": [0.9, 0.99]}})
    )
    curve = load_curve(path, "ms-ssim")
    assert curve.quality == pytest.approx((10.0, 20.0))
    with pytest.raises(ResultsFormatError, match="expected results with 'bpp' and 'psnr-rgb'"):
        load_curve(path, "psnr")


def test_cli_compares_against_the_published_curves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "mine.json"
    mine.write_text(
        json.dumps(
            {"name": "mine", "results": {"bpp": [r * 0.9 for r in RATES], "psnr-rgb": PSNRS}}
        )
    )
    out = tmp_path / "bd.json"
    assert (
        main(
            [
                "bd-rate",
                "ref:HPCM-Base:kodak",
                str(mine),
                "ref:HPCM-Large:kodak",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "-10.00%" in text
    results = json.loads(out.read_text())["results"]
    assert results[0]["bd_rate_percent"] == pytest.approx(-10.0)
    # The published Large model saves bits over Base (-4.3 % from its published Kodak points).
    assert -6 < results[1]["bd_rate_percent"] < 0
    assert results[1]["bd_psnr_db"] > 0


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bd-rate", "ref:HPCM-Base:kodak", str(tmp_path / "missing.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"hpcm bd-rate: error: results file '{tmp_path / 'missing.json'}' does not exist"
    far = tmp_path / "far.json"
    far.write_text(json.dumps({"results": {"bpp": [2.0, 3.0], "psnr-rgb": [45.0, 48.0]}}))
    assert main(["bd-rate", "ref:HPCM-Base:kodak", str(far)]) == 1
    assert "do not overlap" in capsys.readouterr().err
