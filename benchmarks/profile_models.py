"""Where the time of a model goes: kernel launches, device busy time and the top operators.

Profiles (``torch.profiler``, CPU and CUDA activity) an eval forward pass at 768x512 and a
training step (batch 16 at 256x256) of each model, eagerly and through the fast paths of
:mod:`hpcm_models.acceleration`, and prints per run:

* ``wall ms``: median wall time without the profiler;
* ``kernels``: CUDA kernels launched (or replayed from a graph);
* ``GPU busy ms``: the sum of the kernels' durations; far below ``wall ms`` means the device
  waits for the host (launch-bound);
* ``host syncs``: cudaStreamSynchronize/cudaDeviceSynchronize calls and blocking copies;

then the operators with the most device time. ``docs/performance.md`` reads these tables.

    python benchmarks/profile_models.py --json profile.json
    python benchmarks/profile_models.py --models hpcm-phase4 --top 25
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from hpcm_models.acceleration import (
    GraphedForward,
    GraphedTrainStep,
    capturable_adam,
    precision,
)
from hpcm_models.benchmark import machine_info, parse_size, time_ms
from hpcm_models.checkpoints import build_model
from hpcm_models.losses import RateDistortionLoss

SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy")


def wall_ms(fn: Callable[[], Any], device: torch.device, warmup: int = 2, repeat: int = 5) -> float:
    return statistics.median(time_ms(fn, device, repeat, warmup))


def profiled(fn: Callable[[], Any], runs: int, top: int) -> dict[str, Any]:
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            fn()
        torch.cuda.synchronize()
    events = prof.events()
    kernels = [e for e in events if e.device_type.name == "CUDA"]
    host = [e.name for e in events if e.device_type.name == "CPU"]
    by_op: dict[str, float] = {}
    for e in kernels:
        by_op[e.name] = by_op.get(e.name, 0.0) + e.time_range.elapsed_us() / runs
    ranked = sorted(by_op.items(), key=lambda kv: -kv[1])[:top]
    return {
        "kernels": len(kernels) / runs,
        "gpu_busy_ms": sum(e.time_range.elapsed_us() for e in kernels) / runs / 1e3,
        "host_syncs": sum(host.count(name) for name in SYNC_EVENTS) / runs,
        "top_kernels_us": [{"kernel": name[:90], "us": round(us, 1)} for name, us in ranked],
    }


def profile_model(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The eval and training runs of one model, each timed and profiled."""
    (width, height), (tw, th) = args.size, args.train_size
    torch.manual_seed(0)
    model = build_model(name, {}).to(device).eval()
    x = torch.rand(1, 3, height, width, device=device)

    def eager(mode: str | None) -> None:
        with torch.no_grad():
            if mode is None:  # PyTorch's defaults, as the authors' code runs
                model(x, training=False)
            else:
                with precision(mode, device):
                    model(x, training=False)

    graphed = GraphedForward(model, precision="bf16")
    cases: dict[str, Callable[[], Any]] = {
        "eval, eager (defaults)": lambda: eager(None),
        "eval, eager fp32 (IEEE)": lambda: eager("fp32"),
        "eval, eager bf16": lambda: eager("bf16"),
        "eval, graph bf16": lambda: graphed(x),
    }
    rows: dict[str, Any] = {}
    for label, fn in cases.items():
        rows[label] = {"wall_ms": wall_ms(fn, device), **profiled(fn, 2, args.top)}

    model.train()
    batch = torch.rand(args.train_batch, 3, th, tw, device=device)
    criterion = RateDistortionLoss(0.013)
    adam = torch.optim.Adam(model.parameters(), lr=1e-4)

    def eager_step() -> None:
        adam.zero_grad(set_to_none=True)
        criterion(model(batch), batch)["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        adam.step()

    rows["train, eager (defaults)"] = {
        "wall_ms": wall_ms(eager_step, device, 2, 4),
        **profiled(eager_step, 1, args.top),
    }
    model.to(memory_format=torch.channels_last)
    fused = capturable_adam(model.parameters(), 1e-4, device)
    cl_batch = batch.contiguous(memory_format=torch.channels_last)
    step = GraphedTrainStep(model, fused, criterion, cl_batch, amp=True, max_norm=1.0)
    rows["train, graph bf16"] = {
        "wall_ms": wall_ms(lambda: step(cl_batch), device, 2, 4),
        **profiled(lambda: step(cl_batch), 1, args.top),
    }
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["hpcm-base", "hpcm-phase1"])
    parser.add_argument("--size", type=parse_size, default=(768, 512), metavar="WxH")
    parser.add_argument("--train-size", type=parse_size, default=(256, 256), metavar="WxH")
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--top", type=int, default=12, help="kernels listed per profile")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("profile_models.py profiles CUDA runs; torch sees no GPU")
    device = torch.device("cuda")
    result: dict[str, Any] = {"machine": machine_info(device), "models": {}}
    (width, height), (tw, th) = args.size, args.train_size
    for name in args.models:
        rows = profile_model(name, args, device)
        torch.cuda.empty_cache()
        result["models"][name] = rows
        print(f"\n{name}: eval {width}x{height} batch 1, train {args.train_batch}x{tw}x{th}")
        print("| run | wall ms | kernels | GPU busy ms | host syncs |")
        print("|---|---|---|---|---|")
        for label, row in rows.items():
            print(
                f"| {label} | {row['wall_ms']:.1f} | {row['kernels']:.0f} | "
                f"{row['gpu_busy_ms']:.1f} | {row['host_syncs']:.0f} |"
            )
        for label in ("eval, eager fp32 (IEEE)", "eval, graph bf16", "train, graph bf16"):
            print(f"\n  top kernels, {label} (µs per run):")
            for k in rows[label]["top_kernels_us"]:
                print(f"    {k['us']:>9.1f}  {k['kernel']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
