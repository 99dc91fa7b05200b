"""What the ``hpcm`` subcommands share: the subparser, option types and options, the device,
random weights, progress lines and JSON output."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpcm_models.errors import HPCMError

__all__ = [
    "add_file_options",
    "add_models_option",
    "add_weight_options",
    "check_shipped_options",
    "file_arguments",
    "json_object",
    "positive_int",
    "prepare_device",
    "progress",
    "random_weights",
    "subcommand",
    "write_json",
]


def subcommand(
    subparsers: argparse._SubParsersAction, name: str, help: str, description: str, epilog: str
) -> argparse.ArgumentParser:
    """The parser of subcommand ``name`` (its epilog printed as written)."""
    return subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def json_object(text: str) -> dict[str, Any]:
    """argparse type: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_file_options(p: argparse.ArgumentParser) -> None:
    """How the input may be read and the output written (``compress`` and ``decompress``)."""
    from hpcm_models.container import Limits

    default = Limits().max_pixels
    g = p.add_argument_group("files and limits")
    g.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="if OUT is a symbolic link, replace the file it names; if OUT is a FIFO or a "
        "character device, write into it (refused without --force, like gzip). The input and "
        "the weights in use (the checkpoint, the shipped weights) are never overwritten",
    )
    g.add_argument(
        "--max-pixels",
        type=positive_int,
        default=default,
        metavar="N",
        help=f"largest image to code, in pixels once padded to multiples of 128 (default "
        f"{default} = 2**{default.bit_length() - 1}, e.g. 4096x2048; coding takes about 600 "
        "bytes of memory per pixel beyond the process and the weights, see docs/format.md)",
    )


def file_arguments(args: argparse.Namespace, shipped: bool = False) -> dict[str, Any]:
    """The keyword arguments of :func:`~hpcm_models.codec_files.compress_file` and
    ``decompress_file`` from :func:`add_file_options` and the weights: the limits of
    ``--max-pixels``, the weights in use protected like the input (the checkpoint, or with
    ``shipped`` every file of the shipped weights), ``--force``."""
    from hpcm_models.container import Limits

    checkpoint = getattr(args, "checkpoint", None)
    protect: dict[str, Any] = {"checkpoint": checkpoint} if checkpoint else {}
    if shipped:
        from hpcm_models.pretrained import shipped_files

        protect |= shipped_files()
    return {
        "limits": Limits(max_pixels=args.max_pixels),
        "protect": protect,
        "write_through": args.force,
    }


def add_models_option(
    p: argparse.ArgumentParser, nargs: str, default: Sequence[str], help: str
) -> None:
    """``--models NAME ...``: registered model names."""
    from hpcm_models.registry import available_models

    p.add_argument(
        "--models",
        nargs=nargs,
        choices=available_models(),
        default=list(default),
        metavar="NAME",
        help=help,
    )


def add_weight_options(p: argparse.ArgumentParser, shipped: str) -> None:
    """The options that say where the weights come from (``compress`` and ``decompress``);
    ``shipped`` says which shipped weights are used when neither is given."""
    g = p.add_argument_group(f"weights (default: {shipped})")
    source = g.add_mutually_exclusive_group()
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
        metavar="JSON",
        help="constructor kwargs for raw state dicts and --random-weights, e.g. '{\"M\": 192}'",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")


def check_shipped_options(args: argparse.Namespace) -> bool:
    """Whether ``args`` ask for the shipped weights (neither ``--checkpoint`` nor
    ``--random-weights``); refuses ``--model-kwargs`` then, and ``--quality`` otherwise."""
    shipped = args.checkpoint is None and not args.random_weights
    if shipped and args.model_kwargs is not None:
        raise HPCMError(
            "--model-kwargs cannot change the shipped weights' model; it goes with --checkpoint "
            "or --random-weights"
        )
    if not shipped and getattr(args, "quality", None) is not None:
        raise HPCMError(
            "--quality selects shipped weights; it cannot be used with --checkpoint or "
            "--random-weights"
        )
    return shipped


def prepare_device(spec: str) -> Any:
    """Resolve ``--device``; on CUDA ask cuBLAS for its deterministic workspace (before any
    matmul of the process, which is when PyTorch reads the variable)."""
    from hpcm_models.devices import resolve_device

    device = resolve_device(spec)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return device


def random_weights(name: str, seed: int, device: Any, kwargs: dict[str, Any]) -> Any:
    """:func:`hpcm_models.checkpoints.random_model`, with bad ``--model-kwargs`` as one-line
    errors."""
    from hpcm_models.checkpoints import random_model

    try:
        return random_model(name, seed=seed, device=device, **kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, HPCMError):
            raise
        raise HPCMError(f"cannot build {name} with --model-kwargs {kwargs}: {err}") from None


def progress(message: str) -> None:
    """A progress line on stderr (results go to stdout)."""
    print(f"  ... {message}", file=sys.stderr, flush=True)


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
