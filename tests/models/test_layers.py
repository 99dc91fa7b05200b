"""HPCM's building blocks against obviously-correct references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hpcm_models.layers import CrossAttentionCell, DWConvRB, PartialConv3x3, PConvRB, SpatialPrior


def naive_cross_attention(cell: CrossAttentionCell, x_t: torch.Tensor, h: torch.Tensor):
    """Window by window, attention over the real positions of each window (cropped at borders)."""
    B, C, H, W = x_t.shape
    ws, heads, d = cell.window_size, cell.num_heads, cell.head_dim
    q, k, v = cell.conv_q(x_t), cell.conv_k(h), cell.conv_v(h)  # 1x1: same before windowing
    rows = []
    for b in range(B):
        out = torch.zeros(C, H, W, dtype=x_t.dtype)
        for r in range(0, H, ws):
            for c in range(0, W, ws):
                qs, ks, vs = (t[b, :, r : r + ws, c : c + ws] for t in (q, k, v))
                hh, ww = qs.shape[-2:]
                qs = qs.reshape(heads, d, -1).transpose(1, 2)
                ks = ks.reshape(heads, d, -1)
                vs = vs.reshape(heads, d, -1).transpose(1, 2)
                attn = torch.softmax(qs @ ks / math.sqrt(d), dim=-1) @ vs  # [heads, n, d]
                out[:, r : r + hh, c : c + ww] = attn.transpose(1, 2).reshape(C, hh, ww)
        rows.append(out)
    return torch.stack(rows) + cell.conv_out(x_t)


@pytest.mark.parametrize(
    ("size", "window"),
    [((8, 8), 4), ((16, 8), 8), ((6, 10), 4), ((4, 12), 8), ((2, 2), 4)],
    ids=["exact-4", "exact-8", "padded-4", "padded-8", "smaller-than-window"],
)
def test_cross_attention_matches_windowed_reference(size, window) -> None:
    torch.manual_seed(0)
    cell = CrossAttentionCell(64, window_size=window, num_heads=32).double()
    x = torch.randn(2, 64, *size, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 64, *size, dtype=torch.float64, requires_grad=True)
    out = cell(x, h)
    expected = naive_cross_attention(cell, x, h)
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, h, *cell.parameters()], grad)
    want = torch.autograd.grad(expected, [x, h, *cell.parameters()], grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_cross_attention_checks_shapes() -> None:
    cell = CrossAttentionCell(64, window_size=4)
    with pytest.raises(ValueError, match=r"same shape \[B, 64, H, W\]"):
        cell(torch.randn(1, 64, 8, 8), torch.randn(1, 64, 8, 4))
    with pytest.raises(ValueError, match="divisible by num_heads=32"):
        CrossAttentionCell(48, window_size=4)


def test_partial_conv_equals_a_full_conv_with_identity_channels() -> None:
    torch.manual_seed(0)
    layer = PartialConv3x3(16, 4)
    full = torch.zeros(16, 16, 3, 3)
    full[:4, :4] = layer.pconv.weight.detach()
    full[4:, 4:, 1, 1] = torch.eye(12)
    bias = torch.cat([layer.pconv.bias.detach(), torch.zeros(12)])
    x = torch.randn(2, 16, 7, 9)
    torch.testing.assert_close(layer(x), F.conv2d(x, full, bias, padding=1))


def test_residual_blocks_are_residual() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 32, 6, 6)
    for block in (PConvRB(32), DWConvRB(32)):
        torch.testing.assert_close(block(x), x + block.branch(x))
        assert block.branch[1].out_channels == 32 * (4 if isinstance(block, PConvRB) else 2)


def test_spatial_prior_scales_between_branches() -> None:
    torch.manual_seed(0)
    prior = SpatialPrior(48, 32, (2, 1))
    x = torch.randn(1, 48, 4, 4)
    gain = torch.rand(1, 48, 1, 1)
    expected = prior.branch_2(prior.branch_1(x) * gain)
    torch.testing.assert_close(prior(x, gain), expected)
    assert prior(x, gain).shape == (1, 32, 4, 4)
