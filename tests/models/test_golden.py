"""Golden files: committed ``.hpcm`` files decode to exactly the recorded pixels, and their
sources encode to exactly the same bytes, through every change (``golden/README.md``)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from hpcm_models import BUILTIN_MODELS, ImageCodec

GOLDEN = Path(__file__).parent / "golden"
TOOL_PATH = Path(__file__).resolve().parents[2] / "tools" / "make_golden.py"
MANIFEST = json.loads((GOLDEN / "golden.json").read_text())
ENTRIES = MANIFEST["files"]


def _load_tool():
    """``tools/make_golden.py``, the one definition of the golden models."""
    spec = importlib.util.spec_from_file_location("make_golden", TOOL_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


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


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["file"] for e in ENTRIES])
def test_golden_file_decodes_bit_exactly(entry: dict, codec_for) -> None:
    data = (GOLDEN / entry["file"]).read_bytes()
    assert sha256(data) == entry["file_sha256"], "the golden file itself was changed"
    assert entry["model_kwargs"] == {"M": tool.M, "N": tool.N, "config": "HPCM_MICRO"}
    image = codec_for(entry).decode(data)
    assert (image.mode, image.width, image.height) == (
        entry["mode"],
        entry["width"],
        entry["height"],
    )
    assert tool.pixels_sha256(image) == entry["pixels_sha256"]


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["file"] for e in ENTRIES])
def test_golden_source_encodes_to_the_golden_file(entry: dict, codec_for) -> None:
    source = (GOLDEN / entry["source"]).read_bytes()
    assert sha256(source) == entry["source_sha256"], "the golden source itself was changed"
    with Image.open(GOLDEN / entry["source"]) as image:
        image.load()
        data = codec_for(entry).encode(image)
    assert sha256(data) == entry["file_sha256"]
    assert data == (GOLDEN / entry["file"]).read_bytes()
