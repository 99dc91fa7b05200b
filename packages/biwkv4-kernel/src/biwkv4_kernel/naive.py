"""The obviously-correct O(T²) reference for the bidirectional WKV op.

Use it in tests, never in models: ``naive_biwkv4`` materializes a [B, T, T, C] weight tensor;
``naive_biwkv4_rows`` evaluates the same definition at chosen positions, for long sequences.
"""

from __future__ import annotations

import torch

__all__ = ["naive_biwkv4", "naive_biwkv4_rows"]


def naive_biwkv4(
    w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """Bidirectional WKV, computed straight from its definition.

    ``y[b,t,c]`` is the average of ``v[b,:,c]`` weighted by ``exp(-(|t-i|-1)·w[c] + k[b,i,c])`` for
    ``i ≠ t`` and ``exp(u[c] + k[b,t,c])`` for ``i = t`` (Vision-RWKV, eq. 4). The weights are
    normalized with a softmax over ``i``, which is the same ratio computed without overflow.

    Args:
        w: [C] decay (already divided by T, as Vision-RWKV's callers do).
        u: [C] bonus for the current token (already divided by T).
        k: [B, T, C] keys.
        v: [B, T, C] values.

    Returns:
        [B, T, C] in the promoted dtype of the inputs (float64 in, float64 out).
    """
    dtype = torch.promote_types(
        torch.promote_types(w.dtype, u.dtype), torch.promote_types(k.dtype, v.dtype)
    )
    w, u, k, v = (x.to(dtype) for x in (w, u, k, v))
    T = k.shape[1]
    pos = torch.arange(T, device=k.device)
    dist = (pos[:, None] - pos[None, :]).abs().to(dtype)  # [T(t), T(i)]
    logits = -(dist - 1)[:, :, None] * w + k[:, None, :, :]  # [B, T, T, C]
    diag = torch.eye(T, dtype=torch.bool, device=k.device)[:, :, None]
    logits = torch.where(diag, (u + k)[:, :, None, :], logits)
    return (torch.softmax(logits, dim=2) * v[:, None, :, :]).sum(dim=2)


def naive_biwkv4_rows(
    w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same definition evaluated at selected positions only, with the log-denominator.

    For checking long sequences (T = 32k) where [B, T, T, C] does not fit: the memory is
    [B, R, T, C] for R rows. Differentiable; summing ``(gy[:, rows] * y_rows).sum()`` over row
    blocks that cover [0, T) and calling backward gives the full gradients.

    Args:
        w, u: [C]. k, v: [B, T, C] (as in :func:`naive_biwkv4`).
        rows: [R] integer positions t.

    Returns:
        ``y`` [B, R, C] and ``lse`` [B, R, C] = ``log Σ_i exp(score[t, i])`` at those positions,
        in the promoted dtype of the inputs.
    """
    dtype = torch.promote_types(
        torch.promote_types(w.dtype, u.dtype), torch.promote_types(k.dtype, v.dtype)
    )
    w, u, k, v = (x.to(dtype) for x in (w, u, k, v))
    T = k.shape[1]
    rows = rows.to(device=k.device, dtype=torch.long)
    pos = torch.arange(T, device=k.device)
    dist = (rows[:, None] - pos[None, :]).abs().to(dtype)  # [R(t), T(i)]
    # Channels first, so that the softmax runs over the last (contiguous) axis: [B, C, R, T].
    kc, vc = k.transpose(1, 2), v.transpose(1, 2)
    logits = -(dist - 1) * w[:, None, None] + kc[:, :, None, :]
    diag = rows[:, None] == pos[None, :]
    logits = torch.where(diag, (u[:, None] + kc[:, :, rows])[..., None], logits)
    lse = torch.logsumexp(logits, dim=3)
    y = (torch.softmax(logits, dim=3) * vc[:, :, None, :]).sum(dim=3)
    return y.transpose(1, 2), lse.transpose(1, 2)
