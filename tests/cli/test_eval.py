"""`hpcm eval`: actual-bitstream rate points in CompressAI's results format, plots, errors."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hpcm_models
from hpcm_models.checkpoints import load_checkpoint, random_model
from hpcm_models.cli import main
from hpcm_models.codec import ImageCodec
from hpcm_models.evaluation import evaluate_image, load_curve

DATA = Path(hpcm_models.__file__).parent / "data"
TINY_KWARGS = {
    "M": 32,
    "N": 16,
    "config": {
        "transform_channels": [16, 32, 64],
        "g_a_depths": [1, 1, 1],
        "g_s_depths": [1, 1, 1],
    },
}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval_images")
    for name in ("rocket.png", "camera.png"):  # 171x256 RGB, 192x192 grayscale
        shutil.copy(DATA / name, root / name)
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two raw state dicts (the authors' checkpoint layout), i.e. two rate points."""
    root = tmp_path_factory.mktemp("ckpts")
    paths = []
    for seed in (1, 2):
        model = random_model("hpcm-base", seed=seed, **TINY_KWARGS)
        path = root / f"base_{seed}.pth.tar"
        torch.save(model.state_dict(), path)
        paths.append(path)
    return paths


def test_eval_writes_compressai_results_with_actual_bits(
    images: Path, checkpoints: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, plot = tmp_path / "results.json", tmp_path / "rd.png"
    args = [
        "eval", "--model", "hpcm-base", "--model-kwargs", json.dumps(TINY_KWARGS),
        "--checkpoint", *map(str, checkpoints), "--dataset", str(images),
        "--output", str(out), "--plot", str(plot), "--name", "tiny",
    ]  # fmt: skip
    assert main(args) == 0
    doc = json.loads(out.read_text())
    assert doc["name"] == "tiny"
    assert doc["model"] == "hpcm-base"
    assert doc["points"] == [str(c) for c in checkpoints]
    # Each point names its weights by the hash .hpcm headers record.
    assert doc["weights_hashes"] == [
        ImageCodec(load_checkpoint(c, "hpcm-base", model_kwargs=TINY_KWARGS)).weights_hash.hex()
        for c in checkpoints
    ]
    assert len(set(doc["weights_hashes"])) == 2
    results = doc["results"]
    for key in ("bpp", "psnr-rgb", "ms-ssim-rgb", "ms-ssim-rgb-db", "encoding_time",
                "decoding_time", "bpp-file", "bit-exact"):  # fmt: skip
        assert len(results[key]) == 2, key
    assert results["bit-exact"] == [True, True]
    assert len(doc["per_image"]) == 2
    for point, mean_bpp in zip(doc["per_image"], results["bpp"], strict=True):
        assert sorted(r["image"] for r in point) == ["camera.png", "rocket.png"]
        for r in point:
            assert r["bpp"] == pytest.approx(8 * r["bytes_streams"] / (r["width"] * r["height"]))
            assert r["bpp"] > 0
            assert r["bpp_file"] > r["bpp"]  # the header is counted in the file only
            assert math.isfinite(r["psnr"])
            assert 3 < r["psnr"] < 60
            assert 0 < r["ms_ssim"] <= 1
            assert r["encoding_time"] > 0
            assert r["decoding_time"] > 0
        assert mean_bpp == pytest.approx(sum(r["bpp"] for r in point) / 2)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "bit-exact: yes" in capsys.readouterr().out

    # The results feed straight into bd-rate.
    assert main(["bd-rate", str(out), str(out)]) == 0
    assert "+0.00%" in capsys.readouterr().out


def test_bits_are_the_bitstream_and_match_the_likelihoods() -> None:
    model = random_model("hpcm-base", seed=3, **TINY_KWARGS)
    codec = ImageCodec(model)
    with Image.open(DATA / "coffee.png") as image:  # 384x256: no padding
        image.load()
    result = evaluate_image(codec, image, "coffee")
    data = codec.encode(image)
    assert result.bytes_file == len(data)  # the file the codec writes, byte for byte
    assert result.bit_exact

    x = torch.from_numpy(np.asarray(image.convert("RGB")).copy())
    x = x.permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        likelihoods = model(x, training=False)["likelihoods"]
    estimate = sum(-torch.log2(v).sum().item() for v in likelihoods.values())
    # rANS with 16-bit tables codes within a few percent of the model's own estimate, plus the
    # flushed 64-bit coder state of each of the two streams.
    bits = 8 * result.bytes_streams
    assert 0.95 * estimate < bits < 1.05 * estimate + 2 * 64 + 64


def test_random_weights_without_a_plot_reference(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.json"
    args = [
        "eval", "--model", "hpcm-phase1", "--random-weights", "--model-kwargs",
        json.dumps(TINY_KWARGS), "--dataset", str(images), "--max-images", "1",
        "--output", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    doc = json.loads(out.read_text())
    assert "RANDOM WEIGHTS" in doc["description"]
    assert len(doc["per_image"][0]) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "hpcm-base", "--dataset", "/nonexistent"], "give one of --checkpoint"),
        (
            ["--model", "hpcm-base", "--random-weights", "--dataset", "/nonexistent"],
            "dataset directory '/nonexistent' does not exist",
        ),
        (["--random-weights", "--dataset", "."], "--random-weights needs --model"),
        (["--checkpoint", "/nonexistent.pt", "--dataset", str(DATA)], "does not exist"),
    ],
)
def test_errors_are_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("hpcm eval: error: ")
    assert message in err


# ---------------------------------------------------------------------------- --compare


@pytest.fixture
def coarse_sweeps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every third JPEG and every fourth WebP quality (the CLI's plumbing is what these tests
    check; tests/models/test_baselines.py checks the sweeps against Pillow's files)."""
    from hpcm_models.baselines import CLASSIC_CODECS

    for name, qualities in (("jpeg", (*range(1, 100, 3), 100)), ("webp", tuple(range(0, 101, 4)))):
        monkeypatch.setitem(
            CLASSIC_CODECS, name, dataclasses.replace(CLASSIC_CODECS[name], qualities=qualities)
        )


@pytest.fixture(scope="module")
def rate_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Random micro models whose analysis output is scaled up, so that they code at rates
    (about 1 and 2 bpp) that JPEG and WebP reach; their PSNR means nothing."""
    root = tmp_path_factory.mktemp("rate_ckpts")
    paths = []
    for gain in (10, 30):
        model = random_model("hpcm-base", seed=1, **TINY_KWARGS)
        with torch.no_grad():
            model.g_a.branch[-1].weight.mul_(gain)
        path = root / f"gain{gain}.pt"
        torch.save(model.state_dict(), path)
        paths.append(path)
    return paths


def _tiny_eval(checkpoints: list[Path], images: Path, *extra: str) -> list[str]:
    """``hpcm eval`` arguments for the micro model's checkpoints on ``images``."""
    kwargs = json.dumps(TINY_KWARGS)
    paths = [str(c) for c in checkpoints]
    return ["eval", "--model", "hpcm-base", "--model-kwargs", kwargs, "--checkpoint", *paths,
            "--dataset", str(images), *extra]  # fmt: skip


def _sweep_point(classic: dict, image: str, quality: int) -> dict:
    for group in (classic, classic["dominated"]):
        for point in group["per_image"]:
            for entry in point:
                if entry["image"] == image and entry["quality"] == quality:
                    return entry
    raise AssertionError(f"no sweep point for {image} at quality {quality}")


@pytest.mark.usefixtures("coarse_sweeps")
def test_compare_with_jpeg_and_webp_at_matched_rates(
    images: Path, rate_checkpoints: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, plot = tmp_path / "small.json", tmp_path / "rd.png"
    compare = ["--compare", "jpeg", "webp", "--output", str(out), "--plot", str(plot)]
    assert main(_tiny_eval(rate_checkpoints, images, *compare)) == 0
    printed = capsys.readouterr().out
    header = "| rate point | bpp | PSNR | JPEG q | JPEG PSNR | Δ JPEG (dB) | WebP q | WebP PSNR |"
    assert header in printed
    doc = json.loads(out.read_text())
    compare = doc["compare"]
    assert compare["rate"] == "file"
    assert list(compare["codecs"]) == ["jpeg", "webp"]
    learned = dict(zip(doc["points"], doc["per_image"], strict=True))
    for codec, entry in compare["codecs"].items():
        classic_path = tmp_path / f"small.{codec}.json"
        assert entry["curve_file"] == str(classic_path)
        classic = json.loads(classic_path.read_text())
        assert load_curve(classic_path).name == entry["name"]
        assert [row["point"] for row in entry["rows"]] == [str(c) for c in rate_checkpoints]
        for row in entry["rows"]:
            per_image = {r["image"]: r for r in learned[row["point"]]}
            assert row["bpp"] == pytest.approx(np.mean([r["bpp_file"] for r in per_image.values()]))
            deltas = []
            for match in row["per_image"]:
                mine = per_image[match["image"]]
                assert match["bpp"] == mine["bpp_file"]
                found = match["classic"]
                if found["value"] is None:
                    assert found["note"].startswith("not reachable")
                    continue
                # The classic PSNR is the straight line between the two bracketing sweep points.
                low, high = (_sweep_point(classic, match["image"], q) for q in found["bracket"])
                assert low["bpp"] <= match["bpp"] <= high["bpp"]
                t = (match["bpp"] - low["bpp"]) / (high["bpp"] - low["bpp"])
                assert found["value"] == pytest.approx(
                    low["psnr"] + t * (high["psnr"] - low["psnr"])
                )
                assert match["delta_psnr"] == pytest.approx(mine["psnr"] - found["value"])
                deltas.append(match["delta_psnr"])
            assert row["compared"] == len(deltas)
            if deltas:
                assert row["delta_psnr"] == pytest.approx(np.mean(deltas))
                assert f"{row['delta_psnr']:+.2f}" in printed
        # About 1.2 bpp: within both codecs' range on both images.
        assert entry["rows"][0]["compared"] == 2
        assert "BD-rate against " + entry["name"] in printed
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The classic curves feed bd-rate as they are.
    assert (
        main(["bd-rate", str(tmp_path / "small.jpeg.json"), str(tmp_path / "small.webp.json")]) == 0
    )
    assert "WebP (Pillow)" in capsys.readouterr().out


@pytest.mark.usefixtures("coarse_sweeps")
def test_classic_codecs_alone(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, plot = tmp_path / "classic.json", tmp_path / "classic.png"
    args = [
        "eval", "--compare", "webp", "--dataset", str(images), "--output", str(out),
        "--plot", str(plot), "--compare-ms-ssim", "--max-images", "1",
    ]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| quality | bpp | PSNR (dB) |" in printed
    assert not out.exists()  # only the classic curves are written, beside it
    doc = json.loads((tmp_path / "classic.webp.json").read_text())
    assert doc["codec"] == "webp"
    assert "method=6" in doc["encoder"]
    results = doc["results"]
    assert len(results["bpp"]) == len(doc["points"]) == len(doc["per_image"])
    assert len(doc["points"]) + len(doc["dominated"]["points"]) == 26
    for point, bpp in zip(doc["per_image"], results["bpp"], strict=True):
        (r,) = point  # --max-images 1: the first image by path
        assert (r["image"], r["width"], r["height"]) == ("camera.png", 192, 192)
        assert r["bpp"] == 8 * r["bytes_file"] / (192 * 192)
        assert 0 < r["ms_ssim"] <= 1
        assert bpp == r["bpp"]
        assert doc["results"]["ms-ssim-rgb"][doc["per_image"].index(point)] == r["ms_ssim"]
    assert np.all(np.diff(results["bpp"]) > 0)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--compare", "jpeg", "--model", "hpcm-base"], "--model and --model-kwargs need"),
        (["--compare", "jpeg", "--max-images", "0"], "expected --max-images >= 1"),
    ],
)
def test_compare_errors_are_one_line(
    args: list[str], message: str, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", *args, "--dataset", str(images)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("hpcm eval: error: ")
    assert message in err
    with pytest.raises(SystemExit):
        main(["eval", "--compare", "gif", "--dataset", str(images)])
