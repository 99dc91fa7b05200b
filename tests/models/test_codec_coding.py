"""The codec's entropy-coding path: ``hpcm_models.ans`` writes and reads exactly the bytes of the
old path (CompressAI's coder behind Python lists) for several models and sizes, both decode each
other's files, the latent hash computed in a worker thread equals the plain one, damaged streams
give typed errors through either coder, and numba is loaded only when a codec is built."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models.test_codec import (
    MICRO_KWARGS,
    TINY,
    forge,
    lively,
    micro_model,
    photo,
)

import hpcm_models.codec as codec_module
from hpcm_models import ans, get_model, rans
from hpcm_models.codec import ImageCodec
from hpcm_models.container import ImageMode, StreamKind, read_container
from hpcm_models.errors import (
    BitstreamError,
    DecodeMismatchError,
    TruncatedBitstreamError,
    UnsupportedFormatError,
)
from hpcm_models.hashes import LatentHasher, latent_hasher
from hpcm_models.recipe import fill_recipe_weights

# One intra-op thread (tests/conftest.py), as in test_codec.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def codecs(model) -> tuple[ImageCodec, ImageCodec]:
    """The new path and the old one on the same model."""
    return ImageCodec(model, coder="ans"), ImageCodec(model, coder="compressai")


def _small_model():
    model = fill_recipe_weights(get_model("hpcm-small")).eval()
    model.update()
    return model


def _phase_model(parity_weights):
    return lively(parity_weights(get_model("hpcm-phase1", **MICRO_KWARGS))).eval()


def _tiny_model(parity_weights):
    return lively(parity_weights(get_model("hpcm-base", M=32, N=16, config=TINY))).eval()


def _escaping_model(parity_weights):
    model = micro_model(parity_weights)
    with torch.no_grad():  # latents far beyond the tables: many escapes
        model.g_a.branch[-1].weight.mul_(300)
    return model


CASES = {
    # name: (model builder, image sizes)
    "micro": (micro_model, [(1, 1), (63, 65), (301, 200)]),
    "phase1": (_phase_model, [(40, 30), (129, 257)]),
    "tiny": (_tiny_model, [(384, 256)]),
    "escapes": (_escaping_model, [(70, 50)]),
    "hpcm-small": (lambda _: _small_model(), [(200, 131)]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_new_and_old_path_write_the_same_bytes(parity_weights, name) -> None:
    build, sizes = CASES[name]
    new, old = codecs(build(parity_weights))
    assert (new.coder, old.coder) == ("ans", "compressai")
    for index, (width, height) in enumerate(sizes):
        image = photo(width, height, index=index + len(name))
        encoded = new.encode_detailed(image)
        assert old.encode(image) == encoded.data
        if name == "escapes":
            assert encoded.escapes > 0
        # Each path decodes the other's file (one file: they are the same bytes) to the same ŷ.
        for codec in (new, old):
            decoded = codec.decode_detailed(encoded.data)
            assert torch.equal(decoded.y_hat, encoded.y_hat)
        assert new.decode(encoded.data).tobytes() == old.decode(encoded.data).tobytes()


# ---------------------------------------------------------------- the hash thread


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 70_000), max_size=12), st.integers(0, 2**32 - 1))
def test_threaded_latent_hash_equals_the_plain_one(sizes, seed) -> None:
    rng = np.random.default_rng(seed)
    chunks = [rng.integers(-(2**31), 2**31, size, dtype=np.int64) for size in sizes]
    plain = latent_hasher(768, 512, ImageMode.RGB)
    for chunk in chunks:
        plain.update(chunk.astype("<i4").tobytes())
    digests = set()
    for threaded in (True, False, True):
        with LatentHasher(768, 512, ImageMode.RGB, threaded=threaded) as hasher:
            for chunk in chunks:
                hasher.update(chunk)  # int64 in: hashed as int32, as the codec's symbols
            digests.add(hasher.digest())
    assert digests == {plain.digest()}


def test_hash_thread_stops_on_errors_and_leaves_no_thread() -> None:
    before = {t.ident for t in threading.enumerate()}

    def fail_mid_file() -> None:
        with LatentHasher(8, 8, ImageMode.L) as hasher:
            hasher.update(np.arange(100_000, dtype=np.int32))
            raise KeyError("an error mid-file")

    with pytest.raises(KeyError):
        fail_mid_file()
    assert {t.ident for t in threading.enumerate() if t.name.startswith("hpcm")} <= before


def test_files_do_not_depend_on_the_hash_thread(parity_weights, monkeypatch) -> None:
    """The same bytes and images with the latent hash computed in the calling thread, and the
    same again when other threads load the machine."""
    model = micro_model(parity_weights)
    codec = ImageCodec(model)
    images = [photo(150, 131, index=i) for i in range(3)]
    files = [codec.encode(image) for image in images]
    pixels = [codec.decode(data).tobytes() for data in files]

    def plain(width, height, mode, *, threaded=True):
        return LatentHasher(width, height, mode, threaded=False)

    monkeypatch.setattr(codec_module, "LatentHasher", plain)
    assert [codec.encode(image) for image in images] == files
    assert [codec.decode(data).tobytes() for data in files] == pixels
    monkeypatch.undo()

    stop = threading.Event()

    def busy() -> None:  # competes for the GIL and the cores while the codec hashes
        while not stop.is_set():
            hashlib.sha256(bytes(1 << 16)).digest()
            sum(range(1000))

    others = [threading.Thread(target=busy) for _ in range(2)]
    for thread in others:
        thread.start()
    try:
        for _ in range(3):
            assert [codec.encode(image) for image in images] == files
            assert [codec.decode(data).tobytes() for data in files] == pixels
    finally:
        stop.set()
        for thread in others:
            thread.join()


# ---------------------------------------------------------------- damaged files, both coders


@pytest.fixture(scope="module")
def pair(parity_weights) -> tuple[ImageCodec, ImageCodec, bytes]:
    new, old = codecs(micro_model(parity_weights))
    return new, old, new.encode(photo(16, 12))


@pytest.mark.parametrize("coder", [0, 1], ids=["ans", "compressai"])
def test_truncations_and_bit_flips_give_typed_errors_with_either_coder(pair, coder) -> None:
    codec, data = pair[coder], pair[2]
    for n in range(0, len(data), 7):
        with pytest.raises((TruncatedBitstreamError, UnsupportedFormatError)):
            codec.decode(data[:n])
    for i in range(0, 8 * len(data), 13):
        damaged = bytearray(data)
        damaged[i // 8] ^= 1 << (i % 8)
        with pytest.raises(BitstreamError):
            codec.decode(bytes(damaged))


def pixels_or_error(codec: ImageCodec, data: bytes) -> bytes | DecodeMismatchError:
    """The decoded image's bytes, or the desync the decoder reported."""
    try:
        return codec.decode(data).tobytes()
    except DecodeMismatchError as err:
        return err


def _y_stream(data: bytes) -> bytes:
    header, streams = read_container(data)
    return streams[header.stream_index(StreamKind.Y)]


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda s: s + bytes(4), "words left"),  # a word the encoder did not write
        (lambda s: s[:-4], "ends before"),  # a word missing
        (lambda s: s[:8] + s[12:] + s[8:12], "reordered"),
    ],
    ids=["word appended", "word removed", "words reordered"],
)
def test_crafted_y_streams_with_valid_checksums_are_desyncs(pair, edit, why) -> None:
    """A stream whose CRC passes but that does not end with its symbols: ans checks the end and
    refuses it; CompressAI's decoder cannot, so it relies on the latent hash and returns the
    right image where the extra word changes no symbol (never a wrong one)."""
    new, old, data = pair
    stream = _y_stream(data)
    assert len(stream) > 12
    forged = forge(data, {StreamKind.Y: edit(stream)})
    with pytest.raises(DecodeMismatchError, match="lost synchronization"):
        new.decode(forged)
    outcome = pixels_or_error(old, forged)
    if isinstance(outcome, DecodeMismatchError):
        assert "lost synchronization" in str(outcome)
    else:
        assert why == "words left"
        assert outcome == new.decode(data).tobytes()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_both_coders_refuse_the_same_garbage(pair, data) -> None:
    """Random words after a valid state, CRCs recomputed: both coders refuse the file (or, had
    the bytes decoded to the same latents, return the same image)."""
    new, old, original = pair
    header, _ = read_container(original)
    kind = data.draw(st.sampled_from([StreamKind.Y, StreamKind.Z]))
    count = int(np.prod(header.y_shape if kind == StreamKind.Y else header.z_shape))
    state = data.draw(st.integers(1 << 31, (1 << 63) - 1)).to_bytes(8, "little")
    words = data.draw(st.integers(0, (2 * count + 8) // 4))
    stream = state + data.draw(st.binary(min_size=4 * words, max_size=4 * words))
    forged = forge(original, {kind: stream})
    fast, slow = (pixels_or_error(codec, forged) for codec in (new, old))
    if isinstance(fast, bytes):
        assert fast == new.decode(original).tobytes()
    assert isinstance(slow, DecodeMismatchError) or slow == fast


# ---------------------------------------------------------------- numba: lazy, optional


def test_importing_the_package_does_not_load_the_kernels() -> None:
    """The kernels are compiled or loaded when a codec is built, not on import. (numba itself may
    be imported with compressai, whose torch_geometric dependency uses it where installed.)"""
    kernels = "hpcm_models._ans_kernels"
    code = (
        "import sys, hpcm_models, hpcm_models.codec, hpcm_models.ans; "
        f"assert {kernels!r} not in sys.modules, 'kernels loaded on import'; "
        f"hpcm_models.ans.warm_up(); assert {kernels!r} in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_codec_falls_back_to_compressai_with_one_warning(parity_weights, monkeypatch) -> None:
    model = micro_model(parity_weights)
    image = photo(40, 30)
    expected = ImageCodec(model, coder="ans").encode(image)

    def broken() -> None:
        raise ImportError("No module named 'numba'")

    monkeypatch.setattr(ans, "warm_up", broken)
    rans._ans_problem.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="codes with CompressAI's rANS instead") as seen:
            codec, again = (ImageCodec(model) for _ in range(2))
        assert len(seen) == 1
        assert codec.coder == again.coder == "compressai"
        assert codec.encode(image) == expected
        with pytest.raises(ImportError, match="numba"):
            ImageCodec(model, coder="ans")
    finally:
        rans._ans_problem.cache_clear()
    with pytest.raises(ValueError, match="expected a coder in"):
        ImageCodec(model, coder="constriction")


def test_codec_tables_match_the_models_escape_free_tables(parity_weights) -> None:
    model = micro_model(parity_weights)
    for latent in ("z", "y"):
        fast = rans.codec_tables(model, latent)
        lists = model.entropy_estimation.rans_tables(latent, escapes=False)
        assert fast.compressai_rows() == lists.cdfs
        assert fast.sizes.tolist() == lists.sizes
        assert fast.offsets.tolist() == lists.offsets
        np.testing.assert_array_equal(fast.low, lists.low)
        np.testing.assert_array_equal(fast.high, lists.high)
