"""``hpcm compress``: an image file → a ``.hpcm`` file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hpcm_models.cli._common import (
    add_file_options,
    add_weight_options,
    check_shipped_options,
    file_arguments,
    prepare_device,
    random_weights,
    subcommand,
)
from hpcm_models.errors import HPCMError

HELP = "compress an image into a .hpcm file"

EPILOG = """\
examples:
  hpcm compress photo.png photo.hpcm                  (shipped hpcm-small, the middle quality)
  hpcm compress photo.png photo.hpcm --quality 1      (shipped weights, the lowest rate)
  hpcm compress kodim01.png kodim01.hpcm --model hpcm-base --checkpoint HPCM_Base_0.0018.pth.tar
  hpcm compress photo.jpg photo.hpcm --checkpoint runs/base-0.013/best.pt --device cuda
  hpcm compress photo.png demo.hpcm --model hpcm-base --random-weights --seed 0   (demo only)

Any mode Pillow reads (RGB, L, RGBA, LA, P, ...) up to --max-pixels; alpha is kept losslessly;
more than 8 bits per sample is refused. The file records the model and a hash of its weights:
`hpcm decompress` finds shipped weights by themselves; other weights must be given again (the
same checkpoint). OUT is replaced atomically (its permissions kept); a symbolic link, FIFO or
device at OUT is refused unless --force; the input and the weights in use never are overwritten.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from hpcm_models.pretrained import DEFAULT_MODEL
    from hpcm_models.registry import available_models

    p = subcommand(
        subparsers,
        "compress",
        HELP,
        "Compress an image into a .hpcm file with an HPCM model.",
        EPILOG,
    )
    p.add_argument("input", type=Path, metavar="IN", help="image file")
    p.add_argument("output", type=Path, metavar="OUT", help=".hpcm file to write")
    p.add_argument(
        "--model",
        choices=available_models(),
        metavar="NAME",
        help=f"model name (default for shipped weights: {DEFAULT_MODEL}; needed with "
        "--random-weights and checkpoints that do not name their model)",
    )
    p.add_argument(
        "--quality",
        type=int,
        metavar="Q",
        help="rate point of the shipped weights, 1 = lowest rate (default: the middle one)",
    )
    add_weight_options(p, f"the weights shipped with hpcm-models, --model {DEFAULT_MODEL}")
    add_file_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hpcm_models.checkpoints import load_checkpoint
    from hpcm_models.codec_files import compress_file
    from hpcm_models.pretrained import DEFAULT_MODEL, find_weights, load_pretrained

    device = prepare_device(args.device)
    shipped = check_shipped_options(args)
    if args.random_weights and args.model is None:
        raise HPCMError("--random-weights needs --model")
    # An unknown model or quality fails before the image is read.
    entry = find_weights(args.model or DEFAULT_MODEL, args.quality) if shipped else None

    def build() -> Any:
        if entry is not None:
            return load_pretrained(entry.model, entry.quality, device=device)
        if args.random_weights:
            return random_weights(args.model, args.seed, device, args.model_kwargs or {})
        return load_checkpoint(
            args.checkpoint, args.model, device=device, model_kwargs=args.model_kwargs
        )

    report = compress_file(args.input, args.output, build, **file_arguments(args, shipped))
    print(report.summary() + (f" [shipped weights {entry.label}]" if entry else ""))
    return 0
