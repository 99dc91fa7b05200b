"""The reference itself, checked against the formula written out with explicit loops."""

from __future__ import annotations

import math

import torch

from biwkv4_kernel import naive_biwkv4, naive_biwkv4_rows


def _loop_biwkv4(
    w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    B, T, C = k.shape
    y = torch.empty(B, T, C, dtype=torch.float64)
    w, u, k, v = w.tolist(), u.tolist(), k.tolist(), v.tolist()
    for b in range(B):
        for t in range(T):
            for c in range(C):
                num = math.exp(u[c] + k[b][t][c]) * v[b][t][c]
                den = math.exp(u[c] + k[b][t][c])
                for i in range(T):
                    if i != t:
                        e = math.exp(-(abs(t - i) - 1) * w[c] + k[b][i][c])
                        num += e * v[b][i][c]
                        den += e
                y[b, t, c] = num / den
    return y


def test_naive_matches_the_formula() -> None:
    g = torch.Generator().manual_seed(0)
    B, T, C = 2, 7, 3
    w = torch.randn(C, generator=g, dtype=torch.float64) / T
    u = torch.randn(C, generator=g, dtype=torch.float64) / T
    k = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    v = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    expected = _loop_biwkv4(w, u, k, v)
    torch.testing.assert_close(naive_biwkv4(w, u, k, v), expected, rtol=1e-12, atol=1e-12)


def test_naive_is_stable_for_large_keys() -> None:
    T, C = 5, 2
    w = torch.tensor([0.3, -0.3], dtype=torch.float64)
    u = torch.zeros(C, dtype=torch.float64)
    k = torch.full((1, T, C), 50.0, dtype=torch.float64)
    k[0, 2] = 800.0  # exp(800) overflows float64; the softmax form does not
    v = torch.randn(1, T, C, dtype=torch.float64)
    y = naive_biwkv4(w, u, k, v)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[0, :, 0], v[0, 2, 0].expand(T))


def test_rows_match_the_full_reference_and_give_the_log_denominator() -> None:
    g = torch.Generator().manual_seed(1)
    B, T, C = 2, 9, 3
    w = torch.randn(C, generator=g, dtype=torch.float64) / T
    u = torch.randn(C, generator=g, dtype=torch.float64) / T
    k = torch.randn(B, T, C, generator=g, dtype=torch.float64) * 3
    v = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    rows = torch.tensor([4, 0, 8, 4])
    y, lse = naive_biwkv4_rows(w, u, k, v, rows)
    torch.testing.assert_close(y, naive_biwkv4(w, u, k, v)[:, rows], rtol=1e-13, atol=1e-13)
    b, r, c = 1, 2, 2  # the denominator of row t = rows[r], written out
    t = int(rows[r])
    den = math.exp(u[c] + k[b, t, c])
    den += sum(math.exp(-(abs(t - i) - 1) * w[c] + k[b, i, c]) for i in range(T) if i != t)
    assert math.isclose(lse[b, r, c].item(), math.log(den), rel_tol=1e-13)
