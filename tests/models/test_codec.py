"""The image codec: bit-exact round trips of real photos of any size and mode, determinism, and
every kind of damaged, forged or desynchronized file refused with a typed error."""

from __future__ import annotations

import dataclasses
import io
import math
import os
import zlib
from importlib.resources import files

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from compressai.ans import RansDecoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import hpcm_models.codec as codec_module
from hpcm_models import HPCM_BASE, HPCM_MICRO, available_models, get_model
from hpcm_models.codec import ImageCodec
from hpcm_models.container import (
    Header,
    ImageMode,
    Limits,
    StreamKind,
    make_header_streams,
    read_container,
    write_container,
)
from hpcm_models.devices import deterministic_coding
from hpcm_models.entropy import RansTables as _RansTables
from hpcm_models.errors import (
    BitstreamError,
    CorruptBitstreamError,
    DecodeMismatchError,
    EncodeError,
    FileAccessError,
    ImageError,
    LimitExceededError,
    TruncatedBitstreamError,
    UnsupportedFormatError,
    WeightsMismatchError,
)
from hpcm_models.hashes import config_hash, weights_hash
from hpcm_models.image_io import read_image

MICRO = HPCM_MICRO  # the full coding schedule with the narrowest transforms
MICRO_KWARGS = {"M": 16, "N": 8, "config": MICRO}
TINY = dataclasses.replace(HPCM_BASE, transform_channels=(16, 32, 64), g_a_depths=(1, 1, 1))

PHOTOS = ("coffee", "chelsea", "astronaut", "rocket", "camera")


# One intra-op thread (tests/conftest.py): the codec codes with one anyway; the CPU is shared.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def photo(width: int, height: int, index: int = 0) -> Image.Image:
    """A bundled photo resized to ``width x height`` (RGB)."""
    name = PHOTOS[index % len(PHOTOS)]
    with Image.open(files("hpcm_models") / "data" / f"{name}.png") as image:
        return image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)


def lively(model):
    """Adjust the parity recipe so that the latents look like a trained model's: ŷ of a few units,
    scales spread over the whole table, a few latents beyond it (the recipe alone gives scales
    below the table's first entry everywhere, which would leave the context model untested)."""
    M = model.M
    with torch.no_grad():
        model.g_a.branch[-1].weight.mul_(10)
        to_params = [m for m in model.h_s.modules() if isinstance(m, torch.nn.ConvTranspose2d)][-1]
        to_params.bias[:M].add_(2)  # the hyperprior's scales
        for prior in (model.y_spatial_prior_s1_s2, model.y_spatial_prior_s3):
            # The convolution that outputs the 2M entropy parameters (scales first).
            out = [m for m in prior.modules() if isinstance(m, torch.nn.Conv2d)][-1]
            assert out.out_channels == 2 * M
            out.weight.mul_(0.3)
            out.bias[:M].copy_(torch.exp(torch.linspace(0, math.log(30), M)))
    return model


def micro_model(parity_weights, seed: int = 0):
    model = lively(parity_weights(get_model("hpcm-base", **MICRO_KWARGS))).eval()
    if seed:
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
    model.update()
    return model


@pytest.fixture(scope="module")
def micro(parity_weights) -> ImageCodec:
    return ImageCodec(micro_model(parity_weights))


@pytest.fixture(scope="module")
def tiny(parity_weights) -> ImageCodec:
    model = lively(parity_weights(get_model("hpcm-base", M=32, N=16, config=TINY))).eval()
    model.update()
    return ImageCodec(model)


@pytest.fixture(scope="module")
def small_file(micro) -> bytes:
    return micro.encode(photo(16, 12))


def reference_pixels(codec: ImageCodec, rgb: np.ndarray, gray: bool = False) -> np.ndarray:
    """What the decoded pixels must be: the model's own forward pass on the edge-replicated image,
    cropped, clamped and rounded (an independent path through the model)."""
    h, w = rgb.shape[:2]
    x = torch.from_numpy(np.array(rgb.transpose(2, 0, 1), order="C"))[None].float() / 255
    x = F.pad(x, (0, -w % 128, 0, -h % 128), mode="replicate").contiguous()
    with deterministic_coding(), torch.no_grad():
        x_hat = codec.model(x, training=False)["x_hat"].clamp(0, 1)[0, :, :h, :w]
    if gray:
        x_hat = x_hat.mean(0, keepdim=True)
    out = (x_hat * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return out[:, :, 0] if gray else out


def forge(data: bytes, streams: dict[StreamKind, bytes] | None = None, **fields) -> bytes:
    """Rewrite a file with other header fields and/or streams, with valid CRCs."""
    header, parts = read_container(data)
    by_kind = dict(zip(header.stream_kinds, parts, strict=True))
    by_kind.update(streams or {})
    kinds, lengths, crcs = make_header_streams(list(by_kind.items()))
    header = dataclasses.replace(
        header, stream_kinds=kinds, stream_lengths=lengths, stream_crcs=crcs, **fields
    )
    return write_container(header, list(by_kind.values()))


# ---------------------------------------------------------------- round trips

SIZES = [
    (1, 1), (1, 257), (257, 1), (63, 65), (65, 63), (2, 3), (16, 16), (127, 127),
    (128, 128), (129, 129), (127, 129), (255, 1), (1, 513), (200, 301), (301, 200),
    (384, 256), (256, 384), (171, 256), (383, 129), (511, 17), (17, 511), (640, 480),
    (479, 641), (767, 513), (999, 3), (3, 999), (1000, 1), (513, 1000), (1000, 997),
    (333, 777), (97, 89),
]  # fmt: skip


@pytest.mark.parametrize(("width", "height"), SIZES, ids=lambda v: str(v))
def test_round_trip_of_every_size_is_bit_exact(micro, width, height) -> None:
    image = photo(width, height, index=width + height)
    encoded = micro.encode_detailed(image)
    decoded = micro.decode_detailed(encoded.data)
    assert decoded.image.size == (width, height)
    assert decoded.image.mode == "RGB"
    assert torch.equal(decoded.y_hat, encoded.y_hat)  # the decoder rebuilt the encoder's ŷ
    header = encoded.header
    assert (header.padded_width, header.padded_height) == (
        -(-width // 128) * 128,
        -(-height // 128) * 128,
    )
    assert header.y_shape == (16, header.padded_height // 16, header.padded_width // 16)
    np.testing.assert_array_equal(
        np.asarray(decoded.image), reference_pixels(micro, np.asarray(image))
    )


@pytest.mark.parametrize("name", available_models())
def test_every_registered_model_round_trips(parity_weights, name) -> None:
    """The codec works for any registered HPCM variant (RWKV phases included)."""
    model = lively(parity_weights(get_model(name, **MICRO_KWARGS))).eval()
    codec = ImageCodec(model)
    assert codec.model_id == name
    image = photo(40, 30, index=len(name))
    encoded = codec.encode_detailed(image)
    assert read_container(encoded.data)[0].model_id == name
    decoded = codec.decode_detailed(encoded.data)
    assert torch.equal(decoded.y_hat, encoded.y_hat)
    np.testing.assert_array_equal(
        np.asarray(decoded.image), reference_pixels(codec, np.asarray(image))
    )
    assert codec.encode(image) == encoded.data


def _transparent_palette(image: Image.Image) -> Image.Image:
    palette = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    return palette


def _with_alpha(image: Image.Image, mode: str) -> Image.Image:
    w, h = image.size
    alpha = Image.linear_gradient("L").resize((w, h)).point(lambda v: (v * 7) % 256)
    base = image.convert(mode[:-1] if mode != "RGBA" else "RGB")
    base.putalpha(alpha)
    return base


MODES = {
    # name: (build from an RGB photo, mode after decoding, the planes the model coded)
    "RGB": (lambda im: im, "RGB"),
    "L": (lambda im: im.convert("L"), "L"),
    "RGBA": (lambda im: _with_alpha(im, "RGBA"), "RGBA"),
    "LA": (lambda im: _with_alpha(im, "LA"), "LA"),
    "P": (lambda im: im.convert("P", palette=Image.Palette.ADAPTIVE, colors=37), "RGB"),
    "P+transparency": (lambda im: _transparent_palette(im), "RGBA"),
    "1": (lambda im: im.convert("1"), "L"),
    "CMYK": (lambda im: im.convert("CMYK"), "RGB"),
}


@pytest.mark.parametrize("name", list(MODES))
def test_modes_are_restored(micro, name) -> None:
    build, restored = MODES[name]
    image = build(photo(63, 65, index=2))
    decoded = micro.decode(micro.encode(image))
    assert decoded.mode == restored
    assert decoded.size == image.size
    expected = image.convert(restored)
    gray = restored in ("L", "LA")
    coded = np.asarray(expected.convert("RGB"))
    pixels = np.asarray(decoded)
    color = (
        pixels[..., 0] if restored == "LA" else pixels[..., :3] if restored == "RGBA" else pixels
    )
    np.testing.assert_array_equal(color, reference_pixels(micro, coded, gray=gray))
    if restored in ("RGBA", "LA"):  # alpha is lossless
        np.testing.assert_array_equal(pixels[..., -1], np.asarray(expected)[..., -1])


@pytest.mark.parametrize(
    ("width", "height", "mode"), [(384, 256, "RGB"), (63, 65, "L"), (1, 129, "RGBA")]
)
def test_codec_matches_the_models_compress_and_decompress(tiny, width, height, mode) -> None:
    """The codec's latents are those of HPCM.compress, its image that of HPCM.decompress."""
    image = photo(width, height, index=1).convert(mode)
    encoded = tiny.encode_detailed(image)
    decoded = tiny.decode_detailed(encoded.data)
    rgb = np.asarray(image.convert("RGB"))
    x = torch.from_numpy(np.array(rgb.transpose(2, 0, 1), order="C"))[None].float() / 255
    x = F.pad(x, (0, -width % 128, 0, -height % 128), mode="replicate").contiguous()
    with deterministic_coding():
        reference = tiny.model.compress(x)
        x_hat = tiny.model.decompress(reference["strings"], reference["shape"])["x_hat"]
    assert torch.equal(encoded.y_hat, reference["y_hat"])
    assert torch.equal(decoded.y_hat, reference["y_hat"])
    assert torch.equal(decoded.x_hat, x_hat)
    planes = x_hat[0, :, :height, :width]
    if mode == "L":
        planes = planes.mean(0, keepdim=True)
    expected = (planes * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    pixels = np.asarray(decoded.image)
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    np.testing.assert_array_equal(pixels[..., : expected.shape[2]], expected)
    # The container adds a header of ~150 bytes (and the escapes and alpha) to the model's streams.
    payload = sum(len(s[0]) for s in reference["strings"])
    alpha = len(zlib.compress(b"\xff" * (width * height), 9)) if mode == "RGBA" else 0
    assert len(encoded.data) - payload < 200 + 8 * encoded.escapes + alpha


def test_same_image_gives_the_same_bytes(parity_weights, micro) -> None:
    image = photo(150, 131, index=3)
    first = micro.encode(image)
    assert micro.encode(image) == first
    # A fresh model built the same way, and coding after unrelated work, change nothing.
    other = ImageCodec(micro_model(parity_weights))
    torch.rand(1000) @ torch.rand(1000)
    assert other.encode(image) == first
    assert other.weights_hash == micro.weights_hash
    assert other.config_hash == micro.config_hash


def test_deterministic_coding_restores_the_settings() -> None:
    before = (torch.are_deterministic_algorithms_enabled(), torch.get_float32_matmul_precision())
    benchmark = torch.backends.cudnn.benchmark
    seen = {}

    def code_and_fail() -> None:
        with deterministic_coding():
            seen["deterministic"] = torch.are_deterministic_algorithms_enabled()
            seen["benchmark"] = torch.backends.cudnn.benchmark
            seen["threads"] = torch.get_num_threads()
            seen["precision"] = {
                torch.backends.cuda.matmul.fp32_precision,
                torch.backends.cudnn.conv.fp32_precision,
                torch.backends.mkldnn.matmul.fp32_precision,
                torch.backends.mkldnn.conv.fp32_precision,
            }
            raise KeyError("an error inside")

    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("medium")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(KeyError):
            code_and_fail()
        # One CPU thread: reductions split by thread count would make the bytes machine-dependent.
        assert seen == {
            "deterministic": True,
            "benchmark": False,
            "threads": 1,
            "precision": {"ieee"},
        }
        assert torch.get_num_threads() == 2
        assert torch.backends.cudnn.benchmark
        assert torch.get_float32_matmul_precision() == "medium"
        assert torch.are_deterministic_algorithms_enabled() == before[0]
    finally:
        torch.backends.cudnn.benchmark = benchmark
        torch.set_float32_matmul_precision(before[1])
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- damaged files


def test_every_truncation_is_refused(micro, small_file) -> None:
    for n in range(len(small_file)):
        with pytest.raises(BitstreamError) as err:
            micro.decode(small_file[:n])
        assert isinstance(err.value, TruncatedBitstreamError | UnsupportedFormatError), n


def test_every_bit_flip_is_refused(micro, small_file) -> None:
    header_end = 18 + int.from_bytes(small_file[10:14], "little")
    for i in range(len(small_file) * 8):
        damaged = bytearray(small_file)
        damaged[i // 8] ^= 1 << (i % 8)
        with pytest.raises(BitstreamError) as err:
            micro.decode(bytes(damaged))
        if i // 8 >= header_end:  # a stream byte: its CRC catches it
            assert "checksum" in str(err.value)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=300))
def test_random_bytes_are_refused(micro, data) -> None:
    with pytest.raises(BitstreamError):
        micro.decode(data)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(min_size=1, max_size=200))
def test_random_bytes_after_a_valid_prefix_are_refused(micro, small_file, tail) -> None:
    with pytest.raises(BitstreamError):
        micro.decode(small_file[:14] + tail)


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"width": 200}, CorruptBitstreamError, "padded width 128 inconsistent with 200"),
        ({"width": 17}, DecodeMismatchError, "latent hash"),
        ({"mode": ImageMode.L}, DecodeMismatchError, "latent hash"),
        ({"padded_width": 256}, CorruptBitstreamError, "padded size"),
        ({"y_shape": (16, 8, 7)}, CorruptBitstreamError, "latent shapes"),
        ({"z_shape": (9, 2, 2)}, CorruptBitstreamError, "latent shapes"),
        ({"mode": ImageMode.RGBA}, CorruptBitstreamError, "do not fit a RGBA image"),
        ({"model_id": "hpcm-large"}, WeightsMismatchError, "model 'hpcm-large', not 'hpcm-base'"),
        ({"weights_hash": bytes(16)}, WeightsMismatchError, "other weights: weights hash 0000"),
        ({"config_hash": bytes(16)}, WeightsMismatchError, "another configuration"),
        ({"latent_hash": bytes(16)}, DecodeMismatchError, "latent hash"),
        ({"width": 1 << 17}, LimitExceededError, "image width"),
    ],
)
def test_forged_headers_are_refused(micro, small_file, fields, error, match) -> None:
    """Headers with valid CRCs but fields that do not fit the model or the streams."""
    with pytest.raises(error, match=match):
        micro.decode(forge(small_file, **fields))


def _escapes(deltas: list[int], excess: list[int]) -> bytes:
    return np.asarray(deltas, "<u4").tobytes() + np.asarray(excess, "<i4").tobytes()


@pytest.mark.parametrize(
    ("kind", "payload", "match"),
    [
        (StreamKind.Y, b"\x00" * 6, "not a rANS stream"),
        (StreamKind.Y, b"\x01" * 9, "not a rANS stream"),
        (StreamKind.Y, bytes(8), "invalid rANS state"),
        (StreamKind.Z, b"\xff" * 4096, "longer than"),
        (StreamKind.ESCAPES, b"garbage", "not valid zlib"),
        (StreamKind.ESCAPES, zlib.compress(bytes(8)) + b"x", "does not end where"),
        (StreamKind.ESCAPES, zlib.compress(bytes(7)), "entries of 8 bytes"),
        (StreamKind.ESCAPES, zlib.compress(b""), "entries of 8 bytes"),
        (StreamKind.ESCAPES, zlib.compress(_escapes([0, 0], [1, 1])), "not increasing"),
        (StreamKind.ESCAPES, zlib.compress(_escapes([5000], [1])), "not increasing"),
        (StreamKind.ESCAPES, zlib.compress(_escapes([3], [0])), "inside its table"),
        (StreamKind.ESCAPES, zlib.compress(bytes(10**6)), "does not end where"),  # bomb
        (StreamKind.ALPHA, b"alpha", "do not fit"),
    ],
)
def test_forged_streams_are_refused(micro, small_file, kind, payload, match) -> None:
    with pytest.raises(CorruptBitstreamError, match=match):
        micro.decode(forge(small_file, {kind: payload}))


def test_forged_alpha_is_refused(micro) -> None:
    data = micro.encode(_with_alpha(photo(9, 7), "LA"))
    for payload, match in [
        (b"not zlib", "not valid zlib"),
        (zlib.compress(bytes(62)), "exactly 9x7"),
        (zlib.compress(bytes(64)), "exactly 9x7"),
        (zlib.compress(bytes(63)) + b"x", "exactly 9x7"),
    ]:
        with pytest.raises(CorruptBitstreamError, match=match):
            micro.decode(forge(data, {StreamKind.ALPHA: payload}))


def _rans_stream(data: st.DataObject, max_words: int) -> bytes:
    state = data.draw(st.integers(1 << 31, (1 << 64) - 1)).to_bytes(8, "little")
    words = data.draw(st.integers(0, max_words))
    return state + data.draw(st.binary(min_size=4 * words, max_size=4 * words))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_garbage_streams_with_valid_checksums_are_refused(micro, small_file, data) -> None:
    """Crafted files (any stream content, CRCs recomputed): the decoder runs on garbage and must
    report a desync, never return an image or crash. A first state no encoder writes (>= 2^63)
    is refused before decoding."""
    header, _ = read_container(small_file)
    kind = data.draw(st.sampled_from([StreamKind.Y, StreamKind.Z]))
    count = int(np.prod(header.y_shape if kind == StreamKind.Y else header.z_shape))
    stream = _rans_stream(data, (2 * count + 8) // 4)
    forged = forge(small_file, {kind: stream})
    if int.from_bytes(stream[:8], "little") >= 1 << 63:
        with pytest.raises(CorruptBitstreamError, match="invalid rANS state"):
            micro.decode(forged)
        return
    try:
        decoded = micro.decode(forged)
    except DecodeMismatchError:
        return
    # rANS decoding is not injective: other bytes may decode to the very same symbols, which
    # is then the right image. Anything else would have been refused.
    assert decoded.tobytes() == micro.decode(small_file).tobytes()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_rans_decoder_reads_at_most_one_word_per_symbol(micro, data) -> None:
    """The bound the old path's padding relies on (``coder="compressai"``): with the codec's
    tables (no escape symbol), CompressAI's decoder reads only the first 8 + 4n bytes of n
    symbols, whatever the stream holds. Bytes placed after them cannot change a single decoded
    symbol."""
    tables = micro._tables[data.draw(st.sampled_from(["y", "z"]))]
    rows = (tables.compressai_rows(), tables.sizes.tolist(), tables.offsets.tolist())
    n = data.draw(st.integers(1, 300))
    indexes = data.draw(st.lists(st.integers(0, tables.rows - 1), min_size=n, max_size=n))
    stream = data.draw(st.binary(min_size=8, max_size=8 + 4 * n))
    stream += bytes(8 + 4 * n - len(stream))
    results = []
    for tail in (bytes(64), b"\xff" * 64, data.draw(st.binary(min_size=64, max_size=64))):
        decoder = RansDecoder()
        decoder.set_stream(stream + tail)
        results.append(decoder.decode_stream(indexes, *rows))
    assert results[0] == results[1] == results[2]
    assert all(
        lo <= v <= hi
        for v, lo, hi in zip(results[0], tables.low[indexes], tables.high[indexes], strict=True)
    )


def test_escape_tables_would_read_past_any_fixed_padding(micro) -> None:
    """Why the codec drops the escape symbol: CompressAI's bypass decoding of a crafted stream
    (all ones) reads beyond 8 + 4n bytes, so the bytes after them change the result."""
    model = micro.model
    cdfs = [
        model.quantized_cdf_y[i, :n].tolist() for i, n in enumerate(model.cdf_length_y.tolist())
    ]
    tables = (cdfs, model.cdf_length_y.tolist(), model.offset_y.tolist())
    n = 200
    stream = b"\xff" * 64 + bytes(8 + 4 * n - 64)
    results = []
    for tail in (bytes(4096), b"\xff" * 4096):
        decoder = RansDecoder()
        decoder.set_stream(stream + tail)
        results.append(decoder.decode_stream([0] * n, *tables))
    assert results[0] != results[1]


# ---------------------------------------------------------------- escapes


def test_latents_outside_the_tables_travel_as_escapes(parity_weights) -> None:
    model = micro_model(parity_weights)
    with torch.no_grad():  # latents far beyond what the tables were built for
        model.g_a.branch[-1].weight.mul_(300)
    codec = ImageCodec(model)
    encoded = codec.encode_detailed(photo(70, 50, index=4))
    assert encoded.escapes > 0
    assert StreamKind.ESCAPES in encoded.header.stream_kinds
    decoded = codec.decode_detailed(encoded.data)
    assert torch.equal(decoded.y_hat, encoded.y_hat)
    assert encoded.y_hat.abs().max() > 100
    # An escape beyond the other edge of the table contradicts the decoded symbol: a desync.
    header, streams = read_container(encoded.data)
    raw = bytearray(zlib.decompress(streams[header.stream_index(StreamKind.ESCAPES)]))
    count = len(raw) // 8
    assert count == encoded.escapes
    excess = np.frombuffer(bytes(raw), "<i4", count, offset=4 * count).copy()
    excess[0] = -excess[0]
    raw[4 * count :] = excess.astype("<i4").tobytes()
    with pytest.raises(DecodeMismatchError, match="escaped values"):
        codec.decode(forge(encoded.data, {StreamKind.ESCAPES: zlib.compress(bytes(raw))}))


def test_broken_weights_raise_encode_error(parity_weights) -> None:
    model = micro_model(parity_weights)
    with torch.no_grad():
        model.g_a.branch[0].weight.fill_(float("nan"))
    with pytest.raises(EncodeError, match="non-finite"):
        ImageCodec(model).encode(photo(8, 8))


# ---------------------------------------------------------------- model mismatch and desync


def test_other_weights_are_refused_naming_both_hashes(parity_weights, micro, small_file) -> None:
    other = ImageCodec(micro_model(parity_weights, seed=1))
    with pytest.raises(WeightsMismatchError) as err:
        other.decode(small_file)
    assert micro.weights_hash.hex() in str(err.value)
    assert other.weights_hash.hex() in str(err.value)


def test_other_rans_tables_are_refused(parity_weights, small_file) -> None:
    model = micro_model(parity_weights)
    model.update(torch.exp(torch.linspace(-2, 4, 40)), force=True)
    with pytest.raises(WeightsMismatchError, match="rANS tables"):
        ImageCodec(model).decode(small_file)


def test_other_architecture_is_refused(parity_weights, small_file) -> None:
    config = dataclasses.replace(MICRO, window_sizes=(2, 4, 4))  # same weights, other attention
    model = lively(parity_weights(get_model("hpcm-base", M=16, N=8, config=config))).eval()
    with pytest.raises(WeightsMismatchError, match="another configuration"):
        ImageCodec(model).decode(small_file)


def test_hashes_are_stable(micro) -> None:
    model = micro.model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert weights_hash(model) == micro.weights_hash
    model.update(force=True)
    assert config_hash(model, "hpcm-base") == micro.config_hash
    assert config_hash(model, "hpcm-large") != micro.config_hash
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("perturbation", ["scale indexes", "hyperprior"])
def test_forced_desync_is_refused(micro, monkeypatch, perturbation) -> None:
    """A decoder whose entropy parameters differ from the encoder's (as on another device) must
    report the desync instead of returning an image."""
    data = micro.encode(photo(200, 130, index=1))
    if perturbation == "scale indexes":
        original = codec_module._scale_indexes

        def shifted(model, scales):
            index = original(model, scales)
            return (index + 1).clamp_(max=model.scale_table.numel() - 1)

        monkeypatch.setattr(codec_module, "_scale_indexes", shifted)
    else:
        hook = micro.model.h_s.register_forward_hook(lambda m, i, out: out * 1.01)
    try:
        with pytest.raises(DecodeMismatchError, match="lost synchronization"):
            micro.decode(data)
    finally:
        if perturbation != "scale indexes":
            hook.remove()
    monkeypatch.undo()
    assert micro.decode(data).size == (200, 130)  # unperturbed, the same file decodes


# ---------------------------------------------------------------- images and limits


def test_image_limits(micro) -> None:
    small = ImageCodec(micro.model, limits=Limits(max_pixels=100))
    with pytest.raises(ImageError, match="exceeds the limit of 100 pixels"):
        small.encode(photo(11, 10))
    data = micro.encode(photo(11, 10))
    with pytest.raises(LimitExceededError, match="exceeds the limit of 100 pixels"):
        small.decode(data)
    with pytest.raises(LimitExceededError, match="latent shape"):
        ImageCodec(micro.model, limits=Limits(max_latent_elements=500)).decode(data)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Image.new("I;16", (8, 8)), "more than 8 bits"),
        (lambda: Image.new("F", (8, 8)), "more than 8 bits"),
        (lambda: Image.new("I", (8, 8)), "more than 8 bits"),
        (lambda: Image.new("HSV", (8, 8)), "not supported"),
    ],
)
def test_unsupported_images(micro, make, match) -> None:
    with pytest.raises(ImageError, match=match):
        micro.encode(make())


def test_read_image(tmp_path) -> None:
    # EXIF orientation is applied: a 30x20 image tagged "rotate 90" is coded as 20x30.
    exif = Image.Exif()
    exif[0x0112] = 6
    photo(30, 20).save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert read_image(tmp_path / "rotated.jpg").size == (20, 30)
    frames = [photo(8, 8, i) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match="3 frames"):
        read_image(tmp_path / "anim.gif")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageError, match="not an image Pillow can read"):
        read_image(tmp_path / "text.png")
    buffer = io.BytesIO()
    photo(64, 64).save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[:300])
    with pytest.raises(ImageError, match="damaged or truncated"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(FileAccessError, match="no such file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="exceeds the limit"):
        read_image(tmp_path / "rotated.jpg", Limits(max_pixels=599))


def test_tables_from_a_damaged_checkpoint_are_refused(parity_weights) -> None:
    from hpcm_models.errors import CheckpointError

    model = micro_model(parity_weights)
    model.quantized_cdf_y[3, 2] = 0  # no longer increasing
    with pytest.raises(CheckpointError, match="row 3 of y is malformed"):
        _RansTables.from_model(model, "y")


def test_header_is_documented_size(small_file) -> None:
    """docs/format.md gives the fixed part of the header: keep them in sync."""
    header, _ = read_container(small_file)
    body = header.pack()
    assert len(body) == 1 + len(header.model_id) + 91 + 9 * len(header.stream_kinds)
    assert isinstance(header, Header)


# ---------------------------------------------------------------- CUDA


@pytest.mark.cuda
def test_cuda_round_trip_is_bit_exact_and_deterministic(parity_weights) -> None:
    model = micro_model(parity_weights).cuda()
    codec = ImageCodec(model)
    image = photo(301, 200)
    encoded = codec.encode_detailed(image)
    assert codec.encode(image) == encoded.data
    decoded = codec.decode_detailed(encoded.data)
    assert torch.equal(decoded.y_hat, encoded.y_hat)
    assert decoded.x_hat.device.type == "cuda"


@pytest.mark.cuda
@pytest.mark.parametrize("size", ["micro", "base"])
def test_gpu_encode_cpu_decode_is_bit_exact_or_refused(
    parity_weights, size, record_property
) -> None:
    """Encoded on the GPU, decoded on the CPU: the latents are identical or the file is refused
    (DecodeMismatchError); never a wrong image. Reports which happened."""
    if size == "micro":
        gpu, cpu = micro_model(parity_weights), micro_model(parity_weights)
        image = photo(301, 200)
    else:
        gpu = parity_weights(get_model("hpcm-base")).eval()
        cpu = parity_weights(get_model("hpcm-base")).eval()
        gpu.update()
        cpu.update()
        image = photo(768, 512)
        torch.set_num_threads(os.cpu_count() or 1)  # the CPU decode of a 768x512 photo
    gpu_codec, cpu_codec = ImageCodec(gpu.cuda()), ImageCodec(cpu)
    assert gpu_codec.weights_hash == cpu_codec.weights_hash
    assert gpu_codec.config_hash == cpu_codec.config_hash
    encoded = gpu_codec.encode_detailed(image)
    on_gpu = np.asarray(gpu_codec.decode(encoded.data)).astype(int)
    try:
        decoded = cpu_codec.decode_detailed(encoded.data)
    except DecodeMismatchError as err:
        record_property("gpu_to_cpu", f"refused: {err}")
        print(f"\n[{size}] GPU -> CPU: refused (DecodeMismatchError)")
        return
    diff = np.abs(np.asarray(decoded.image).astype(int) - on_gpu)
    record_property("gpu_to_cpu", f"decoded; max pixel diff vs GPU decode {diff.max()}")
    print(
        f"\n[{size}] GPU -> CPU: same latents; pixels differ from the GPU decode by <= {diff.max()}"
    )
    torch.testing.assert_close(decoded.y_hat, encoded.y_hat.cpu(), rtol=1e-4, atol=1e-4)
    assert diff.max() <= 2
    assert diff.mean() < 0.01


@pytest.mark.cuda
@pytest.mark.parametrize("size", ["micro", "base"])
def test_cuda_graphs_give_the_same_files_and_images(parity_weights, size) -> None:
    """The graphed codec runs the eager codec's kernels: identical bytes, latents and pixels, in
    every combination of graphed and eager encoder and decoder."""
    if size == "micro":
        model, image = micro_model(parity_weights).cuda(), photo(301, 200)
    else:
        model = parity_weights(get_model("hpcm-base")).eval().cuda()
        model.update()
        image = photo(768, 512)
    eager = ImageCodec(model, cuda_graphs=False)
    graphed = ImageCodec(model, cuda_graphs=True)
    auto = ImageCodec(model)
    assert eager.synthesis == graphed.synthesis == auto.synthesis == "tf32"
    reference = eager.encode_detailed(image)
    assert graphed.encode(image) == reference.data
    assert graphed.encode(image) == reference.data  # replayed, not just captured
    assert auto.encode(image) == reference.data  # first sight: eager
    assert auto.encode(image) == reference.data  # second: captured
    eager_decoded = eager.decode_detailed(reference.data)
    for codec in (graphed, graphed, auto, auto):
        decoded = codec.decode_detailed(reference.data)
        assert torch.equal(decoded.y_hat, reference.y_hat)
        assert torch.equal(decoded.x_hat, eager_decoded.x_hat)
    assert len(graphed._graphs) == 2
    assert len(auto._graphs) == 2
    # Another size gets its own graphs; the first keeps working.
    other = photo(200, 130, index=1)
    assert graphed.decode(graphed.encode(other)).size == (200, 130)
    assert graphed.encode(image) == reference.data


@pytest.mark.cuda
@pytest.mark.parametrize("synthesis", ["tf32", "bf16"])
def test_fast_synthesis_changes_pixels_not_bits(parity_weights, synthesis) -> None:
    model = micro_model(parity_weights).cuda()
    exact = ImageCodec(model, cuda_graphs=True, synthesis="fp32")
    fast = ImageCodec(model, cuda_graphs=True, synthesis=synthesis)
    image = photo(301, 200)
    data = exact.encode(image)
    assert fast.encode(image) == data  # the encoder does not run g_s
    a, b = exact.decode_detailed(data), fast.decode_detailed(data)
    assert torch.equal(a.y_hat, b.y_hat)
    diff = np.abs(np.asarray(a.image).astype(int) - np.asarray(b.image).astype(int))
    assert diff.max() <= (2 if synthesis == "tf32" else 8)


@pytest.mark.cuda
def test_graphed_decoder_refuses_a_desynchronized_file(parity_weights) -> None:
    model = micro_model(parity_weights).cuda()
    data = ImageCodec(model).encode(photo(200, 130, index=1))
    hook = model.h_s.register_forward_hook(lambda m, i, out: out * 1.01)
    try:
        codec = ImageCodec(model, cuda_graphs=True)  # captures the perturbed hyperprior
        with pytest.raises(DecodeMismatchError, match="lost synchronization"):
            codec.decode(data)
    finally:
        hook.remove()


def test_codec_options_are_checked(micro) -> None:
    with pytest.raises(ValueError, match="expected a precision in"):
        ImageCodec(micro.model, synthesis="fp16")
    with pytest.raises(ValueError, match="expected cuda_graphs None, True or False"):
        ImageCodec(micro.model, cuda_graphs="yes")


def test_graphs_are_not_used_on_the_cpu(micro) -> None:
    codec = ImageCodec(micro.model, cuda_graphs=True)
    image = photo(200, 130)
    assert codec.decode(codec.encode(image)).size == (200, 130)
    assert len(codec._graphs) == 0
