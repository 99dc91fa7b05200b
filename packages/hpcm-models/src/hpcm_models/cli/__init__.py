"""The ``hpcm`` command line.

Each subcommand lives in its own module with two functions, ``add_parser(subparsers)`` and
``run(args) -> int`` (a short adapter to a library call), and is listed in ``_SUBCOMMANDS``; what
several of them share (options, the device, progress lines, JSON output) is in ``_common``.
Errors that users can cause (bad files, bad flags) are raised as
:class:`hpcm_models.errors.HPCMError` subclasses and printed as one line.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

from hpcm_models.errors import HPCMError, plain_text

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

    def state(available: bool) -> str:
        return "available" if available else "not available"

    cuda = state(biwkv4_kernel.cuda_kernel_available())
    triton = state(biwkv4_kernel.triton_kernel_available())
    kernels = f"CUDA op: {cuda}; Triton kernels: {triton}"
    return "\n".join(
        [
            f"hpcm-models {hpcm_models.__version__}",
            f"rwkv-blocks {rwkv_blocks.__version__}",
            f"biwkv4-kernel {biwkv4_kernel.__version__} ({kernels})",
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


class _Terminated(BaseException):
    """SIGTERM or SIGHUP, raised where the program is, so that ``finally`` blocks run (they
    remove temporary files). A BaseException, like KeyboardInterrupt: ``except Exception`` does
    not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# Signals that end the program through _Terminated (SIGHUP does not exist on Windows).
_TERMINATING = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def _terminate(signum: int, frame: object) -> None:
    for sig in _TERMINATING:  # a second signal must not interrupt the cleanup of the first
        signal.signal(sig, signal.SIG_IGN)
    raise _Terminated(signum)


@contextlib.contextmanager
def _signals_as_exceptions() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`_Terminated` (SIGINT raises KeyboardInterrupt already);
    the previous handlers come back afterwards. A signal the process was started with ignored
    stays ignored (``nohup hpcm ...`` survives a hang-up, as Python leaves an ignored SIGINT
    ignored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        sig: signal.signal(sig, _terminate)
        for sig in _TERMINATING
        if signal.getsignal(sig) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _message(text: str) -> str:
    """One line without terminal escapes, whatever a file or library put into ``text``."""
    return " ".join(plain_text(text).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hpcm``. Exit status: 0, 1 for an :class:`HPCMError` (one line on stderr), 2 for bad
    flags, 130 on SIGINT, 128 + N on SIGTERM or SIGHUP (signal N); a command stopped by a signal
    removes its temporary files and leaves an existing output as it was."""
    prog = "hpcm"
    try:
        with _signals_as_exceptions():
            parser = build_parser()
            args = parser.parse_args(argv)
            if args.command is None:
                parser.print_help(sys.stderr)
                return 2
            prog = f"hpcm {args.command}"
            return int(args.run(args))
    except HPCMError as err:
        print(f"{prog}: error: {_message(str(err))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (SIGINT)", file=sys.stderr)
        return 128 + signal.SIGINT
    except _Terminated as stop:
        print(f"{prog}: terminated ({signal.Signals(stop.signum).name})", file=sys.stderr)
        return 128 + stop.signum
