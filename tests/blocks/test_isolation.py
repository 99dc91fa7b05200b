"""rwkv-blocks stands alone: it works with neither compressai nor hpcm-models importable."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import rwkv_blocks

PACKAGE_DIR = Path(rwkv_blocks.__file__).parent
FORBIDDEN = {"compressai", "hpcm_models"}

BLOCKED_RUN = textwrap.dedent(
    """
    import importlib.abc
    import sys

    FORBIDDEN = {"compressai", "hpcm_models"}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in FORBIDDEN:
                raise ModuleNotFoundError(f"{name} is blocked for this test", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    for name in FORBIDDEN:
        try:
            __import__(name)
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit(f"the blocker failed: {name} imported")

    import torch
    import rwkv_blocks

    cell = rwkv_blocks.RWKVContextCell(8, hidden_rate=2)
    h = cell(torch.randn(1, 8, 5, 3), torch.randn(1, 8, 5, 3))
    h.sum().backward()
    fused = rwkv_blocks.reparameterize_model(rwkv_blocks.RWKVFusionNet(8)).eval()
    assert fused(h.detach()).shape == (1, 8, 5, 3)
    leaked = sorted(n for n in sys.modules if n.split(".")[0] in FORBIDDEN)
    assert not leaked, leaked
    print("ok", tuple(h.shape))
    """
)


def test_works_without_compressai_and_hpcm_models() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok (1, 8, 5, 3)"


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value))
    return names


def test_no_source_file_imports_the_upper_layers() -> None:
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    assert len(files) >= 5
    for path in files:
        top = {name.split(".")[0] for name in _imported_modules(path)}
        assert not top & FORBIDDEN, f"{path.name} imports {sorted(top & FORBIDDEN)}"


def test_no_source_file_hard_codes_a_device() -> None:
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in {"cuda", "cuda:0", "cpu"}, (
                    f"{path.name} hard-codes the device {node.value!r}"
                )
