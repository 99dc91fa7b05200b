"""Each package lists its public names in `__all__`, and every listed name exists."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["biwkv4_kernel", "rwkv_blocks", "hpcm_models"]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    assert isinstance(module.__all__, list)
    assert len(set(module.__all__)) == len(module.__all__), "duplicate names in __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists names the module does not define: {missing}"


@pytest.mark.parametrize("name", MODULES)
def test_public_objects_are_exported(name: str) -> None:
    """Public functions and classes defined in the package are in `__all__` (nothing forgotten)."""
    module = importlib.import_module(name)
    public = {
        n
        for n, obj in vars(module).items()
        if not n.startswith("_")
        and callable(obj)
        and getattr(obj, "__module__", "").startswith(name)
    }
    assert public <= set(module.__all__), (
        f"not in {name}.__all__: {sorted(public - set(module.__all__))}"
    )


@pytest.mark.parametrize("name", MODULES)
def test_version_matches_pyproject(name: str) -> None:
    module = importlib.import_module(name)
    package = name.replace("_", "-")
    pyproject = tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())
    assert "version" in pyproject["project"]["dynamic"]
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc)?\d*", module.__version__)
