"""Data-parallel scaling of ``hpcm train``: training steps/s on 1 and N processes (torchrun).

Issue 19's measurement: HPCM-Base and phase 1 at batch 16 per GPU, 256² crops, ``--amp bf16``,
on 1 GPU and on N GPUs with DistributedDataParallel over NCCL; efficiency = (N-process
throughput) / (N × 1-process throughput), the same as (N-process steps/s) / (1-process steps/s)
since the batch is per process. Target ≥ 0.85 at N = 2.

Each point is a real ``torchrun --standalone --nproc-per-node W -m hpcm_models.cli train`` run
(the whole loop: data loading from memory with ``--cache-images``, forward, loss, backward with
DDP's all-reduce, clipping, Adam, the per-step loss all-reduce and log row) on synthetic images;
steps/s comes from ``train_log.csv``'s ``seconds`` column, after ``--warmup`` untimed steps.
Every child gets ``OMP_NUM_THREADS=1`` (the same for 1 and N processes) and NVLink multicast off
(``NCCL_NVLS_ENABLE=0``, ``TORCH_SYMM_MEM_DISABLE_MULTICAST=1``, ``NVSHMEM_DISABLE_NVLS=1``).

With at least two CUDA GPUs visible it runs on CUDA with NCCL over all of them (``--nproc``
fewer). Otherwise it runs on the CPU with Gloo and a small model (M=32, N=16, narrow
transforms, 128² crops, batch 2, float32): that checks the script and the Gloo path, and the
numbers say nothing about GPU scaling; the table and the JSON are labelled ``cpu-gloo``.

    python benchmarks/bench_ddp.py --json "$OUT/bench_ddp.json"      # CUDA: every visible GPU
    python benchmarks/bench_ddp.py --json cpu.json                   # no 2 GPUs: CPU/Gloo
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hpcm_models.benchmark import machine_info

MODELS = ("hpcm-base", "hpcm-phase1")
#: The CPU fallback's small model (bench_context_cells.py's --quick size).
CPU_MODEL_KWARGS = {"M": 32, "N": 16, "config": {"transform_channels": [16, 32, 64]}}
#: NVLink multicast stays off on the lent machines (the device docs say why).
NO_MULTICAST = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}
#: Per mode: device, batch per process, crop side, --amp, model kwargs, warm-up and timed steps,
#: data-loading workers per process.
MODES: dict[str, dict[str, Any]] = {
    "cuda-nccl": dict(device="cuda", batch=16, patch=256, amp="bf16", kwargs={}, warmup=20,
                      steps=60, workers=2),
    "cpu-gloo": dict(device="cpu", batch=2, patch=128, amp="off", kwargs=CPU_MODEL_KWARGS,
                     warmup=2, steps=8, workers=0),
}  # fmt: skip


def synthetic_images(folder: Path, count: int, side: int, seed: int = 0) -> None:
    """``count`` smooth random RGB images of ``side``² pixels (the cost of a step does not depend
    on the content)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        coarse = rng.integers(0, 256, (side // 16, side // 16, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC)
        image.save(folder / f"{i:04d}.png")


def steps_per_second(log: Path, warmup: int) -> tuple[float, int]:
    """Steps/s after step ``warmup`` from ``train_log.csv`` (``seconds`` since the loop started),
    and the number of timed steps."""
    with log.open(newline="") as f:
        rows = {int(r["step"]): float(r["seconds"]) for r in csv.DictReader(f)}
    last = max(rows)
    return (last - warmup) / (rows[last] - rows[warmup]), last - warmup


def run_point(
    model: str, world: int, mode: dict[str, Any], data: Path, work: Path, timeout: int
) -> dict[str, Any]:
    """One ``hpcm train`` run on ``world`` processes: its steps/s, or the error."""
    output = work / f"{model}-{world}"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
        str(world), "-m", "hpcm_models.cli", "train", "--model", model,
        "--model-kwargs", json.dumps(mode["kwargs"]), "--dataset", str(data),
        "--output", str(output), "--steps", str(mode["warmup"] + mode["steps"]),
        "--patch-size", str(mode["patch"]), "--batch-size", str(mode["batch"]),
        "--amp", mode["amp"], "--device", mode["device"], "--num-workers", str(mode["workers"]),
        "--cache-images", "--log-every", "1", "--save-every", "1000000", "--no-progress",
        "--no-tensorboard",
    ]  # fmt: skip
    env = {**os.environ, **NO_MULTICAST, "OMP_NUM_THREADS": "1"}
    point: dict[str, Any] = {"model": model, "processes": world, "batch_per_process": mode["batch"]}
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**point, "error": f"timed out after {timeout} s"}
    if result.returncode != 0:
        return {**point, "error": result.stderr[-2000:]}
    rate, timed = steps_per_second(output / "train_log.csv", mode["warmup"])
    return {
        **point, "timed_steps": timed, "steps_per_s": rate, "ms_per_step": 1000 / rate,
        "images_per_s": rate * world * mode["batch"],
    }  # fmt: skip


def add_efficiency(points: list[dict[str, Any]]) -> None:
    """``efficiency`` of each N-process point against its model's 1-process point."""
    single = {p["model"]: p for p in points if p["processes"] == 1 and "steps_per_s" in p}
    for p in points:
        base = single.get(p["model"])
        if base is not None and "steps_per_s" in p:
            p["efficiency"] = p["images_per_s"] / (p["processes"] * base["images_per_s"])


def format_table(points: list[dict[str, Any]], label: str) -> str:
    lines = [
        f"| model | processes ({label}) | batch/process | ms/step | steps/s | images/s "
        "| efficiency |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in points:
        if "error" in p:
            lines.append(f"| {p['model']} | {p['processes']} | {p['batch_per_process']} | failed "
                         "| | | |")  # fmt: skip
            continue
        eff = f"{p['efficiency']:.3f}" if "efficiency" in p else "n/a"
        lines.append(
            f"| {p['model']} | {p['processes']} | {p['batch_per_process']} | "
            f"{p['ms_per_step']:.1f} | {p['steps_per_s']:.2f} | {p['images_per_s']:.1f} | {eff} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--nproc", type=int, help="processes of the scaled run (default: every "
                        "visible GPU, or 2 on the CPU)")  # fmt: skip
    parser.add_argument("--mode", choices=("auto", *MODES), default="auto",
                        help="auto: cuda-nccl with 2 or more GPUs, else cpu-gloo")  # fmt: skip
    parser.add_argument("--steps", type=int, help="timed steps per run")
    parser.add_argument("--warmup", type=int, help="untimed steps first")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per run")
    parser.add_argument("--json", type=Path, help="write every number, machine and versions")
    args = parser.parse_args()

    gpus = torch.cuda.device_count()
    label = args.mode if args.mode != "auto" else ("cuda-nccl" if gpus >= 2 else "cpu-gloo")
    mode = dict(MODES[label])
    for key in ("steps", "warmup"):
        if getattr(args, key) is not None:
            mode[key] = getattr(args, key)
    nproc = args.nproc or (gpus if label == "cuda-nccl" else 2)
    if label == "cuda-nccl" and not 2 <= nproc <= gpus:
        parser.error(f"cuda-nccl needs 2 <= --nproc <= the {gpus} visible GPUs, got {nproc}")
    print(f"{label}: {', '.join(args.models)} on 1 and {nproc} processes, batch {mode['batch']} "
          f"per process, {mode['patch']}² crops, amp {mode['amp']}", flush=True)  # fmt: skip

    load_before = os.getloadavg()  # other jobs on the machine skew CPU numbers most
    points = []
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        data = Path(tmp) / "images"
        # One batch per process: every epoch is one step, with a new order and new crops.
        synthetic_images(data, nproc * mode["batch"], mode["patch"] + 64)
        for model in args.models:
            for world in (1, nproc):
                point = run_point(model, world, mode, data, Path(tmp), args.timeout)
                print(json.dumps(point) if "error" not in point else point["error"], flush=True)
                points.append(point)
    add_efficiency(points)
    print(format_table(points, label))

    if args.json is not None:
        device = torch.device("cuda", 0) if label == "cuda-nccl" else torch.device("cpu")
        machine = machine_info(device)
        machine.update(
            visible_gpus=gpus,
            child_env={**NO_MULTICAST, "OMP_NUM_THREADS": "1"},
            load_average_before_after=[load_before[0], os.getloadavg()[0]],
        )
        if label == "cuda-nccl":
            version = torch.cuda.nccl.version()  # a tuple in recent torch, an int before
            machine["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else version
        document = {
            "benchmark": "bench_ddp", "mode": label, "machine": machine,
            "settings": {**mode, "nproc": nproc, "models": args.models}, "points": points,
        }  # fmt: skip
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=1) + "\n")
    return 1 if any("error" in p for p in points) else 0


if __name__ == "__main__":
    raise SystemExit(main())
