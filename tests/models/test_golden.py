"""Golden files: committed ``.hpcm`` files decode to exactly the recorded latents and pixels
(on another platform: the pixels within a tolerance of the decoded image), and their sources
encode to exactly the same bytes, through every change (``golden/README.md``)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import golden_tool
from PIL import Image

from hpcm_models import BUILTIN_MODELS, DecodeMismatchError, ImageCodec
from hpcm_models import codec as codec_module
from hpcm_models.rans import SymbolReader

GOLDEN = Path(__file__).parent / "golden"
TOOL_PATH = Path(__file__).resolve().parents[2] / "tools" / "make_golden.py"
MANIFEST = json.loads((GOLDEN / "golden.json").read_text())
ENTRIES = MANIFEST["files"]


tool = golden_tool()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def codec_for():
    """``codec_for(entry)``: the golden model of a manifest entry (built once per model)."""
    cache: dict[tuple[str, bool], ImageCodec] = {}

    def get(entry: dict) -> ImageCodec:
        key = (entry["model"], entry["weights"] == "lively")
        if key not in cache:
            cache[key] = tool.golden_codec(*key)
        return cache[key]

    return get


def test_golden_files_cover_every_builtin_model_and_mode() -> None:
    assert {e["model"] for e in ENTRIES} == set(BUILTIN_MODELS)
    assert {e["mode"] for e in ENTRIES} >= {"RGB", "L", "RGBA", "LA"}
    assert any(e["escapes"] for e in ENTRIES)
    assert any(e["width"] % 2 and e["height"] % 2 for e in ENTRIES)
    assert any(max(e["width"], e["height"]) > 128 for e in ENTRIES)  # more than one tile
    total = sum(p.stat().st_size for p in GOLDEN.rglob("*") if p.is_file())
    assert total < 1_000_000


def check_decoding(entry: dict, codec: ImageCodec) -> None:
    """Asserts that the golden file of ``entry`` decodes to its recorded latents (exactly) and
    pixels: exactly, or on another platform within the tolerance of ``make_golden.PixelDiff``
    (and then warns)."""
    data = (GOLDEN / entry["file"]).read_bytes()
    assert sha256(data) == entry["file_sha256"], "the golden file itself was changed"
    assert entry["model_kwargs"] == {"M": tool.M, "N": tool.N, "config": "HPCM_MICRO"}
    # The decoder compares the hash of every latent it decoded with the header's latent hash and
    # raises DecodeMismatchError unless they are exactly the encoder's, on any platform.
    image = codec.decode(data)
    assert (image.mode, image.size) == (entry["mode"], (entry["width"], entry["height"]))
    pixels = tool.pixels_sha256(image)
    assert tool.pixels_sha256(codec.decode(data)) == pixels, "decoding again gave other pixels"
    if pixels == entry["pixels_sha256"]:
        return
    diff = tool.compare_pixels(image, tool.load_image(GOLDEN / tool.decoded_name(entry)))
    assert diff.within_tolerance, f"{entry['file']} decodes to other pixels than recorded: {diff}"
    platform = f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}"
    message = f"{entry['file']} does not decode bit-exactly here ({platform}): {diff}"
    warnings.warn(message, stacklevel=2)


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["file"] for e in ENTRIES])
def test_golden_file_decodes_to_the_recorded_pixels(entry: dict, codec_for) -> None:
    check_decoding(entry, codec_for(entry))


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["file"] for e in ENTRIES])
def test_decoded_golden_images_are_the_originals(entry: dict) -> None:
    image = tool.load_image(GOLDEN / tool.decoded_name(entry))
    assert (image.mode, image.size) == (entry["mode"], (entry["width"], entry["height"]))
    assert tool.pixels_sha256(image) == entry["pixels_sha256"]


@pytest.mark.slow
def test_golden_files_on_other_cpu_kernels() -> None:
    """With ATen's scalar kernels and oneDNN's SSE4.1 code (another CPU, as far as this one can
    tell), the sources encode to the same files and the files decode within the tolerance (with
    torch 2.15 one sample of hpcm-base-rgb-130x67 then rounds one level lower, as it did with
    torch 2.11 on the H200 machine's CPU)."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default", ONEDNN_MAX_CPU_ISA="SSE41")
    env["PYTHONWARNINGS"] = "ignore"
    result = subprocess.run(
        [sys.executable, str(TOOL_PATH), "--check"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "files identical"
    decoded = [line for line in lines[1:] if "decodes bit-exactly" in line or "within" in line]
    assert len(decoded) == len(ENTRIES), result.stdout


# A decoder that goes wrong must fail check_decoding on every platform, however it goes wrong.
WIDE = next(e for e in ENTRIES if e["file"] == "hpcm-base-rgb-130x67.hpcm")


@pytest.mark.parametrize(
    ("shift", "why"),
    [(2 / 255, r"by up to 2 level"), (0.6 / 255, r"\(\d+\.\d+ %\) differ, by up to 1 level")],
    ids=["2 levels", "0.6 levels"],
)
def test_a_changed_synthesis_fails(shift: float, why: str, monkeypatch) -> None:
    codec = tool.golden_codec(WIDE["model"])
    synthesis = codec.model.g_s.forward
    monkeypatch.setattr(codec.model.g_s, "forward", lambda y_hat: synthesis(y_hat) + shift)
    with pytest.raises(AssertionError, match=why):
        check_decoding(WIDE, codec)


@pytest.mark.parametrize("channel", [0, tool.M - 1])
def test_one_changed_latent_in_the_synthesis_fails(channel: int, monkeypatch) -> None:
    """ŷ off by one in one latent after the entropy decoder (whose latents still hash right)."""
    codec = tool.golden_codec(WIDE["model"])
    synthesis = codec.model.g_s.forward

    def off_by_one(y_hat):
        y_hat = y_hat.clone()
        y_hat[0, channel, 0, 0] += 1
        return synthesis(y_hat)

    monkeypatch.setattr(codec.model.g_s, "forward", off_by_one)
    with pytest.raises(AssertionError, match="decodes to other pixels than recorded"):
        check_decoding(WIDE, codec)


def test_one_changed_entropy_decoded_latent_is_refused(monkeypatch) -> None:
    """The entropy decoder returns another value for the first latent of ŷ."""
    apply_escapes = SymbolReader._apply_escapes

    def changed(self, values: np.ndarray, indexes: np.ndarray) -> None:
        apply_escapes(self, values, indexes)
        if self.position == self.start > 0:  # the first step of the y stream (after z's)
            values[0] += 1

    monkeypatch.setattr(SymbolReader, "_apply_escapes", changed)
    with pytest.raises(DecodeMismatchError):
        check_decoding(WIDE, tool.golden_codec(WIDE["model"]))


@pytest.mark.parametrize("rounded_otherwise", [1, 3, 4])
def test_samples_rounded_otherwise_pass_within_the_tolerance(rounded_otherwise: int, monkeypatch):
    """What another platform may do: round a few samples the other way (here the first color
    samples of a small file, whose tolerance is 3 samples)."""
    entry = next(e for e in ENTRIES if e["file"] == "hpcm-phase1-rgba-33x17.hpcm")
    restore = codec_module.restore_image

    def rounded(*args):
        pixels = np.asarray(restore(*args)).copy()
        pixels.reshape(-1, 4)[:rounded_otherwise, 0] ^= 1
        return Image.fromarray(pixels)

    monkeypatch.setattr(codec_module, "restore_image", rounded)
    codec = tool.golden_codec(entry["model"])
    message = f"{rounded_otherwise} of 1683 color samples .* by up to 1 level"
    if rounded_otherwise <= tool.MIN_DIFFERING:
        with pytest.warns(UserWarning, match=message):
            check_decoding(entry, codec)
    else:
        with pytest.raises(AssertionError, match=message):
            check_decoding(entry, codec)


def test_pixel_differences_are_counted_per_sample() -> None:
    """The tolerance of another platform: one level on a few color samples, alpha exact."""
    reference = tool.load_image(GOLDEN / tool.decoded_name(WIDE))
    pixels = np.asarray(reference).copy()
    allowed = tool.PixelDiff(pixels.size, 0, 0, 0).allowed
    assert allowed == max(tool.MIN_DIFFERING, -(-pixels.size // 1000))
    flat = pixels.reshape(-1)
    flat[:allowed] ^= 1  # one level up or down
    diff = tool.compare_pixels(Image.fromarray(pixels), reference)
    assert (diff.differing, diff.max_levels, diff.within_tolerance) == (allowed, 1, True)
    flat[allowed] ^= 1
    assert not tool.compare_pixels(Image.fromarray(pixels), reference).within_tolerance
    rgba = reference.convert("RGBA")
    changed = np.asarray(rgba).copy()
    changed[0, 0, 3] -= 1
    diff = tool.compare_pixels(Image.fromarray(changed), rgba)
    assert (diff.differing, diff.alpha_differing, diff.within_tolerance) == (0, 1, False)


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["file"] for e in ENTRIES])
def test_golden_source_encodes_to_the_golden_file(entry: dict, codec_for) -> None:
    source = (GOLDEN / entry["source"]).read_bytes()
    assert sha256(source) == entry["source_sha256"], "the golden source itself was changed"
    with Image.open(GOLDEN / entry["source"]) as image:
        image.load()
        data = codec_for(entry).encode(image)
    assert sha256(data) == entry["file_sha256"]
    assert data == (GOLDEN / entry["file"]).read_bytes()
