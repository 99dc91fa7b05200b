"""`hpcm train` under `torchrun --nproc-per-node 2` (DDP, Gloo on CPU)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import hpcm_models
from hpcm_models import HPCM_MICRO
from hpcm_models.checkpoints import load_training_checkpoint, model_kwargs_to_json

DATA = Path(hpcm_models.__file__).parent / "data"
TINY_KWARGS = model_kwargs_to_json({"M": 16, "N": 8, "config": HPCM_MICRO})


@pytest.mark.slow
def test_torchrun_trains_on_two_cpu_processes(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for path in DATA.glob("*.png"):
        shutil.copy(path, images / path.name)
    output = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "hpcm_models.cli", "train", "--model", "hpcm-phase1",
        "--model-kwargs", json.dumps(TINY_KWARGS), "--dataset", str(images),
        "--val-dataset", str(images), "--max-val-images", "2", "--val-every", "2",
        "--output", str(output), "--steps", "2", "--patch-size", "128", "--batch-size", "1",
        "--num-workers", "0", "--log-every", "1", "--device", "cpu", "--no-progress",
        "--no-tensorboard",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # Only rank 0 reports and writes.
    assert result.stdout.count("trained to step 2") == 1
    assert json.loads((output / "config.json").read_text())["world_size"] == 2
    with (output / "train_log.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2"]
    with (output / "val_log.csv").open(newline="") as f:
        (val,) = list(csv.DictReader(f))
    assert val["images"] == "2"  # one validation image on each rank, summed
    ckpt = load_training_checkpoint(output / "latest.pt")
    assert ckpt["step"] == 2
    assert ckpt["args"]["world_size"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved unwrapped
