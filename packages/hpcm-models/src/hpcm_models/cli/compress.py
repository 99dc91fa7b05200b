"""``hpcm compress``: an image file → a ``.hpcm`` file."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from hpcm_models.errors import HPCMError

HELP = "compress an image into a .hpcm file"

EPILOG = """\
examples:
  hpcm compress kodim01.png kodim01.hpcm --model hpcm-base --checkpoint HPCM_Base_0.0018.pth.tar
  hpcm compress photo.jpg photo.hpcm --checkpoint runs/base-0.013/best.pt --device cuda
  hpcm compress photo.png demo.hpcm --model hpcm-base --random-weights --seed 0   (demo only)

Any size and mode Pillow reads (RGB, L, RGBA, LA, P, ...); alpha is kept losslessly.
The file records the model and a hash of its weights: decompress it with the same checkpoint.
"""


def json_object(text: str) -> dict[str, Any]:
    """argparse type: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def add_weight_options(p: argparse.ArgumentParser) -> None:
    """The options that say where the weights come from (shared with ``decompress``)."""
    g = p.add_argument_group("weights (one of --checkpoint, --random-weights)")
    source = g.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint",
        type=Path,
        metavar="CKPT",
        help="raw state dict (the authors' .pth.tar) or an `hpcm train` checkpoint",
    )
    source.add_argument(
        "--random-weights",
        action="store_true",
        help="freshly initialized weights from --seed: for demos and tests, compresses badly",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of --random-weights (default: 0)")
    g.add_argument(
        "--model-kwargs",
        type=json_object,
        default={},
        metavar="JSON",
        help="constructor kwargs for raw state dicts and --random-weights, e.g. '{\"M\": 192}'",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")


def prepare_device(spec: str) -> Any:
    """Resolve ``--device``; on CUDA ask cuBLAS for its deterministic workspace (before any
    matmul of the process, which is when PyTorch reads the variable)."""
    from hpcm_models.devices import resolve_device

    device = resolve_device(spec)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return device


def random_weights(name: str, seed: int, device: Any, kwargs: dict[str, Any]) -> Any:
    from hpcm_models.checkpoints import random_model

    try:
        return random_model(name, seed=seed, device=device, **kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, HPCMError):
            raise
        raise HPCMError(f"cannot build {name} with --model-kwargs {kwargs}: {err}") from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from hpcm_models.registry import available_models

    p = subparsers.add_parser(
        "compress",
        help=HELP,
        description="Compress an image into a .hpcm file with an HPCM model.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path, metavar="IN", help="image file")
    p.add_argument("output", type=Path, metavar="OUT", help=".hpcm file to write")
    p.add_argument(
        "--model",
        choices=available_models(),
        help="model name (required unless the checkpoint names its model)",
    )
    add_weight_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hpcm_models.checkpoints import load_checkpoint
    from hpcm_models.codec_files import compress_file

    device = prepare_device(args.device)
    if args.random_weights and args.model is None:
        raise HPCMError("--random-weights needs --model")

    def build() -> Any:
        if args.random_weights:
            return random_weights(args.model, args.seed, device, args.model_kwargs)
        return load_checkpoint(
            args.checkpoint, args.model, device=device, model_kwargs=args.model_kwargs or None
        )

    report = compress_file(args.input, args.output, build)
    print(report.summary())
    return 0
