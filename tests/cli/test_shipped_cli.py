"""The command line with shipped weights: ``hpcm compress IN OUT`` with no other flag,
``--quality``, ``--model``, ``hpcm decompress`` finding the weights from the file's header,
``hpcm eval --quality`` and the default ``hpcm demo``.

The weights are micro ``hpcm-small`` models made here (``tests/shipped.py``), in a folder that
``HPCM_WEIGHTS_DIR`` names.
"""

from __future__ import annotations

import json
import shutil
from importlib.resources import files
from pathlib import Path

import pytest
import torch
from PIL import Image
from shipped import LMBDAS, make_weights_dir

from hpcm_models import pretrained
from hpcm_models.checkpoints import random_model
from hpcm_models.cli import main
from hpcm_models.container import read_container
from hpcm_models.demo import bundled_image

DATA = Path(str(files("hpcm_models") / "data"))


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights_dir(tmp_path_factory.mktemp("shipped_cli"))


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    with Image.open(DATA / "rocket.png") as image:
        image.convert("RGB").crop((0, 0, 131, 77)).save(path)
    return path


@pytest.fixture(autouse=True)
def shipped(weights: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, str(weights))
    return weights


def hpcm(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _weights_hash(path: Path) -> str:
    header, _ = read_container(path.read_bytes())
    return header.weights_hash.hex()


def test_compress_and_decompress_with_no_flags(capsys, photo: Path, tmp_path: Path) -> None:
    code, out, err = hpcm(capsys, "compress", photo, tmp_path / "p.hpcm")
    assert (code, err) == (0, "")
    assert out.strip().endswith("[shipped weights hpcm-small q2]")
    q2 = pretrained.find_weights("hpcm-small", 2)
    assert _weights_hash(tmp_path / "p.hpcm") == q2.weights_hash
    code, out, err = hpcm(capsys, "decompress", tmp_path / "p.hpcm", tmp_path / "p.png")
    assert (code, err) == (0, "")
    with Image.open(tmp_path / "p.png") as image:
        assert (image.size, image.mode) == ((131, 77), "RGB")


def test_quality_and_model_select_the_weights(capsys, photo: Path, tmp_path: Path) -> None:
    for quality in (1, 3):
        out_file = tmp_path / f"q{quality}.hpcm"
        args = ("compress", photo, out_file, "--model", "hpcm-small", "--quality", quality)
        code, out, _ = hpcm(capsys, *args)
        assert code == 0
        assert f"[shipped weights hpcm-small q{quality}]" in out
        assert (
            _weights_hash(out_file) == pretrained.find_weights("hpcm-small", quality).weights_hash
        )
        # decompress finds each file's own weights.
        assert hpcm(capsys, "decompress", out_file, tmp_path / f"q{quality}.png")[0] == 0
    assert (tmp_path / "q1.hpcm").read_bytes() != (tmp_path / "q3.hpcm").read_bytes()


def test_decompress_needs_shipped_weights_or_a_checkpoint(
    capsys, photo: Path, tmp_path: Path
) -> None:
    """A file made with weights that do not ship: a clear error without --checkpoint, and the
    checkpoint still works."""
    model = random_model("hpcm-small", seed=7, M=16, N=8, config={"transform_channels": [8, 8, 8]})
    torch.save(
        {"model": model.state_dict(), "model_name": "hpcm-small",
         "model_kwargs": {"M": 16, "N": 8, "config": {"transform_channels": [8, 8, 8]}}},
        tmp_path / "own.pt",
    )  # fmt: skip
    assert (
        hpcm(capsys, "compress", photo, tmp_path / "o.hpcm", "--checkpoint", tmp_path / "own.pt")[0]
        == 0
    )
    code, out, err = hpcm(capsys, "decompress", tmp_path / "o.hpcm", tmp_path / "o.png")
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith("hpcm decompress: error: the file was encoded with hpcm-small weights ")
    assert (
        "which are not shipped with this installation (shipped: hpcm-small (qualities 1, 2, 3))"
        in err
    )
    assert "decode it with the checkpoint it was encoded with" in err
    assert not (tmp_path / "o.png").exists()
    args = (
        "decompress",
        tmp_path / "o.hpcm",
        tmp_path / "o.png",
        "--checkpoint",
        tmp_path / "own.pt",
    )
    assert hpcm(capsys, *args)[0] == 0


ERRORS = {
    "unknown quality": (
        ["compress", "P", "T/o.hpcm", "--quality", "4"],
        "hpcm-small has no shipped quality 4; available: 1, 2, 3 (1 = lowest rate)",
    ),
    "model without weights": (
        ["compress", "P", "T/o.hpcm", "--model", "hpcm-base"],
        "no shipped weights for 'hpcm-base'; shipped: hpcm-small (qualities 1, 2, 3)",
    ),
    "quality with checkpoint": (
        ["compress", "P", "T/o.hpcm", "--quality", "1", "--checkpoint", "T/x.pt"],
        "--quality selects shipped weights; it cannot be used with --checkpoint",
    ),
    "quality with random weights": (
        [
            "compress",
            "P",
            "T/o.hpcm",
            "--quality",
            "1",
            "--random-weights",
            "--model",
            "hpcm-small",
        ],
        "--quality selects shipped weights",
    ),
    "model kwargs": (
        ["compress", "P", "T/o.hpcm", "--model-kwargs", '{"M": 32}'],
        "--model-kwargs cannot change the shipped weights' model",
    ),
    "decompress model kwargs": (
        ["decompress", "T/p.hpcm", "T/o.png", "--model-kwargs", '{"M": 32}'],
        "--model-kwargs cannot change the shipped weights' model",
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line(capsys, photo: Path, tmp_path: Path, case: str) -> None:
    args, message = ERRORS[case]
    (tmp_path / "p.hpcm").write_bytes(b"")
    resolved = [a.replace("T/", f"{tmp_path}/") if a != "P" else str(photo) for a in args]
    code, out, err = hpcm(capsys, *resolved)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1, err
    assert err.startswith(f"hpcm {args[0]}: error: ")
    assert message in err
    assert not (tmp_path / "o.hpcm").exists()
    assert not (tmp_path / "o.png").exists()


def test_no_weights_ship_yet(capsys, photo: Path, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "index.json").write_text(
        json.dumps({"format": "hpcm-weights-index", "version": 1, "weights": []})
    )
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, str(tmp_path))
    code, _, err = hpcm(capsys, "compress", photo, tmp_path / "o.hpcm")
    assert code == 1
    assert "this installation ships no weights yet (give a checkpoint" in err


def test_damaged_shipped_file(capsys, photo: Path, tmp_path: Path, weights: Path, monkeypatch):
    copy = tmp_path / "weights"
    shutil.copytree(weights, copy)
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, str(copy))
    data = bytearray((copy / "hpcm-small-q2.pt").read_bytes())
    data[1000] ^= 0xFF
    (copy / "hpcm-small-q2.pt").write_bytes(bytes(data))
    code, _, err = hpcm(capsys, "compress", photo, tmp_path / "o.hpcm")
    assert code == 1
    assert "SHA-256 of" in err
    assert "damaged or replaced" in err
    assert not (tmp_path / "o.hpcm").exists()


def test_eval_shipped_qualities(capsys, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(DATA / "camera.png", images)
    out = tmp_path / "r.json"
    args = ("eval", "--quality", "1", "3", "--dataset", images, "--output", out)
    code, text, _ = hpcm(capsys, *args)
    assert code == 0
    document = json.loads(out.read_text())
    assert document["name"] == "hpcm-small"
    assert "shipped weights" in document["description"]
    assert document["points"] == ["hpcm-small q1", "hpcm-small q3"]
    assert document["results"]["bit-exact"] == [True, True]
    assert all(b > 0 for b in document["results"]["bpp"])
    assert "hpcm-small q1: " in text
    for args, message in (
        (["--quality", "5"], "hpcm-small has no shipped quality 5"),
        (["--quality", "1", "--checkpoint", "x.pt"], "give one of --checkpoint"),
        (["--quality", "1", "--model-kwargs", "{}"], "--model-kwargs cannot change"),
        (["--quality", "1", "--model", "hpcm-base"], "no shipped weights for 'hpcm-base'"),
    ):
        code, _, err = hpcm(capsys, "eval", *args, "--dataset", images)
        assert code == 1
        assert err.count("\n") == 1, err
        assert message in err


def test_demo_uses_the_shipped_weights(capsys, tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    image = bundled_image("camera.png")
    code, text, _ = hpcm(capsys, "demo", "--images", image, "--json", out)
    assert code == 0
    assert "WEIGHTS ARE RANDOM" not in text
    assert "Shipped trained weights of hpcm-small: shipped q1 (λ=0.0035)" in text
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["quality"]) for r in rows] == [("hpcm-small", q) for q in (1, 2, 3)]
    for row in rows:
        assert f"| hpcm-small | shipped q{row['quality']} (λ={LMBDAS[row['quality']]:g}) |" in text
        assert row["bit_exact"] is True
        assert row["bpp"] > 0


def test_demo_runs_shipped_checkpoint_and_random_weights(capsys, tmp_path: Path) -> None:
    """Per model: a checkpoint in --checkpoint-dir, else every shipped quality, else random;
    --quick (small random models) ignores the shipped weights."""
    from hpcm_models.demo import demo_runs

    (tmp_path / "hpcm-large.pt").write_bytes(b"")
    runs = demo_runs(
        ["hpcm-small", "hpcm-base", "hpcm-large"], checkpoint_dir=tmp_path, pretrained=True
    )
    assert [(r.model, r.weights) for r in runs] == [
        ("hpcm-small", "shipped q1 (λ=0.0035)"),
        ("hpcm-small", "shipped q2 (λ=0.0067)"),
        ("hpcm-small", "shipped q3 (λ=0.013)"),
        ("hpcm-base", "random"),
        ("hpcm-large", str(tmp_path / "hpcm-large.pt")),
    ]
    assert [r.weights for r in demo_runs(["hpcm-small"], pretrained=False)] == ["random"]
    image = bundled_image("rocket.png")
    code, text, _ = hpcm(capsys, "demo", "--quick", "--models", "hpcm-small", "--images", image)
    assert code == 0
    assert "WEIGHTS ARE RANDOM for hpcm-small (M=32, N=16 (--quick)" in text
    assert "| hpcm-small | random |" in text
    assert "shipped q" not in text


def test_demo_default_models_without_shipped_weights(capsys, tmp_path, monkeypatch) -> None:
    import argparse

    from hpcm_models.cli.demo import _default_models
    from hpcm_models.demo import DEMO_MODELS

    args = argparse.Namespace(checkpoint_dir=None)
    assert _default_models(args, pretrained=True) == ["hpcm-small"]
    assert _default_models(args, pretrained=False) == list(DEMO_MODELS)
    (tmp_path / "index.json").write_text(
        json.dumps({"format": "hpcm-weights-index", "version": 1, "weights": []})
    )
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, str(tmp_path))
    capsys.readouterr()
    assert _default_models(args, pretrained=True) == list(DEMO_MODELS)
    assert "ships no trained weights yet" in capsys.readouterr().out
