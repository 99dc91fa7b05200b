"""`hpcm --version` reports the three packages, torch, the CUDA op and the Triton kernels."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import biwkv4_kernel
import hpcm_models
import rwkv_blocks
from hpcm_models.cli import main


def test_version_lists_every_package(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"hpcm-models {hpcm_models.__version__}" in out
    assert f"rwkv-blocks {rwkv_blocks.__version__}" in out
    assert f"biwkv4-kernel {biwkv4_kernel.__version__}" in out
    assert f"torch {torch.__version__}" in out
    cuda = "available" if biwkv4_kernel.cuda_kernel_available() else "not available"
    triton = "available" if biwkv4_kernel.triton_kernel_available() else "not available"
    assert f"(CUDA op: {cuda}; Triton kernels: {triton})" in out


def test_console_script_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hpcm_models.cli", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "hpcm-models" in result.stdout


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: hpcm" in capsys.readouterr().err
