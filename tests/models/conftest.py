"""Shared fixtures of the model tests: the official parity fixtures and the weight recipe."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from hpcm_models.recipe import fill_recipe_weights

FIXTURES = Path(__file__).parent / "fixtures"


# The recipe lives in the package (benchmarks and demos use it too); tests keep their name for it.
fill_parity_weights = fill_recipe_weights


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
