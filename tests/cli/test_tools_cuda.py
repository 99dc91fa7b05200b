"""The tools on a GPU: training (bf16, resume, 2-GPU DDP), bench memory, the demo."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hpcm_models
from hpcm_models.checkpoints import load_training_checkpoint
from hpcm_models.cli import main

pytestmark = pytest.mark.cuda

DATA = Path(hpcm_models.__file__).parent / "data"
TINY_KWARGS = {"M": 32, "N": 16, "config": {"transform_channels": [16, 32, 64]}}


def _train_args(output: Path, steps: int, *extra: str) -> list[str]:
    return [
        "train", "--model", "hpcm-phase2", "--model-kwargs", json.dumps(TINY_KWARGS),
        "--dataset", str(DATA), "--val-dataset", str(DATA), "--max-val-images", "2",
        "--val-every", "2", "--output", str(output), "--steps", str(steps), "--patch-size", "128",
        "--batch-size", "2", "--num-workers", "0", "--log-every", "1", "--no-progress",
        "--device", "cuda", *extra,
    ]  # fmt: skip


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_train_bf16_and_resume_on_cuda(tmp_path: Path) -> None:
    output = tmp_path / "run"
    assert main(_train_args(output, 2, "--amp", "bf16")) == 0
    assert main([*_train_args(output, 3, "--amp", "bf16"), "--resume"]) == 0
    rows = _rows(output / "train_log.csv")
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    ckpt = load_training_checkpoint(output / "latest.pt")
    assert ckpt["step"] == 3
    assert ckpt["args"]["device"] == "cuda"
    assert all(t.device.type == "cpu" for t in ckpt["model"].values())  # loaded to CPU


def test_train_with_cuda_graphs_and_resume_either_way(tmp_path: Path) -> None:
    """--cuda-graphs trains (finite losses, the lr schedule applies) and its checkpoints resume
    with or without graphs, and the other way round."""
    output = tmp_path / "run"
    schedule = ["--lr-milestones", "3", "--lr-factors", "0.5", "--lr", "3e-4", "--no-tensorboard"]
    assert main(_train_args(output, 3, "--cuda-graphs", "--amp", "bf16", *schedule)) == 0
    assert main([*_train_args(output, 5, *schedule), "--resume"]) == 0  # eager
    assert main([*_train_args(output, 7, "--cuda-graphs", *schedule), "--resume"]) == 0
    rows = _rows(output / "train_log.csv")
    assert [r["step"] for r in rows] == [str(i) for i in range(1, 8)]
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    assert [float(r["lr"]) for r in rows] == pytest.approx([3e-4] * 3 + [1.5e-4] * 4)
    assert all(r["skipped"] == "0" for r in rows)
    ckpt = load_training_checkpoint(output / "latest.pt")
    assert ckpt["step"] == 7
    groups = ckpt["optimizer"]["param_groups"]
    assert all(isinstance(g["lr"], float) for g in groups)  # portable: no device tensors
    steps = {int(s["step"]) for s in ckpt["optimizer"]["state"].values()}
    assert steps == {7}


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_torchrun_ddp_on_two_gpus(tmp_path: Path) -> None:
    images = tmp_path / "images"
    shutil.copytree(DATA, images, ignore=shutil.ignore_patterns("*.json", "*.md"))
    output = tmp_path / "run"
    args = _train_args(output, 4, "--no-tensorboard")
    args[args.index("--dataset") + 1] = str(images)
    args[args.index("--batch-size") + 1] = "1"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "hpcm_models.cli", *args,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((output / "config.json").read_text())["world_size"] == 2
    assert [r["step"] for r in _rows(output / "train_log.csv")] == ["1", "2", "3", "4"]
    assert load_training_checkpoint(output / "latest.pt")["step"] == 4


def test_bench_reports_cuda_memory(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = [
        "bench", "--device", "cuda", "--models", "hpcm-phase1", "--model-kwargs",
        json.dumps(TINY_KWARGS), "--size", "256x256", "--train-size", "128x128",
        "--train-batch", "2", "--repeat", "2", "--cell-dim", "64", "--cell-sizes", "kodak",
        "--json", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    doc = json.loads(out.read_text())
    assert doc["machine"]["gpu"]
    (row,) = doc["models"]
    assert row["eval_peak_mib"] > 0
    assert row["train_peak_mib"] > row["eval_peak_mib"]
    assert all(c["fwd_peak_mib"] > 0 for c in doc["cells"])
    # The fast paths ran in the same run and are reported next to the baseline.
    assert doc["settings"]["fast"] is True
    assert row["fast_precision"] == "bf16"
    assert row["eval_fast_ms"] > 0
    assert row["train_fast_ms"] > 0
    assert row["eval_fast_reserved_mib"] > 0
    assert row["train_fast_reserved_mib"] > 0
    assert 0 <= row["eval_fast_bits_rel_diff"] < 0.05


def test_quick_demo_on_cuda(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo.json"
    assert main(["demo", "--quick", "--device", "cuda", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert all(r["bit_exact"] for r in rows)
    assert "device cuda" in capsys.readouterr().out
