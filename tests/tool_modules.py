"""Import a script of ``tools/`` as a module, for the tests of ``tests/tools``."""

from __future__ import annotations

from types import ModuleType

from helpers import ROOT, load_module

__all__ = ["load_tool"]


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` imported as the module ``name`` (registered in ``sys.modules``:
    dataclasses look their module up while a class is built)."""
    return load_module(ROOT / "tools" / f"{name}.py", name)
