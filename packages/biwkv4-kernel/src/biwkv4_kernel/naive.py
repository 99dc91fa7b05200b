"""The obviously-correct O(T²) reference for the bidirectional WKV op.

Use it in tests, never in models: it materializes a [B, T, T, C] weight tensor.
"""

from __future__ import annotations

import torch

__all__ = ["naive_biwkv4"]


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
