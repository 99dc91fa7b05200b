#!/usr/bin/env python3
"""Turn trained checkpoints into weights that ship in hpcm-models, and list them in its table.

Each SOURCE (an ``hpcm train`` run's ``latest.pt``, or an fp16 export of
``tools/train_codecs.py``) becomes ``MODEL-qQ.pt`` in the weights folder
(:func:`hpcm_models.pretrained.make_weights_file`): fp16 weights, the rANS tables built once here
and carried in the file, the weights hash ``.hpcm`` files record, and the training metadata. Its
entry (file, λ, SHA-256, size, weights hash, training summary) is added to the folder's
``index.json`` (:func:`hpcm_models.pretrained.add_to_index`), replacing an entry of the same model
and quality. The file is loaded back and checked before the table lists it.

    uv run python tools/ship_weights.py gpu-results/hpcm-small-q1.pt gpu-results/hpcm-small-q2.pt \\
        gpu-results/hpcm-small-q3.pt --quality 1 2 3

writes ``packages/hpcm-models/src/hpcm_models/weights/hpcm-small-q{1,2,3}.pt`` and their rows;
commit the files and ``index.json`` together. ``--into DIR`` writes elsewhere (a folder that
``HPCM_WEIGHTS_DIR`` can name). The package's weights may take at most 20 MiB together: past
that the tool says so and exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hpcm_models.errors import HPCMError
from hpcm_models.pretrained import (
    MAX_SHIPPED_BYTES,
    add_to_index,
    make_weights_file,
    read_index,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_WEIGHTS = ROOT / "packages" / "hpcm-models" / "src" / "hpcm_models" / "weights"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("sources", type=Path, nargs="+", metavar="SOURCE", help="checkpoints")
    p.add_argument(
        "--quality", type=int, nargs="+", required=True, metavar="Q",
        help="the rate point of each SOURCE, in order (1 = lowest rate)",
    )  # fmt: skip
    p.add_argument(
        "--lmbda", type=float, nargs="+", metavar="L",
        help="the training λ of each SOURCE (default: read from the checkpoint)",
    )  # fmt: skip
    p.add_argument("--model", help="model name, for checkpoints that do not name theirs")
    p.add_argument(
        "--into", type=Path, default=PACKAGE_WEIGHTS, metavar="DIR",
        help="weights folder (default: the package's, hpcm_models/weights)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if len(args.quality) != len(args.sources):
        p.error(f"give one --quality per SOURCE ({len(args.sources)}), got {len(args.quality)}")
    lmbdas = args.lmbda or [None] * len(args.sources)
    if len(lmbdas) != len(args.sources):
        p.error(f"give one --lmbda per SOURCE ({len(args.sources)}), got {len(lmbdas)}")

    args.into.mkdir(parents=True, exist_ok=True)
    try:
        for source, quality, lmbda in zip(args.sources, args.quality, lmbdas, strict=True):
            entry = make_weights_file(
                source,
                args.into / f"{_model_of(source, args.model)}-q{quality}.pt",
                quality=quality,
                lmbda=lmbda,
                model_name=args.model,
            )
            table = add_to_index(entry, args.into)
            print(json.dumps(entry.to_json()))
    except (HPCMError, ValueError) as err:
        print(f"ship_weights: error: {err}", file=sys.stderr)
        return 1
    total = sum(e.bytes for e in read_index(args.into))
    print(f"{args.into}: {len(table)} file(s), {total / 2**20:.2f} MiB in all")
    if args.into.resolve() == PACKAGE_WEIGHTS.resolve() and total > MAX_SHIPPED_BYTES:
        print(
            f"ship_weights: error: the package's weights take {total} bytes, more than "
            f"{MAX_SHIPPED_BYTES} (20 MiB); remove some",
            file=sys.stderr,
        )
        return 1
    return 0


def _model_of(source: Path, model: str | None) -> str:
    """The model name the file will be named after."""
    from hpcm_models.checkpoints import read_checkpoint, unwrap_checkpoint

    _, name, _ = unwrap_checkpoint(read_checkpoint(source), str(source))
    if name is None and model is None:
        raise ValueError(f"{str(source)!r} does not name its model: give --model")
    return model or name


if __name__ == "__main__":
    raise SystemExit(main())
