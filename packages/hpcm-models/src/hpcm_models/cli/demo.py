"""``hpcm demo``: round-trip bundled photos through real bitstreams, with the shipped weights (or
every model with random weights)."""

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

HELP = "compress/decompress bundled photos with the shipped weights (the quick tour)"

EPILOG = """\
By default each model with weights shipped in hpcm-models codes the photos at every shipped
quality: real rates and PSNRs. --random-weights builds HPCM-Base, -Large and every RWKV phase at
full size (M=320, N=256) with random weights instead: bpp and PSNR then mean nothing, but every
other part is real (the models, rANS coding, the .hpcm container, decoding, bit-exactness);
--quick does the same with small models (M=32, N=16) in seconds. With --checkpoint-dir DIR, a
model uses DIR/<model>.pt, DIR/<model>.pth.tar, DIR/<model>/best.pt or DIR/<model>/latest.pt
when one exists. A model with neither a checkpoint nor shipped weights gets random weights.

The default demo takes about half a minute on a 2-core CPU; the full random-weights demo one to
a few minutes.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    description = "Compress and decompress bundled photos with trained (or random) HPCM models."
    p = subcommand(subparsers, "demo", HELP, description, EPILOG)
    add_models_option(
        p,
        "+",
        (),
        "models to run (default: those with shipped weights; with --random-weights, --quick or "
        "--checkpoint-dir: base, large, phases 1-4)",
    )
    p.add_argument("--images", type=Path, nargs="+", metavar="FILE", help="your own images")
    p.add_argument("--checkpoint-dir", type=Path, metavar="DIR", help="trained weights")
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="untrained full-size models instead of the shipped weights",
    )
    p.add_argument("--quick", action="store_true", help="small random models (M=32, N=16): seconds")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument(
        "--no-jpeg",
        action="store_true",
        help="do not set trained weights against JPEG at the same rate (one JPEG sweep per image)",
    )
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from hpcm_models.demo import DEMO_IMAGES, bundled_image, format_demo_table, run_demo

    device = prepare_device(args.device)
    if args.checkpoint_dir is not None and not args.checkpoint_dir.is_dir():
        raise HPCMError(f"--checkpoint-dir {str(args.checkpoint_dir)!r} is not a directory")
    if args.quick and args.checkpoint_dir is not None:
        raise HPCMError("--quick builds small random models; it cannot use --checkpoint-dir")
    pretrained = not (args.random_weights or args.quick)
    args.models = args.models or _default_models(args, pretrained)
    paths = args.images or [bundled_image(n) for n in DEMO_IMAGES]
    _introduce(args, paths, device, pretrained)
    start = time.perf_counter()
    rows = run_demo(
        args.models,
        paths,
        checkpoint_dir=args.checkpoint_dir,
        device=device,
        seed=args.seed,
        quick=args.quick,
        pretrained=pretrained,
        compare_jpeg=not args.no_jpeg,
        progress=progress,
    )
    print()
    print(format_demo_table(rows))
    print(
        f"\nbpp: entropy-coded bytes per pixel of the original image (the .hpcm header adds "
        f"~{_header_bpp(rows):.3f} bpp here); times per image on {device}; bit-exact: the decoder "
        f"rebuilt exactly the encoder's latents. Total {time.perf_counter() - start:.0f} s."
    )
    if any(r.jpeg_compared for r in rows):
        print(
            "JPEG: Pillow's (4:2:0) PSNR at each image's whole-file bpp (the .hpcm file against "
            "the .jpg file, quality interpolated), averaged over the images; Δ = PSNR − JPEG's"
            + (
                "; * = over the images whose rate JPEG reaches"
                if any(r.jpeg_compared < len(r.images) for r in rows if r.jpeg_compared)
                else ""
            )
            + ". Two small images, where the header weighs, are a smoke check, not a benchmark: "
            "hpcm eval --compare jpeg webp on your photos (the shipped weights' held-out results: "
            "docs/models.md)."
        )
    if args.json is not None:
        write_json(
            args.json, {"device": str(device), "rows": [dataclasses.asdict(r) for r in rows]}
        )
        print(f"wrote {args.json}")
    return 0 if all(r.bit_exact for r in rows) else 1


def _default_models(args: argparse.Namespace, pretrained: bool) -> list[str]:
    """The models with shipped weights (the default demo), else every built-in model."""
    from hpcm_models.demo import DEMO_MODELS
    from hpcm_models.pretrained import pretrained_models

    if pretrained and args.checkpoint_dir is None:
        shipped = pretrained_models()
        if shipped:
            return shipped
        print(
            "note: this installation ships no trained weights yet, so the demo builds every "
            "model with random weights (what --random-weights does)"
        )
    return list(DEMO_MODELS)


def _introduce(args: argparse.Namespace, paths: list[Path], device: Any, pretrained: bool) -> None:
    """Say what the demo will run, and which weights are random."""
    import torch

    import hpcm_models
    from hpcm_models.demo import demo_runs
    from hpcm_models.image_io import read_image

    described = []
    for path in paths:
        image = read_image(path)
        described.append(f"{Path(path).name} {image.width}x{image.height} {image.mode}")
    runs = demo_runs(args.models, checkpoint_dir=args.checkpoint_dir, pretrained=pretrained)
    random_models = list(dict.fromkeys(r.model for r in runs if r.weights == "random"))
    size = "M=32, N=16 (--quick)" if args.quick else "M=320, N=256"
    print(
        f"hpcm demo: {len(args.models)} model{'s' * (len(args.models) != 1)} ({len(runs)} sets "
        f"of weights) on {len(paths)} "
        f"{'bundled photos' if not args.images else 'images'} ({', '.join(described)}); "
        f"device {device}, torch {torch.__version__}, hpcm-models {hpcm_models.__version__}"
    )
    shipped = [r.weights for r in runs if r.shipped is not None]
    if shipped:
        models = ", ".join(dict.fromkeys(r.model for r in runs if r.shipped is not None))
        print(f"Shipped trained weights of {models}: {', '.join(shipped)}.")
    if random_models:
        print(
            f"WEIGHTS ARE RANDOM for {', '.join(random_models)} ({size}; no trained weights "
            "used): their bpp and PSNR mean nothing. Everything else is real: each image is "
            "compressed to .hpcm bytes with rANS and decompressed again."
        )


def _header_bpp(rows: list) -> float:
    return max((r.bpp_file - r.bpp for r in rows), default=0.0)
