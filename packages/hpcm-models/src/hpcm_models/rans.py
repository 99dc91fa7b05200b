"""rANS coding of symbol arrays: the codec's symbol writer and reader, its coder choice, the
escape stream, and the checks that keep every read inside its stream.

The codec codes with :mod:`hpcm_models.ans` (NumPy arrays, numba, GIL released, bounded reads).
CompressAI 1.2.8's coder writes the same bytes; it stays as the codec's fallback where numba
cannot compile (:func:`resolve_coder`), as the old path of the benchmarks and tests
(``coder="compressai"``), and as the backend of the model's own ``compress``/``decompress``
(:func:`new_encoder`, :func:`new_decoder`: tables with CompressAI's escape symbol, coded in bypass
mode). Another coder plugs in beside them as long as it writes the same bytes for the same symbols
(the golden files check it) or the format version changes.

Bounded reads: the codec's tables are escape-free (:class:`~hpcm_models.ans.AnsTables`), so a
decoder reads the 8-byte initial state and at most one 32-bit word per symbol;
:func:`check_rans_stream` refuses streams that cannot be one. ``ans`` checks every read against
the stream's end; CompressAI's decoder, which does not, gets its stream zero-padded to
``8 + 4 · symbols`` bytes. Values beyond their table row's range travel in the ESCAPES stream
(:func:`pack_escapes`, :func:`parse_escapes`; ``docs/format.md``).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
import zlib
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch
from compressai.ans import BufferedRansEncoder, RansDecoder

from . import ans
from .ans_reference import CompressAIDecoder, compressai_encode
from .entropy import RansTables
from .errors import BitstreamError, CorruptBitstreamError, DecodeMismatchError, EncodeError

__all__ = [
    "CODERS",
    "SymbolDecoder",
    "SymbolEncoder",
    "SymbolReader",
    "SymbolWriter",
    "check_rans_stream",
    "codec_tables",
    "device_symbols",
    "new_decoder",
    "new_encoder",
    "pack_escapes",
    "parse_escapes",
    "resolve_coder",
]

#: The codec's entropy coders, by name: the same bytes from both.
CODERS = ("ans", "compressai")
_INT32 = 1 << 31


# ---------------------------------------------------------------------------- the model's backend


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
    """CompressAI's encoder for symbols of ``tables``' rows (the model's own ``compress``)."""
    return _CompressaiEncoder(tables)


def new_decoder(stream: bytes, tables: RansTables) -> SymbolDecoder:
    """CompressAI's decoder of ``stream`` with ``tables``. It trusts the stream: with tables that
    have an escape symbol it may read past the end of a damaged one (``docs/format.md``)."""
    return _CompressaiDecoder(stream, tables)


# ---------------------------------------------------------------------------- the codec's coder


def resolve_coder(coder: str | None = None) -> str:
    """The codec's coder: ``"ans"``, ``"compressai"``, or ``None`` for ``"ans"`` where its numba
    kernels load (compiled on first use, then cached on disk), else ``"compressai"`` with one
    :class:`RuntimeWarning` per process. Both write the same bytes.

    Raises:
        ValueError: an unknown name.
        ImportError: ``"ans"`` asked for, and numba is missing.
    """
    if coder not in (None, *CODERS):
        raise ValueError(f"expected a coder in {CODERS} or None, got {coder!r}")
    if coder is None:
        return "ans" if _ans_problem() is None else "compressai"
    if coder == "ans":
        ans.warm_up()
    return coder


def codec_tables(model: Any, latent: str) -> ans.AnsTables:
    """The codec's escape-free tables of ``latent`` (``"z"`` or ``"y"``) from any object holding
    the model's rANS tables (an HPCM model or its :class:`~hpcm_models.entropy.
    GeneralizedGaussian`), validated row by row.

    Raises:
        CheckpointError: empty or malformed tables.
    """
    return ans.AnsTables.from_cdfs(
        *(getattr(model, f"{buffer}_{latent}").detach().cpu() for buffer in _TABLE_BUFFERS),
        name=latent,
    )


_TABLE_BUFFERS = ("quantized_cdf", "cdf_length", "offset")


@functools.cache
def _ans_problem() -> str | None:
    """Why :mod:`hpcm_models.ans` cannot run here (None if it can); warns once per process."""
    try:
        ans.warm_up()  # loads numba; compiles the kernels on the first run on a machine
    except Exception as err:  # numba missing, or unable to compile for this platform
        problem = f"{type(err).__name__}: {err}"
        warnings.warn(
            f"hpcm_models.ans is unavailable ({problem}); the codec codes with CompressAI's "
            "rANS instead (the same bytes, about 10x slower)",
            RuntimeWarning,
            stacklevel=3,
        )
        return problem
    return None


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

    rANS codes in reverse, so the chunks are copied into buffers of the latent's size (the
    caller may reuse its arrays at once: the CUDA graphs' pinned buffers) and coded at
    :meth:`flush`.

    Args:
        tables: escape-free tables.
        count: the latent's number of symbols.
        hasher: gets every symbol (int32 ``[n]`` arrays it may read later; e.g. the file's
            :class:`~hpcm_models.hashes.LatentHasher`).
        escapes: where ``(positions, excesses)`` of escaped values are appended (shared by the
            writers of one file, see :func:`pack_escapes`).
        start: position of this latent's first symbol among the file's symbols.
        coder: ``"ans"`` or ``"compressai"`` (:func:`resolve_coder`).
    """

    def __init__(
        self,
        tables: ans.AnsTables,
        count: int,
        hasher: Any,
        escapes: list,
        start: int,
        coder: str = "ans",
    ) -> None:
        self.tables, self.hasher, self.escapes, self.coder = tables, hasher, escapes, coder
        self.start = self.position = start
        self._symbols = np.empty(count, np.int32)
        self._coded = np.empty(count, np.int32)
        self._rows = np.empty(count, np.int32)

    def add(self, symbols: np.ndarray, coded: np.ndarray, rows: np.ndarray, broken: bool) -> None:
        """Add the next chunk (see :func:`device_symbols`; int32 arrays, copied)."""
        if broken:
            raise EncodeError(
                "the model produced non-finite latents or latents beyond 32-bit integers; its "
                "weights (or the input) are broken"
            )
        a, b = self.position - self.start, self.position - self.start + symbols.size
        if b > self._symbols.size:
            raise RuntimeError("more symbols added than the writer was made for")
        chunk = self._symbols[a:b]
        chunk[:] = symbols
        self._coded[a:b] = coded
        self._rows[a:b] = rows
        self.hasher.update(chunk)  # never written again
        outside = np.flatnonzero(chunk != self._coded[a:b])
        if outside.size:
            # An escape stores how far beyond its table edge a latent lies (> 0: above the
            # largest symbol, < 0: below the smallest); the symbol coded is that edge.
            excess = chunk[outside].astype(np.int64) - self._coded[a:b][outside]
            self.escapes.append((self.position + outside, excess))
        self.position += symbols.size

    def flush(self) -> bytes:
        """The stream of every symbol (all of them must have been added)."""
        if self.position - self.start != self._symbols.size:
            raise RuntimeError("flush before every symbol of the latent was added")
        encode = ans.encode if self.coder == "ans" else compressai_encode
        return encode(self._coded, self._rows, self.tables)


class SymbolReader:
    """Decodes one latent's symbols in coding order, a chunk at a time, and applies escapes.

    Errors of the rANS decoder on a stream whose CRC passed — it ends before its symbols do, or
    does not end with them — mean that the decoder computed other table rows than the encoder
    (lost synchronization, or crafted bytes): they are raised as :class:`DecodeMismatchError`.

    Args:
        stream: the latent's stream (checked with :func:`check_rans_stream`).
        count: how many symbols it holds.
        tables: escape-free tables (the writer's).
        hasher: gets every decoded symbol, as the writer's.
        escapes: ``(positions, excesses)`` of the file (:func:`parse_escapes`).
        start: position of this latent's first symbol among the file's symbols.
        coder: ``"ans"`` or ``"compressai"`` (:func:`resolve_coder`).
    """

    def __init__(
        self,
        stream: bytes,
        count: int,
        tables: ans.AnsTables,
        hasher: Any,
        escapes: tuple[np.ndarray, np.ndarray],
        start: int,
        coder: str = "ans",
    ) -> None:
        self.tables, self.hasher, self.escapes = tables, hasher, escapes
        self.start = self.position = start
        self.end = start + count
        self._values = np.empty(count, np.int32)
        self.decoder: Any
        if coder == "ans":
            self.decoder = ans.AnsDecoder(stream, tables)  # checks every read: no padding
        else:  # zero-padded to 8 + 4·count bytes, which it cannot read past
            self.decoder = CompressAIDecoder(stream, count, tables)

    def take(self, indexes: np.ndarray) -> np.ndarray:
        """The next ``len(indexes)`` values (int32 ``[n]``, a view the reader never changes
        again), each read with table row ``indexes`` (int32 avoids a conversion)."""
        a = self.position - self.start
        b = a + indexes.size
        if b > self._values.size:
            raise RuntimeError("decoder asked for more symbols than the stream holds")
        values = self._values[a:b]
        with _desync_errors():
            if isinstance(self.decoder, ans.AnsDecoder):
                self.decoder.decode(indexes, out=values)
            else:
                values[:] = self.decoder.decode(indexes)
        self._apply_escapes(values, indexes)
        self.hasher.update(values)
        self.position += indexes.size
        return values

    def _apply_escapes(self, values: np.ndarray, indexes: np.ndarray) -> None:
        positions, excess = self.escapes
        a, b = np.searchsorted(positions, [self.position, self.position + values.size])
        if b == a:
            return
        local = positions[a:b] - self.position
        rows = indexes[local]
        edge = np.where(excess[a:b] > 0, self.tables.high[rows], self.tables.low[rows])
        if not (values[local] == edge).all():
            raise DecodeMismatchError(
                "decoded latents disagree with the escaped values of the file: the decoder "
                "lost synchronization with the encoder; no image is returned"
            )
        escaped = edge + excess[a:b]
        if escaped.min() < -_INT32 or escaped.max() >= _INT32:
            raise CorruptBitstreamError("escaped values beyond 32-bit integers")
        values[local] = escaped

    def finish(self) -> None:
        """Check that every symbol was read and the stream ended exactly with the last one
        (``ans``; CompressAI's decoder cannot tell).

        Raises:
            DecodeMismatchError: symbols or stream words left over.
        """
        if self.position != self.end:
            raise DecodeMismatchError("the decoder did not consume every latent of the file")
        with _desync_errors():
            if isinstance(self.decoder, ans.AnsDecoder):
                self.decoder.finish()


@contextlib.contextmanager
def _desync_errors() -> Iterator[None]:
    """Re-raise the rANS decoder's stream errors as :class:`DecodeMismatchError`."""
    try:
        yield
    except DecodeMismatchError:
        raise
    except BitstreamError as err:
        raise DecodeMismatchError(
            f"the rANS stream does not fit the decoded table rows ({err}): the decoder lost "
            "synchronization with the encoder (e.g. it runs on a device whose floating-point "
            "results differ from the encoder's), or the stream was crafted; no image is returned"
        ) from err


def check_rans_stream(stream: bytes, count: int, name: str) -> None:
    """Refuse what cannot be an escape-free stream of ``count`` symbols.

    Raises:
        CorruptBitstreamError: naming the stream ``name``.
    """
    # A flushed stream is whole 32-bit words, starts with a state in [2^31, 2^63) and, without
    # bypass symbols, carries at most 16 bits per symbol plus the state.
    if len(stream) < 8 or len(stream) % 4:
        raise CorruptBitstreamError(
            f"{name} stream of {len(stream)} bytes is not a rANS stream (expected a multiple of "
            "4, at least 8)"
        )
    if len(stream) > 2 * count + 16:
        raise CorruptBitstreamError(
            f"{name} stream of {len(stream)} bytes is longer than {count} symbols can be"
        )
    if not ans.STATE_MIN <= int.from_bytes(stream[:8], "little") < ans.STATE_END:
        raise CorruptBitstreamError(f"{name} stream starts with an invalid rANS state")


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
