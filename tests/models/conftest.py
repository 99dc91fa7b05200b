"""Shared fixtures of the model tests: the official parity fixtures and the weight recipe."""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

FIXTURES = Path(__file__).parent / "fixtures"


def fill_parity_weights(model: nn.Module) -> nn.Module:
    """Overwrite every parameter with the deterministic recipe of ``fixtures/README.md``."""
    with torch.no_grad():
        for key, param in model.named_parameters():
            g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
            shape = param.shape
            if key.startswith("scales_hyper"):
                value = 1 + 0.5 * torch.rand(shape, generator=g)
            elif key.startswith("means_hyper"):
                value = 0.1 * torch.randn(shape, generator=g)
            elif key.startswith("adaptive_params_list"):
                value = 1 + 0.1 * torch.randn(shape, generator=g)
            elif len(shape) >= 2:
                value = torch.randn(shape, generator=g) * 0.8 / math.sqrt(param.numel() / shape[0])
            else:
                value = 0.01 * torch.randn(shape, generator=g)
            param.copy_(value)
    return model


@pytest.fixture(scope="session")
def parity_weights() -> Callable[[nn.Module], nn.Module]:
    """The recipe as a function ``model -> model`` (fills in place)."""
    return fill_parity_weights


@pytest.fixture(scope="session")
def load_fixture() -> Callable[[str], dict]:
    """``load_fixture("base")`` -> the official outputs of ``hpcm_base_parity_256.pt``."""
    return lambda name: torch.load(FIXTURES / f"hpcm_{name}_parity_256.pt")


@pytest.fixture(scope="session")
def load_schema() -> Callable[[str], list]:
    """``load_schema("base")`` -> ``[[key, shape, dtype], ...]`` of the official state dict."""
    return lambda name: json.loads((FIXTURES / f"hpcm_{name}_state_dict_schema.json").read_text())
