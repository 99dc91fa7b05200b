"""Mixed precision: torch.autocast (bfloat16) and bfloat16 parameters."""

from __future__ import annotations

import pytest
import torch

from rwkv_blocks import BiRWKVBlock, RWKVContextCell, RWKVContextCellLite, RWKVFusionNet

DIM = 16


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a - b‖ / max(‖b‖, 1e-4): gradients that are zero in exact arithmetic (on a 1x1 map, those
    of decay, boost and the keys) come out as rounding noise in float32 and as 0 in bfloat16."""
    diff = (a.float() - b.float()).norm()
    return (diff / b.float().norm().clamp_min(1e-4)).item()


def _check_cpu_autocast_bf16(module: torch.nn.Module, x: torch.Tensor, *rest: torch.Tensor) -> None:
    """``module(x, *rest)`` under CPU bf16 autocast against float32: the residual stream stays in
    the input's dtype (the branches ran in bfloat16), within 1 %; gradients within 5 %."""
    x = x.clone().requires_grad_(True)
    ref = module(x, *rest)
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *module.parameters()])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = module(x, *rest)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()
    assert _relative_error(y, ref) < 1e-2
    grads = torch.autograd.grad(y.square().sum(), [x, *module.parameters()])
    for g, g_ref in zip(grads, ref_grads, strict=True):
        assert g.dtype == torch.float32
        assert torch.isfinite(g).all()
        assert _relative_error(g, g_ref) < 5e-2


@pytest.mark.parametrize(("H", "W"), [(1, 1), (7, 5), (33, 17)])
def test_cpu_autocast_bf16_block(H, W, randomize) -> None:
    torch.manual_seed(0)
    block = randomize(BiRWKVBlock(DIM, hidden_rate=2), scale=0.1)
    _check_cpu_autocast_bf16(block, torch.randn(2, DIM, H, W))


def test_cpu_autocast_bf16_context_cell_and_fusion_net() -> None:
    torch.manual_seed(0)
    cell, net = RWKVContextCell(DIM, hidden_rate=2), RWKVFusionNet(DIM, hidden_rate=2)
    x_t, h_prev = torch.randn(1, DIM, 7, 5), torch.randn(1, DIM, 7, 5)
    ref = net(cell(x_t, h_prev))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(cell(x_t, h_prev))
    assert y.dtype == torch.bfloat16  # conv1x1 outputs are autocast to bfloat16
    assert _relative_error(y, ref) < 5e-2
    y.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in [*cell.parameters(), *net.parameters()])


def test_cpu_autocast_bf16_lite_cell(randomize) -> None:
    """The projections run in bfloat16; the update is added to x_t in x_t's dtype."""
    torch.manual_seed(0)
    cell = randomize(RWKVContextCellLite(DIM, shift=True), scale=0.1)
    x_t, h_prev = torch.randn(2, DIM, 7, 5), torch.randn(2, DIM, 7, 5)
    _check_cpu_autocast_bf16(cell, x_t, h_prev)
    low = RWKVContextCellLite(DIM, shift=True, dtype=torch.bfloat16)
    low.load_state_dict(cell.state_dict())
    y_low = low(x_t.bfloat16(), h_prev.bfloat16())
    assert y_low.dtype == torch.bfloat16
    assert _relative_error(y_low, cell(x_t, h_prev)) < 5e-2


def test_bf16_parameters() -> None:
    torch.manual_seed(0)
    block = BiRWKVBlock(DIM, hidden_rate=2)
    x = torch.randn(2, DIM, 7, 5)
    ref = block(x)
    low = BiRWKVBlock(DIM, hidden_rate=2, dtype=torch.bfloat16)
    low.load_state_dict(block.state_dict())
    y = low(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert _relative_error(y, ref) < 5e-2
    y.float().sum().backward()
    assert all(
        p.grad.dtype == torch.bfloat16 and torch.isfinite(p.grad).all() for p in low.parameters()
    )


@pytest.mark.cuda
def test_cuda_autocast_bf16(device) -> None:
    torch.manual_seed(0)
    block = BiRWKVBlock(DIM, hidden_rate=2, device=device)
    x = torch.randn(2, DIM, 33, 17, device=device, requires_grad=True)
    ref = block(x)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        y = block(x)
    assert _relative_error(y, ref) < 2e-2
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
