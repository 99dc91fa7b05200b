"""The fast pure-PyTorch bidirectional WKV: a blocked log-space scan, forward and backward.

This is what runs wherever the CUDA kernel does not (CPU, other accelerators,
``BIWKV4_DISABLE_CUDA=1``). It is O(B·T·C) in time and memory, vectorized over B and C, and exact:
every weight is ``exp(score - max)`` for a score formed from the inputs as the formula forms it, so
it is stable for any sign of w and any |k| (docs/kernel.md, "The PyTorch (CPU) algorithm").

Notation (per batch row and channel; everything is elementwise in C). Position t gives position i
the score ``L[t,i] = k_i - (|t-i|-1)·w`` for ``i ≠ t`` and ``L[t,t] = u + k_t``; then
``y_t = Σ_i softmax_i(L[t,:])·v_i`` and ``lse_t = logsumexp_i L[t,i]``.

The positions left of t and right of t form two decayed scans. A *state* summarizes a run of
positions as ``(S, M)``: ``S`` the logsumexp of their scores, ``M`` the softmax-weighted mean of
their values, and optionally the weighted means of distance × value and of distance (for the
gradient of w). A state never holds a raw sum of exponentials, so nothing overflows; merging states
is a small softmax.

The scan is blocked: items are taken ``_BLOCK`` at a time; each group is summarized; the summaries
are scanned one level up, recursively (there a group is one item, and one step ``_BLOCK`` times as
many positions); each item's state is then the softmax of its group's incoming state and the other
items of its group. A score is always an input minus an integer times w (one rounding), so errors
do not build up along T; they grow with the depth, log_4(T).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["scan_backward", "scan_forward"]

# Items per group at every level. Four keeps the work per level low (1.5 score evaluations per item
# and side) and the depth at log_4(T) (7.5 levels at T = 32768); 2, 8 and 16 measured slower.
_BLOCK = 4

# Process at most this many B·T·C elements at a time (channels are independent), so that the working
# set stays near the cache and the peak memory a small multiple of the input's.
_SLAB_ELEMENTS = 1 << 20

# The score of an empty state. Finite, so that empty states merge without 0·inf or inf - inf:
# exp(_EMPTY - s) is 0 for every real score s, and an empty state's means are 0.
_EMPTY = -1e30

# A level's states, left then right: scores [N, n, C], means [V, N, n, C] and, when moments are
# tracked, moments [V+1, N, n, C] (means of distance × each value, then of distance alone).
_States = tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor, Tensor | None]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _to_groups(x: Tensor, dtype: torch.dtype, fill: float) -> Tensor:
    """[..., n, C] in position order (any strides and dtype) -> [..., L, m, C] contiguous.

    Item ``j = g·L + s`` goes to ``[..., s, g, :]``: the offset within the group is the outer axis,
    so that the offset loops below work on large contiguous slices whatever C is. Items past n (the
    padding of the last group) are set to ``fill``. One copy, which also converts the dtype.
    """
    *lead, n, C = x.shape
    full, rest = divmod(n, _BLOCK)
    out = torch.empty((*lead, _BLOCK, full + (rest > 0), C), dtype=dtype, device=x.device)
    by_group = out.transpose(-3, -2)  # [..., m, L, C] view
    if full:
        by_group[..., :full, :, :].copy_(x[..., : full * _BLOCK, :].reshape(*lead, full, _BLOCK, C))
    if rest:
        by_group[..., full, :rest, :].copy_(x[..., full * _BLOCK :, :])
        by_group[..., full, rest:, :].fill_(fill)
    return out


def _from_groups(x: Tensor, out: Tensor) -> Tensor:
    """Inverse of :func:`_to_groups`: write [..., L, m, C] into ``out`` [..., n, C], any strides."""
    *lead, n, C = out.shape
    full, rest = divmod(n, _BLOCK)
    by_group = x.transpose(-3, -2)
    if full:
        out[..., : full * _BLOCK, :].view(*lead, full, _BLOCK, C).copy_(by_group[..., :full, :, :])
    if rest:
        out[..., full * _BLOCK :, :].copy_(by_group[..., full, :rest, :])
    return out


def _add_moments(
    acc_e: Tensor, p: Tensor, z: Tensor, e: Tensor | None, dist: Tensor | float
) -> None:
    """``acc_e += p · (dist · [z, 1] + e)``: the moments of entries at ``dist`` more positions.

    Args:
        acc_e: [V+1, ...] accumulator. p: [...] weights. z: [V, ...] the entries' means.
        e: [V+1, ...] the entries' own moments, or None for zeros. dist: extra distance (a float,
            or a tensor that broadcasts against p).
    """
    if isinstance(dist, Tensor) or dist != 0:
        pd = p * dist
        acc_e[:-1].addcmul_(pd, z)
        acc_e[-1].add_(pd)
    if e is not None:
        acc_e.addcmul_(p, e)


def _summarize(
    x: Tensor, z: Tensor, e: Tensor | None, dist: Tensor, d: Tensor, unit: int, moments: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One state per group: the softmax of its items' scores decayed to a reference point.

    Args:
        x: [N, L, m, C] item scores (L items per group, m groups).
        z: [V, N, L, m, C] item means.
        e: [V+1, N, L, m, C] item moments, or None for zeros.
        dist: [L] distance (in items) from each item to the group's reference point.
        d: [C] decay per item.
        unit: positions per item.
        moments: also return the groups' moments.

    Returns:
        Group scores [N, m, C], means [V, N, m, C], moments [V+1, N, m, C] or None.
    """
    scores = x - (dist[:, None] * d)[:, None]
    top = scores.amax(dim=1, keepdim=True)
    p = torch.exp(scores - top)
    den = p.sum(dim=1)
    s = top.squeeze(1) + torch.log(den)
    mean = (p * z).sum(dim=2) / den
    if not moments:
        return s, mean, None
    acc_e = z.new_zeros((z.shape[0] + 1, *p.shape))
    _add_moments(acc_e, p, z, e, (dist * unit)[:, None, None])
    return s, mean, acc_e.sum(dim=2) / den


def _incoming(
    xf: Tensor,
    zf: Tensor,
    ef: Tensor | None,
    xb: Tensor,
    zb: Tensor,
    eb: Tensor | None,
    w: Tensor,
    unit: int,
    moments: bool,
) -> _States | None:
    """The states each group receives from the groups on its left and on its right.

    Summarizes every group (its items decayed to its right end for the left-going summary, to its
    left end for the right-going one) and scans the summaries one level up, where an item is a group
    and one step is ``_BLOCK·unit`` positions. None when there is a single group.

    Args:
        xf, xb: [N, L, m, C] grouped scores of the left-going and right-going item summaries.
        zf, zb: [V, N, L, m, C] their means. ef, eb: [V+1, N, L, m, C] their moments, or None.
        w: [C] decay per position. unit: positions per item. moments: track moments.
    """
    if xf.shape[2] == 1:
        return None
    d = w * unit
    pos = torch.arange(_BLOCK, dtype=xf.dtype, device=xf.device)
    gxf, gzf, gef = _summarize(xf, zf, ef, pos.flip(0), d, unit, moments)
    gxb, gzb, geb = _summarize(xb, zb, eb, pos, d, unit, moments)
    return _bidirectional_states(gxf, gzf, gef, gxb, gzb, geb, w, unit * _BLOCK, moments)


def _within_group(
    x: Tensor,
    z: Tensor,
    e: Tensor | None,
    gs: Tensor,
    gm: Tensor,
    ge: Tensor | None,
    d: Tensor,
    unit: int,
    left: bool,
    moments: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Exclusive state of every item: its group's incoming state and the group's earlier items.

    "Earlier" is to the left (``left=True``: items ``s' < s``) or to the right (items ``s' > s``).
    An item ``o`` places away contributes the score ``x - (o-1)·d``; the group's incoming state,
    which ends next to the group, is decayed by the item's offset in the group. Two passes (the
    maximum, then the sum of exponentials), so that every weight is ``exp(score - max)``.

    Args:
        x: [N, L, m, C] item scores; z: [V, N, L, m, C] item means; e: [V+1, N, L, m, C] moments
            or None.
        gs: [N, m, C] incoming scores; gm: [V, N, m, C] their means; ge: [V+1, N, m, C] moments.
        d: [C] decay per item; unit: positions per item.

    Returns:
        Scores [N, L, m, C], means [V, N, L, m, C] and moments [V+1, N, L, m, C] (or None).
    """
    block = x.shape[1]
    offset = torch.arange(block, dtype=x.dtype, device=x.device)
    if not left:
        offset = offset.flip(0)
    incoming = gs[:, None] - (offset[:, None] * d)[:, None]  # [N, L, m, C]
    top = incoming.clone()

    def parts(o: int) -> tuple[slice, slice]:
        # (targets, sources) along the group axis for items o apart.
        if left:
            return slice(o, block), slice(0, block - o)
        return slice(0, block - o), slice(o, block)

    def scores(o: int, src: slice) -> Tensor:
        return x[:, src] if o == 1 else x[:, src] - (o - 1) * d

    for o in range(1, block):
        tgt, src = parts(o)
        torch.maximum(top[:, tgt], scores(o, src), out=top[:, tgt])

    acc = torch.exp(incoming - top)
    mean = acc * gm[:, :, None]
    moment = None
    if moments:
        moment = gm.new_zeros((gm.shape[0] + 1, *acc.shape))
        _add_moments(moment, acc, gm[:, :, None], ge[:, :, None], (offset * unit)[:, None, None])
    for o in range(1, block):
        tgt, src = parts(o)
        p = torch.exp(scores(o, src) - top[:, tgt])
        acc[:, tgt] += p
        mean[:, :, tgt].addcmul_(p, z[:, :, src])
        if moment is not None:
            e_src = None if e is None else e[:, :, src]
            _add_moments(moment[:, :, tgt], p, z[:, :, src], e_src, (o - 1) * unit)
    s = top.add_(torch.log(acc))
    mean /= acc
    if moment is not None:
        moment /= acc
    return s, mean, moment


def _bidirectional_states(
    xf: Tensor,
    zf: Tensor,
    ef: Tensor | None,
    xb: Tensor,
    zb: Tensor,
    eb: Tensor | None,
    w: Tensor,
    unit: int,
    moments: bool,
) -> _States:
    """Exclusive left and right states of every item of a sequence (one level of the scan).

    Item j carries a left-going summary (``xf, zf, ef``: its positions decayed to its right end,
    what items on its right see) and a right-going one (``xb, zb, eb``: decayed to its left end).
    The left state of item J merges ``xf_j - (J-1-j)·unit·w`` over ``j < J``; the right state
    ``xb_j - (j-J-1)·unit·w`` over ``j > J``. A moment is a mean of ``distance × value``, where the
    distance of position r from a state delivered to position t is ``|t - r| - 1``.

    Args:
        xf, xb: [N, n, C] scores. zf, zb: [V, N, n, C] means. ef, eb: [V+1, N, n, C] or None.
        w: [C] decay per position. unit: positions per item. moments: track moments.

    Returns:
        (left scores, means, moments, right scores, means, moments) in item order, with shapes
        [N, n, C], [V, N, n, C] and [V+1, N, n, C] (the moments None unless tracked).
    """
    N, n, C = xf.shape
    V = zf.shape[0]
    dt = xf.dtype

    def grouped(z: Tensor | None, fill: float) -> Tensor | None:
        return None if z is None else _to_groups(z, dt, fill)

    xf4, xb4 = _to_groups(xf, dt, _EMPTY), _to_groups(xb, dt, _EMPTY)
    zf4, zb4 = _to_groups(zf, dt, 0.0), _to_groups(zb, dt, 0.0)
    ef4, eb4 = grouped(ef, 0.0), grouped(eb, 0.0)
    inc = _incoming(xf4, zf4, ef4, xb4, zb4, eb4, w, unit, moments)
    if inc is None:
        empty_s = xf.new_full((N, 1, C), _EMPTY)
        empty_m = xf.new_zeros((V, N, 1, C))
        empty_e = xf.new_zeros((V + 1, N, 1, C)) if moments else None
        inc = (empty_s, empty_m, empty_e) * 2
    gsl, gml, gel, gsr, gmr, ger = inc
    d = w * unit
    sl, ml, el = _within_group(xf4, zf4, ef4, gsl, gml, gel, d, unit, True, moments)
    sr, mr, er = _within_group(xb4, zb4, eb4, gsr, gmr, ger, d, unit, False, moments)

    def ungrouped(x: Tensor) -> Tensor:
        return _from_groups(x, x.new_empty((*x.shape[:-3], n, C)))

    return (
        ungrouped(sl),
        ungrouped(ml),
        None if el is None else ungrouped(el),
        ungrouped(sr),
        ungrouped(mr),
        None if er is None else ungrouped(er),
    )


def _all_entries(
    x: Tensor, z: Tensor, diag: Tensor, inc: _States | None, w: Tensor, moments: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Every position's full softmax: incoming states, the rest of its group, and itself.

    The bottom level of the scan fused with the final merge: one maximum and one sum of
    exponentials per position over all its entries (the left and right incoming states, the other
    positions of its group, and its own entry with score ``diag``, value ``z`` and distance 0).

    Args:
        x: [N, L, m, C] scores of the positions as seen from a neighbour (k, or -lse).
        z: [V, N, L, m, C] values.
        diag: [N, L, m, C] score of each position's own entry.
        inc: the groups' incoming states (from :func:`_incoming`), or None for a single group.
        w: [C] decay per position.
        moments: also accumulate distance × value and distance.

    Returns:
        ``top``, ``acc`` [N, L, m, C], ``acc_z`` [V, N, L, m, C] and ``acc_e`` [V+1, N, L, m, C]
        (or None) with ``Σ exp(score) = exp(top)·acc``, ``Σ exp(score)·value = exp(top)·acc_z``
        and ``Σ exp(score)·distance·[value, 1] = exp(top)·acc_e``, sums over the entries.
    """
    block = x.shape[1]
    pos = torch.arange(block, dtype=x.dtype, device=x.device)
    top = diag.clone()
    if inc is not None:
        gsl, gml, gel, gsr, gmr, ger = inc
        in_l = gsl[:, None] - (pos[:, None] * w)[:, None]
        in_r = gsr[:, None] - (pos.flip(0)[:, None] * w)[:, None]
        torch.maximum(top, in_l, out=top)
        torch.maximum(top, in_r, out=top)
    shifted = [x if o == 1 else x - (o - 1) * w for o in range(1, block)]
    for o in range(1, block):
        xo = shifted[o - 1]
        torch.maximum(top[:, o:], xo[:, : block - o], out=top[:, o:])
        torch.maximum(top[:, : block - o], xo[:, o:], out=top[:, : block - o])

    acc = torch.exp(diag - top)
    acc_z = acc * z
    acc_e = z.new_zeros((z.shape[0] + 1, *acc.shape)) if moments else None
    if inc is not None:
        for s, gm, ge, dist in ((in_l, gml, gel, pos), (in_r, gmr, ger, pos.flip(0))):
            p = torch.exp(s - top)
            acc += p
            acc_z.addcmul_(p, gm[:, :, None])
            if acc_e is not None:
                _add_moments(acc_e, p, gm[:, :, None], ge[:, :, None], dist[:, None, None])
    for o in range(1, block):
        xo = shifted[o - 1]
        for tgt, src in (
            (slice(o, block), slice(0, block - o)),
            (slice(0, block - o), slice(o, block)),
        ):
            p = torch.exp(xo[:, src] - top[:, tgt])
            acc[:, tgt] += p
            acc_z[:, :, tgt].addcmul_(p, z[:, :, src])
            if acc_e is not None:
                _add_moments(acc_e[:, :, tgt], p, z[:, :, src], None, o - 1)
    return top, acc, acc_z, acc_e


def _slabs(B: int, T: int, C: int) -> list[slice]:
    """Channel slices that keep each slab near ``_SLAB_ELEMENTS`` elements."""
    width = max(1, min(C, _SLAB_ELEMENTS // max(1, B * T)))
    return [slice(c, min(C, c + width)) for c in range(0, C, width)]


@torch.no_grad()
def scan_forward(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, need_stats: bool = False
) -> tuple[Tensor, Tensor]:
    """Bidirectional WKV forward by the blocked log-space scan.

    Args:
        w: [C] decay per position (callers pass decay / T).
        u: [C] bonus of the current position (callers pass bonus / T).
        k: [B, T, C] keys: float16, bfloat16, float32 or float64, any strides.
        v: [B, T, C] values, dtype of k.
        need_stats: also return ``lse``.

    Returns:
        ``y`` [B, T, C] in k's dtype, and ``lse`` [B, T, C] (float32; float64 for float64 inputs),
        the log of each position's softmax denominator, or an empty [0] tensor unless
        ``need_stats``. The computation is in float32 (float64 for float64 inputs).
    """
    cd = _compute_dtype(k.dtype)
    B, T, C = k.shape
    y = torch.empty(B, T, C, dtype=k.dtype, device=k.device)
    lse = torch.empty((B, T, C) if need_stats else (0,), dtype=cd, device=k.device)
    for c in _slabs(B, T, C):
        wc, uc = w[c].to(cd), u[c].to(cd)
        x = _to_groups(k[:, :, c], cd, _EMPTY)  # the padding scores nothing
        z = _to_groups(v[None, :, :, c], cd, 0.0)
        inc = _incoming(x, z, None, x, z, None, wc, 1, False)
        top, acc, acc_z, _ = _all_entries(x, z, x + uc, inc, wc, False)
        _from_groups(acc_z[0] / acc, y[:, :, c])
        if need_stats:
            _from_groups(top + torch.log(acc), lse[:, :, c])
    return y, lse


@torch.no_grad()
def scan_backward(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, y: Tensor, lse: Tensor, gy: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of the bidirectional WKV by the same scan (derived by hand; no autograd graph).

    With ``p[t,i] = exp(L[t,i] - lse_t)`` and ``r[t,i] = p[t,i]·gy_t·(v_i - y_t)``, the gradient of
    the loss with respect to the score ``L[t,i]`` (docs/kernel.md derives all four):

    - ``gv_i = Σ_t p[t,i]·gy_t`` and ``gk_i = Σ_t r[t,i] = v_i·gv_i - Σ_t p[t,i]·gy_t·y_t``. Since
      ``p[t,i] = exp(k_i)·exp(-lse_t - (|t-i|-1)·w)`` for ``i ≠ t``, these sums over t are the
      forward's scan with scores ``-lse`` and values ``(gy, gy·y)``.
    - ``gw = -Σ_t gy_t·Cov_t(|t-i|-1, v_i)`` and ``gu = Σ_t p[t,t]·gy_t·(v_t - y_t)``: statistics
      of each position's softmax, recomputed by the forward scan with distance moments. Taking the
      covariance under one set of weights avoids the cancellation that summing distance × r over
      all pairs suffers when the distances that matter are long (w < 0).

    Args:
        w, u, k, v: the forward's inputs (shapes and dtypes as in :func:`scan_forward`).
        y: [B, T, C] the forward's output (dtype of k).
        lse: [B, T, C] the forward's statistics.
        gy: [B, T, C] gradient of the loss with respect to y (dtype of k).

    Returns:
        ``(gw, gu, gk, gv)``: gw, gu [C] in w's dtype; gk, gv [B, T, C] in k's dtype.
    """
    cd = _compute_dtype(k.dtype)
    B, T, C = k.shape
    gk = torch.empty(B, T, C, dtype=k.dtype, device=k.device)
    gv = torch.empty(B, T, C, dtype=v.dtype, device=v.device)
    gw = torch.empty(C, dtype=w.dtype, device=w.device)
    gu = torch.empty(C, dtype=u.dtype, device=u.device)
    for c in _slabs(B, T, C):
        wc, uc = w[c].to(cd), u[c].to(cd)
        kc = _to_groups(k[:, :, c], cd, _EMPTY)  # the padding scores nothing
        vc = _to_groups(v[None, :, :, c], cd, 0.0)
        g = _to_groups(gy[:, :, c], cd, 0.0)

        # gk and gv: sums over t, a scan with scores -lse.
        a = _to_groups(lse[:, :, c], cd, -_EMPTY).neg_()
        z = torch.stack([g, g * _to_groups(y[:, :, c], cd, 0.0)])
        inc = _incoming(a, z, None, a, z, None, wc, 1, False)
        top, _, acc_z, _ = _all_entries(a, z, a + uc, inc, wc, False)
        # Each sum is exp(k_i + top_i)·acc_z; k_i + top_i is the log of a sum of p[t,i] <= log T.
        scale = torch.exp(kc + top)
        gvc = scale * acc_z[0]
        _from_groups(gvc, gv[:, :, c])
        _from_groups(vc[0] * gvc - scale * acc_z[1], gk[:, :, c])

        # gw and gu: each position's softmax again, with distance moments.
        inc = _incoming(kc, vc, None, kc, vc, None, wc, 1, True)
        diag = kc + uc
        top, acc, acc_z, acc_e = _all_entries(kc, vc, diag, inc, wc, True)
        assert acc_e is not None
        mean_v = acc_z[0] / acc
        cov = (acc_e[0] - acc_e[1] * mean_v) / acc
        gw[c] = -(g * cov).sum(dim=(0, 1, 2))
        p_diag = torch.exp(diag - top) / acc
        gu[c] = (p_diag * g * (vc[0] - mean_v)).sum(dim=(0, 1, 2))
    return gw, gu, gk, gv
