"""The ``.hpcm`` container: a versioned, checksummed wrapper around the coded streams.

Layout (all integers little-endian; ``docs/format.md`` is the normative description)::

    offset   size  field
    0        8     magic  b"\\x89HPCM\\r\\n\\x1a"
    8        2     format version (u16), currently 1
    10       4     header body length H (u32), at most MAX_HEADER_BYTES
    14       H     header body (see Header.pack)
    14+H     4     CRC32 of bytes [0, 14+H)
    18+H     ...   the streams, concatenated in header order; nothing after them

Everything is validated before anything proportional to a header field is allocated: the reader
checks the file size, the magic, version and header length, then the header CRC, then every
field against :class:`Limits`, then that the stream lengths add up to exactly the rest of the
file, then each stream's CRC. What the streams mean (and the checks that need a model) is the
business of :mod:`hpcm_models.codec`.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import (
    CorruptBitstreamError,
    LimitExceededError,
    TruncatedBitstreamError,
    UnsupportedFormatError,
)

__all__ = [
    "FORMAT_VERSION",
    "HASH_BYTES",
    "MAGIC",
    "MAX_HEADER_BYTES",
    "Header",
    "ImageMode",
    "Limits",
    "StreamKind",
    "make_header_streams",
    "read_container",
    "write_container",
]

MAGIC = b"\x89HPCM\r\n\x1a"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 4096
HASH_BYTES = 16
_PREFIX = struct.Struct("<8sHI")  # magic, version, header length
_CRC = struct.Struct("<I")


class ImageMode(enum.IntEnum):
    """How the original image is restored after decoding."""

    RGB = 0
    L = 1  # grayscale: coded as RGB (three equal planes), restored as the mean of the planes
    RGBA = 2  # RGB coded lossy, alpha stored losslessly in an ALPHA stream
    LA = 3  # grayscale + lossless alpha

    @property
    def has_alpha(self) -> bool:
        return self in (ImageMode.RGBA, ImageMode.LA)


class StreamKind(enum.IntEnum):
    """What a stream holds. Each kind occurs at most once per file."""

    Z = 0  # hyper-latent symbols, rANS
    Y = 1  # latent symbols in coding order, rANS
    ALPHA = 2  # zlib-compressed 8-bit alpha plane, rows top to bottom
    ESCAPES = 3  # latent symbols outside their rANS table: (u32 position, i32 value) pairs


@dataclass(frozen=True)
class Limits:
    """Safety limits checked before any allocation. Raise them deliberately for huge images."""

    max_pixels: int = 1 << 28  # 268 M pixels, e.g. 16384 x 16384
    max_side: int = 1 << 16
    max_latent_elements: int = 1 << 28
    max_streams: int = 16
    max_padding: int = 1024  # padded size minus original size, per side
    max_file_bytes: int = 1 << 31


@dataclass(frozen=True)
class Header:
    """Everything a decoder needs to know before it touches a stream.

    Attributes:
        model_id: registry name of the model (``hpcm_models.get_model``), 1..255 ASCII bytes.
        weights_hash: hash of the learned weights (see :func:`hpcm_models.hashes.weights_hash`).
        config_hash: hash of the architecture and the rANS tables
            (see :func:`hpcm_models.hashes.config_hash`).
        width, height: size of the original image.
        mode: how to restore the original image mode.
        padded_width, padded_height: size the model coded (edge-replicated to a multiple).
        y_shape, z_shape: ``(C, H, W)`` of the latent and the hyper-latent.
        latent_hash: hash of every integer latent symbol, in coding order; the decoder
            recomputes it and refuses to return an image if it differs.
        stream_kinds, stream_lengths, stream_crcs: one entry per stream, in file order.
    """

    model_id: str
    weights_hash: bytes
    config_hash: bytes
    width: int
    height: int
    mode: ImageMode
    padded_width: int
    padded_height: int
    y_shape: tuple[int, int, int]
    z_shape: tuple[int, int, int]
    latent_hash: bytes
    stream_kinds: tuple[StreamKind, ...]
    stream_lengths: tuple[int, ...]
    stream_crcs: tuple[int, ...]

    _FIXED = struct.Struct("<16s16sIIBII3I3I16sH")
    _STREAM = struct.Struct("<BII")

    def pack(self) -> bytes:
        """The header body (without the prefix and the CRC)."""
        try:
            model = self.model_id.encode("ascii")
        except UnicodeEncodeError:
            model = b""
        if not 0 < len(model) < 256:
            raise ValueError(f"model id must be 1..255 ASCII bytes, got {self.model_id!r}")
        for name in ("weights_hash", "config_hash", "latent_hash"):
            if len(getattr(self, name)) != HASH_BYTES:
                raise ValueError(f"{name} must be {HASH_BYTES} bytes")
        n = len(self.stream_kinds)
        if not n == len(self.stream_lengths) == len(self.stream_crcs):
            raise ValueError("stream kinds, lengths and CRCs must have the same count")
        body = bytes([len(model)]) + model
        body += self._FIXED.pack(
            self.weights_hash,
            self.config_hash,
            self.width,
            self.height,
            int(self.mode),
            self.padded_width,
            self.padded_height,
            *self.y_shape,
            *self.z_shape,
            self.latent_hash,
            n,
        )
        for kind, length, crc in zip(
            self.stream_kinds, self.stream_lengths, self.stream_crcs, strict=True
        ):
            body += self._STREAM.pack(int(kind), length, crc)
        return body

    @classmethod
    def unpack(cls, body: bytes, limits: Limits) -> Header:
        """Parse and validate a header body whose CRC has already been checked."""
        if len(body) < 1:
            raise CorruptBitstreamError("empty header")
        n_model = body[0]
        pos = 1 + n_model
        if n_model == 0 or len(body) < pos + cls._FIXED.size:
            raise CorruptBitstreamError("header too short for its fields")
        try:
            model_id = body[1:pos].decode("ascii")
        except UnicodeDecodeError as err:
            raise CorruptBitstreamError("model id is not ASCII") from err
        if not model_id.isprintable():
            raise CorruptBitstreamError("model id has non-printable characters")
        fields = cls._FIXED.unpack_from(body, pos)
        pos += cls._FIXED.size
        weights_hash, config_hash, width, height, mode, pw, ph = fields[:7]
        y_shape, z_shape = tuple(fields[7:10]), tuple(fields[10:13])
        latent_hash, n_streams = fields[13], fields[14]
        if not 0 < n_streams <= limits.max_streams:
            raise LimitExceededError(f"{n_streams} streams; expected 1..{limits.max_streams}")
        if len(body) != pos + n_streams * cls._STREAM.size:
            raise CorruptBitstreamError(
                f"header length {len(body)} does not match its {n_streams} stream entries"
            )
        kinds, lengths, crcs = [], [], []
        for i in range(n_streams):
            kind, length, crc = cls._STREAM.unpack_from(body, pos + i * cls._STREAM.size)
            try:
                kinds.append(StreamKind(kind))
            except ValueError as err:
                raise CorruptBitstreamError(f"unknown stream kind {kind}") from err
            lengths.append(length)
            crcs.append(crc)
        if len(set(kinds)) != len(kinds):
            raise CorruptBitstreamError(f"repeated stream kinds {[k.name for k in kinds]}")
        try:
            image_mode = ImageMode(mode)
        except ValueError as err:
            raise CorruptBitstreamError(f"unknown image mode {mode}") from err

        header = cls(
            model_id=model_id,
            weights_hash=weights_hash,
            config_hash=config_hash,
            width=width,
            height=height,
            mode=image_mode,
            padded_width=pw,
            padded_height=ph,
            y_shape=y_shape,  # type: ignore[arg-type]
            z_shape=z_shape,  # type: ignore[arg-type]
            latent_hash=latent_hash,
            stream_kinds=tuple(kinds),
            stream_lengths=tuple(lengths),
            stream_crcs=tuple(crcs),
        )
        header.check_limits(limits)
        return header

    def check_limits(self, limits: Limits) -> None:
        """Reject sizes that are zero, inconsistent or beyond the limits."""
        for name, value in (("width", self.width), ("height", self.height)):
            if not 0 < value <= limits.max_side:
                raise LimitExceededError(f"image {name} {value}; expected 1..{limits.max_side}")
        if self.width * self.height > limits.max_pixels:
            raise LimitExceededError(
                f"image of {self.width}x{self.height} pixels exceeds the limit of "
                f"{limits.max_pixels} pixels"
            )
        for name, padded, size in (
            ("width", self.padded_width, self.width),
            ("height", self.padded_height, self.height),
        ):
            if not size <= padded <= size + limits.max_padding:
                raise CorruptBitstreamError(f"padded {name} {padded} inconsistent with {size}")
        for name, shape in (("y", self.y_shape), ("z", self.z_shape)):
            if any(d <= 0 for d in shape):
                raise CorruptBitstreamError(f"{name} latent shape {shape} has empty dimensions")
            if shape[0] * shape[1] * shape[2] > limits.max_latent_elements:
                raise LimitExceededError(
                    f"{name} latent shape {shape} exceeds the limit of "
                    f"{limits.max_latent_elements} elements"
                )

    def stream_index(self, kind: StreamKind) -> int | None:
        """Position of the stream of ``kind`` in the file, or None if the file has none."""
        return self.stream_kinds.index(kind) if kind in self.stream_kinds else None


def make_header_streams(
    streams: Sequence[tuple[StreamKind, bytes]],
) -> tuple[tuple[StreamKind, ...], tuple[int, ...], tuple[int, ...]]:
    """Kinds, lengths and CRC32s of ``streams``, for building a :class:`Header`."""
    return (
        tuple(kind for kind, _ in streams),
        tuple(len(data) for _, data in streams),
        tuple(zlib.crc32(data) for _, data in streams),
    )


def write_container(header: Header, streams: Sequence[bytes]) -> bytes:
    """Serialize a header and its streams. Lengths and CRCs in ``header`` must match ``streams``."""
    if tuple(len(s) for s in streams) != header.stream_lengths:
        raise ValueError("header stream lengths do not match the streams")
    if tuple(zlib.crc32(s) for s in streams) != header.stream_crcs:
        raise ValueError("header stream CRCs do not match the streams")
    body = header.pack()
    if len(body) > MAX_HEADER_BYTES:
        raise ValueError(f"header of {len(body)} bytes exceeds {MAX_HEADER_BYTES}")
    head = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(body)) + body
    return head + _CRC.pack(zlib.crc32(head)) + b"".join(streams)


def read_container(data: bytes, limits: Limits | None = None) -> tuple[Header, list[bytes]]:
    """Validate a whole file and split it into its header and streams.

    Raises:
        UnsupportedFormatError: not an hpcm file, or an unknown format version.
        TruncatedBitstreamError: the file ends early.
        CorruptBitstreamError: a checksum fails, a field is inconsistent, or bytes trail.
        LimitExceededError: the file or its header asks for more than ``limits`` allow.
    """
    limits = limits or Limits()
    if len(data) > limits.max_file_bytes:
        raise LimitExceededError(
            f"file of {len(data)} bytes exceeds the limit of {limits.max_file_bytes} bytes"
        )
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        if MAGIC.startswith(data[: len(MAGIC)]) and len(data) < len(MAGIC):
            raise TruncatedBitstreamError(f"file of {len(data)} bytes ends inside the magic")
        raise UnsupportedFormatError("not an hpcm file (bad magic bytes)")
    if len(data) < _PREFIX.size:
        raise TruncatedBitstreamError(f"file of {len(data)} bytes ends inside the prefix")
    _, version, header_len = _PREFIX.unpack_from(data)
    if version != FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"format version {version}; this release reads version {FORMAT_VERSION}"
        )
    if header_len > MAX_HEADER_BYTES:
        raise CorruptBitstreamError(
            f"header length {header_len} exceeds the maximum of {MAX_HEADER_BYTES}"
        )
    end = _PREFIX.size + header_len
    if len(data) < end + _CRC.size:
        raise TruncatedBitstreamError(f"file of {len(data)} bytes ends inside the header")
    (crc,) = _CRC.unpack_from(data, end)
    if zlib.crc32(data[:end]) != crc:
        raise CorruptBitstreamError("header checksum mismatch: the file is damaged")
    header = Header.unpack(bytes(data[_PREFIX.size : end]), limits)

    offset = end + _CRC.size
    expected = offset + sum(header.stream_lengths)
    if len(data) < expected:
        raise TruncatedBitstreamError(f"file has {len(data)} bytes but its streams need {expected}")
    if len(data) > expected:
        raise CorruptBitstreamError(f"{len(data) - expected} unexpected bytes after the streams")
    streams = []
    for i, (length, crc) in enumerate(zip(header.stream_lengths, header.stream_crcs, strict=True)):
        stream = bytes(data[offset : offset + length])
        if zlib.crc32(stream) != crc:
            kind = header.stream_kinds[i].name
            raise CorruptBitstreamError(f"stream {i} ({kind}) checksum mismatch: damaged")
        streams.append(stream)
        offset += length
    return header, streams
