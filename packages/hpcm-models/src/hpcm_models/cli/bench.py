"""``hpcm bench``: parameters, FLOPs, latency and memory of the models and of the s3 cells."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hpcm_models.cli._common import (
    add_models_option,
    json_object,
    progress,
    subcommand,
    write_json,
)
from hpcm_models.errors import HPCMError

HELP = "measure parameters, FLOPs, latency and memory of the models and context cells"

EPILOG = """\
Defaults: on CUDA, eval at 768x512 (Kodak), training steps of 16 x 256x256, the context cells at
Kodak, 1080p and 4K latent sizes, 5 timed runs. On CPU the defaults finish in about a minute on
2 cores: eval at 256x256, no training steps, the cells at Kodak size only, 1 timed run; ask for
more with --train (or --train-size / --train-batch), --cell-sizes kodak 1080p 4k and --repeat
(all of it: 20+ minutes). Peak memory is measured on CUDA only. On CUDA the fast paths (CUDA
graphs, bf16, fused Adam; docs/performance.md) are measured too, against the eager float32
baseline of the same run, and the context cells are also timed replayed from CUDA graphs.
benchmarks/bench_context_cells.py compares the cells in more precisions.

examples:
  hpcm bench --device cuda --json bench-h200.json
  hpcm bench --device cpu --train --cell-sizes kodak 1080p 4k --repeat 3 --json bench-cpu.json
  hpcm bench --device cpu --models hpcm-base hpcm-phase1 --size 256 --repeat 3
  hpcm bench --models hpcm-base --size 128 --repeat 1 --no-cells \\
      --model-kwargs '{"M": 32, "N": 16}'
"""

# What runs when a flag is not given: (on CUDA, on CPU). The CPU column keeps a plain
# `hpcm bench --device cpu` to about a minute on 2 cores; the 4K cells alone take minutes there.
DEFAULTS = {
    "train": (True, False),
    "cell_sizes": (["kodak", "1080p", "4k"], ["kodak"]),
    "repeat": (5, 1),
}
CPU_NOTE = (
    "CPU defaults (about a minute on 2 cores): eval only, Kodak-size cells, 1 timed run. For all "
    "of it (20+ minutes): --train --cell-sizes kodak 1080p 4k --repeat 5"
)


def _size(text: str) -> tuple[int, int]:
    """``"256"`` → (256, 256); ``"768x512"`` → (768, 512) (width, height)."""
    from hpcm_models.benchmark import parse_size

    if text.strip().isdigit():
        text = f"{text.strip()}x{text.strip()}"
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{err} (or one number N for NxN)") from None


def _resolve_defaults(args: argparse.Namespace, cuda: bool) -> list[str]:
    """Give the flags left unset the device's defaults (:data:`DEFAULTS`); return their names."""
    if args.train is None and (args.train_size or args.train_batch):
        args.train = True  # asking for a training size or batch asks for training steps
    args.train_size = args.train_size or (256, 256)
    unset = [name for name in DEFAULTS if getattr(args, name) is None]
    for name in unset:
        setattr(args, name, DEFAULTS[name][0 if cuda else 1])
    return unset


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from hpcm_models.registry import BUILTIN_MODELS

    description = (
        "Benchmark the models (base, large, phases 1-4, phase 1 lite) and the s3 context cells."
    )
    p = subcommand(subparsers, "bench", HELP, description, EPILOG)
    add_models_option(
        p, "*", BUILTIN_MODELS, "models to measure (default: all built-in models); none: cells only"
    )
    p.add_argument("--model-kwargs", type=json_object, default={}, metavar="JSON")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument(
        "--size",
        type=_size,
        help="eval input N (NxN) or WxH, multiples of 128 (default: 768x512 CUDA, 256 CPU)",
    )
    p.add_argument("--train-size", type=_size, help="training crop size (default: 256)")
    p.add_argument("--train-batch", type=int, help="training batch (default: 16 CUDA, 1 CPU)")
    p.add_argument(
        "--train",
        action=argparse.BooleanOptionalAction,
        help="time training steps (default: on CUDA; on CPU if asked or given --train-size/-batch)",
    )
    p.add_argument("--no-cells", action="store_true", help="skip the context-cell benchmark")
    p.add_argument(
        "--cell-sizes",
        nargs="+",
        choices=("kodak", "1080p", "4k"),
        help="latent sizes of the cell benchmark (default: all three on CUDA, kodak on CPU)",
    )
    p.add_argument("--cell-dim", type=int, default=640, help="cell channels, 2M (default: 640)")
    p.add_argument(
        "--repeat", type=int, help="timed runs, median reported (default: 5 CUDA, 1 CPU)"
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.add_argument(
        "--amp", choices=("off", "bf16"), default="off", help="bf16 autocast of the baseline"
    )
    p.add_argument("--no-fast", action="store_true", help="skip the fast paths (CUDA graphs)")
    p.add_argument(
        "--fast-precision",
        choices=("fp32", "tf32", "bf16"),
        default="bf16",
        help="arithmetic of the fast eval forward (default: bf16)",
    )
    p.add_argument("--json", type=Path, metavar="OUT", help="write all results as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hpcm_models.benchmark import machine_info
    from hpcm_models.devices import resolve_device

    device = resolve_device(args.device, allow_auto=True)
    defaulted = _resolve_defaults(args, device.type == "cuda")
    size, train_batch = _settings(args, device)
    info = machine_info(device)
    print(
        f"hpcm bench on {info.get('gpu', info['processor'])} ({device}), torch {info['torch']}, "
        f"{info['torch_threads']} threads, Bi-WKV CUDA kernel: {info['biwkv4_cuda_kernel']}",
        flush=True,
    )
    if device.type != "cuda" and defaulted:
        print(CPU_NOTE, flush=True)
    payload: dict = {
        "machine": info,
        "settings": {
            "models": args.models,
            "model_kwargs": args.model_kwargs,
            "size": list(size),
            "train_size": list(args.train_size) if args.train else None,
            "train_batch": train_batch if args.train else None,
            "repeat": args.repeat,
            "warmup": args.warmup,
            "amp": args.amp,
            "fast": not args.no_fast and device.type == "cuda",
            "fast_precision": args.fast_precision,
            "cell_dim": args.cell_dim,
            "cell_sizes": None if args.no_cells else args.cell_sizes,
        },
        "models": _models(args, device, size, train_batch) if args.models else [],
        "cells": [] if args.no_cells else _cells(args, device),
    }
    if args.json is not None:
        write_json(args.json, payload)
        print(f"\nwrote {args.json}")
    return 0


def _settings(args: argparse.Namespace, device: Any) -> tuple[tuple[int, int], int]:
    """``(eval size, training batch)``, checked; their defaults depend on the device."""
    from hpcm_models.hpcm.model import HPCM

    if args.repeat < 1 or args.warmup < 0:
        raise HPCMError(
            f"expected --repeat >= 1 and --warmup >= 0, got {args.repeat}, {args.warmup}"
        )
    cuda = device.type == "cuda"
    size = args.size or ((768, 512) if cuda else (256, 256))
    train_batch = args.train_batch or (16 if cuda else 1)
    m = HPCM.INPUT_MULTIPLE
    for flag, (w, h) in (("--size", size), ("--train-size", args.train_size)):
        if w % m or h % m:
            raise HPCMError(f"expected {flag} to be multiples of {m}, got {w}x{h}")
    return size, train_batch


def _models(
    args: argparse.Namespace, device: Any, size: tuple[int, int], train_batch: int
) -> list[dict]:
    """Measure the models, print their tables; their results as JSON data."""
    from hpcm_models.benchmark import as_dict, bench_models, format_fast_table, format_model_table

    try:
        models = bench_models(
            args.models,
            device=device,
            size=size,
            model_kwargs=args.model_kwargs,
            train_size=args.train_size if args.train else None,
            train_batch=train_batch,
            repeat=args.repeat,
            warmup=args.warmup,
            amp=args.amp == "bf16",
            fast=not args.no_fast,
            fast_precision=args.fast_precision,
            progress=progress,
        )
    except (TypeError, ValueError) as err:
        raise HPCMError(f"cannot build the models with {args.model_kwargs}: {err}") from None
    train_note = (
        f", training {train_batch}x{args.train_size[0]}x{args.train_size[1]}" if args.train else ""
    )
    print(f"\nModels (eval forward at {size[0]}x{size[1]}, batch 1{train_note}; {device}):")
    print(format_model_table(models))
    fast_table = format_fast_table(models)
    if fast_table:
        print(f"\nFast paths against the eager float32 baseline ({device}):")
        print(fast_table)
    return [as_dict(r) for r in models]


def _cells(args: argparse.Namespace, device: Any) -> list[dict]:
    """Measure the s3 context cells, print their table; their results as JSON data."""
    from hpcm_models.benchmark import (
        CELL_SIZES,
        as_dict,
        bench_cells,
        format_cell_ratios,
        format_cell_table,
    )

    cells = bench_cells(
        device=device,
        dim=args.cell_dim,
        sizes={name: CELL_SIZES[name] for name in args.cell_sizes},
        repeat=args.repeat,
        warmup=args.warmup,
        amp=args.amp == "bf16",
        progress=progress,
    )
    print(f"\ns3 context cell alone ({args.cell_dim} channels, batch 1; {device}):")
    print(format_cell_table(cells))
    print("\nRatios to CrossAttentionCell (same size, same run):")
    print(format_cell_ratios(cells))
    return [as_dict(r) for r in cells]
