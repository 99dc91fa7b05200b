"""rwkv_param_groups: decay/boost get their own learning rate and no weight decay."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rwkv_blocks import (
    BiRWKVBlock,
    RWKVContextCell,
    RWKVContextCellLite,
    SpatialMix,
    rwkv_param_groups,
)


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), BiRWKVBlock(8), RWKVContextCell(8))


def test_groups_partition_the_trainable_parameters() -> None:
    model = _model()
    model[0].bias.requires_grad_(False)
    groups = rwkv_param_groups(model, lr=1e-3, decay_lr=1e-4, weight_decay=0.05)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"decay", "no_decay", "wkv"}

    spatial = [m for m in model.modules() if isinstance(m, SpatialMix)]
    assert len(spatial) == 2
    wkv = {id(p) for m in spatial for p in (m.decay, m.boost)}
    assert {id(p) for p in by_name["wkv"]["params"]} == wkv
    assert (by_name["wkv"]["lr"], by_name["wkv"]["weight_decay"]) == (1e-4, 0.0)
    assert (by_name["decay"]["lr"], by_name["decay"]["weight_decay"]) == (1e-3, 0.05)
    assert (by_name["no_decay"]["lr"], by_name["no_decay"]["weight_decay"]) == (1e-3, 0.0)
    assert all(p.dim() >= 2 for p in by_name["decay"]["params"])
    assert all(p.dim() <= 1 for p in by_name["no_decay"]["params"])

    # Every trainable parameter exactly once, frozen ones not at all.
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in model.parameters() if p.requires_grad}
    assert id(model[0].bias) not in grouped


def test_optimizer_uses_the_decay_learning_rate() -> None:
    torch.manual_seed(0)
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(rwkv_param_groups(model, lr=1e-2, decay_lr=0.0))
    x = torch.randn(1, 3, 5, 6)
    model[2](model[1](model[0](x)), torch.randn(1, 8, 5, 6)).square().mean().backward()
    optimizer.step()
    for name, p in model.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        is_wkv = name.endswith(("spatial_mix.decay", "spatial_mix.boost"))
        assert moved != is_wkv, f"{name}: moved={moved}"


def test_lite_cell_decay_and_boost_are_wkv_parameters() -> None:
    cell = RWKVContextCellLite(8, shift=True)
    by_name = {g["name"]: g for g in rwkv_param_groups(cell, lr=1e-3, decay_lr=1e-4)}
    assert {id(p) for p in by_name["wkv"]["params"]} == {id(cell.decay), id(cell.boost)}
    assert id(cell.output.bias) in {id(p) for p in by_name["no_decay"]["params"]}
    assert id(cell.omni_shift.alpha) in {id(p) for p in by_name["no_decay"]["params"]}
    assert len(by_name["decay"]["params"]) == 4 + 3  # four linears, three shift kernels


def test_shared_parameters_appear_once() -> None:
    block = BiRWKVBlock(4)
    model = nn.ModuleList([block, block])
    groups = rwkv_param_groups(model, lr=1.0, decay_lr=0.1)
    assert sum(len(g["params"]) for g in groups) == len(list(block.parameters()))


def test_model_without_rwkv_blocks() -> None:
    groups = rwkv_param_groups(nn.Linear(3, 4), lr=1e-3, decay_lr=1e-4, weight_decay=0.1)
    assert [g["name"] for g in groups] == ["decay", "no_decay"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -1.0, "decay_lr": 1e-4}, "lr"),
        ({"lr": 1e-3, "decay_lr": float("nan")}, "decay_lr"),
        ({"lr": 1e-3, "decay_lr": 1e-4, "weight_decay": "0.1"}, "weight_decay"),
    ],
)
def test_bad_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        rwkv_param_groups(_model(), **kwargs)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        rwkv_param_groups([nn.Linear(2, 2)], lr=1e-3, decay_lr=1e-4)
