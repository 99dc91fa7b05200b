"""examples/denoise.py runs, with few steps, and its small denoiser learns."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "packages" / "rwkv-blocks" / "examples"


def _load_example():
    spec = importlib.util.spec_from_file_location(
        "rwkv_blocks_denoise_example", EXAMPLE / "denoise.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bundled_image_loads_without_an_image_library() -> None:
    image = torch.load(EXAMPLE / "data" / "chelsea_96.pt", weights_only=True)
    assert image.dtype == torch.uint8
    assert image.shape == (3, 96, 96)
    assert image.float().std() > 10  # a photo, not a constant


def test_denoise_example_learns(capsys) -> None:
    example = _load_example()
    threads = torch.get_num_threads()
    try:
        results = example.main(
            ["--steps", "40", "--dim", "8", "--blocks", "1", "--crop", "16", "--batch", "4"]
        )
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "PSNR noisy input" in out
    assert "PSNR after 40 steps" in out
    # The tail is zero-initialized, so the untrained network returns its input.
    assert results["before"] == pytest.approx(results["noisy"], abs=1e-6)
    assert results["after"] > results["noisy"] + 1.0


def test_denoise_example_rejects_bad_arguments() -> None:
    example = _load_example()
    with pytest.raises(SystemExit):
        example.main(["--steps", "-1"])
