"""``hpcm compress`` / ``hpcm decompress``: round trips, exit codes, one-line errors, and no
output (and no temporary file) whenever a command fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.resources import files

import numpy as np
import pytest
import torch
from PIL import Image

from hpcm_models import HPCM_MICRO
from hpcm_models.checkpoints import load_checkpoint, model_kwargs_to_json, random_model
from hpcm_models.cli import main
from hpcm_models.codec import ImageCodec

# The full coding schedule with the narrowest transforms, as --model-kwargs JSON.
MICRO = model_kwargs_to_json({"M": 16, "N": 8, "config": HPCM_MICRO})
MICRO_JSON = json.dumps(MICRO)
CONFIG_JSON = json.dumps({"config": MICRO["config"]})


# One intra-op thread (tests/conftest.py): the codec codes with one anyway; the CPU is shared.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with two training checkpoints (other seeds) and test images."""
    root = tmp_path_factory.mktemp("codec_cli")
    for seed, name in ((0, "a.pt"), (1, "b.pt")):
        model = random_model("hpcm-base", seed=seed, **MICRO)
        torch.save(
            {"model": model.state_dict(), "model_name": "hpcm-base", "model_kwargs": MICRO},
            root / name,
        )
    with Image.open(files("hpcm_models") / "data" / "rocket.png") as image:
        rgb = image.convert("RGB").crop((0, 0, 131, 77))
    rgb.save(root / "rgb.png")
    rgba = rgb.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    rgba.save(root / "rgba.png")
    rgb.convert("L").save(root / "gray.png")
    (root / "notes.txt").write_text("not an image")
    return root


def hpcm(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def listing(path) -> set[str]:
    return {p.name for p in path.iterdir()}


@pytest.mark.parametrize("name", ["rgb", "rgba", "gray"])
def test_round_trip(capsys, work, tmp_path, name) -> None:
    src = work / f"{name}.png"
    code, out, err = hpcm(
        capsys, "compress", src, tmp_path / "x.hpcm", "--checkpoint", work / "a.pt"
    )
    assert (code, err) == (0, "")
    assert out.count("\n") == 1
    assert "bpp" in out
    assert "131x77" in out
    first = (tmp_path / "x.hpcm").read_bytes()
    code, out, err = hpcm(
        capsys, "decompress", tmp_path / "x.hpcm", tmp_path / "y.png", "--checkpoint", work / "a.pt"
    )
    assert (code, err) == (0, "")
    assert "decode" in out
    with Image.open(src) as original, Image.open(tmp_path / "y.png") as decoded:
        assert decoded.mode == original.mode
        assert decoded.size == original.size
        expected = ImageCodec(load_checkpoint(work / "a.pt")).decode(first)
        assert decoded.tobytes() == expected.tobytes()
        if name == "rgba":
            assert np.array_equal(np.asarray(decoded)[..., 3], np.asarray(original)[..., 3])
    # Deterministic: the same command writes the same bytes.
    hpcm(
        capsys,
        "compress",
        src,
        tmp_path / "x2.hpcm",
        "--checkpoint",
        work / "a.pt",
        "--model",
        "hpcm-base",
    )
    assert (tmp_path / "x2.hpcm").read_bytes() == first
    assert listing(tmp_path) == {"x.hpcm", "x2.hpcm", "y.png"}


def test_random_weights(capsys, work, tmp_path) -> None:
    args = ("--random-weights", "--seed", "5", "--model-kwargs")
    code, _, err = hpcm(
        capsys,
        "compress",
        work / "rgb.png",
        tmp_path / "r.hpcm",
        "--model",
        "hpcm-base",
        *args,
        MICRO_JSON,
    )
    assert (code, err) == (0, "")
    # M and N come from the file; the configuration and the seed from the flags.
    code, _, err = hpcm(
        capsys, "decompress", tmp_path / "r.hpcm", tmp_path / "r.png", *args, CONFIG_JSON
    )
    assert (code, err) == (0, "")
    code, _, err = hpcm(
        capsys,
        "decompress",
        tmp_path / "r.hpcm",
        tmp_path / "s.png",
        "--random-weights",
        "--seed",
        "6",
        "--model-kwargs",
        CONFIG_JSON,
    )
    assert code == 1
    assert "other weights" in err
    assert listing(tmp_path) == {"r.hpcm", "r.png"}


def _damaged(work, tmp_path, how: str):
    data = bytearray((tmp_path / "ok.hpcm").read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x10
    elif how == "truncate":
        data = data[:-3]
    path = tmp_path / f"{how}.hpcm"
    path.write_bytes(bytes(data))
    return path


CASES = {
    # name: (arguments (W = work folder, T = tmp folder), exit code, error fragment)
    "missing input": (
        ["compress", "W/nope.png", "T/o.hpcm", "--checkpoint", "W/a.pt"],
        "no such file",
    ),
    "not an image": (
        ["compress", "W/notes.txt", "T/o.hpcm", "--checkpoint", "W/a.pt"],
        "not an image Pillow can read",
    ),
    "missing out dir": (
        ["compress", "W/rgb.png", "T/no/o.hpcm", "--checkpoint", "W/a.pt"],
        "missing",
    ),
    "unknown device": (
        ["compress", "W/rgb.png", "T/o.hpcm", "--checkpoint", "W/a.pt", "--device", "tpu"],
        "unknown device 'tpu'",
    ),
    "missing checkpoint": (
        ["compress", "W/rgb.png", "T/o.hpcm", "--checkpoint", "W/none.pt"],
        "does not exist",
    ),
    "random without model": (
        ["compress", "W/rgb.png", "T/o.hpcm", "--random-weights"],
        "--random-weights needs --model",
    ),
    "model mismatch": (
        ["compress", "W/rgb.png", "T/o.hpcm", "--checkpoint", "W/a.pt", "--model", "hpcm-large"],
        "holds a 'hpcm-base' model, not 'hpcm-large'",
    ),
    "bad model kwargs": (
        [
            "compress",
            "W/rgb.png",
            "T/o.hpcm",
            "--random-weights",
            "--model",
            "hpcm-base",
            "--model-kwargs",
            '{"M": 12}',
        ],
        "cannot build hpcm-base",
    ),
    "bit flip": (["decompress", "flip", "T/o.png", "--checkpoint", "W/a.pt"], "checksum mismatch"),
    "truncated": (["decompress", "truncate", "T/o.png", "--checkpoint", "W/a.pt"], "streams need"),
    "not hpcm": (
        ["decompress", "W/rgb.png", "T/o.png", "--checkpoint", "W/a.pt"],
        "not an hpcm file",
    ),
    "other checkpoint": (
        ["decompress", "T/ok.hpcm", "T/o.png", "--checkpoint", "W/b.pt"],
        "other weights: weights hash",
    ),
    "lossy output": (
        ["decompress", "T/ok.hpcm", "T/o.jpg", "--checkpoint", "W/a.pt"],
        "lossy format",
    ),
    "alpha as ppm": (
        ["decompress", "T/rgba.hpcm", "T/o.ppm", "--checkpoint", "W/a.pt"],
        "cannot store the alpha channel",
    ),
}
if not torch.cuda.is_available():
    CASES["no gpu"] = (
        ["compress", "W/rgb.png", "T/o.hpcm", "--checkpoint", "W/a.pt", "--device", "cuda"],
        "no CUDA GPU",
    )


@pytest.mark.parametrize("case", list(CASES))
def test_errors_are_one_line_and_write_nothing(capsys, work, tmp_path, case) -> None:
    args, fragment = CASES[case]
    hpcm(capsys, "compress", work / "rgb.png", tmp_path / "ok.hpcm", "--checkpoint", work / "a.pt")
    hpcm(
        capsys, "compress", work / "rgba.png", tmp_path / "rgba.hpcm", "--checkpoint", work / "a.pt"
    )
    (tmp_path / "o.png").write_bytes(b"previous")  # an existing output survives a failure
    before = listing(tmp_path)
    resolved = []
    for arg in args:
        if arg in ("flip", "truncate"):
            arg = str(_damaged(work, tmp_path, arg))
            before = listing(tmp_path)
        resolved.append(arg.replace("W/", f"{work}/").replace("T/", f"{tmp_path}/"))
    code, out, err = hpcm(capsys, *resolved)
    assert code == 1
    assert out == ""
    assert err.startswith(f"hpcm {args[0]}: error: ")
    assert err.count("\n") == 1, err
    assert fragment in err
    assert listing(tmp_path) == before  # no output, no temporary file
    assert (tmp_path / "o.png").read_bytes() == b"previous"


def test_weights_default_to_shipped_ones(capsys, work, tmp_path) -> None:
    """Without --checkpoint or --random-weights the shipped weights are used (none ship for
    hpcm-base; tests/cli/test_shipped_cli.py has the rest); both at once is a usage error."""
    code, out, err = hpcm(capsys, "compress", work / "rgb.png", tmp_path / "o.hpcm",
                          "--model", "hpcm-base")  # fmt: skip
    assert (code, out) == (1, "")
    assert err.startswith("hpcm compress: error: no shipped weights for 'hpcm-base'")
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", str(work / "rgb.png"), str(tmp_path / "o.hpcm"), "--random-weights",
              "--checkpoint", str(work / "a.pt")])  # fmt: skip
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert listing(tmp_path) == set()


def test_console_exit_code_and_message(work, tmp_path) -> None:
    """The real process: exit status 1 and exactly one line on stderr for a damaged file."""
    (tmp_path / "bad.hpcm").write_bytes(b"\x89HPCM\r\n\x1a\x01\x00")
    # compressai 1.2.8 warns about torch.jit.script when hpcm_models is imported (torch >= 2.14);
    # that warning is not the CLI's output.
    env = dict(os.environ, PYTHONWARNINGS="ignore:`torch.jit.script` is deprecated:FutureWarning")
    result = subprocess.run(
        [sys.executable, "-m", "hpcm_models.cli", "decompress", str(tmp_path / "bad.hpcm"),
         str(tmp_path / "o.png"), "--checkpoint", str(work / "a.pt")],
        capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "hpcm decompress: error: file of 10 bytes ends inside the prefix"
    ]
    assert listing(tmp_path) == {"bad.hpcm"}
