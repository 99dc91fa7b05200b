"""rANS coding of symbol arrays: the coder backend, the escape-free symbol writer and reader of
the ``.hpcm`` codec, the escape stream, and the checks that keep every read inside its buffer.

The backend is CompressAI's ``RansEncoder``/``RansDecoder`` (ryg_rans, 64-bit state, 16-bit
frequencies) and nothing outside :func:`new_encoder` and :func:`new_decoder` touches it: another
coder plugs in there (:class:`SymbolEncoder`, :class:`SymbolDecoder`), as long as it writes the
same bytes for the same symbols (the golden files check it) or the format version changes.

Bounded reads: the codec's tables are escape-free
(:meth:`hpcm_models.entropy.RansTables.from_model`), so a decoder reads the 8-byte initial state
and at most one 32-bit word per symbol. A
:class:`SymbolReader` hands the backend its stream zero-padded to ``8 + 4 · symbols`` bytes, and
:func:`check_rans_stream` refuses streams that cannot be one: even a desynchronized decoder stays
inside its buffer. Values beyond their table row's range travel in the ESCAPES stream
(:func:`pack_escapes`, :func:`parse_escapes`; ``docs/format.md``).
"""

from __future__ import annotations

import zlib
from typing import Any, Protocol

import numpy as np
import torch
from compressai.ans import BufferedRansEncoder, RansDecoder

from .entropy import RansTables
from .errors import CorruptBitstreamError, DecodeMismatchError, EncodeError

__all__ = [
    "SymbolDecoder",
    "SymbolEncoder",
    "SymbolReader",
    "SymbolWriter",
    "check_rans_stream",
    "device_symbols",
    "new_decoder",
    "new_encoder",
    "pack_escapes",
    "parse_escapes",
]

# A flushed stream starts with the final 64-bit encoder state, which is always >= 2^31.
_RANS_STATE_MIN = 1 << 31
_INT32 = 1 << 31


# ---------------------------------------------------------------------------- the backend


class SymbolEncoder(Protocol):
    """Codes symbols with the rows of a :class:`RansTables` given to :func:`new_encoder`."""

    def encode(self, symbols: np.ndarray, indexes: np.ndarray) -> None:
        """Append ``symbols`` (int ``[n]``), each coded with table row ``indexes`` (int ``[n]``)."""

    def flush(self) -> bytes:
        """The stream of every symbol appended so far."""


class SymbolDecoder(Protocol):
    """Reads symbols back, in the order they were appended, from :func:`new_decoder`'s stream."""

    def decode(self, indexes: np.ndarray) -> np.ndarray:
        """The next ``len(indexes)`` symbols (int64 ``[n]``), each with table row ``indexes``."""


class _CompressaiEncoder:
    def __init__(self, tables: RansTables) -> None:
        self.tables = tables
        self.encoder = BufferedRansEncoder()

    def encode(self, symbols: np.ndarray, indexes: np.ndarray) -> None:
        t = self.tables
        # BufferedRansEncoder only buffers here; flush() codes everything, in reverse.
        self.encoder.encode_with_indexes(
            symbols.tolist(), indexes.tolist(), t.cdfs, t.sizes, t.offsets
        )

    def flush(self) -> bytes:
        return self.encoder.flush()


class _CompressaiDecoder:
    def __init__(self, stream: bytes, tables: RansTables) -> None:
        self.tables = tables
        self.decoder = RansDecoder()
        self.decoder.set_stream(stream)

    def decode(self, indexes: np.ndarray) -> np.ndarray:
        t = self.tables
        decoded = self.decoder.decode_stream(indexes.tolist(), t.cdfs, t.sizes, t.offsets)
        return np.fromiter(decoded, dtype=np.int64, count=indexes.size)


def new_encoder(tables: RansTables) -> SymbolEncoder:
    """An encoder for symbols of ``tables``' rows."""
    return _CompressaiEncoder(tables)


def new_decoder(stream: bytes, tables: RansTables) -> SymbolDecoder:
    """A decoder of ``stream`` with ``tables``. It trusts the stream: with tables that have an
    escape symbol it may read past the end of a damaged one (see :class:`SymbolReader`)."""
    return _CompressaiDecoder(stream, tables)


# ---------------------------------------------------------------------------- the codec's coding


def device_symbols(
    values: torch.Tensor, rows: torch.Tensor, low: torch.Tensor, high: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """What the entropy coder needs from quantized latents, computed where they are (on the GPU
    inside the encoder's CUDA graphs): ``(symbols, coded, rows, broken)``: the values as int32,
    the values clipped to their table row's range ``[low, high]`` (what rANS codes; the
    difference travels as an escape), the rows as int32, and a flag for values that are not
    finite or not 32-bit integers (the symbols are then meaningless)."""
    values = values.flatten()
    finite = torch.isfinite(values)
    broken = (~finite).any() | (values.abs() >= _INT32).any()
    bound = float(_INT32 - 128)  # the largest float32 below 2^31
    symbols = torch.where(finite, values, 0.0).clamp(-bound, bound).to(torch.int32)
    coded = torch.minimum(torch.maximum(symbols, low[rows]), high[rows])
    return symbols, coded, rows.to(torch.int32), broken.view(1)


class SymbolWriter:
    """Entropy-codes one latent's symbols in coding order, a chunk (coding step) at a time;
    values outside their table row's range become escapes.

    Args:
        tables: escape-free tables.
        hasher: updated with every symbol (``<i4`` bytes), e.g. the file's latent hash.
        escapes: where ``(positions, excesses)`` of escaped values are appended (shared by the
            writers of one file, see :func:`pack_escapes`).
        start: position of this latent's first symbol among the file's symbols.
    """

    def __init__(self, tables: RansTables, hasher: Any, escapes: list, start: int) -> None:
        self.tables, self.hasher, self.escapes, self.position = tables, hasher, escapes, start
        self.encoder = new_encoder(tables)

    def add(self, symbols: np.ndarray, coded: np.ndarray, rows: np.ndarray, broken: bool) -> None:
        """Add the next chunk (see :func:`device_symbols`; int32 arrays)."""
        if broken:
            raise EncodeError(
                "the model produced non-finite latents or latents beyond 32-bit integers; its "
                "weights (or the input) are broken"
            )
        self.hasher.update(symbols.astype("<i4", copy=False).tobytes())
        outside = np.flatnonzero(symbols != coded)
        if outside.size:
            # An escape stores how far beyond its table edge a latent lies (> 0: above the
            # largest symbol, < 0: below the smallest); the symbol coded is that edge.
            excess = symbols[outside].astype(np.int64) - coded[outside]
            self.escapes.append((self.position + outside, excess))
        self.encoder.encode(coded, rows)
        self.position += symbols.size

    def flush(self) -> bytes:
        return self.encoder.flush()


class SymbolReader:
    """Decodes one latent's symbols in coding order from a padded rANS stream, applies escapes.

    Args:
        stream: the latent's stream (checked with :func:`check_rans_stream`).
        count: how many symbols it holds.
        tables: escape-free tables (the writer's).
        hasher: updated with every symbol, as the writer's.
        escapes: ``(positions, excesses)`` of the file (:func:`parse_escapes`).
        start: position of this latent's first symbol among the file's symbols.
    """

    def __init__(
        self,
        stream: bytes,
        count: int,
        tables: RansTables,
        hasher: Any,
        escapes: tuple[np.ndarray, np.ndarray],
        start: int,
    ) -> None:
        self.tables, self.hasher, self.escapes = tables, hasher, escapes
        self.position, self.end = start, start + count
        # Without bypass symbols, decoding reads the 8-byte state and at most one 32-bit word per
        # symbol: a buffer of 8 + 4·count bytes can never be overrun, whatever the stream holds.
        self.decoder = new_decoder(stream + bytes(max(0, 8 + 4 * count - len(stream))), tables)

    def take(self, indexes: np.ndarray) -> np.ndarray:
        """The next ``len(indexes)`` values (int64), each read with table row ``indexes``."""
        n = indexes.size
        if self.position + n > self.end:
            raise RuntimeError("decoder asked for more symbols than the stream holds")
        values = self.decoder.decode(indexes)
        positions, excess = self.escapes
        a, b = np.searchsorted(positions, [self.position, self.position + n])
        if b > a:
            local = positions[a:b] - self.position
            beyond = excess[a:b]
            low, high = self.tables.low[indexes[local]], self.tables.high[indexes[local]]
            edge = np.where(beyond > 0, high, low)
            if not (values[local] == edge).all():
                raise DecodeMismatchError(
                    "decoded latents disagree with the escaped values of the file: the decoder "
                    "lost synchronization with the encoder; no image is returned"
                )
            values[local] = edge + beyond
        self.hasher.update(values.astype("<i4").tobytes())
        self.position += n
        return values


def check_rans_stream(stream: bytes, count: int, name: str) -> None:
    """Refuse what cannot be an escape-free stream of ``count`` symbols.

    Raises:
        CorruptBitstreamError: naming the stream ``name``.
    """
    # A flushed stream is whole 32-bit words, starts with a state >= 2^31 and, without bypass
    # symbols, carries at most 16 bits per symbol plus the state.
    if len(stream) < 8 or len(stream) % 4:
        raise CorruptBitstreamError(
            f"{name} stream of {len(stream)} bytes is not a rANS stream (expected a multiple of "
            "4, at least 8)"
        )
    if int.from_bytes(stream[:8], "little") < _RANS_STATE_MIN:
        raise CorruptBitstreamError(f"{name} stream starts with an invalid rANS state")
    if len(stream) > 2 * count + 16:
        raise CorruptBitstreamError(
            f"{name} stream of {len(stream)} bytes is longer than {count} symbols can be"
        )


# ---------------------------------------------------------------------------- escapes


def pack_escapes(escapes: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
    """The ESCAPES stream: zlib of n u32 position deltas, then n i32 excesses (columns of small
    numbers compress to ~2-3 bytes per escape); empty without escapes."""
    if not escapes:
        return b""
    positions = np.concatenate([p for p, _ in escapes])
    excess = np.concatenate([e for _, e in escapes])
    deltas = np.diff(positions, prepend=0)
    return zlib.compress(deltas.astype("<u4").tobytes() + excess.astype("<i4").tobytes(), 9)


def parse_escapes(stream: bytes | None, total: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions, excesses) of the ESCAPES stream, validated; empty arrays without one.

    Raises:
        CorruptBitstreamError: not zlib, not whole entries, positions not increasing below
            ``total``, or an excess of 0.
    """
    if stream is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(stream, 8 * total + 1)  # bounded: no zip bomb
    except zlib.error as err:
        raise CorruptBitstreamError(f"escape stream is not valid zlib data ({err})") from None
    if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise CorruptBitstreamError("escape stream does not end where its zlib data ends")
    count = len(raw) // 8
    if len(raw) % 8 or not 0 < count <= total:
        raise CorruptBitstreamError(
            f"escape stream of {len(raw)} bytes: expected 1..{total} entries of 8 bytes"
        )
    deltas = np.frombuffer(raw, "<u4", count).astype(np.int64)
    excess = np.frombuffer(raw, "<i4", count, offset=4 * count).astype(np.int64)
    positions = np.cumsum(deltas)
    if (deltas[1:] == 0).any() or positions[-1] >= total:
        raise CorruptBitstreamError(f"escape positions are not increasing positions below {total}")
    if (excess == 0).any():
        raise CorruptBitstreamError("escape with a value inside its table")
    return positions, excess
