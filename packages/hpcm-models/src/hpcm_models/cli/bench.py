"""``hpcm bench``: parameters, FLOPs, latency and memory of the models and of the s3 cells."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hpcm_models.errors import HPCMError

HELP = "measure parameters, FLOPs, latency and memory of the models and context cells"

EPILOG = """\
Defaults: on CUDA, eval at 768x512 (Kodak) and training steps of 16 x 256x256; on CPU, eval at
256x256 and training steps of 1 x 256x256. Peak memory is measured on CUDA only. On CUDA the
fast paths (CUDA graphs, bf16, fused Adam; docs/performance.md) are measured too, against the
eager float32 baseline of the same run.

examples:
  hpcm bench --device cuda --json bench-h200.json
  hpcm bench --device cpu --models hpcm-base hpcm-phase1 --size 256x256 --repeat 3
  hpcm bench --models hpcm-base --size 128x128 --repeat 1 --no-cells \\
      --model-kwargs '{"M": 32, "N": 16}'
"""


def _size(text: str) -> tuple[int, int]:
    from hpcm_models.benchmark import parse_size

    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from hpcm_models.cli.compress import json_object
    from hpcm_models.registry import BUILTIN_MODELS, available_models

    p = subparsers.add_parser(
        "bench",
        help=HELP,
        description="Benchmark the models (base, large, phases 1-4) and the s3 context cells.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--models",
        nargs="*",
        choices=available_models(),
        default=list(BUILTIN_MODELS),
        metavar="NAME",
        help="models to measure (default: all six); none: cells only",
    )
    p.add_argument("--model-kwargs", type=json_object, default={}, metavar="JSON")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--size", type=_size, help="eval input WIDTHxHEIGHT, multiples of 128")
    p.add_argument("--train-size", type=_size, default=(256, 256), help="training crop size")
    p.add_argument("--train-batch", type=int, help="training batch (default: 16 CUDA, 1 CPU)")
    p.add_argument("--no-train", action="store_true", help="skip the training steps")
    p.add_argument("--no-cells", action="store_true", help="skip the context-cell benchmark")
    p.add_argument(
        "--cell-sizes",
        nargs="+",
        choices=("kodak", "1080p", "4k"),
        default=["kodak", "1080p", "4k"],
        help="latent sizes of the cell benchmark",
    )
    p.add_argument("--cell-dim", type=int, default=640, help="cell channels, 2M (default: 640)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs (median reported)")
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

    from hpcm_models.benchmark import (
        CELL_SIZES,
        as_dict,
        bench_cells,
        bench_models,
        format_cell_table,
        format_fast_table,
        format_model_table,
        machine_info,
    )
    from hpcm_models.devices import resolve_device
    from hpcm_models.hpcm.model import HPCM

    device = resolve_device(args.device, allow_auto=True)
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

    def progress(message: str) -> None:
        print(f"  ... {message}", file=sys.stderr, flush=True)

    info = machine_info(device)
    print(
        f"hpcm bench on {info.get('gpu', info['processor'])} ({device}), torch {info['torch']}, "
        f"{info['torch_threads']} threads, Bi-WKV CUDA kernel: {info['biwkv4_cuda_kernel']}",
        flush=True,
    )
    payload: dict = {
        "machine": info,
        "settings": {
            "models": args.models,
            "model_kwargs": args.model_kwargs,
            "size": list(size),
            "train_size": None if args.no_train else list(args.train_size),
            "train_batch": None if args.no_train else train_batch,
            "repeat": args.repeat,
            "warmup": args.warmup,
            "amp": args.amp,
            "fast": not args.no_fast and cuda,
            "fast_precision": args.fast_precision,
            "cell_dim": args.cell_dim,
            "cell_sizes": None if args.no_cells else args.cell_sizes,
        },
        "models": [],
        "cells": [],
    }
    if args.models:
        try:
            models = bench_models(
                args.models,
                device=device,
                size=size,
                model_kwargs=args.model_kwargs,
                train_size=None if args.no_train else args.train_size,
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
            ""
            if args.no_train
            else f", training {train_batch}x{args.train_size[0]}x{args.train_size[1]}"
        )
        print(f"\nModels (eval forward at {size[0]}x{size[1]}, batch 1{train_note}; {device}):")
        print(format_model_table(models))
        fast_table = format_fast_table(models)
        if fast_table:
            print(f"\nFast paths against the eager float32 baseline ({device}):")
            print(fast_table)
        payload["models"] = [as_dict(r) for r in models]
    if not args.no_cells:
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
        payload["cells"] = [as_dict(r) for r in cells]
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0
