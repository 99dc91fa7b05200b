"""The examples in the READMEs that PyPI shows for biwkv4-kernel and rwkv-blocks run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PACKAGES = Path(__file__).resolve().parents[2] / "packages"


def _python_blocks(readme: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.S)


@pytest.mark.parametrize("package", ["biwkv4-kernel", "rwkv-blocks"])
def test_readme_example_runs(package: str) -> None:
    (example,) = _python_blocks(PACKAGES / package / "README.md")
    namespace: dict = {}
    exec(compile(example, f"{package}/README.md", "exec"), namespace)
    if package == "rwkv-blocks":
        assert namespace["logits"].shape == (8, 10)
        assert not namespace["fused"].training
    else:
        assert namespace["k"].grad is not None
        assert namespace["y"].shape == (2, 256, 64)
