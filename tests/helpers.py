"""Helpers shared by test modules of several layers (``pyproject.toml`` puts ``tests/`` on
``sys.path``, so they import this one as ``helpers``): loading a script as a module, feeding a
FIFO from a thread or draining one."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_module(path: str | os.PathLike[str], name: str) -> ModuleType:
    """The Python file ``path`` imported as module ``name`` (registered in ``sys.modules``, where
    dataclasses look their module up): for scripts in ``tools/`` and test modules."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def golden_tool() -> ModuleType:
    """``tools/make_golden.py``, the one definition of the golden models."""
    return load_module(ROOT / "tools" / "make_golden.py", "make_golden")


def feed_fifo(path: str | os.PathLike[str], first: bytes, then: bytes = b"") -> threading.Thread:
    """Write ``first`` into the FIFO ``path`` from a thread, then ``then`` over and over (if not
    empty) until the reader closes the FIFO."""

    def run() -> None:
        try:
            with open(path, "wb") as f:
                f.write(first)
                while then:
                    f.write(then)
        except BrokenPipeError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def drain_fifo(path: str | os.PathLike[str]) -> tuple[threading.Thread, list[bytes]]:
    """Read the FIFO ``path`` to its end from a thread; the list gets what it read."""
    received: list[bytes] = []

    def run() -> None:
        with open(path, "rb") as f:
            received.append(f.read())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, received
