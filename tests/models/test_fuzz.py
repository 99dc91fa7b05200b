"""Fuzz targets: mutated ``.hpcm`` headers and streams, and mutated image files.

The decoder gets the golden files (every built-in model, every stream kind) with mutations that
get past the checksums: header bytes overwritten and the header CRC recomputed, stream bytes
flipped, overwritten, inserted or cut with the stream's length and CRC fixed in the header, streams
swapped between files, and raw damage without any fix. Whatever it gets, it must raise a
:class:`~hpcm_models.errors.BitstreamError` or return an image of the size and mode its header
states (a mutation can leave the symbols intact), within the limits: nothing else, no hang.

The rANS decoder (:mod:`hpcm_models.ans`) gets random escape-free tables with valid streams
mutated, or random bytes, decoded in two chunks as the codec does: it must agree with the
plain-Python reference (:func:`~hpcm_models.ans_reference.decode_reference`) on every case, the
same symbols or the same typed :class:`~hpcm_models.errors.BitstreamError`.

The image reader gets small PNG, GIF, BMP, TIFF, WebP, JPEG and PPM files with bytes flipped,
overwritten, inserted or cut: it must raise :class:`~hpcm_models.errors.ImageError` or return an
image within the limits that :func:`~hpcm_models.image_io.image_planes` accepts or refuses with
an ``ImageError``.

In CI each target runs ``HPCM_FUZZ_EXAMPLES`` cases (default 25; the ``ci`` profile of
``tests/conftest.py`` makes them the same every run). ``tools/fuzz_codec.py`` runs them for hours
with fresh random cases and reports how many ran and what they raised.
"""

from __future__ import annotations

import collections
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import golden_tool
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from hpcm_models import ans
from hpcm_models.ans_reference import decode_reference
from hpcm_models.codec import ImageCodec
from hpcm_models.container import Limits, read_container
from hpcm_models.errors import BitstreamError, ImageError
from hpcm_models.image_io import image_planes, read_image

GOLDEN = Path(__file__).parent / "golden"
ENTRIES = json.loads((GOLDEN / "golden.json").read_text())["files"]
EXAMPLES = int(os.environ.get("HPCM_FUZZ_EXAMPLES", "25"))
# Small limits keep each case fast: a forged header may claim any size up to them, and then the
# whole network runs over it (the default limits are tested in tests/cli/test_hardening.py).
LIMITS = Limits(max_pixels=1 << 16, max_file_bytes=1 << 20)

#: What the targets saw, by outcome (``tools/fuzz_codec.py`` reports it).
STATS: collections.Counter[str] = collections.Counter()

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    # Pillow warns about the damage it skips (TIFF tags beyond the file, corrupt EXIF): expected.
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

_PREFIX = struct.Struct("<8sHI")


_CODECS: dict[tuple[str, bool], ImageCodec] = {}


def golden_codec(entry: dict) -> ImageCodec:
    """The codec of a golden file, with :data:`LIMITS` (built once per model)."""
    key = (entry["model"], entry["weights"] == "lively")
    if key not in _CODECS:
        codec = golden_tool().golden_codec(*key)
        _CODECS[key] = ImageCodec(codec.model, codec.model_id, limits=LIMITS)
    return _CODECS[key]


FILES = [(GOLDEN / e["file"]).read_bytes() for e in ENTRIES]


# ---------------------------------------------------------------------------- mutations


def _layout(data: bytes) -> tuple[int, list[tuple[int, int]], int]:
    """``(header end, [(offset, length) of each stream entry in the header], offset of the first
    stream)`` of a valid file."""
    _, _, header_len = _PREFIX.unpack_from(data)
    end = _PREFIX.size + header_len
    n_model = data[_PREFIX.size]
    fixed = _PREFIX.size + 1 + n_model + struct.calcsize("<16s16sIIBII3I3I16sH")
    entries = [(fixed + 9 * i, 9) for i in range((end - fixed) // 9)]
    return end, entries, end + 4


def _fix_header_crc(data: bytearray) -> None:
    end = _PREFIX.size + _PREFIX.unpack_from(data)[2]
    data[end : end + 4] = struct.pack("<I", zlib.crc32(bytes(data[:end])))


def _edit(data: bytes, ops: list[tuple[str, int, bytes]]) -> bytes:
    """Apply byte edits: ``("flip"|"set"|"insert"|"cut", position, bytes)``."""
    out = bytearray(data)
    for op, pos, value in ops:
        pos = pos % (len(out) + 1)
        if op == "flip" and out:
            out[pos % len(out)] ^= value[0] or 1
        elif op == "set":
            out[pos : pos + len(value)] = value
        elif op == "insert":
            out[pos:pos] = value
        elif op == "cut":
            del out[pos : pos + len(value)]
    return bytes(out)


def _with_streams(data: bytes, streams: list[bytes]) -> bytes:
    """``data`` with its streams replaced, lengths and CRCs fixed in the header."""
    end, entries, _ = _layout(data)
    head = bytearray(data[: end + 4])
    for (offset, _), stream in zip(entries, streams, strict=True):
        struct.pack_into("<II", head, offset + 1, len(stream), zlib.crc32(stream))
    _fix_header_crc(head)
    return bytes(head) + b"".join(streams)


byte_op = st.tuples(
    st.sampled_from(["flip", "set", "insert", "cut"]),
    st.integers(0, 1 << 16),
    st.binary(min_size=1, max_size=8),
)
byte_ops = st.lists(byte_op, min_size=1, max_size=4)
interesting = (
    st.sampled_from(
        [0, 1, 2, 7, 8, 15, 16, 63, 64, 127, 128, 255, 256, 4095, 4096, 65535, 65536, 1 << 24]
    )
    | st.sampled_from([(1 << 31) - 1, 1 << 31, (1 << 32) - 1])
    | st.integers(0, (1 << 32) - 1)
)


@st.composite
def mutated_files(draw) -> tuple[int, bytes, str]:
    """``(golden file index, mutated bytes, mutation kind)``."""
    index = draw(st.integers(0, len(FILES) - 1))
    data = FILES[index]
    kind = draw(st.sampled_from(["header field", "header bytes", "stream", "swap", "raw"]))
    streams = read_container(data)[1]
    end = _layout(data)[0]
    if kind == "header field":  # a u8/u16/u32 anywhere in the header body, CRC recomputed
        out = bytearray(data)
        pos = draw(st.integers(_PREFIX.size, end - 1))
        size = draw(st.sampled_from([1, 2, 4]))
        value = draw(interesting) % (1 << (8 * size))
        out[pos : pos + size] = value.to_bytes(size, "little")[: max(0, end - pos)]
        _fix_header_crc(out)
        return index, bytes(out), kind
    if kind == "header bytes":  # edits that may change the header's length, CRC recomputed
        body = _edit(data[_PREFIX.size : end], draw(byte_ops))
        head = bytearray(_PREFIX.pack(*_PREFIX.unpack_from(data)[:2], len(body)) + body + b"\0" * 4)
        _fix_header_crc(head)
        return index, bytes(head) + data[end + 4 :], kind
    if kind == "stream":  # a stream's bytes changed, its length and CRC fixed in the header
        i = draw(st.integers(0, len(streams) - 1))
        streams = list(streams)
        streams[i] = _edit(streams[i], draw(byte_ops))
        return index, _with_streams(data, streams), kind
    if kind == "swap":  # a stream of another file (other model, size or mode), CRCs fixed
        other = read_container(FILES[draw(st.integers(0, len(FILES) - 1))])[1]
        i = draw(st.integers(0, len(streams) - 1))
        streams = list(streams)
        streams[i] = other[draw(st.integers(0, len(other) - 1))]
        return index, _with_streams(data, streams), kind
    return index, _edit(data, draw(byte_ops)), kind


# ---------------------------------------------------------------------------- targets


def check_decoder(index: int, data: bytes, kind: str) -> None:
    """The property of the decoder target (also called by ``tools/fuzz_codec.py``)."""
    codec = golden_codec(ENTRIES[index])
    try:
        image = codec.decode(data)
    except BitstreamError as err:
        STATS[f"decoder {kind}: {type(err).__name__}"] += 1
        return
    header, _ = read_container(data, LIMITS)
    assert (image.width, image.height, image.mode) == (
        header.width,
        header.height,
        header.mode.name,
    )
    STATS[f"decoder {kind}: decoded"] += 1


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutated_files())
def test_decoder_survives_mutated_headers_and_streams(case) -> None:
    check_decoder(*case)


@st.composite
def ans_cases(draw) -> tuple[ans.AnsTables, np.ndarray, bytes, int, str]:
    """``(tables, table indexes, stream, where the decoding is split, case kind)``: 1-4 rows of
    2-64 symbols with random frequencies and offsets; a valid stream of random symbols, mutated
    (or not), random words after a valid first state, or random bytes."""
    total = 1 << ans.PRECISION
    rows = []
    for _ in range(draw(st.integers(1, 4))):
        cuts = draw(st.lists(st.integers(1, total - 1), min_size=3, max_size=65, unique=True))
        rows.append([0, *sorted(cuts), total])
    cdf = np.full((len(rows), max(map(len, rows))), total, dtype=np.int64)
    for r, row in enumerate(rows):
        cdf[r, : len(row)] = row
    offsets = draw(st.lists(st.integers(-100, 100), min_size=len(rows), max_size=len(rows)))
    tables = ans.AnsTables.from_cdfs(cdf, [len(row) for row in rows], offsets, name="fuzz")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(0, 300))
    indexes = rng.integers(0, tables.rows, n).astype(np.int32)
    if draw(st.booleans()):
        symbols = (rng.random(n) * tables.counts[indexes]).astype(np.int32)
        ops = draw(st.lists(byte_op, max_size=3))
        data = _edit(ans.encode(symbols + tables.offsets[indexes], indexes, tables), ops)
        kind = "mutated stream" if ops else "valid stream"
    elif draw(st.booleans()):  # past the first checks: a valid first state, whole words
        state = draw(st.integers(ans.STATE_MIN, ans.STATE_END - 1)).to_bytes(8, "little")
        body = draw(st.binary(max_size=4 * n + 8))
        data, kind = state + body[: len(body) // 4 * 4], "random words"
    else:
        data, kind = draw(st.binary(max_size=4 * n + 16)), "random bytes"
    return tables, indexes, data, draw(st.integers(0, n)), kind


def _decode_in_two(data: bytes, indexes: np.ndarray, tables: ans.AnsTables, cut: int):
    decoder = ans.AnsDecoder(data, tables)
    first = decoder.decode(indexes[:cut]).copy()
    rest = decoder.decode(indexes[cut:])
    decoder.finish()
    return np.concatenate([first, rest])


def check_ans(tables: ans.AnsTables, indexes: np.ndarray, data: bytes, cut: int, kind: str) -> None:
    """The property of the rANS target (also called by ``tools/fuzz_codec.py``)."""
    try:
        expected: np.ndarray | type[BitstreamError] = decode_reference(data, indexes, tables)
    except BitstreamError as err:
        expected = type(err)
    if not isinstance(expected, np.ndarray):
        with pytest.raises(expected):
            _decode_in_two(data, indexes, tables, cut)
        STATS[f"ans {kind}: {expected.__name__}"] += 1
        return
    decoded = _decode_in_two(data, indexes, tables, cut)
    assert np.array_equal(decoded, expected)
    assert ((decoded >= tables.low[indexes]) & (decoded <= tables.high[indexes])).all()
    STATS[f"ans {kind}: decoded"] += 1


@settings(max_examples=4 * EXAMPLES, deadline=None)
@given(ans_cases())
def test_ans_decoder_agrees_with_its_reference_on_any_stream(case) -> None:
    check_ans(*case)


def _sample_images() -> dict[str, bytes]:
    """Small images in the formats Pillow reads most, with odd sizes, palettes and alpha."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (11, 13, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, (7, 9, 4), dtype=np.uint8))
    samples = {}
    for name, image, fmt in (
        ("png", rgba, "PNG"),
        ("gif", rgb.convert("P"), "GIF"),
        ("bmp", rgb, "BMP"),
        ("tiff", rgb, "TIFF"),
        ("webp", rgba, "WEBP"),
        ("jpeg", rgb, "JPEG"),
        ("ppm", rgb.convert("L"), "PPM"),
    ):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        samples[name] = buffer.getvalue()
    return samples


IMAGES = _sample_images()
IMAGE_LIMITS = Limits(max_pixels=1 << 16, max_file_bytes=1 << 20)


def check_image_reader(path: Path, name: str, data: bytes) -> None:
    """The property of the image target (also called by ``tools/fuzz_codec.py``)."""
    path.write_bytes(data)
    try:
        image = read_image(path, IMAGE_LIMITS)
        image_planes(image)
    except ImageError as err:
        STATS[f"image {name}: ImageError"] += 1
        del err
        return
    assert 0 < image.width * image.height <= IMAGE_LIMITS.max_pixels
    STATS[f"image {name}: read"] += 1


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "image"


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.sampled_from(sorted(IMAGES)), byte_ops)
# Found by tools/fuzz_codec.py: Pillow raised TypeError("Missing dimensions") counting the frames.
@example("tiff", [("flip", 130, b"\0")])
@example("tiff", [("set", 1267, b"\0\0\0\1")])
def test_image_reader_survives_mutated_files(image_path, name, ops) -> None:
    check_image_reader(image_path, name, _edit(IMAGES[name], ops))
