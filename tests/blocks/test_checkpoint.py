"""use_checkpoint=True recomputes activations in backward; values and gradients are unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rwkv_blocks import BiRWKVBlock, RWKVContextCell, RWKVContextCellLite, RWKVFusionNet

DIM = 8


def _pair(build, randomize) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    plain = randomize(build(False))
    ckpt = build(True)
    ckpt.load_state_dict(plain.state_dict())
    return plain, ckpt


BUILDERS = {
    "BiRWKVBlock": lambda c: BiRWKVBlock(DIM, hidden_rate=2, use_checkpoint=c),
    "RWKVFusionNet": lambda c: RWKVFusionNet(DIM, num_blocks=2, hidden_rate=2, use_checkpoint=c),
}


def _saved_tensor_count(fn) -> int:
    """How many tensors autograd saves for backward while running ``fn``."""
    count = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal count
        count += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return count


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize(("H", "W"), [(1, 1), (7, 5)])
def test_checkpoint_gives_identical_gradients(name, H, W, randomize) -> None:
    plain, ckpt = _pair(BUILDERS[name], randomize)
    x = torch.randn(2, DIM, H, W)
    outputs, grads = [], []
    for model in (plain, ckpt):
        inp = x.clone().requires_grad_(True)
        y = model(inp)
        y.square().sum().backward()
        outputs.append(y)
        grads.append([inp.grad, *(p.grad for p in model.parameters())])
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
    for a, b in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_checkpoint_applies_when_only_parameters_need_grad(randomize) -> None:
    """An input without grad (the first block of a network) is still checkpointed."""
    plain, ckpt = _pair(BUILDERS["BiRWKVBlock"], randomize)
    x = torch.randn(2, DIM, 6, 5)  # requires_grad=False
    assert _saved_tensor_count(lambda: ckpt(x)) < _saved_tensor_count(lambda: plain(x)) // 4
    ckpt(x).sum().backward()
    plain(x).sum().backward()
    for a, b in zip(ckpt.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


CELL_BUILDERS = {
    "RWKVContextCell": lambda c: RWKVContextCell(DIM, hidden_rate=2, use_checkpoint=c),
    "RWKVContextCellLite": lambda c: RWKVContextCellLite(DIM, use_checkpoint=c, shift=True),
}


@pytest.mark.parametrize("name", list(CELL_BUILDERS))
def test_context_cell_checkpoint(name, randomize) -> None:
    plain, ckpt = _pair(CELL_BUILDERS[name], randomize)
    x_t, h_prev = torch.randn(1, DIM, 5, 7), torch.randn(1, DIM, 5, 7)
    assert _saved_tensor_count(lambda: ckpt(x_t, h_prev)) < _saved_tensor_count(
        lambda: plain(x_t, h_prev)
    )
    ckpt(x_t, h_prev).sum().backward()
    plain(x_t, h_prev).sum().backward()
    for a, b in zip(ckpt.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


def test_no_checkpoint_without_autograd(randomize) -> None:
    _, ckpt = _pair(BUILDERS["BiRWKVBlock"], randomize)
    x = torch.randn(1, DIM, 4, 4)
    with torch.no_grad():
        assert _saved_tensor_count(lambda: ckpt(x)) == 0
        assert torch.isfinite(ckpt(x)).all()
