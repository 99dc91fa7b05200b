"""``hpcm decompress``: a ``.hpcm`` file → an image file."""

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

HELP = "decompress a .hpcm file into an image (PNG recommended)"

EPILOG = """\
examples:
  hpcm decompress photo.hpcm photo.png                (made with shipped weights: found by itself)
  hpcm decompress kodim01.hpcm kodim01.png --checkpoint HPCM_Base_0.0018.pth.tar
  hpcm decompress photo.hpcm photo.png --checkpoint runs/base-0.013/best.pt --device cuda

The model name and size come from the file. Without --checkpoint, the shipped weights whose hash
the file records are used (an error says so if none ship); a checkpoint must be the one the file
was compressed with (its weights hash is checked). Output formats: .png .bmp .tif .tiff .ppm .pgm
.pnm .webp (lossless); lossy formats such as .jpg are refused. Damaged files, other weights and
decoder desynchronization are reported as errors; no image is written then. The file's header is
checked against --max-pixels before any model is loaded or built (--random-weights included).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subcommand(subparsers, "decompress", HELP, "Decompress a .hpcm file into an image.", EPILOG)
    p.add_argument("input", type=Path, metavar="IN", help=".hpcm file")
    p.add_argument("output", type=Path, metavar="OUT", help="image file to write")
    add_weight_options(p, "the shipped weights the file names")
    add_file_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hpcm_models.checkpoints import load_checkpoint
    from hpcm_models.codec_files import decompress_file
    from hpcm_models.pretrained import load_pretrained, weights_for_file

    device = prepare_device(args.device)
    shipped = check_shipped_options(args)

    def build(header: Any) -> Any:
        if shipped:
            entry = weights_for_file(header.model_id, header.weights_hash)
            return load_pretrained(entry.model, entry.quality, device=device)
        if args.random_weights:
            kwargs = {"M": header.y_shape[0], "N": header.z_shape[0], **(args.model_kwargs or {})}
            return random_weights(header.model_id, args.seed, device, kwargs)
        return load_checkpoint(
            args.checkpoint, header.model_id, device=device, model_kwargs=args.model_kwargs
        )

    report = decompress_file(args.input, args.output, build, **file_arguments(args, shipped))
    print(report.summary())
    return 0
