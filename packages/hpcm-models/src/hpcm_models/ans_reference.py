"""References for :mod:`hpcm_models.ans`, with the same signatures.

* :func:`encode_reference` / :func:`decode_reference`: the rANS of ryg_rans ``rans64.h`` written
  out in plain Python integers, with divisions instead of reciprocals and a linear search instead
  of the lookup table: obviously correct and slow (~1 M symbols/s). Same checks and errors as the
  fast decoder.
* :func:`compressai_encode` / :class:`CompressAIDecoder`: CompressAI 1.2.8's C++ coder behind
  Python lists, exactly as the codec used it before :mod:`hpcm_models.ans` (the old path: the
  benchmark's baseline and the oracle for the bitstream). Its decoder does no bounds checking;
  the stream is padded with zeros so that an escape-free decoder can never leave its buffer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .ans import PRECISION, STATE_END, STATE_MIN, AnsTables, _check_pair, _int32, _stream_words
from .errors import CorruptBitstreamError, TruncatedBitstreamError

__all__ = ["CompressAIDecoder", "compressai_encode", "decode_reference", "encode_reference"]

_MASK = (1 << PRECISION) - 1


def _interval(tables: AnsTables, row: int, value: int) -> tuple[int, int]:
    """(start, frequency) of symbol ``value`` of ``row``; ValueError outside the row."""
    if not 0 <= row < tables.rows:
        raise ValueError(f"table index {row} is not a row (0..{tables.rows - 1})")
    v = value - int(tables.offsets[row])
    if not 0 <= v < int(tables.counts[row]):
        raise ValueError(f"symbol {value} is outside row {row}'s range")
    start = int(tables.cdf[row, v])
    return start, int(tables.cdf[row, v + 1]) - start


def encode_reference(symbols: Any, indexes: Any, tables: AnsTables) -> bytes:
    """:func:`hpcm_models.ans.encode`, in plain Python (``Rans64EncPut`` with a division)."""
    s, i = _check_pair(symbols, indexes)
    x, words = STATE_MIN, []
    for value, row in zip(reversed(s.tolist()), reversed(i.tolist()), strict=True):
        start, freq = _interval(tables, row, value)
        if x >= ((STATE_MIN >> PRECISION) << 32) * freq:
            words.append(x & 0xFFFFFFFF)
            x >>= 32
        x = ((x // freq) << PRECISION) + x % freq + start
    words += [x >> 32, x & 0xFFFFFFFF]  # reversed below: the state's low word comes first
    return np.array(words[::-1], dtype="<u4").tobytes()


def decode_reference(data: Any, indexes: Any, tables: AnsTables) -> np.ndarray:
    """:func:`hpcm_models.ans.decode`, in plain Python (``Rans64DecAdvance``, linear search)."""
    words = _stream_words(data).tolist()
    rows = _int32(indexes, "table indexes").tolist()
    x = words[0] | words[1] << 32
    if not STATE_MIN <= x < STATE_END:
        raise CorruptBitstreamError(f"rANS stream starts with an invalid state {x:#x}")
    p, out, table = 2, [], tables.cdf.tolist()
    for k, row in enumerate(rows):
        if not 0 <= row < tables.rows:
            raise ValueError(f"table index {row} at position {k} is not a row")
        cum, cdf = x & _MASK, table[row]
        v = 0
        while cdf[v + 1] <= cum:
            v += 1
        x = (cdf[v + 1] - cdf[v]) * (x >> PRECISION) + cum - cdf[v]
        if x < STATE_MIN:
            if p >= len(words):
                raise TruncatedBitstreamError(f"rANS stream ends before symbol {k}")
            x = x << 32 | words[p]
            p += 1
        out.append(v + int(tables.offsets[row]))
    if p != len(words) or x != STATE_MIN:
        raise CorruptBitstreamError("rANS stream does not end with its symbols")
    return np.array(out, dtype=np.int32)


def compressai_encode(symbols: Any, indexes: Any, tables: AnsTables) -> bytes:
    """:func:`hpcm_models.ans.encode` through CompressAI's ``BufferedRansEncoder`` (lists).

    Raises:
        ValueError: fewer than 8 symbols: CompressAI's ``flush`` sizes its output for one word
            per symbol and writes past it when a stream needs more (possible below 6 symbols:
            heap corruption, seen as ``double free or corruption``).
    """
    from compressai.ans import BufferedRansEncoder

    s, i = _check_pair(symbols, indexes)
    if s.size < 8:
        raise ValueError(f"CompressAI's encoder overflows its buffer for {s.size} < 8 symbols")
    encoder = BufferedRansEncoder()
    encoder.encode_with_indexes(
        s.tolist(),
        i.tolist(),
        tables.compressai_rows(),
        tables.sizes.tolist(),
        tables.offsets.tolist(),
    )
    return encoder.flush()


class CompressAIDecoder:
    """:class:`hpcm_models.ans.AnsDecoder` through CompressAI's ``RansDecoder`` (lists).

    Args:
        data: the stream.
        count: how many symbols will be decoded: the stream is padded with zeros to
            ``8 + 4 · count`` bytes, which an escape-free decoder cannot read past.
        tables: see :class:`~hpcm_models.ans.AnsTables`.
    """

    def __init__(self, data: bytes, count: int, tables: AnsTables) -> None:
        from compressai.ans import RansDecoder

        self.tables, self.left = tables, count
        self._rows = tables.compressai_rows()
        self._sizes, self._offsets = tables.sizes.tolist(), tables.offsets.tolist()
        self.decoder = RansDecoder()
        self.decoder.set_stream(bytes(data) + bytes(max(0, 8 + 4 * count - len(data))))

    def decode(self, indexes: Any) -> np.ndarray:
        """The next symbols (int32), as the codec's reader did: list in, list out."""
        i = _int32(indexes, "table indexes")
        if i.size > self.left:
            raise ValueError("more symbols asked for than announced")
        if i.size and not (i.min() >= 0 and i.max() < self.tables.rows):
            raise ValueError("a table index is not a row")  # the C++ decoder would read astray
        self.left -= i.size
        decoded = self.decoder.decode_stream(i.tolist(), self._rows, self._sizes, self._offsets)
        return np.fromiter(decoded, dtype=np.int32, count=i.size)
