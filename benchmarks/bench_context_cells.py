"""The s3 context cell: the lite Bi-WKV cell and its candidates against HPCM's cross-attention.

Issue 15's targets, at the Kodak s3 size [1, 640, 32, 48] on the GPU, for ``RWKVContextCellLite``
against ``CrossAttentionCell`` measured in the same run: FLOPs <= 0.73x, memory <= 0.78x,
forward and forward+backward time <= 0.71x (CUDA-graph replay); at the 4K latent size
[1, 640, 136, 240] the ratios should be no worse. Whole model: ``hpcm-phase1-lite``'s eval
forward on the fast path (CUDA graph, bf16) no slower than ``hpcm-base``'s.

Cells (all drop-ins for ``attn_s3``: ``cell(x_t, h_prev) -> h_t``, 2M = 640 channels):

* ``CrossAttentionCell``: HPCM's (window 8, 32 heads, 1x1 projections), the baseline;
* ``RWKVContextCell``: the seed's cell (``hpcm-phase1``, ChannelMix hidden rate 4);
* ``RWKVContextCellLite``: the chosen lite cell (hidden rate 0.5, ``hpcm-phase1-lite``);
* candidates: the lite cell at hidden rate 0.25 and 0.75, the lite cell with an OmniShift on
  ``h_prev``, and ``narrow block``: the seed cell's structure (1x1 in, LayerNorm, SpatialMix,
  1x1 out) at width 2M/2 without its ChannelMix.

For each precision (``default``: PyTorch's defaults, IEEE float32 matmuls and TF32 cuDNN
convolutions, as ``hpcm bench`` and the seed's table; ``fp32``: IEEE everywhere, as the codec
codes; ``bf16``: autocast, as the fast paths), each size and each cell it measures with
:func:`hpcm_models.benchmark.bench_cells`: FLOPs (exact, any device), dispatched ops, eager and
CUDA-graph time of a forward and of a forward+backward, and memory (weights + inputs + the peak
a call allocates). On CUDA it also counts the CUDA kernels and their busy time per call at the
Kodak size (torch.profiler), then benchmarks the whole models as ``hpcm bench`` does (eval at
768x512, training steps of 16 x 256x256, eager float32 and fast paths). Tables go to stdout, and
after each part the JSON (machine, versions, settings, every number) is rewritten.

    python benchmarks/bench_context_cells.py --json "$OUT/bench_context_cells.json"   # GPU
    python benchmarks/bench_context_cells.py --device cpu --quick                    # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpcm_models.acceleration import precision
from hpcm_models.benchmark import (
    CELL_SIZES,
    CellResult,
    ModelResult,
    as_dict,
    bench_cells,
    bench_models,
    cell_workload,
    context_cells,
    format_cell_ratios,
    format_cell_table,
    format_fast_table,
    format_model_table,
    machine_info,
)
from rwkv_blocks import RWKVContextCellLite, SpatialMix

BASELINE = "CrossAttentionCell"
CHOSEN = "RWKVContextCellLite"
#: Issue 15's bounds on the chosen cell's ratios to the baseline (Kodak size, same run).
TARGETS = {
    "flops": 0.73,
    "fwd_mib": 0.78,
    "fwd_bwd_mib": 0.78,
    "fwd_graph_ms": 0.71,
    "fwd_bwd_graph_ms": 0.71,
}
MODELS = ("hpcm-base", "hpcm-phase1", "hpcm-phase1-lite")
#: --quick: narrow models, so that the whole script runs in about a minute on a CPU.
QUICK_MODEL_KWARGS = {"M": 32, "N": 16, "config": {"transform_channels": [16, 32, 64]}}


class NarrowBlockCell(nn.Module):
    """The seed cell's structure at a narrower width and without ChannelMix (a candidate):
    ``Conv1x1(2·dim → d)``, ``x + γ ⊙ SpatialMix(LN(x))``, ``Conv1x1(d → dim)``."""

    def __init__(self, dim: int, hidden_rate: float = 0.5) -> None:
        super().__init__()
        width = int(hidden_rate * dim)
        self.in_proj = nn.Conv2d(2 * dim, width, 1)
        self.ln = nn.LayerNorm(width)
        self.spatial_mix = SpatialMix(width)
        self.gamma = nn.Parameter(torch.ones(width))
        self.out_proj = nn.Conv2d(width, dim, 1)

    def forward(self, x_t: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        x = self.in_proj(torch.cat([x_t, h_prev], dim=1))
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.gamma * self.spatial_mix.forward_tokens(self.ln(tokens), (H, W))
        return self.out_proj(tokens.transpose(1, 2).reshape(B, C, H, W))


def candidates() -> dict[str, Callable[[int], nn.Module]]:
    """Name → ``make(dim)``: the cells of ``hpcm bench`` and the lite cell's candidates."""
    return {
        **context_cells(),
        "lite, hidden rate 0.25": lambda dim: RWKVContextCellLite(dim, hidden_rate=0.25),
        "lite, hidden rate 0.75": lambda dim: RWKVContextCellLite(dim, hidden_rate=0.75),
        "lite + OmniShift": lambda dim: RWKVContextCellLite(dim, shift=True),
        "narrow block": NarrowBlockCell,
    }


def arithmetic(mode: str, device: torch.device) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext() if mode == "default" else precision(mode, device)


def kernel_profiles(
    cells: dict[str, Callable[[int], nn.Module]],
    modes: list[str],
    dim: int,
    latent: tuple[int, int],
    device: torch.device,
) -> Iterator[dict[str, Any]]:
    """CUDA kernels per call and their summed duration (torch.profiler), per cell and mode."""
    from profile_models import profiled  # benchmarks/profile_models.py, next to this script

    for mode in modes:
        for name, make in cells.items():
            torch.manual_seed(0)
            work = cell_workload(make(dim).to(device), dim, latent, device)
            with arithmetic(mode, device):
                row = {"cell": name, "precision": mode}
                for call, fn in (("fwd", work.forward), ("fwd_bwd", work.forward_backward)):
                    prof = profiled(fn, 3, 3)
                    row[f"{call}_kernels"] = prof["kernels"]
                    row[f"{call}_gpu_busy_us"] = 1e3 * prof["gpu_busy_ms"]
            yield row
            del work
            gc.collect()
            torch.cuda.empty_cache()


def format_kernel_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| cell | precision | kernels fwd | GPU busy µs fwd | kernels fwd+bwd | "
        "GPU busy µs fwd+bwd |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['cell']} | {r['precision']} | {r['fwd_kernels']:.0f} | "
            f"{r['fwd_gpu_busy_us']:.1f} | {r['fwd_bwd_kernels']:.0f} | "
            f"{r['fwd_bwd_gpu_busy_us']:.1f} |"
        )
    return "\n".join(lines)


def target_checks(cells: list[CellResult], models: list[ModelResult]) -> list[dict[str, Any]]:
    """The chosen cell's ratios to the baseline against :data:`TARGETS` (per size and
    precision), and ``hpcm-phase1-lite``'s fast eval forward against ``hpcm-base``'s."""
    rows = {(r.cell, r.size_name, r.precision): r for r in cells}
    checks = []
    for (cell, size, mode), r in rows.items():
        base = rows.get((BASELINE, size, mode))
        if cell != CHOSEN or base is None:
            continue
        for metric, bound in TARGETS.items():
            num, den = getattr(r, metric), getattr(base, metric)
            if num is None or not den:
                continue
            ratio = num / den
            checks.append(
                {
                    "what": f"{CHOSEN} / {BASELINE}: {metric}",
                    "size": size,
                    "precision": mode,
                    "ratio": ratio,
                    "bound": bound,
                    "met": ratio <= bound,
                }
            )
    by_name = {m.model: m for m in models}
    base, lite = by_name.get("hpcm-base"), by_name.get("hpcm-phase1-lite")
    if base is not None and lite is not None:
        for metric in ("eval_fast_ms", "eval_ms"):
            num, den = getattr(lite, metric), getattr(base, metric)
            if num is not None and den:
                checks.append(
                    {
                        "what": f"hpcm-phase1-lite / hpcm-base: {metric}",
                        "size": "x".join(map(str, lite.size)),
                        "precision": lite.fast_precision if metric == "eval_fast_ms" else "default",
                        "ratio": num / den,
                        "bound": 1.0,
                        "met": num <= den,
                    }
                )
    return checks


def format_checks(checks: list[dict[str, Any]]) -> str:
    lines = ["| check | size | precision | ratio | bound | met |", "|---|---|---|---|---|---|"]
    for c in checks:
        lines.append(
            f"| {c['what']} | {c['size']} | {c['precision']} | {c['ratio']:.3f} | "
            f"≤ {c['bound']:.2f} | {'yes' if c['met'] else 'NO'} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--dim", type=int, default=640, help="cell channels, 2M (default 640)")
    p.add_argument("--sizes", nargs="+", choices=list(CELL_SIZES), default=["kodak", "4k"])
    p.add_argument(
        "--precisions",
        nargs="+",
        choices=("default", "fp32", "tf32", "bf16"),
        help="arithmetic of the cell runs (default: default fp32 bf16 on CUDA, default on CPU)",
    )
    p.add_argument("--cells", nargs="+", metavar="NAME", help="a subset of the cells, by name")
    p.add_argument("--repeat", type=int, default=10, help="timed runs (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    p.add_argument("--replays", type=int, default=10, help="graph replays per timed run")
    p.add_argument("--models", nargs="*", default=list(MODELS), help="none: cells only")
    p.add_argument("--quick", action="store_true", help="a smoke run: small and few of all")
    p.add_argument("--json", type=Path, help="default: $OUT/bench_context_cells.json if $OUT")
    args = p.parse_args(argv)
    if args.json is None and os.environ.get("OUT"):
        args.json = Path(os.environ["OUT"]) / "bench_context_cells.json"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    cuda = device.type == "cuda"
    modes = args.precisions or (["default", "fp32", "bf16"] if cuda else ["default"])
    cells = candidates()
    if args.cells:
        unknown = sorted(set(args.cells) - set(cells))
        if unknown:
            sys.exit(f"unknown cells {unknown}; known: {sorted(cells)}")
        cells = {n: cells[n] for n in cells if n in args.cells or n == BASELINE}
    model_kwargs: dict[str, Any] = {}
    size, train_size, train_batch = (768, 512), (256, 256), 16 if cuda else 1
    sizes = {name: CELL_SIZES[name] for name in args.sizes}
    if args.quick:
        args.dim, args.repeat, args.warmup, args.replays = 64, 1, 0, 2
        sizes, modes = {"kodak": CELL_SIZES["kodak"]}, modes[:1]
        model_kwargs, size, train_size, train_batch = QUICK_MODEL_KWARGS, (128, 128), (128, 128), 1

    progress = functools.partial(print, "  ...", file=sys.stderr, flush=True)
    info = machine_info(device)
    machine = {k: info.get(k) for k in ("gpu", "processor", "torch", "biwkv4_cuda_kernel")}
    print(f"bench_context_cells on {device}: {machine}", flush=True)
    payload: dict[str, Any] = {
        "machine": info,
        "settings": {
            "dim": args.dim,
            "sizes": {k: list(v) for k, v in sizes.items()},
            "precisions": modes,
            "cells": list(cells),
            "repeat": args.repeat,
            "warmup": args.warmup,
            "graph_replays": args.replays,
            "models": args.models,
            "model_kwargs": model_kwargs,
            "model_size": list(size),
            "train_size": list(train_size),
            "train_batch": train_batch,
        },
        "cells": [],
        "kernels": [],
        "models": [],
        "checks": [],
    }

    def save() -> None:
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(payload, indent=1) + "\n")

    results: list[CellResult] = []
    for mode in modes:
        results += bench_cells(
            device=device,
            dim=args.dim,
            sizes=sizes,
            cells=cells,
            repeat=args.repeat,
            warmup=args.warmup,
            precision=None if mode == "default" else mode,
            graph_replays=args.replays,
            progress=progress,
        )
        payload["cells"] = [as_dict(r) for r in results]
        save()
    print(f"\nContext cells ({args.dim} channels, batch 1; {device}):")
    print(format_cell_table(results))
    print(f"\nRatios to {BASELINE} (same size and precision, same run):")
    print(format_cell_ratios(results, BASELINE))

    if cuda:
        first = next(iter(sizes))
        rows = list(kernel_profiles(cells, modes, args.dim, sizes[first], device))
        payload["kernels"] = rows
        save()
        print(f"\nCUDA kernels per call at {first} (torch.profiler, mean of 3 calls):")
        print(format_kernel_table(rows))

    models: list[ModelResult] = []
    if args.models:
        models = bench_models(
            args.models,
            device=device,
            size=size,
            model_kwargs=model_kwargs,
            train_size=train_size,
            train_batch=train_batch,
            repeat=min(args.repeat, 5),
            warmup=min(args.warmup, 2),
            progress=progress,
        )
        payload["models"] = [as_dict(r) for r in models]
        save()
        tables = (format_model_table(models), format_fast_table(models))  # fast: CUDA only
        print(f"\nModels (eval at {size[0]}x{size[1]}, batch 1; then fast paths; {device}):")
        print("\n\n".join(t for t in tables if t))

    checks = target_checks(results, models)
    payload["checks"] = checks
    save()
    print("\nIssue 15's targets (ratios measured in this run):")
    print(format_checks(checks))
    if args.json is not None:
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
