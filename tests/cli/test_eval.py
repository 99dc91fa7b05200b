"""`hpcm eval`: actual-bitstream rate points in CompressAI's results format, plots, errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hpcm_models
from hpcm_models.checkpoints import random_model
from hpcm_models.cli import main
from hpcm_models.codec import ImageCodec
from hpcm_models.evaluation import evaluate_image

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
        (["--model", "hpcm-base", "--dataset", "/nonexistent"], "give --checkpoint"),
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
