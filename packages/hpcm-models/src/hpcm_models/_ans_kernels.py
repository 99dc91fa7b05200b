"""Numba kernels of :mod:`hpcm_models.ans`: 64-bit rANS (ryg_rans ``rans64.h``), 16-bit
probabilities, 32-bit output words, as in CompressAI 1.2.8's ``BufferedRansEncoder`` /
``RansDecoder``.

Imported lazily by :mod:`hpcm_models.ans` (importing numba costs ~0.5 s); compiled on first call
and cached on disk by numba (next to this file, or in the user's cache directory where that is not
writable), so later processes only load the machine code. Every kernel releases the GIL. The
kernels trust the shapes and dtypes :mod:`hpcm_models.ans` gives them and check every
data-dependent index themselves.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

__all__ = ["decode_symbols", "encode_symbols"]


def _jit(fn: Any) -> Any:
    """``numba.njit``: GIL released, no Python exceptions from arithmetic, cached on disk where
    numba finds a writable place (else compiled once per process)."""
    try:
        return numba.njit(nogil=True, cache=True, error_model="numpy")(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available" (read-only install)
        return numba.njit(nogil=True, cache=False, error_model="numpy")(fn)


_STATE_MIN = np.uint64(1 << 31)  # rANS state after renormalization: [2^31, 2^63)
_LOW_WORD = np.uint64(0xFFFFFFFF)
_CUM_MASK = np.uint64(0xFFFF)
_FREQ_MASK = np.uint64(0x1FFFF)


@_jit
def _mul_high(a: np.uint64, b: np.uint64) -> np.uint64:  # pragma: no cover (compiled)
    """High 64 bits of the 128-bit product ``a * b`` (ryg_rans ``Rans64MulHi``)."""
    a_lo, a_hi = a & _LOW_WORD, a >> np.uint64(32)
    b_lo, b_hi = b & _LOW_WORD, b >> np.uint64(32)
    hl = a_hi * b_lo
    cross = ((a_lo * b_lo) >> np.uint64(32)) + (hl & _LOW_WORD) + a_lo * b_hi
    return (hl >> np.uint64(32)) + (cross >> np.uint64(32)) + a_hi * b_hi


@_jit
def encode_symbols(symbols, indexes, offsets, counts, reciprocal, packed, out):  # pragma: no cover
    """Encode ``symbols[i]`` with table row ``indexes[i]``, last symbol first, into the end of
    ``out`` (uint32, one word per symbol plus two); returns the position of the first word, or
    ``-(i + 1)`` if symbol ``i`` or its row is out of range (nothing useful is written then).

    Division-free (ryg_rans ``Rans64EncPutSymbol``): per table entry ``reciprocal`` holds the
    fixed-point inverse of its frequency and ``packed`` the frequency, ``2^16 - frequency``, the
    reciprocal's shift and the bias (bits 0-16, 17-33, 34-39, 40-57); exact for every state.
    """
    rows = counts.size
    x = _STATE_MIN
    p = out.size
    for i in range(symbols.size - 1, -1, -1):
        r = indexes[i]
        if r < 0 or r >= rows:
            return -(i + 1)
        v = np.int64(symbols[i]) - offsets[r]
        if v < 0 or v >= counts[r]:
            return -(i + 1)
        entry = packed[r, v]
        if x >= (entry & _FREQ_MASK) << np.uint64(47):  # ((2^31 >> 16) << 32) * frequency
            p -= 1
            out[p] = np.uint32(x & _LOW_WORD)
            x >>= np.uint64(32)
        q = _mul_high(x, reciprocal[r, v]) >> ((entry >> np.uint64(34)) & np.uint64(63))
        x += (entry >> np.uint64(40)) + q * ((entry >> np.uint64(17)) & _FREQ_MASK)
    out[p - 2] = np.uint32(x & _LOW_WORD)
    out[p - 1] = np.uint32(x >> np.uint64(32))
    return p - 2


@_jit
def decode_symbols(words, state, indexes, cdf, offsets, counts, lookup, out):  # pragma: no cover
    """Decode ``indexes.size`` symbols into ``out`` from ``words``, resuming at ``state`` (int64
    ``[next word, rANS state]``, updated). Returns 0; ``i + 1`` if ``indexes[i]`` is not a row
    (nothing decoded from symbol ``i`` on); ``-(i + 1)`` if symbol ``i`` needed a word beyond the
    end of ``words``. Never reads outside ``words``, ``cdf`` or ``lookup``, whatever they hold.

    The symbol of a cumulative frequency ``c`` is found from ``lookup[r, c >> 8]`` (the symbol
    whose interval holds ``256 · (c >> 8)``) by stepping up while the next boundary is ``<= c``;
    each row of ``cdf`` is padded with ``2^16`` after its last symbol, which stops the step.
    """
    rows = counts.size
    n = words.size
    p = state[0]
    x = np.uint64(state[1])
    for i in range(indexes.size):
        r = indexes[i]
        if r < 0 or r >= rows:
            state[0] = p
            state[1] = np.int64(x)
            return i + 1
        c = np.int64(x & _CUM_MASK)
        s = np.int64(lookup[r, c >> 8])
        while cdf[r, s + 1] <= c:
            s += 1
        start = cdf[r, s]
        x = np.uint64(cdf[r, s + 1] - start) * (x >> np.uint64(16)) + np.uint64(c - start)
        if x < _STATE_MIN:
            if p >= n:
                state[0] = p
                state[1] = np.int64(x)
                return -(i + 1)
            x = (x << np.uint64(32)) | np.uint64(words[p])
            p += 1
        out[i] = s + offsets[r]
    state[0] = p
    state[1] = np.int64(x)
    return 0
