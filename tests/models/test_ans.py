"""The array rANS coder (``hpcm_models.ans``) against its references: CompressAI's coder (byte for
byte: the same bitstream) and a plain-Python rANS; round trips on real and adversarial tables,
bounded decoding of truncated, padded and random streams, typed errors."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcm_models import get_model
from hpcm_models.ans import STATE_MIN, AnsDecoder, AnsTables, decode, encode
from hpcm_models.ans_reference import (
    CompressAIDecoder,
    compressai_encode,
    decode_reference,
    encode_reference,
)
from hpcm_models.entropy import GeneralizedGaussian, RansTables, default_scale_table
from hpcm_models.errors import (
    BitstreamError,
    CheckpointError,
    CorruptBitstreamError,
    TruncatedBitstreamError,
)

TOTAL = 1 << 16


@pytest.fixture(scope="module")
def ggm_tables() -> AnsTables:
    """The tables of HPCM's entropy model (60 generalized-Gaussian scales, 5 to 699 entries)."""
    cdf, lengths, offsets = GeneralizedGaussian().quantized_cdfs(default_scale_table())
    return AnsTables.from_cdfs(cdf, lengths, offsets, name="y")


def random_cdf(rng: np.random.Generator, symbols: int, spike: bool = False) -> list[int]:
    """A CompressAI row for ``symbols`` regular symbols plus the escape: strictly increasing from
    0 to 2^16; ``spike`` puts nearly all mass on one symbol (the others get frequency 1)."""
    if spike:
        freq = np.ones(symbols + 1, dtype=np.int64)
        freq[rng.integers(symbols)] = TOTAL - symbols
    else:
        cuts = np.sort(rng.choice(np.arange(1, TOTAL), size=symbols, replace=False))
        freq = np.diff(np.concatenate([[0], cuts, [TOTAL]]))
    return np.concatenate([[0], np.cumsum(freq)]).tolist()


def adversarial_tables(rng: np.random.Generator, rows: int = 12) -> AnsTables:
    """Rows of 2 to 400 symbols, uniform or spiked, offsets anywhere in -500..500."""
    rows_ = [
        random_cdf(rng, int(rng.integers(2, 400)), spike=bool(r % 3 == 0)) for r in range(rows)
    ]
    width = max(map(len, rows_))
    cdf = np.zeros((rows, width), dtype=np.int64)
    for r, row in enumerate(rows_):
        cdf[r, : len(row)] = row
    lengths = [len(row) for row in rows_]
    return AnsTables.from_cdfs(cdf, lengths, rng.integers(-500, 500, rows))


def draw(tables: AnsTables, rng: np.random.Generator, n: int, *, uniform: bool = False):
    """``n`` (symbols, indexes): random rows; symbols from each row's distribution, or uniform
    over the row (every tail symbol as likely as the mode: many renormalizations)."""
    indexes = rng.integers(0, tables.rows, n).astype(np.int32)
    symbols = np.empty(n, dtype=np.int32)
    for r in np.unique(indexes):
        at = np.flatnonzero(indexes == r)
        count = int(tables.counts[r])
        if uniform:
            v = rng.integers(0, count, at.size)
        else:
            p = np.diff(tables.cdf[r, : count + 1]) / TOTAL
            v = rng.choice(count, at.size, p=p)
        symbols[at] = v + tables.offsets[r]
    return symbols, indexes


# ---------------------------------------------------------------- the same bitstream


@pytest.mark.parametrize("uniform", [False, True])
def test_streams_equal_compressai_on_the_model_tables(ggm_tables, uniform) -> None:
    rng = np.random.default_rng(1)
    symbols, indexes = draw(ggm_tables, rng, 50_000, uniform=uniform)
    data = encode(symbols, indexes, ggm_tables)
    assert data == compressai_encode(symbols, indexes, ggm_tables)
    assert np.array_equal(decode(data, indexes, ggm_tables), symbols)
    old = CompressAIDecoder(data, symbols.size, ggm_tables)
    assert np.array_equal(old.decode(indexes), symbols)


@pytest.mark.parametrize("seed", range(4))
def test_streams_equal_both_references_on_adversarial_tables(seed) -> None:
    rng = np.random.default_rng(seed)
    tables = adversarial_tables(rng)
    symbols, indexes = draw(tables, rng, 3000, uniform=seed % 2 == 0)
    data = encode(symbols, indexes, tables)
    assert data == encode_reference(symbols, indexes, tables)
    assert data == compressai_encode(symbols, indexes, tables)
    assert np.array_equal(decode(data, indexes, tables), symbols)
    assert np.array_equal(decode_reference(data, indexes, tables), symbols)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 300), uniform=st.booleans())
def test_round_trip_and_reference_property(seed, n, uniform) -> None:
    rng = np.random.default_rng(seed)
    tables = adversarial_tables(rng, rows=int(rng.integers(1, 6)))
    symbols, indexes = draw(tables, rng, n, uniform=uniform)
    data = encode(symbols, indexes, tables)
    assert data == encode_reference(symbols, indexes, tables)
    assert len(data) <= 8 + 4 * n  # at most one word per symbol
    assert np.array_equal(decode(data, indexes, tables), symbols)


def test_row_edges_and_one_word_per_symbol(ggm_tables) -> None:
    """The tail symbols (frequency 1 after the escape is removed: 16 bits each) at both edges of
    every row, back to back: one renormalization word per two symbols or so, exact round trip."""
    indexes = np.repeat(np.arange(ggm_tables.rows, dtype=np.int32), 40)
    symbols = np.where(
        np.arange(indexes.size) % 2 == 0, ggm_tables.low[indexes], ggm_tables.high[indexes]
    ).astype(np.int32)
    data = encode(symbols, indexes, ggm_tables)
    assert data == encode_reference(symbols, indexes, ggm_tables)
    assert len(data) > 8 + 1.5 * symbols.size  # mostly costly symbols
    assert np.array_equal(decode(data, indexes, ggm_tables), symbols)


def test_empty_and_single_symbol_streams(ggm_tables) -> None:
    empty = np.zeros(0, dtype=np.int32)
    data = encode(empty, empty, ggm_tables)
    assert data == STATE_MIN.to_bytes(8, "little")  # just the flushed initial state
    assert data == encode_reference(empty, empty, ggm_tables)
    assert decode(data, empty, ggm_tables).size == 0
    one = encode([3], [30], ggm_tables)
    assert one == encode_reference([3], [30], ggm_tables)
    assert decode(one, [30], ggm_tables).tolist() == [3]
    with pytest.raises(ValueError, match="overflows"):
        compressai_encode([3], [30], ggm_tables)  # the reference refuses what would crash it


def test_tables_match_the_codecs_escape_free_rows(parity_weights) -> None:
    """Built from a model's CompressAI tables, the rows are exactly the codec's (the config hash
    covers them, so plugging the coder in changes no hash)."""
    model = parity_weights(get_model("hpcm-base", M=16, N=8)).eval()
    model.update()
    for latent in ("y", "z"):
        tables = AnsTables.from_cdfs(
            getattr(model, f"quantized_cdf_{latent}"),
            getattr(model, f"cdf_length_{latent}"),
            getattr(model, f"offset_{latent}"),
            name=latent,
        )
        old = RansTables.from_model(model, latent)
        assert tables.compressai_rows() == old.cdfs
        assert tables.sizes.tolist() == old.sizes
        assert tables.offsets.tolist() == old.offsets
        assert np.array_equal(tables.low, old.low)
        assert np.array_equal(tables.high, old.high)


def test_stepwise_decoding_equals_one_shot(ggm_tables) -> None:
    rng = np.random.default_rng(7)
    symbols, indexes = draw(ggm_tables, rng, 20_000)
    data = encode(symbols, indexes, ggm_tables)
    decoder = AnsDecoder(data, ggm_tables)
    cuts = [0, 1, 1, 500, 7000, 19_999]  # an empty chunk and a one-symbol chunk included
    parts = [decoder.decode(indexes[a:b]) for a, b in itertools.pairwise(cuts)]
    out = np.empty(1, dtype=np.int32)
    parts.append(decoder.decode(indexes[19_999:], out=out))
    decoder.finish()
    assert np.array_equal(np.concatenate(parts), symbols)
    assert decoder.count == 20_000
    assert decoder.words_read == len(data) // 4


def test_threads_decode_independently(ggm_tables) -> None:
    """The kernels release the GIL; concurrent decoders share only the (read-only) tables."""
    rng = np.random.default_rng(3)
    jobs = [draw(ggm_tables, rng, 30_000) for _ in range(4)]
    streams = [encode(s, i, ggm_tables) for s, i in jobs]
    results: list = [None] * 4

    def run(k: int) -> None:
        results[k] = decode(streams[k], jobs[k][1], ggm_tables)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(r, s) for r, (s, _) in zip(results, jobs, strict=True))


# ---------------------------------------------------------------- bad input


def test_encoder_rejects_symbols_outside_their_row(ggm_tables) -> None:
    high = int(ggm_tables.high[5])
    with pytest.raises(ValueError, match=rf"symbol {high + 1} at position 2 is outside row 5"):
        encode([0, 0, high + 1, 0], [5, 5, 5, 5], ggm_tables)
    with pytest.raises(ValueError, match="table index 60 at position 1 is not a row"):
        encode([0, 0], [0, 60], ggm_tables)
    with pytest.raises(ValueError, match="as many table indexes as symbols"):
        encode([0, 0], [0], ggm_tables)
    with pytest.raises(ValueError, match="integer array"):
        encode(np.zeros(3), np.zeros(3, np.int32), ggm_tables)
    with pytest.raises(ValueError, match="beyond 32-bit"):
        encode(np.array([2**40]), np.array([0]), ggm_tables)


@pytest.mark.parametrize(
    ("row", "length", "message"),
    [
        ([0, 100, 100, 65536], 4, "row 0 of y is malformed"),  # not strictly increasing
        ([0, 100, 200, 65535], 4, "row 0 of y is malformed"),  # does not end at 2^16
        ([1, 100, 200, 65536], 4, "row 0 of y is malformed"),  # does not start at 0
        ([0, 100, 65536, 0], 3, "row lengths 3..3"),  # too short for a symbol and the escape
        ([0, 100, 200, 65536], 5, "row lengths 5..5"),  # longer than the array
    ],
)
def test_malformed_tables_are_refused(row, length, message) -> None:
    with pytest.raises(CheckpointError, match=message):
        AnsTables.from_cdfs(np.array([row]), [length], [0], name="y")


def test_table_shapes_must_agree() -> None:
    with pytest.raises(CheckpointError, match="malformed"):
        AnsTables.from_cdfs(np.array([[0, 5, 9, 65536]]), [4, 4], [0])


def test_decoder_rejects_indexes_that_are_not_rows(ggm_tables) -> None:
    data = encode([0, 0, 0], [1, 1, 1], ggm_tables)
    decoder = AnsDecoder(data, ggm_tables)
    with pytest.raises(ValueError, match="table index -1 at position 1"):
        decoder.decode([1, -1, 1])
    with pytest.raises(CorruptBitstreamError, match="already failed"):
        decoder.decode([1])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "0 bytes is not a rANS stream"),
        (b"\x00\x00\x00\x80", "4 bytes is not a rANS stream"),
        (b"\x00\x00\x00\x80\x00\x00\x00\x00\x01", "9 bytes is not a rANS stream"),
        (b"\xff\xff\xff\x7f\x00\x00\x00\x00", "invalid state"),  # below 2^31
        (b"\x00\x00\x00\x00\x00\x00\x00\x80", "invalid state"),  # 2^63 and above
    ],
)
def test_malformed_streams_are_refused(ggm_tables, data, message) -> None:
    with pytest.raises(CorruptBitstreamError, match=message):
        AnsDecoder(data, ggm_tables)


def test_truncated_streams_raise_typed_errors(ggm_tables) -> None:
    rng = np.random.default_rng(11)
    symbols, indexes = draw(ggm_tables, rng, 2000, uniform=True)
    data = encode(symbols, indexes, ggm_tables)
    for cut in range(8, len(data), 4):
        with pytest.raises((TruncatedBitstreamError, CorruptBitstreamError)):
            decode(data[:cut], indexes, ggm_tables)
    short = data[: len(data) - 4]
    with pytest.raises(TruncatedBitstreamError, match="ends before symbol"):
        AnsDecoder(short, ggm_tables).decode(indexes)
    with pytest.raises(CorruptBitstreamError, match="not a rANS stream"):
        decode(data[:-1], indexes, ggm_tables)


def test_streams_that_do_not_end_with_their_symbols(ggm_tables) -> None:
    rng = np.random.default_rng(12)
    symbols, indexes = draw(ggm_tables, rng, 2000, uniform=True)
    data = encode(symbols, indexes, ggm_tables)
    with pytest.raises(CorruptBitstreamError, match="4 bytes left"):
        decode(data + bytes(4), indexes, ggm_tables)  # a word too many
    with pytest.raises(CorruptBitstreamError, match="does not end with its 1999 symbols"):
        decode(data, indexes[:-1], ggm_tables)  # a symbol too few


@settings(max_examples=200, deadline=None)
@given(words=st.binary(min_size=8, max_size=400), data=st.data())
def test_random_streams_give_an_error_or_symbols_in_range(ggm_tables, words, data) -> None:
    """Garbage in: a typed error, or symbols within their rows; never a crash or a hang. The
    fast decoder agrees with the plain-Python one on everything, errors included."""
    words = words[: len(words) // 4 * 4]
    n = data.draw(st.integers(0, 200))
    indexes = np.array(
        data.draw(st.lists(st.integers(0, ggm_tables.rows - 1), min_size=n, max_size=n)),
        dtype=np.int32,
    )
    try:
        fast = decode(words, indexes, ggm_tables)
    except BitstreamError as err:
        with pytest.raises(type(err)):
            decode_reference(words, indexes, ggm_tables)
        return
    assert np.array_equal(fast, decode_reference(words, indexes, ggm_tables))
    assert ((fast >= ggm_tables.low[indexes]) & (fast <= ggm_tables.high[indexes])).all()


@settings(max_examples=100, deadline=None)
@given(
    state=st.integers(STATE_MIN, 2**63 - 1),
    body=st.binary(max_size=200),
    tail=st.binary(min_size=1, max_size=64),
)
def test_decoder_never_reads_past_its_stream(ggm_tables, state, body, tail) -> None:
    """Decoding a stream that lies inside a larger buffer: what follows it changes nothing (the
    decoder stops with a TruncatedBitstreamError where it would need more words)."""
    words = state.to_bytes(8, "little") + body[: len(body) // 4 * 4]
    indexes = np.zeros(400, dtype=np.int32)  # the narrowest row: renormalizes most often
    results = []
    for after in (bytes(len(tail)), b"\xff" * len(tail), tail):
        buffer = np.frombuffer(words + after, dtype=np.uint8)
        decoder = AnsDecoder(buffer[: len(words)], ggm_tables)
        decoded = []
        for k in range(0, 400, 40):
            try:
                decoded.append(decoder.decode(indexes[k : k + 40]).tolist())
            except TruncatedBitstreamError:
                break
        assert decoder.words_read <= len(words) // 4
        results.append(decoded)
    assert results[0] == results[1] == results[2]


def test_unaligned_and_array_inputs(ggm_tables) -> None:
    rng = np.random.default_rng(5)
    symbols, indexes = draw(ggm_tables, rng, 1000)
    data = encode(symbols.astype(np.int64), indexes.astype(np.uint8), ggm_tables)
    assert data == encode(symbols, indexes, ggm_tables)
    unaligned = memoryview(b"x" + data)[1:]
    assert np.array_equal(decode(unaligned, indexes, ggm_tables), symbols)
    assert np.array_equal(decode(bytearray(data), indexes.reshape(10, 100), ggm_tables), symbols)
