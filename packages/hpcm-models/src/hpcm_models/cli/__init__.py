"""The ``hpcm`` command line.

Each subcommand lives in its own module with two functions, ``add_parser(subparsers)`` and
``run(args) -> int`` (a short adapter to a library call), and is listed in ``_SUBCOMMANDS``; what
several of them share (options, the device, progress lines, JSON output) is in ``_common``.
Errors that users can cause (bad files, bad flags) are raised as
:class:`hpcm_models.errors.HPCMError` subclasses and printed as one line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from hpcm_models.errors import HPCMError

__all__ = ["build_parser", "main"]

# Module names under hpcm_models.cli, in the order `hpcm --help` lists them.
_SUBCOMMANDS: tuple[str, ...] = (
    "demo",
    "compress",
    "decompress",
    "train",
    "eval",
    "bd_rate",
    "bench",
)


def _version_report() -> str:
    import torch

    import biwkv4_kernel
    import hpcm_models
    import rwkv_blocks

    cuda = "available" if biwkv4_kernel.cuda_kernel_available() else "not available"
    return "\n".join(
        [
            f"hpcm-models {hpcm_models.__version__}",
            f"rwkv-blocks {rwkv_blocks.__version__}",
            f"biwkv4-kernel {biwkv4_kernel.__version__} (CUDA op: {cuda})",
            f"torch {torch.__version__}",
        ]
    )


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print package versions and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(_version_report())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpcm",
        description="Learned image compression with HPCM and RWKV context models.",
    )
    parser.add_argument("--version", action=_VersionAction)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.run(args))
    except HPCMError as err:
        print(f"hpcm {args.command}: error: {err}", file=sys.stderr)
        return 1
