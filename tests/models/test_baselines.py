"""Classic-codec baselines: real Pillow files, the RD frontier, matched-rate interpolation."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

import hpcm_models
from hpcm_models.baselines import (
    CLASSIC_CODECS,
    ClassicResult,
    classic_curve,
    classic_document,
    compare_matched_rate,
    comparison_document,
    decode_classic,
    encode_classic,
    evaluate_classic,
    evaluate_classic_image,
    format_comparison_table,
    interpolate_at_rate,
    match_rate,
    rd_frontier,
)
from hpcm_models.errors import ImageError
from hpcm_models.evaluation import ImageResult, RDCurve, load_curve

DATA = Path(hpcm_models.__file__).parent / "data"

# A synthetic sweep: quality 25 costs more bits than quality 30 for a worse image (a
# non-monotonic step), and qualities 1 and 2 make the same file.
RATES = [0.10, 0.10, 0.20, 0.45, 0.40, 0.80]
VALUES = [24.0, 24.0, 28.0, 30.0, 31.0, 34.0]
QUALITIES = [1, 2, 20, 25, 30, 40]


def _numpy_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


# ---------------------------------------------------------------------------- interpolation


def test_frontier_drops_dominated_and_repeated_points() -> None:
    # Index 1 repeats index 0; index 3 (quality 25) is beaten by index 4 (quality 30).
    assert rd_frontier(RATES, VALUES) == [0, 2, 4, 5]
    # Same rate, better value: the better one is kept whatever the order.
    assert rd_frontier([0.5, 0.5], [30.0, 31.0]) == [1]
    assert rd_frontier([1.0, 2.0, 3.0], [30.0, math.nan, math.inf]) == [0]
    with pytest.raises(ValueError, match="as many rates as values"):
        rd_frontier([1.0], [1.0, 2.0])


@pytest.mark.parametrize(
    ("bpp", "value", "quality", "bracket"),
    [
        (0.10, 24.0, 1.0, (1, 1)),  # the lowest point, exactly
        (0.15, 26.0, 10.5, (1, 20)),  # halfway between qualities 1 and 20
        (0.30, 29.5, 25.0, (20, 30)),  # quality 25's point is dominated: 20 and 30 bracket
        (0.40, 31.0, 30.0, (30, 30)),
        (0.50, 31.75, 32.5, (30, 40)),
        (0.80, 34.0, 40.0, (40, 40)),  # the highest point, exactly
    ],
)
def test_interpolation_is_linear_in_bpp_between_the_bracketing_qualities(
    bpp: float, value: float, quality: float, bracket: tuple[int, int]
) -> None:
    match = interpolate_at_rate(RATES, VALUES, QUALITIES, bpp)
    assert match.value == pytest.approx(value, abs=1e-12)
    assert match.quality == pytest.approx(quality, abs=1e-12)
    assert match.bracket == bracket
    assert match.note is None
    # The order of the sweep does not matter.
    order = [5, 3, 0, 4, 2, 1]
    shuffled = interpolate_at_rate(
        [RATES[i] for i in order], [VALUES[i] for i in order], [QUALITIES[i] for i in order], bpp
    )
    assert shuffled == match


@pytest.mark.parametrize(
    ("bpp", "note"),
    [
        (0.0999, "not reachable: below the lowest rate, 0.1 bpp (quality 1)"),
        (0.8001, "not reachable: above the highest rate, 0.8 bpp (quality 40)"),
        (5.0, "not reachable: above the highest rate, 0.8 bpp (quality 40)"),
    ],
)
def test_rates_outside_the_sweep_are_not_reachable(bpp: float, note: str) -> None:
    match = interpolate_at_rate(RATES, VALUES, QUALITIES, bpp)
    assert match.value is None
    assert match.quality is None
    assert match.bracket is None
    assert match.note == note


def test_interpolation_input_errors() -> None:
    with pytest.raises(ValueError, match="one length"):
        interpolate_at_rate([0.1, 0.2], [30.0, 31.0], [1], 0.15)
    with pytest.raises(ValueError, match="finite target rate"):
        interpolate_at_rate(RATES, VALUES, QUALITIES, math.nan)
    assert interpolate_at_rate([], [], [], 0.5).note == "no finite sweep point"


def _sweep(image: str, rates: list[float], values: list[float], qualities: list[int]):
    return tuple(
        ClassicResult(image, "jpeg", q, 10, 10, round(r * 100 / 8), r, v, None, None, 0.0, 0.0)
        for r, v, q in zip(rates, values, qualities, strict=True)
    )


def _learned(image: str, bpp: float, bpp_file: float, psnr: float | None) -> ImageResult:
    return ImageResult(image, 10, 10, 0, 0, bpp, bpp_file, psnr, None, None, 0.0, 0.0, True)


def test_match_rate_reads_a_sweep() -> None:
    sweep = _sweep("a", RATES, VALUES, QUALITIES)
    assert match_rate(sweep, 0.30).value == pytest.approx(29.5)
    assert match_rate(sweep, 0.30, "ms-ssim").note == "no finite sweep point"  # not computed
    with pytest.raises(ValueError, match="metric"):
        match_rate(sweep, 0.3, "ssim")


# ---------------------------------------------------------------------------- comparisons


def _comparison_inputs():
    sweeps = [
        _sweep("a", [0.2, 0.4, 0.8], [28.0, 31.0, 34.0], [10, 30, 50]),
        _sweep("b", [0.3, 0.6, 1.2], [30.0, 33.0, 36.0], [10, 30, 50]),
    ]
    learned = [_learned("a", 0.25, 0.30, 31.0), _learned("b", 0.20, 0.45, 33.5)]
    return learned, sweeps


def test_matched_rate_per_image_and_mean() -> None:
    learned, sweeps = _comparison_inputs()
    row = compare_matched_rate("ckpt", learned, sweeps)  # rate="file": bpp_file
    # a at 0.30 bpp: 28 + 0.5·3 = 29.5 dB, quality 20; b at 0.45 bpp: 31.5 dB, quality 20.
    assert [m.classic.value for m in row.per_image] == pytest.approx([29.5, 31.5])
    assert [m.delta_psnr for m in row.per_image] == pytest.approx([1.5, 2.0])
    assert (row.images, row.compared) == (2, 2)
    assert row.bpp == pytest.approx(0.375)
    assert row.psnr == pytest.approx(32.25)
    assert row.classic_psnr == pytest.approx(30.5)
    assert row.classic_quality == pytest.approx(20.0)
    assert row.delta_psnr == pytest.approx(1.75)
    assert (row.codec, row.rate, row.point) == ("jpeg", "file", "ckpt")

    # rate="streams": a at 0.25 bpp (28.75 dB, quality 15); b at 0.20 bpp is below JPEG's
    # lowest rate.
    row = compare_matched_rate("ckpt", learned, sweeps, rate="streams")
    assert (row.images, row.compared) == (2, 1)
    assert row.delta_psnr == pytest.approx(31.0 - 28.75)
    assert row.psnr == pytest.approx(32.25)  # the learned mean stays over every image
    assert row.per_image[1].delta_psnr is None
    assert row.per_image[1].classic.note.startswith("not reachable: below the lowest rate")

    table = format_comparison_table({"jpeg": [row]})
    lines = table.splitlines()
    assert lines[0] == "| rate point | bpp | PSNR | JPEG q | JPEG PSNR | Δ JPEG (dB) |"
    assert lines[2] == "| ckpt | 0.2250 | 32.25 | 15.0 | 28.75* | +2.25* |"
    assert "entropy-coded streams" in table
    assert "* ckpt, JPEG: 1 of 2 images compared (1 not reachable: below the lowest rate)" in table


def test_matched_rate_skips_images_the_learned_decoder_refused() -> None:
    learned, sweeps = _comparison_inputs()
    learned[0] = _learned("a", 0.25, 0.30, None)
    row = compare_matched_rate("ckpt", learned, sweeps)
    assert row.compared == 1
    assert row.per_image[0].classic.note == "the learned decoder refused the file"
    assert row.delta_psnr == pytest.approx(2.0)
    assert "n/a" in format_comparison_table(
        {"jpeg": [compare_matched_rate("c", learned[:1], sweeps[:1])]}
    )


def test_matched_rate_input_errors() -> None:
    learned, sweeps = _comparison_inputs()
    with pytest.raises(ValueError, match="rate 'file' or 'streams'"):
        compare_matched_rate("c", learned, sweeps, rate="header")
    with pytest.raises(ValueError, match="one sweep per image"):
        compare_matched_rate("c", learned, sweeps[:1])
    with pytest.raises(ValueError, match="another image"):
        compare_matched_rate("c", learned[::-1], sweeps)


def test_documents_keep_compressai_layout_and_the_dominated_points(tmp_path: Path) -> None:
    sweeps = [_sweep(name, RATES, VALUES, QUALITIES) for name in ("a", "b")]
    doc = classic_document("jpeg", sweeps, "synthetic")
    assert doc["points"] == ["quality 1", "quality 20", "quality 30", "quality 40"]
    assert doc["results"]["bpp"] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert doc["results"]["bpp-file"] == doc["results"]["bpp"]  # the whole file
    assert doc["results"]["psnr-rgb"] == pytest.approx([24.0, 28.0, 31.0, 34.0])
    assert doc["results"]["ms-ssim-rgb"] == [None] * 4
    assert doc["dominated"]["points"] == ["quality 2", "quality 25"]
    assert doc["dominated"]["results"]["bpp"] == pytest.approx([0.1, 0.45])
    assert [len(p) for p in doc["per_image"]] == [2] * 4
    assert [len(p) for p in doc["dominated"]["per_image"]] == [2] * 2
    assert doc["per_image"][1][0]["quality"] == 20

    path = tmp_path / "jpeg.json"
    path.write_text(json.dumps(doc))
    curve = load_curve(path)
    assert curve == classic_curve(doc)
    assert curve.name == "JPEG (Pillow)"
    assert classic_curve(doc, "ms-ssim") is None

    learned, comparison_sweeps = _comparison_inputs()
    rows = {"jpeg": [compare_matched_rate("c", learned, comparison_sweeps)]}
    one = comparison_document(rows, RDCurve("x", (0.3,), (31.0,)), {"jpeg": doc})
    assert one["rate"] == "file"
    entry = one["codecs"]["jpeg"]
    assert entry["rows"][0]["delta_psnr"] == pytest.approx(1.75)
    assert entry["rows"][0]["per_image"][0]["classic"]["bracket"] == (10, 30)
    assert entry["bd_rate_percent"] is None
    assert entry["note"] == "needs 2 or more rate points"
    json.dumps(one)  # serializable as it is

    # The curve shifted up by 1 dB at the same rates: BD-PSNR is exactly +1 dB.
    shifted = RDCurve("x", curve.rates, tuple(q + 1 for q in curve.quality))
    two = comparison_document(rows, shifted, {"jpeg": doc})["codecs"]["jpeg"]
    assert two["bd_psnr_db"] == pytest.approx(1.0)
    assert two["bd_rate_percent"] < 0

    with pytest.raises(ValueError, match="same qualities"):
        classic_document("jpeg", [sweeps[0], sweeps[1][:3]])


# ---------------------------------------------------------------------------- real files


def _rgb(name: str) -> np.ndarray:
    with Image.open(DATA / name) as image:
        return np.asarray(image.convert("RGB"))


def test_jpeg_results_are_those_of_the_pillow_file() -> None:
    with Image.open(DATA / "coffee.png") as image:  # 384x256 RGB
        image.load()
    rgb = np.asarray(image)
    results = evaluate_classic_image(image, "jpeg", [1, 50, 95, 100], name="coffee")
    assert [r.quality for r in results] == [1, 50, 95, 100]
    for r in results:
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, "JPEG", quality=r.quality, subsampling=2, optimize=True)
        data = buffer.getvalue()
        assert encode_classic(rgb, "jpeg", r.quality) == data
        assert r.bytes_file == len(data)
        assert r.bpp == 8 * len(data) / (384 * 256)
        with Image.open(io.BytesIO(data)) as decoded:
            assert JpegImagePlugin.get_sampling(decoded) == 2  # 4:2:0
            assert "progressive" not in decoded.info
            assert b"\xff\xc0" in data  # SOF0: baseline
            pixels = np.asarray(decoded.convert("RGB"))
        assert r.psnr == pytest.approx(_numpy_psnr(rgb, pixels), abs=1e-9)
        assert (r.image, r.codec, r.width, r.height) == ("coffee", "jpeg", 384, 256)
        assert r.ms_ssim is None
    assert [r.bpp for r in results] == sorted(r.bpp for r in results)
    assert [r.psnr for r in results] == sorted(r.psnr for r in results)


def test_webp_results_are_those_of_the_pillow_file() -> None:
    with Image.open(DATA / "chelsea.png") as image:  # 301x200 RGB
        image.load()
    rgb = np.asarray(image)
    (r,) = evaluate_classic_image(image, "webp", [0, 75], name="chelsea", ms_ssim=True)[1:]
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "WEBP", quality=75, method=6, lossless=False)
    data = buffer.getvalue()
    assert data[:4] == b"RIFF"
    assert data[8:16] == b"WEBPVP8 "  # lossy VP8, no extra chunks
    assert r.bytes_file == len(data)
    assert r.bpp == 8 * len(data) / (301 * 200)
    assert r.psnr == pytest.approx(_numpy_psnr(rgb, decode_classic(data, "webp")), abs=1e-9)
    assert 0.9 < r.ms_ssim < 1
    assert r.ms_ssim_db == pytest.approx(-10 * math.log10(1 - r.ms_ssim))


def test_images_are_coded_as_the_rgb_the_learned_codec_sees(tmp_path: Path) -> None:
    gray = DATA / "camera.png"  # 192x192 grayscale: coded as RGB, like the learned codec does
    (r,) = evaluate_classic([gray], "jpeg", [50, 60])[0][:1]
    rgb = _rgb("camera.png")
    assert r.bytes_file == len(encode_classic(rgb, "jpeg", 50))
    # An alpha plane is left out (the learned codec stores it losslessly, apart from its rate).
    with Image.open(DATA / "rocket.png") as image:
        rgba = image.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(tmp_path / "rgba.png")
    (r,) = evaluate_classic([tmp_path / "rgba.png"], "webp", [10, 20])[0][:1]
    assert r.bytes_file == len(encode_classic(_rgb("rocket.png"), "webp", 10))


def test_classic_input_errors() -> None:
    image = Image.new("I;16", (32, 32))
    with pytest.raises(ImageError, match="more than 8 bits"):
        evaluate_classic_image(image, "jpeg", [10, 20])
    rgb = Image.new("RGB", (32, 32))
    with pytest.raises(ValueError, match="classic codec"):
        evaluate_classic_image(rgb, "gif", [10, 20])
    with pytest.raises(ValueError, match="at least 2 distinct integer qualities"):
        evaluate_classic_image(rgb, "jpeg", [10, 10])
    with pytest.raises(ValueError, match=r"0\.\.100"):
        evaluate_classic_image(rgb, "jpeg", [10, 101])
    with pytest.raises(ValueError, match=r"uint8 array \[H, W, 3\]"):
        encode_classic(np.zeros((4, 4), np.uint8), "jpeg", 50)


def test_default_sweeps() -> None:
    assert CLASSIC_CODECS["jpeg"].qualities == tuple(range(1, 101))
    assert CLASSIC_CODECS["webp"].qualities == tuple(range(0, 101))
    assert "subsampling=2" in CLASSIC_CODECS["jpeg"].encoder()
    assert "method=6" in CLASSIC_CODECS["webp"].encoder()
