"""Fixtures for the rwkv-blocks tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn


def _randomize(module: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    """Perturb every parameter, so special inits (γ = 1, α = 1, LN affine) cannot hide a bug."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            p.add_((scale * noise).to(dtype=p.dtype, device=p.device))
    return module


@pytest.fixture
def randomize() -> Callable[..., nn.Module]:
    """``randomize(module, seed=0, scale=0.3)`` adds Gaussian noise to every parameter in place."""
    return _randomize
