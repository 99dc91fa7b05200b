"""`hpcm demo`: the README's main command, in its quick mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hpcm_models.cli import main
from hpcm_models.demo import (
    DEMO_IMAGES,
    DEMO_MODELS,
    QUICK_MODEL_KWARGS,
    bundled_image,
    find_checkpoint,
)


def test_quick_demo_round_trips_every_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo.json"
    # One photo keeps the test short; the default is both (DEMO_IMAGES), gray included.
    image = str(bundled_image("rocket.png"))
    assert main(["demo", "--quick", "--images", image, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "WEIGHTS ARE RANDOM" in text
    assert "(rocket.png 171x256 RGB)" in text
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == list(DEMO_MODELS)
    for row in rows:
        assert f"| {row['model']} | random |" in text
        assert row["jpeg_psnr"] is None  # random weights are not compared
        assert row["bit_exact"] is True
        assert row["bpp"] > 0
        assert row["bpp_file"] > row["bpp"]
        assert 3 < row["psnr"] < 60
        assert row["encode_ms"] > 0
        assert row["decode_ms"] > 0
        assert [i["image"] for i in row["images"]] == ["rocket.png"]
    assert text.count("| yes |") == len(DEMO_MODELS)
    # Every phase adds parameters to the one before (more of the context model is RWKV); the lite
    # cell has fewer than the cross-attention cell it replaces.
    params = {r["model"]: r["params"] for r in rows}
    phases = [params[f"hpcm-phase{k}"] for k in (1, 2, 3, 4)]
    assert phases == sorted(phases)
    assert len(set(phases)) == 4
    assert params["hpcm-phase1-lite"] < params["hpcm-base"]


def test_demo_uses_trained_checkpoints_when_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hpcm_models.checkpoints import random_model

    model = random_model("hpcm-base", seed=5, **QUICK_MODEL_KWARGS)
    (tmp_path / "hpcm-base").mkdir()
    checkpoint = {
        "model": model.state_dict(),
        "model_name": "hpcm-base",
        "model_kwargs": QUICK_MODEL_KWARGS,
    }
    torch.save(checkpoint, tmp_path / "hpcm-base" / "best.pt")
    assert find_checkpoint(tmp_path, "hpcm-base") == tmp_path / "hpcm-base" / "best.pt"
    assert find_checkpoint(tmp_path, "hpcm-large") is None
    image = str(bundled_image("camera.png"))
    args = ["demo", "--models", "hpcm-base", "--checkpoint-dir", str(tmp_path), "--images", image]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "WEIGHTS ARE RANDOM" not in text
    assert f"| hpcm-base | {tmp_path / 'hpcm-base' / 'best.pt'} |" in text


def test_demo_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--quick", "--checkpoint-dir", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.strip().endswith("is not a directory")
    assert main(["demo", "--quick", "--images", str(tmp_path / "none.png")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert all(bundled_image(name).is_file() for name in DEMO_IMAGES)


def test_trained_rows_are_set_against_jpeg_at_the_same_rate(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The shipped weights' rows carry JPEG's PSNR at each image's whole-file rate (one JPEG
    sweep per image); random weights' rows and --no-jpeg leave the columns empty."""
    from hpcm_models.baselines import evaluate_classic_image, match_rate
    from hpcm_models.image_io import read_image

    image = bundled_image("rocket.png")
    out = tmp_path / "demo.json"
    assert main(["demo", "--images", str(image), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 3  # the shipped qualities
    sweep = evaluate_classic_image(read_image(image), "jpeg", name="rocket.png")
    for row in rows:
        (result,) = row["images"]
        expected = match_rate(sweep, result["bpp_file"]).value
        assert expected is not None  # the shipped rates are within JPEG's on this photo
        assert row["jpeg_compared"] == 1
        assert row["jpeg_psnr"] == pytest.approx(expected)
        assert row["delta_jpeg"] == pytest.approx(result["psnr"] - expected)
        assert f"| {row['jpeg_psnr']:.2f} | {row['delta_jpeg']:+.2f} |" in text
    assert "JPEG: Pillow's (4:2:0) PSNR at each image's whole-file bpp" in text

    assert main(["demo", "--images", str(image), "--no-jpeg", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for row in json.loads(out.read_text())["rows"]:
        assert (row["jpeg_psnr"], row["delta_jpeg"], row["jpeg_compared"]) == (None, None, 0)
    assert text.count("| - | - |") == 3
    assert "JPEG: Pillow's" not in text


def test_jpeg_sweeps_follow_the_images_not_their_names(tmp_path: Path) -> None:
    """Two images of the same file name in different folders each get their own JPEG sweep."""
    import shutil

    from hpcm_models.baselines import evaluate_classic_image, match_rate
    from hpcm_models.demo import run_demo
    from hpcm_models.image_io import read_image

    paths = []
    for folder, source in (("a", "rocket.png"), ("b", "camera.png")):
        (tmp_path / folder).mkdir()
        paths.append(tmp_path / folder / "x.png")
        shutil.copy(bundled_image(source), paths[-1])
    (row, *_) = run_demo(["hpcm-small"], paths, pretrained=True)
    assert row.jpeg_compared == 2
    expected = [
        match_rate(evaluate_classic_image(read_image(p), "jpeg", name="x.png"), r["bpp_file"])
        for p, r in zip(paths, row.images, strict=True)
    ]
    assert row.jpeg_psnr == pytest.approx(sum(m.value for m in expected) / 2)
    assert expected[0].value != pytest.approx(expected[1].value)
