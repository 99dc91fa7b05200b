"""The .hpcm container: round trips, and every kind of damage is refused with a typed error."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcm_models.container import (
    MAGIC,
    Header,
    ImageMode,
    Limits,
    StreamKind,
    make_header_streams,
    read_container,
    write_container,
)
from hpcm_models.errors import (
    BitstreamError,
    CorruptBitstreamError,
    LimitExceededError,
    TruncatedBitstreamError,
    UnsupportedFormatError,
)

STREAMS = [(StreamKind.Z, b"\x01\x02\x03\x04"), (StreamKind.Y, bytes(range(37)))]


def _header(streams=STREAMS, **overrides) -> Header:
    kinds, lengths, crcs = make_header_streams(streams)
    fields = dict(
        model_id="hpcm-base",
        weights_hash=bytes(range(16)),
        config_hash=bytes(range(32, 48)),
        width=65,
        height=63,
        mode=ImageMode.RGB,
        padded_width=128,
        padded_height=128,
        y_shape=(320, 8, 8),
        z_shape=(256, 2, 2),
        latent_hash=bytes(range(16, 32)),
        stream_kinds=kinds,
        stream_lengths=lengths,
        stream_crcs=crcs,
    )
    fields.update(overrides)
    return Header(**fields)


def _file(streams=STREAMS, **overrides) -> bytes:
    return write_container(_header(streams, **overrides), [data for _, data in streams])


def test_round_trip() -> None:
    header, streams = read_container(_file())
    assert header == _header()
    assert streams == [data for _, data in STREAMS]
    assert _file().startswith(MAGIC)


def test_every_truncation_is_refused() -> None:
    data = _file()
    for n in range(len(data)):
        with pytest.raises(TruncatedBitstreamError):
            read_container(data[:n])


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(CorruptBitstreamError, match="unexpected bytes"):
        read_container(_file() + b"\x00")


def test_every_bit_flip_is_refused() -> None:
    data = _file()
    for i in range(len(data) * 8):
        damaged = bytearray(data)
        damaged[i // 8] ^= 1 << (i % 8)
        with pytest.raises(BitstreamError):
            read_container(bytes(damaged))


def test_bad_magic_and_version() -> None:
    with pytest.raises(UnsupportedFormatError, match="magic"):
        read_container(b"\x89PNG\r\n\x1a\n" + bytes(100))
    data = bytearray(_file())
    data[8] = 2
    with pytest.raises(UnsupportedFormatError, match="version 2"):
        read_container(bytes(data))


def test_limits_are_checked_before_streams() -> None:
    data = _file(width=2800, height=2800, padded_width=2816, padded_height=2816)
    with pytest.raises(LimitExceededError, match="pixels"):
        read_container(data, Limits(max_pixels=1 << 20))
    read_container(data)  # within the default limits
    # The default limit (2^23 pixels, docs/format.md) counts the padded pixels.
    big = _file(width=5000, height=5000, padded_width=5120, padded_height=5120)
    with pytest.raises(LimitExceededError, match="as 5120x5120, exceeds the limit of 8388608"):
        read_container(big)
    read_container(big, Limits(max_pixels=5120 * 5120))


def test_inconsistent_padding_is_refused() -> None:
    with pytest.raises(CorruptBitstreamError, match="padded width"):
        read_container(_file(padded_width=64))


def test_header_with_valid_crc_but_bad_fields_is_refused() -> None:
    """A forged header (CRC recomputed) with an unknown mode still cannot get through."""
    data = bytearray(_file())
    body_start = 14
    mode_offset = body_start + 1 + len("hpcm-base") + 16 + 16 + 8
    assert data[mode_offset] == ImageMode.RGB
    data[mode_offset] = 9
    header_len = int.from_bytes(data[10:14], "little")
    end = body_start + header_len
    data[end : end + 4] = zlib.crc32(bytes(data[:end])).to_bytes(4, "little")
    with pytest.raises(CorruptBitstreamError, match="image mode"):
        read_container(bytes(data))


def test_writer_refuses_mismatched_streams() -> None:
    with pytest.raises(ValueError, match="lengths"):
        write_container(_header(), [b"x"])
    with pytest.raises(ValueError, match="CRCs"):
        write_container(_header(), [b"\x00\x02\x03\x04", STREAMS[1][1]])
    with pytest.raises(ValueError, match="model id"):
        _header(model_id="é").pack()
    with pytest.raises(ValueError, match="config_hash"):
        _header(config_hash=b"short").pack()


def test_repeated_stream_kinds_are_refused() -> None:
    streams = [(StreamKind.Y, b"\x01\x02\x03\x04"), (StreamKind.Y, b"\x05\x06\x07\x08")]
    with pytest.raises(CorruptBitstreamError, match="repeated stream kinds"):
        read_container(_file(streams))


def test_file_size_limit_is_checked_first() -> None:
    data = _file()
    with pytest.raises(LimitExceededError, match="bytes exceeds the limit"):
        read_container(data, Limits(max_file_bytes=len(data) - 1))
    assert read_container(data, Limits(max_file_bytes=len(data)))[0] == _header()


def test_header_lookup_and_alpha_modes() -> None:
    streams = [*STREAMS, (StreamKind.ESCAPES, bytes(8)), (StreamKind.ALPHA, b"a")]
    header, data = read_container(_file(streams, mode=ImageMode.LA))
    assert header.stream_index(StreamKind.ALPHA) == 3
    assert header.stream_index(StreamKind.Z) == 0
    assert _header().stream_index(StreamKind.ALPHA) is None
    assert data[2] == bytes(8)
    assert [m.has_alpha for m in ImageMode] == [False, False, True, True]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_other_errors(data: bytes) -> None:
    with pytest.raises(BitstreamError):
        read_container(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=64))
def test_random_bytes_after_a_valid_prefix(tail: bytes) -> None:
    prefix = _file()[:14]
    with pytest.raises(BitstreamError):
        read_container(prefix + tail)
