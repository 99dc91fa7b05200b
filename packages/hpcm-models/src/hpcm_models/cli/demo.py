"""``hpcm demo``: build every model and round-trip bundled photos through real bitstreams."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from hpcm_models.cli._common import (
    add_models_option,
    prepare_device,
    progress,
    subcommand,
    write_json,
)
from hpcm_models.errors import HPCMError

HELP = "build every model and compress/decompress bundled photos (the quick tour)"

EPILOG = """\
Without --checkpoint-dir the weights are random: bpp and PSNR then mean nothing, but every other
part is real (the models, rANS coding, the .hpcm container, decoding, bit-exactness). With
--checkpoint-dir DIR, a model uses DIR/<model>.pt, DIR/<model>.pth.tar, DIR/<model>/best.pt or
DIR/<model>/latest.pt when one exists.

The full demo (M=320, N=256, two 256x256-padded photos) takes one to a few minutes on a laptop
CPU; --quick uses small models (M=32, N=16) and takes seconds.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from hpcm_models.demo import DEMO_MODELS

    description = "Compress and decompress bundled photos with HPCM and every RWKV phase."
    p = subcommand(subparsers, "demo", HELP, description, EPILOG)
    add_models_option(p, "+", DEMO_MODELS, "models to run (default: base, large, phase1-4)")
    p.add_argument("--images", type=Path, nargs="+", metavar="FILE", help="your own images")
    p.add_argument("--checkpoint-dir", type=Path, metavar="DIR", help="trained weights")
    p.add_argument("--quick", action="store_true", help="small models (M=32, N=16): seconds")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from hpcm_models.demo import DEMO_IMAGES, bundled_image, format_demo_table, run_demo

    device = prepare_device(args.device)
    if args.checkpoint_dir is not None and not args.checkpoint_dir.is_dir():
        raise HPCMError(f"--checkpoint-dir {str(args.checkpoint_dir)!r} is not a directory")
    paths = args.images or [bundled_image(n) for n in DEMO_IMAGES]
    _introduce(args, paths, device)
    start = time.perf_counter()
    rows = run_demo(
        args.models,
        paths,
        checkpoint_dir=args.checkpoint_dir,
        device=device,
        seed=args.seed,
        quick=args.quick,
        progress=progress,
    )
    print()
    print(format_demo_table(rows))
    print(
        f"\nbpp: entropy-coded bytes per pixel of the original image (the .hpcm header adds "
        f"~{_header_bpp(rows):.3f} bpp here); times per image on {device}; bit-exact: the decoder "
        f"rebuilt exactly the encoder's latents. Total {time.perf_counter() - start:.0f} s."
    )
    if args.json is not None:
        write_json(
            args.json, {"device": str(device), "rows": [dataclasses.asdict(r) for r in rows]}
        )
        print(f"wrote {args.json}")
    return 0 if all(r.bit_exact for r in rows) else 1


def _introduce(args: argparse.Namespace, paths: list[Path], device: Any) -> None:
    """Say what the demo will run, and whether its weights are random."""
    import torch

    import hpcm_models
    from hpcm_models.demo import find_checkpoint
    from hpcm_models.image_io import read_image

    described = []
    for path in paths:
        image = read_image(path)
        described.append(f"{Path(path).name} {image.width}x{image.height} {image.mode}")
    size = "M=32, N=16 (--quick)" if args.quick else "M=320, N=256"
    print(
        f"hpcm demo: {len(args.models)} models at {size} on {len(paths)} "
        f"{'bundled photos' if not args.images else 'images'} ({', '.join(described)}); "
        f"device {device}, torch {torch.__version__}, hpcm-models {hpcm_models.__version__}"
    )
    trained = {
        m: find_checkpoint(args.checkpoint_dir, m) if args.checkpoint_dir else None
        for m in args.models
    }
    random_models = [m for m, c in trained.items() if c is None]
    if random_models:
        print(
            f"WEIGHTS ARE RANDOM for {', '.join(random_models)} (no trained checkpoint given): "
            "their bpp and PSNR mean nothing. Everything else is real: each image is compressed "
            "to .hpcm bytes with rANS and decompressed again."
        )
    if args.quick and any(c is not None for c in trained.values()):
        raise HPCMError("--quick builds small random models; it cannot use --checkpoint-dir")


def _header_bpp(rows: list) -> float:
    return max((r.bpp_file - r.bpp for r in rows), default=0.0)
