"""Table-driven rANS over NumPy arrays: the codec's entropy coder at 100+ M symbols/s.

Writes and reads exactly the streams of CompressAI 1.2.8's ``BufferedRansEncoder`` /
``RansDecoder`` (ryg_rans 64-bit state, 16-bit probabilities, 32-bit little-endian words, the final
encoder state first; ``docs/format.md``) for escape-free tables, so ``.hpcm`` files keep their
format and old files decode with it. What changes is the interface and the speed: symbols and
table indexes go in and out as int32 arrays (no Python lists), the loops are compiled by numba
(``_ans_kernels.py``, on first use, cached on disk) and release the GIL, and decoding is bounded:
it reads only the words of its stream and raises a typed error on a stream that ends early or does
not end where its symbols do.

    tables = AnsTables.from_cdfs(model.quantized_cdf_y, model.cdf_length_y, model.offset_y)
    data = encode(symbols, indexes, tables)  # int32 arrays of equal size -> bytes
    decoded = decode(data, indexes, tables)  # == symbols

    decoder = AnsDecoder(data, tables)  # step by step, as the decoder learns the indexes
    first = decoder.decode(indexes[:1000])
    rest = decoder.decode(indexes[1000:])
    decoder.finish()  # the stream ended exactly with its last symbol

The reference beside it is :mod:`hpcm_models.ans_reference` (a plain-Python coder, and
CompressAI's coder behind the same signatures); tests compare them byte for byte.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from .errors import CheckpointError, CorruptBitstreamError, TruncatedBitstreamError

__all__ = [
    "PRECISION",
    "STATE_END",
    "STATE_MIN",
    "AnsDecoder",
    "AnsTables",
    "decode",
    "encode",
    "jit_available",
    "warm_up",
]

#: Bits of the probabilities (every row's cumulative frequencies end at ``2**PRECISION``).
PRECISION = 16
_TOTAL = 1 << PRECISION
#: Valid rANS states lie in ``[2**31, 2**63)``; a finished stream decodes back to ``2**31``.
STATE_MIN = 1 << 31
STATE_END = 1 << 63
_LOOKUP_BITS = 8  # 256 buckets per row: 512 bytes, so the rows in use stay in the L1/L2 cache


@functools.cache
def _kernels() -> ModuleType:
    try:
        from . import _ans_kernels
    except ImportError as err:  # numba is a dependency; a broken install lands here
        raise ImportError(
            f"hpcm_models.ans needs numba to compile its rANS loops ({err}); install it with "
            "`pip install 'numba>=0.60'`"
        ) from err
    return _ans_kernels


def jit_available() -> bool:
    """Whether numba can be imported (the coder needs it; the reference does not)."""
    try:
        _kernels()
    except ImportError:
        return False
    return True


@dataclass(frozen=True, eq=False)
class AnsTables:
    """Escape-free rANS tables: one row of cumulative frequencies per distribution.

    Row ``r`` codes the integers ``offsets[r] … offsets[r] + counts[r] − 1``; symbol ``v`` (counted
    from ``offsets[r]``) has the interval ``[cdf[r, v], cdf[r, v + 1])`` of ``[0, 2**16)``.
    Build with :meth:`from_cdfs`; the other fields are derived from ``cdf``, ``sizes`` and
    ``offsets``.

    Attributes:
        cdf: int32 ``[rows, width]``; row ``r``'s first ``sizes[r]`` entries are CompressAI's row
            with the escape removed (the last two are ``2**16``), the rest ``2**16`` as well.
        sizes: int32 ``[rows]``: CompressAI's ``cdf_length`` (``counts + 2``).
        offsets: int32 ``[rows]``: the value of each row's first symbol.
        counts: int32 ``[rows]``: symbols per row.
        lookup: uint16 ``[rows, 256]``: the symbol whose interval holds ``256 · j``.
        reciprocal, packed: uint64 ``[rows, width]``: the encoder's division-free constants.
    """

    cdf: np.ndarray
    sizes: np.ndarray
    offsets: np.ndarray
    counts: np.ndarray
    lookup: np.ndarray
    reciprocal: np.ndarray
    packed: np.ndarray

    @classmethod
    def from_cdfs(cls, cdf: Any, lengths: Any, offsets: Any, *, name: str = "") -> AnsTables:
        """Tables from CompressAI's layout (``quantized_cdf``, ``cdf_length``, ``offset``: what
        ``update()`` builds), without the escape symbol.

        Each row there ends with an escape (bypass) symbol for values outside its range. Here its
        frequency goes to the last regular symbol (``cdf[n − 2] = 2**16``), so decoding never
        enters bypass mode, whose reads are unbounded on garbage; the codec sends such values as
        escapes. Costs at most 2⁻¹⁶ of probability mass per row.

        Args:
            cdf: integer ``[rows, L]`` (NumPy array or CPU tensor): row ``r`` valid up to
                ``lengths[r]``, from 0 to ``2**16``, strictly increasing.
            lengths: integer ``[rows]``, each at least 4 (two symbols and the escape).
            offsets: integer ``[rows]``: the value of each row's first symbol.
            name: what the tables code (for error messages), e.g. ``"y"``.

        Raises:
            CheckpointError: the shapes disagree or a row is malformed (the model's tables come
                from its checkpoint; ``model.update()`` rebuilds them).
        """
        cdf = np.asarray(cdf, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
        of = f" of {name}" if name else ""
        rows = cdf.shape[0] if cdf.ndim == 2 else -1
        if rows < 1 or lengths.size != rows or offsets.size != rows:
            raise CheckpointError(
                f"rANS tables{of} are malformed: cdf {list(cdf.shape)}, lengths "
                f"{list(lengths.shape)}, offsets {list(offsets.shape)} (expected [rows, L], "
                "[rows], [rows] with rows >= 1)"
            )
        width = int(lengths.max())
        if width > cdf.shape[1] or lengths.min() < 4 or width > _TOTAL + 2:
            raise CheckpointError(
                f"rANS tables{of} are malformed: row lengths {int(lengths.min())}..{width} for "
                f"rows of {cdf.shape[1]} entries (expected 4..{min(cdf.shape[1], _TOTAL + 2)})"
            )
        table = np.full((rows, width), _TOTAL, dtype=np.int64)
        for i, n in enumerate(lengths.tolist()):
            row = cdf[i, :n]
            if row[0] != 0 or row[-1] != _TOTAL or not (np.diff(row) > 0).all():
                # The decoder looks symbols up in these rows; a malformed one would misdecode.
                raise CheckpointError(
                    f"rANS table row {i}{of} is malformed (expected >= 4 strictly increasing "
                    f"entries from 0 to {_TOTAL}); rebuild with model.update()"
                )
            table[i, : n - 2] = row[: n - 2]
        if offsets.min() < -(1 << 31) or (offsets + lengths).max() > 1 << 31:
            raise CheckpointError(f"rANS table offsets{of} give symbols beyond 32-bit integers")
        return cls._derive(table, lengths, offsets)

    @classmethod
    def _derive(cls, table: np.ndarray, lengths: np.ndarray, offsets: np.ndarray) -> AnsTables:
        counts = lengths - 2
        rows, width = table.shape
        # Frequencies of the symbols (entries past a row's end get 1: never used, kept harmless).
        freq = np.ones((rows, width), dtype=np.uint64)
        freq[:, :-1] = np.maximum(np.diff(table, axis=1), 1).astype(np.uint64)
        start = table.astype(np.uint64)
        # ryg_rans Rans64EncSymbolInit: q = x // freq as mul_high(x, reciprocal) >> shift.
        shift = np.zeros((rows, width), dtype=np.uint64)  # ceil(log2(freq))
        for bit in range(PRECISION + 1):
            shift += freq > np.uint64(1 << bit)
        one = freq < 2
        x1 = np.uint64(1) << (shift + np.uint64(31))
        t1 = x1 // freq
        t0 = (freq - np.uint64(1) + ((x1 % freq) << np.uint64(32))) // freq
        reciprocal = np.where(one, np.uint64(2**64 - 1), t0 + (t1 << np.uint64(32)))
        rshift = np.where(one, np.uint64(0), shift - np.uint64(1))
        bias = np.where(one, start + np.uint64(_TOTAL - 1), start)
        cmpl = np.uint64(_TOTAL) - freq
        packed = (
            freq | (cmpl << np.uint64(17)) | (rshift << np.uint64(34)) | (bias << np.uint64(40))
        )

        buckets = np.arange(1 << _LOOKUP_BITS, dtype=np.int64) << (PRECISION - _LOOKUP_BITS)
        lookup = np.empty((rows, 1 << _LOOKUP_BITS), dtype=np.uint16)
        for r in range(rows):
            lookup[r] = np.searchsorted(table[r, : counts[r] + 1], buckets, side="right") - 1
        return cls(
            cdf=table.astype(np.int32),
            sizes=lengths.astype(np.int32),
            offsets=offsets.astype(np.int32),
            counts=counts.astype(np.int32),
            lookup=lookup,
            reciprocal=np.ascontiguousarray(reciprocal),
            packed=np.ascontiguousarray(packed),
        )

    @property
    def rows(self) -> int:
        return int(self.sizes.size)

    @property
    def low(self) -> np.ndarray:
        """int64 ``[rows]``: each row's smallest symbol."""
        return self.offsets.astype(np.int64)

    @property
    def high(self) -> np.ndarray:
        """int64 ``[rows]``: each row's largest symbol."""
        return self.offsets.astype(np.int64) + self.counts - 1

    def compressai_rows(self) -> list[list[int]]:
        """The rows as CompressAI's coder takes them (Python lists of ``sizes[r]`` entries)."""
        return [self.cdf[r, :n].tolist() for r, n in enumerate(self.sizes.tolist())]


def _int32(values: Any, what: str) -> np.ndarray:
    """A contiguous 1-D int32 view or copy of an integer array (any shape, flattened)."""
    array = np.asarray(values)
    if array.dtype == np.int32:
        return np.ascontiguousarray(array).reshape(-1)
    if array.dtype.kind not in "iu" and array.size:
        raise ValueError(f"expected an integer array of {what}, got dtype {array.dtype}")
    array = array.reshape(-1)
    if array.size and (array.min() < -(1 << 31) or array.max() >= 1 << 31):
        raise ValueError(f"{what} beyond 32-bit integers")
    return array.astype(np.int32)


def _check_pair(symbols: Any, indexes: Any) -> tuple[np.ndarray, np.ndarray]:
    s, i = _int32(symbols, "symbols"), _int32(indexes, "table indexes")
    if s.size != i.size:
        raise ValueError(f"expected as many table indexes as symbols, got {i.size} and {s.size}")
    return s, i


def encode(symbols: Any, indexes: Any, tables: AnsTables) -> bytes:
    """rANS-encode ``symbols[k]`` with table row ``indexes[k]``, decodable in the same order.

    Args:
        symbols: integer array ``[n]`` (any shape is flattened); each within its row's range
            ``[tables.low[r], tables.high[r]]`` (the codec sends values beyond it as escapes).
        indexes: integer array of the same size: the table row of each symbol.
        tables: see :class:`AnsTables`.

    Returns:
        the stream: ``4 · (2 + w)`` bytes for ``w`` renormalization words (at most one per
        symbol), identical to CompressAI 1.2.8's ``BufferedRansEncoder`` with these tables.

    Raises:
        ValueError: sizes differ, a row index is out of range or a symbol outside its row.
    """
    s, i = _check_pair(symbols, indexes)
    out = np.empty(s.size + 2, dtype=np.uint32)
    first = _kernels().encode_symbols(
        s, i, tables.offsets, tables.counts, tables.reciprocal, tables.packed, out
    )
    if first < 0:
        k = -first - 1
        r = int(i[k])
        if not 0 <= r < tables.rows:
            raise ValueError(f"table index {r} at position {k} is not a row (0..{tables.rows - 1})")
        raise ValueError(
            f"symbol {int(s[k])} at position {k} is outside row {r}'s range "
            f"[{int(tables.low[r])}, {int(tables.high[r])}]"
        )
    return out[first:].astype("<u4", copy=False).tobytes()


def _stream_words(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise TypeError(f"expected bytes or a 1-D uint8 array, got {raw.dtype} {list(raw.shape)}")
    if raw.size < 8 or raw.size % 4:
        raise CorruptBitstreamError(
            f"stream of {raw.size} bytes is not a rANS stream (expected a multiple of 4, at "
            "least 8)"
        )
    words = np.ascontiguousarray(raw).view("<u4")
    # The kernels want aligned, native-order words: copy only where the buffer is not.
    return words if words.flags.aligned and words.dtype.isnative else words.astype(np.uint32)


class AnsDecoder:
    """Decodes one stream of :func:`encode` a chunk at a time (the codec's coding steps), given
    each chunk's table indexes. Reads only the words of ``data``; never reads ahead.

    Raises (from the constructor):
        CorruptBitstreamError: not whole 32-bit words, fewer than two, or an initial state
            outside ``[2**31, 2**63)`` (no encoder writes one).
    """

    def __init__(self, data: bytes | bytearray | memoryview | np.ndarray, tables: AnsTables):
        self.tables = tables
        self._words = _stream_words(data)
        state = int(self._words[0]) | int(self._words[1]) << 32
        if not STATE_MIN <= state < STATE_END:
            raise CorruptBitstreamError(f"rANS stream starts with an invalid state {state:#x}")
        self._state = np.array([2, state], dtype=np.int64)  # [next word, rANS state]
        self._error: Exception | None = None
        self.count = 0  # symbols decoded so far

    @property
    def words_read(self) -> int:
        """32-bit words of the stream consumed so far (the initial state included)."""
        return int(self._state[0])

    def decode(self, indexes: Any, out: np.ndarray | None = None) -> np.ndarray:
        """The next ``indexes.size`` symbols, each with its table row, as int32 ``[n]``.

        Args:
            indexes: integer array (any shape is flattened): the table row of each symbol.
            out: optional contiguous int32 array of that size to decode into.

        Raises:
            TruncatedBitstreamError: the stream ends before these symbols do (the decoder is
                unusable afterwards, as after any error).
            ValueError: an index is not a row of the tables, or ``out`` does not fit.
        """
        if self._error is not None:
            raise CorruptBitstreamError(f"the rANS decoder already failed: {self._error}")
        i = _int32(indexes, "table indexes")
        if out is None:
            out = np.empty(i.size, dtype=np.int32)
        elif out.dtype != np.int32 or out.shape != (i.size,) or not out.flags.c_contiguous:
            raise ValueError(f"out must be a contiguous int32 array of shape ({i.size},)")
        t = self.tables
        status = _kernels().decode_symbols(
            self._words, self._state, i, t.cdf, t.offsets, t.counts, t.lookup, out
        )
        if status > 0:
            self._error = ValueError(
                f"table index {int(i[status - 1])} at position {status - 1} is not a row "
                f"(0..{t.rows - 1})"
            )
            raise self._error
        if status < 0:
            self._error = TruncatedBitstreamError(
                f"rANS stream of {4 * self._words.size} bytes ends before symbol "
                f"{self.count - status - 1} (damaged, or decoded with other tables)"
            )
            raise self._error
        self.count += i.size
        return out

    def finish(self) -> None:
        """Check that the stream ended exactly with the last symbol decoded.

        Raises:
            CorruptBitstreamError: words are left over, or the final state is not the encoder's
                initial state (the decoder lost synchronization, e.g. another model's tables).
        """
        if self._error is not None:
            raise CorruptBitstreamError(f"the rANS decoder already failed: {self._error}")
        left = self._words.size - self.words_read
        if left or int(self._state[1]) != STATE_MIN:
            raise CorruptBitstreamError(
                f"rANS stream does not end with its {self.count} symbols ({4 * left} bytes left, "
                "final state "
                f"{int(self._state[1]):#x} instead of {STATE_MIN:#x}): damaged, or decoded with "
                "other tables"
            )


def decode(
    data: bytes | bytearray | memoryview | np.ndarray, indexes: Any, tables: AnsTables
) -> np.ndarray:
    """Decode a whole stream of :func:`encode`: int32 ``[n]`` for ``n`` table indexes.

    Raises:
        CorruptBitstreamError, TruncatedBitstreamError: see :class:`AnsDecoder`.
        ValueError: an index is not a row of the tables.
    """
    decoder = AnsDecoder(data, tables)
    symbols = decoder.decode(indexes)
    decoder.finish()
    return symbols


def warm_up() -> None:
    """Compile (first use on this machine) or load the kernels now rather than on first coding."""
    tables = AnsTables.from_cdfs(np.array([[0, 30000, 65535, 65536]]), [4], [0])
    decode(encode(np.array([0, 1, 1], np.int32), np.zeros(3, np.int32), tables), [0, 0, 0], tables)
