"""Triton kernels for the bidirectional WKV op: the GPU path that needs no CUDA compiler.

Same contract as the compiled extension (``forward(w, u, k, v, need_stats) -> (y, lse)``,
``backward(w, u, k, v, y, lse, gy) -> (gw, gu, gk, gv)``; docs/kernel.md, "The custom op") and the
same log-space *states* as the PyTorch scan: a run of positions is summarized by the logsumexp
``S`` of its scores and the softmax-weighted means of its values, so nothing overflows for any sign
of w. A state seen ``n`` positions further has score ``S - n·w`` and the same means.

Positions are cut into chunks of ``CHUNK`` and chunks into blocks of ``GROUP`` (256 positions).
Every level is a direct softmax over a small tile, so a score carries a fixed number of roundings
(about as many as the scan's, however long the sequence) and every launch is fully parallel:

1. ``_chunk_summaries``: each chunk seen from just outside it, on either side.
2. ``_block_summaries``: each block likewise, from its chunks' summaries.
3. ``_block_states``: the state entering each block from each side: every block on that side,
   in tiles of ``GROUP`` merged by an online softmax (O(T²/256²) work, a few % of the total at
   T = 32k).
4. ``_forward_output`` / ``_backward_output``: the state entering each chunk (its block's incoming
   state and the block's chunks on that side), then each position's softmax over that chunk's
   positions and the two incoming states.

The backward runs steps 1-3 twice: over the rows (scores k, values v, plus the means of distance
and distance × v that give ``gw`` as a covariance, as the scan does) and over the transposed sums
(scores ``-lse``, values g and g·y, for ``gk`` and ``gv``; docs/kernel.md, "Gradients").
``gw`` and ``gu`` are summed per chunk in the kernel and over chunks by torch: no atomics, so the
results are reproducible.

Import this module only where triton imports (``biwkv4_kernel._triton`` guards it). Under
``TRITON_INTERPRET=1`` the kernels run on CPU tensors, in Triton's interpreter (tests).
"""

# No `from __future__ import annotations`: triton 3.0's interpreter recognizes constexpr parameters
# by their annotation object, not by a string.
import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["CHUNK", "GROUP", "backward", "forward"]

#: Positions per chunk. The output tile is [CHUNK, CHUNK, channels]: its cost per position grows
#: with CHUNK, the number of levels above it shrinks.
CHUNK = 16
#: Chunks per block.
GROUP = 16
# The score of an empty entry: exp(_EMPTY - m) is 0 for every real score m, and it is finite, so
# that merging empty states gives no inf - inf (as in the scan).
_EMPTY = tl.constexpr(-1.0e30)


@triton.jit
def _merge(s, a, b, d, dv, n, NV: tl.constexpr, MOM: tl.constexpr):
    """Softmax-merge the entries of [E, BC] tiles along axis 0 into one [BC] state.

    ``s`` are the entries' scores as seen from the state's position, ``a``, ``b`` their value means
    (``b`` only when NV == 2), ``d``, ``dv`` their means of distance and distance × a (only with
    MOM), which grow by ``n`` and ``n·a`` for entries seen ``n`` positions further.
    """
    m = tl.max(s, 0)
    p = tl.exp(s - m[None, :])
    z = tl.sum(p, 0)
    S = m + tl.log(z)
    A = tl.sum(p * a, 0) / z
    B = A
    D = A
    DV = A
    if NV == 2:
        B = tl.sum(p * b, 0) / z
    if MOM:
        D = tl.sum(p * (d + n), 0) / z
        DV = tl.sum(p * (dv + n * a), 0) / z
    return S, A, B, D, DV


@triton.jit
def _load_state(ptr, off, mask, slot, NV: tl.constexpr, MOM: tl.constexpr):
    """A state's slots: score, value means (NV of them), then the two moments (MOM)."""
    s = tl.load(ptr + off, mask=mask, other=_EMPTY)
    a = tl.load(ptr + slot + off, mask=mask, other=0.0)
    b = a
    d = a
    dv = a
    if NV == 2:
        b = tl.load(ptr + 2 * slot + off, mask=mask, other=0.0)
    if MOM:
        d = tl.load(ptr + (1 + NV) * slot + off, mask=mask, other=0.0)
        dv = tl.load(ptr + (2 + NV) * slot + off, mask=mask, other=0.0)
    return s, a, b, d, dv


@triton.jit
def _store_state(ptr, off, mask, slot, S, A, B, D, DV, NV: tl.constexpr, MOM: tl.constexpr):
    tl.store(ptr + off, S, mask=mask)
    tl.store(ptr + slot + off, A, mask=mask)
    if NV == 2:
        tl.store(ptr + 2 * slot + off, B, mask=mask)
    if MOM:
        tl.store(ptr + (1 + NV) * slot + off, D, mask=mask)
        tl.store(ptr + (2 + NV) * slot + off, DV, mask=mask)


@triton.jit
def _program(N, C, w_ptr, BC: tl.constexpr):
    """This program's batch row b, item n (of N per row), channels c [BC], their mask, w [1, BC]."""
    pid = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    cm = c < C
    w = tl.load(w_ptr + c, mask=cm, other=0.0)[None, :]
    return pid // N, pid % N, c, cm, w


@triton.jit
def _chunk_tile(b, n, T, C, c, cm, L: tl.constexpr):
    """Chunk n's positions in the chunk r [L], the [L, BC] mask and the elements' offsets."""
    r = tl.arange(0, L)
    t = n * L + r
    mask = (t < T)[:, None] & cm[None, :]
    return r, mask, (b * T + t)[:, None] * C + c[None, :]


@triton.jit
def _load_scores(ptr, off, mask, NEG: tl.constexpr):
    """Scores as float32 (negated with NEG), _EMPTY outside the mask."""
    x = tl.load(ptr + off, mask=mask, other=0.0).to(tl.float32)
    if NEG:
        x = -x
    return tl.where(mask, x, _EMPTY)


@triton.jit
def _merge_store(
    ptr, dst, cm, slot, s, a, h, d, dv, sh, w, NV: tl.constexpr, MOM: tl.constexpr
):  # fmt: skip
    """Store the state of entries seen ``sh`` positions further (their scores drop by sh·w)."""
    S, A, B, D, DV = _merge(s - sh * w, a, h, d, dv, sh, NV, MOM)
    _store_state(ptr, dst, cm, slot, S, A, B, D, DV, NV, MOM)


@triton.jit
def _chunk_summaries(
    x_ptr, v1_ptr, v2_ptr, w_ptr, out_ptr, T, C, N, slot, side,
    NEG: tl.constexpr, NV: tl.constexpr, MOM: tl.constexpr, L: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    """Each chunk seen from the position after it (left side) and before it (right side).

    Scores are ``x`` (``-x`` with NEG); values ``v1`` and, when NV == 2, ``v1 · v2``.
    """
    b, n, c, cm, w = _program(N, C, w_ptr, BC)
    j, mask, off = _chunk_tile(b, n, T, C, c, cm, L)
    x = _load_scores(x_ptr, off, mask, NEG)
    a = tl.load(v1_ptr + off, mask=mask, other=0.0).to(tl.float32)
    h = a
    if NV == 2:
        h = a * tl.load(v2_ptr + off, mask=mask, other=0.0).to(tl.float32)
    zero = tl.zeros((L, BC), dtype=tl.float32)
    dst = (b * N + n) * C + c
    # Entry j is L-1-j positions (minus one) from the position after the chunk, j from the one
    # before it.
    nl = (L - 1 - j).to(tl.float32)[:, None] + zero
    _merge_store(out_ptr, dst, cm, slot, x, a, h, zero, zero, nl, w, NV, MOM)
    nr = j.to(tl.float32)[:, None] + zero
    _merge_store(out_ptr + side, dst, cm, slot, x, a, h, zero, zero, nr, w, NV, MOM)


@triton.jit
def _block_summaries(
    cs_ptr, w_ptr, bs_ptr, C, N, Q, cs_slot, cs_side, bs_slot, bs_side,
    NV: tl.constexpr, MOM: tl.constexpr, L: tl.constexpr, G: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    """Each block of G chunks seen from the position after it and before it."""
    b, q, c, cm, w = _program(Q, C, w_ptr, BC)
    j = tl.arange(0, G)
    n = q * G + j
    mask = (n < N)[:, None] & cm[None, :]
    src = (b * N + n)[:, None] * C + c[None, :]
    dst = (b * Q + q) * C + c
    zero = tl.zeros((G, BC), dtype=tl.float32)
    # Chunk j's left summary is seen from the position after it: (G-1-j)·L positions more.
    s, a, h, d, dv = _load_state(cs_ptr, src, mask, cs_slot, NV, MOM)
    sh = ((G - 1 - j) * L).to(tl.float32)[:, None] + zero
    _merge_store(bs_ptr, dst, cm, bs_slot, s, a, h, d, dv, sh, w, NV, MOM)
    s, a, h, d, dv = _load_state(cs_ptr + cs_side, src, mask, cs_slot, NV, MOM)
    sh = (j * L).to(tl.float32)[:, None] + zero
    _merge_store(bs_ptr + bs_side, dst, cm, bs_slot, s, a, h, d, dv, sh, w, NV, MOM)


@triton.jit
def _fold_blocks(
    bs_ptr, b, q, lo, hi, c, cm, w, C, Q, slot, LEFT: tl.constexpr,
    NV: tl.constexpr, MOM: tl.constexpr, SPAN: tl.constexpr, QT: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    """The state of blocks [lo, hi) seen from block q's first (LEFT) or last position.

    An online softmax over tiles of QT blocks: one rescaling of the running sums per tile.
    """
    m = tl.zeros((BC,), dtype=tl.float32) + _EMPTY
    z = tl.zeros((BC,), dtype=tl.float32)
    sa = z
    sb = z
    sd = z
    sdv = z
    zero = tl.zeros((QT, BC), dtype=tl.float32)
    for q0 in range(lo, hi, QT):
        qq = q0 + tl.arange(0, QT)
        mask = (qq < hi)[:, None] & cm[None, :]
        s, a, h, d, dv = _load_state(bs_ptr, (b * Q + qq)[:, None] * C + c[None, :], mask, slot,
                                     NV, MOM)  # fmt: skip
        if LEFT:
            sh = ((q - 1 - qq) * SPAN).to(tl.float32)[:, None] + zero
        else:
            sh = ((qq - q - 1) * SPAN).to(tl.float32)[:, None] + zero
        sc = s - sh * w
        m_new = tl.maximum(m, tl.max(sc, 0))
        alpha = tl.exp(m - m_new)
        p = tl.exp(sc - m_new[None, :])
        z = z * alpha + tl.sum(p, 0)
        sa = sa * alpha + tl.sum(p * a, 0)
        if NV == 2:
            sb = sb * alpha + tl.sum(p * h, 0)
        if MOM:
            sd = sd * alpha + tl.sum(p * (d + sh), 0)
            sdv = sdv * alpha + tl.sum(p * (dv + sh * a), 0)
        m = m_new
    some = z > 0
    zs = tl.where(some, z, 1.0)
    S = tl.where(some, m + tl.log(zs), _EMPTY)
    return S, sa / zs, sb / zs, sd / zs, sdv / zs


@triton.jit
def _block_states(
    bs_ptr, w_ptr, bi_ptr, C, Q, slot, side,
    NV: tl.constexpr, MOM: tl.constexpr, SPAN: tl.constexpr, QT: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    """The state entering each block from the left (all blocks before it) and from the right."""
    b, q, c, cm, w = _program(Q, C, w_ptr, BC)
    dst = (b * Q + q) * C + c
    S, A, B, D, DV = _fold_blocks(bs_ptr, b, q, 0, q, c, cm, w, C, Q, slot, True, NV, MOM, SPAN,
                                  QT, BC)  # fmt: skip
    _store_state(bi_ptr, dst, cm, slot, S, A, B, D, DV, NV, MOM)
    S, A, B, D, DV = _fold_blocks(bs_ptr + side, b, q, q + 1, Q, c, cm, w, C, Q, slot, False, NV,
                                  MOM, SPAN, QT, BC)  # fmt: skip
    _store_state(bi_ptr + side, dst, cm, slot, S, A, B, D, DV, NV, MOM)


@triton.jit
def _chunk_state(
    cs_ptr, bi_ptr, b, n, N, Q, c, cm, w, C, cs_slot, bi_slot, LEFT: tl.constexpr,
    NV: tl.constexpr, MOM: tl.constexpr, L: tl.constexpr, G: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    """The state entering chunk n from one side, seen from its first (LEFT) or last position.

    One softmax over the chunks of its block on that side and, in the slot of the chunk itself, the
    state entering the block.
    """
    q = n // G
    j0 = n % G
    j = tl.arange(0, G)
    here = (j == j0)[:, None]
    if LEFT:
        near = j < j0
        sh = tl.where(j == j0, j0 * L, (j0 - 1 - j) * L)
    else:
        near = (j > j0) & (q * G + j < N)
        sh = tl.where(j == j0, (G - 1 - j0) * L, (j - j0 - 1) * L)
    sh = sh.to(tl.float32)[:, None] + tl.zeros((G, BC), dtype=tl.float32)
    mask = near[:, None] & cm[None, :]
    s, a, h, d, dv = _load_state(cs_ptr, (b * N + q * G + j)[:, None] * C + c[None, :], mask,
                                 cs_slot, NV, MOM)  # fmt: skip
    bs, ba, bh, bd, bdv = _load_state(bi_ptr, (b * Q + q) * C + c, cm, bi_slot, NV, MOM)
    s = tl.where(here, bs[None, :], s)
    a = tl.where(here, ba[None, :], a)
    h = tl.where(here, bh[None, :], h)
    d = tl.where(here, bd[None, :], d)
    dv = tl.where(here, bdv[None, :], dv)
    return _merge(s - sh * w, a, h, d, dv, sh, NV, MOM)


@triton.jit
def _tile_softmax(x, d, w, SL, SR, L: tl.constexpr):
    """Each row's softmax over its chunk and the two states entering it, as [L rows, L entries, BC].

    Row r gives entry e the score ``x_e - (|r-e|-1)·w``, ``d_r`` on the diagonal, the left state
    ``SL - r·w`` and the right one ``SR - (L-1-r)·w``. Returns the weights ``exp(score - m)`` of the
    entries [L, L, BC] and the states [L, BC], each row's sum z, m, the diagonal mask [L, L, 1] and
    the distances [L, L, 1] (-1 on the diagonal) and [L, 1] to either state.
    """
    r = tl.arange(0, L)
    diag = (r[:, None] == r[None, :])[:, :, None]
    gap = (tl.abs(r[:, None] - r[None, :]) - 1).to(tl.float32)[:, :, None]
    rf = r.to(tl.float32)[:, None]
    lf = L - 1 - rf
    s3 = tl.where(diag, d[:, None, :], x[None, :, :] - gap * w[None, :, :])
    sl = SL[None, :] - rf * w
    sr = SR[None, :] - lf * w
    m = tl.maximum(tl.max(s3, 1), tl.maximum(sl, sr))
    p3 = tl.exp(s3 - m[:, None, :])
    pl = tl.exp(sl - m)
    pr = tl.exp(sr - m)
    return p3, pl, pr, tl.sum(p3, 1) + pl + pr, m, diag, gap, rf, lf


@triton.jit
def _forward_output(
    k_ptr, v_ptr, w_ptr, u_ptr, cs_ptr, bi_ptr, y_ptr, lse_ptr,
    T, C, N, Q, cs_slot, cs_side, bi_slot, bi_side,
    STATS: tl.constexpr, L: tl.constexpr, G: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    """y (and lse) of one chunk: each position's softmax over its chunk and the two states."""
    b, n, c, cm, w = _program(N, C, w_ptr, BC)
    u = tl.load(u_ptr + c, mask=cm, other=0.0)[None, :]
    SL, AL, _b, _d, _dv = _chunk_state(cs_ptr, bi_ptr, b, n, N, Q, c, cm, w, C, cs_slot, bi_slot,
                                       True, 1, False, L, G, BC)  # fmt: skip
    SR, AR, _b, _d, _dv = _chunk_state(cs_ptr + cs_side, bi_ptr + bi_side, b, n, N, Q, c, cm, w,
                                       C, cs_slot, bi_slot, False, 1, False, L, G, BC)  # fmt: skip
    _r, mask, off = _chunk_tile(b, n, T, C, c, cm, L)
    x = _load_scores(k_ptr, off, mask, False)
    v = tl.load(v_ptr + off, mask=mask, other=0.0).to(tl.float32)
    p3, pl, pr, z, m, _diag, _gap, _rf, _lf = _tile_softmax(x, u + x, w, SL, SR, L)
    y = (tl.sum(p3 * v[None, :, :], 1) + pl * AL[None, :] + pr * AR[None, :]) / z
    tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=mask)
    if STATS:
        tl.store(lse_ptr + off, m + tl.log(z), mask=mask)


@triton.jit
def _backward_output(
    k_ptr, v_ptr, w_ptr, u_ptr, y_ptr, lse_ptr, gy_ptr, rs_ptr, ri_ptr, ts_ptr, ti_ptr,
    gk_ptr, gv_ptr, pw_ptr, pu_ptr, T, C, N, Q, rs_slot, rs_side, ri_slot, ri_side,
    ts_slot, ts_side, ti_slot, ti_side, L: tl.constexpr, G: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    """gk, gv of one chunk and its partial sums of gw, gu (docs/kernel.md, "Gradients")."""
    b, n, c, cm, w = _program(N, C, w_ptr, BC)
    u = tl.load(u_ptr + c, mask=cm, other=0.0)[None, :]
    _r, mask, off = _chunk_tile(b, n, T, C, c, cm, L)
    x = _load_scores(k_ptr, off, mask, False)
    v = tl.load(v_ptr + off, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(gy_ptr + off, mask=mask, other=0.0).to(tl.float32)
    hy = g * tl.load(y_ptr + off, mask=mask, other=0.0).to(tl.float32)
    lse = tl.load(lse_ptr + off, mask=mask, other=0.0)

    # Rows: each position's softmax (scores k), with the means of v, distance and distance × v,
    # so that gw = -Σ g·Cov(distance, v) and gu = Σ p_tt·g·(v - E[v]) use one set of weights.
    SL, AL, _b, DL, DVL = _chunk_state(rs_ptr, ri_ptr, b, n, N, Q, c, cm, w, C, rs_slot, ri_slot,
                                       True, 1, True, L, G, BC)  # fmt: skip
    SR, AR, _b, DR, DVR = _chunk_state(rs_ptr + rs_side, ri_ptr + ri_side, b, n, N, Q, c, cm, w,
                                       C, rs_slot, ri_slot, False, 1, True, L, G, BC)  # fmt: skip
    p3, pl, pr, z, _m, diag, gap, rf, lf = _tile_softmax(x, u + x, w, SL, SR, L)
    d3 = tl.where(diag, 0.0, gap)
    ev = (tl.sum(p3 * v[None, :, :], 1) + pl * AL[None, :] + pr * AR[None, :]) / z
    ed = (tl.sum(p3 * d3, 1) + pl * (DL[None, :] + rf) + pr * (DR[None, :] + lf)) / z
    edv = tl.sum(p3 * d3 * v[None, :, :], 1)
    edv = (
        edv + pl * (DVL[None, :] + rf * AL[None, :]) + pr * (DVR[None, :] + lf * AR[None, :])
    ) / z
    ptt = tl.sum(tl.where(diag, p3, 0.0), 1) / z
    gw = tl.where(mask, -g * (edv - ed * ev), 0.0)
    gu = tl.where(mask, ptt * g * (v - ev), 0.0)
    tl.store(pw_ptr + (b * N + n) * C + c, tl.sum(gw, 0), mask=cm)
    tl.store(pu_ptr + (b * N + n) * C + c, tl.sum(gu, 0), mask=cm)

    # Transposed sums: position i (now the row) collects Σ_{t≠i} exp(-lse_t - (|t-i|-1)·w)·(g, g·y)
    # from its chunk and the two states; exp(k_i + that log-sum) = Σ_{t≠i} p[t,i] <= T.
    TL, GL, HL, _d, _dv = _chunk_state(ts_ptr, ti_ptr, b, n, N, Q, c, cm, w, C, ts_slot, ti_slot,
                                       True, 2, False, L, G, BC)  # fmt: skip
    TR, GR, HR, _d, _dv = _chunk_state(ts_ptr + ts_side, ti_ptr + ti_side, b, n, N, Q, c, cm, w,
                                       C, ts_slot, ti_slot, False, 2, False, L, G, BC)  # fmt: skip
    a = tl.where(mask, -lse, _EMPTY)
    no_diagonal = tl.zeros((L, BC), dtype=tl.float32) + _EMPTY
    p3, pl, pr, _z, m, _diag, _gap, _rf, _lf = _tile_softmax(a, no_diagonal, w, TL, TR, L)
    sg = tl.sum(p3 * g[None, :, :], 1) + pl * GL[None, :] + pr * GR[None, :]
    sh = tl.sum(p3 * hy[None, :, :], 1) + pl * HL[None, :] + pr * HR[None, :]
    f = tl.exp(x + m)
    pii = tl.exp(u + x - lse)
    gv = f * sg + pii * g
    gk = v * gv - f * sh - pii * hy
    tl.store(gv_ptr + off, gv.to(gv_ptr.dtype.element_ty), mask=mask)
    tl.store(gk_ptr + off, gk.to(gk_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------

_BC = 16  # channels per program
# Launch options. FP fusion (FMA contraction) is named, not left to triton's default, which changes
# in triton 3.10 (and triton 3.9 warns about that).
_OPTIONS = {"num_warps": 4, "enable_fp_fusion": True}


def _on_device(x: Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: make it the tensors' (nothing on the CPU)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _levels(
    x: Tensor, v1: Tensor, v2: Tensor, w: Tensor, neg: bool, nv: int, mom: bool, L: int, G: int
) -> tuple[Tensor, Tensor]:
    """Chunk summaries and block incoming states of one pass, as [2 sides, slots, B, N|Q, C]."""
    B, T, C = x.shape
    N = triton.cdiv(T, L)
    Q = triton.cdiv(N, G)
    slots = 1 + nv + 2 * mom
    cs = torch.empty((2, slots, B, N, C), dtype=torch.float32, device=x.device)
    bs = torch.empty((2, slots, B, Q, C), dtype=torch.float32, device=x.device)
    bi = torch.empty_like(bs)
    cb = triton.cdiv(C, _BC)
    _chunk_summaries[(B * N, cb)](
        x, v1, v2, w, cs, T, C, N, cs.stride(1), cs.stride(0),
        NEG=neg, NV=nv, MOM=mom, L=L, BC=_BC, **_OPTIONS,
    )  # fmt: skip
    _block_summaries[(B * Q, cb)](
        cs, w, bs, C, N, Q, cs.stride(1), cs.stride(0), bs.stride(1), bs.stride(0),
        NV=nv, MOM=mom, L=L, G=G, BC=_BC, **_OPTIONS,
    )  # fmt: skip
    _block_states[(B * Q, cb)](
        bs, w, bi, C, Q, bs.stride(1), bs.stride(0),
        NV=nv, MOM=mom, SPAN=L * G, QT=G, BC=_BC, **_OPTIONS,
    )  # fmt: skip
    return cs, bi


def forward(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, need_stats: bool, *, chunk: int = CHUNK,
    group: int = GROUP,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """y [B, T, C] (dtype of k) and lse (float32 [B, T, C], or [0] without ``need_stats``).

    Args:
        w, u: float32 [C]. k, v: [B, T, C], float16, bfloat16 or float32 (any strides; dense
            copies are made where needed).
        need_stats: also return lse.
        chunk, group: positions per chunk and chunks per block, powers of two (tests make them
            small, so that short sequences cross every level).
    """
    w, u, k, v = (t.contiguous() for t in (w, u, k, v))
    B, T, C = k.shape
    N = triton.cdiv(T, chunk)
    Q = triton.cdiv(N, group)
    y = torch.empty_like(k)
    lse = torch.empty(k.shape if need_stats else (0,), dtype=torch.float32, device=k.device)
    if k.numel() == 0:
        return y, lse
    with _on_device(k):
        cs, bi = _levels(k, v, v, w, False, 1, False, chunk, group)
        _forward_output[(B * N, triton.cdiv(C, _BC))](
            k, v, w, u, cs, bi, y, lse if need_stats else y,
            T, C, N, Q, cs.stride(1), cs.stride(0), bi.stride(1), bi.stride(0),
            STATS=need_stats, L=chunk, G=group, BC=_BC, **_OPTIONS,
        )  # fmt: skip
    return y, lse


def backward(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, y: Tensor, lse: Tensor, gy: Tensor, *,
    chunk: int = CHUNK, group: int = GROUP,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """gw, gu (float32 [C]) and gk, gv ([B, T, C], dtype of k).

    ``y`` and ``lse`` are the forward's (lse float32 [B, T, C]); ``gy`` has k's dtype.
    """
    w, u, k, v, y, lse, gy = (t.contiguous() for t in (w, u, k, v, y, lse, gy))
    B, T, C = k.shape
    N = triton.cdiv(T, chunk)
    Q = triton.cdiv(N, group)
    gk = torch.empty_like(k)
    gv = torch.empty_like(v)
    if k.numel() == 0:
        return torch.zeros_like(w), torch.zeros_like(u), gk, gv
    pw = torch.empty((B, N, C), dtype=torch.float32, device=k.device)
    pu = torch.empty_like(pw)
    with _on_device(k):
        rs, ri = _levels(k, v, v, w, False, 1, True, chunk, group)
        ts, ti = _levels(lse, gy, y, w, True, 2, False, chunk, group)
        _backward_output[(B * N, triton.cdiv(C, _BC))](
            k, v, w, u, y, lse, gy, rs, ri, ts, ti, gk, gv, pw, pu, T, C, N, Q,
            rs.stride(1), rs.stride(0), ri.stride(1), ri.stride(0),
            ts.stride(1), ts.stride(0), ti.stride(1), ti.stride(0),
            L=chunk, G=group, BC=_BC, **_OPTIONS,
        )  # fmt: skip
    # Per-chunk partial sums, added in a fixed order: reproducible.
    return pw.sum(dim=(0, 1)), pu.sum(dim=(0, 1)), gk, gv
