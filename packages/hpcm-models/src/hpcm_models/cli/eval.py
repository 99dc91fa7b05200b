"""``hpcm eval``: actual-bitstream rate–distortion points of checkpoints on an image folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hpcm_models.cli._common import json_object, prepare_device, subcommand, write_json
from hpcm_models.errors import HPCMError

HELP = "rate-distortion of checkpoints on an image folder, with real bitstreams"

EPILOG = """\
Each --checkpoint is one rate point. Every image is compressed to an .hpcm bitstream and decoded
again: bpp counts the entropy-coded bytes (bpp-file the whole file), PSNR and MS-SSIM compare the
decoded 8-bit image with the original. The JSON is CompressAI's results format.

examples:
  hpcm eval --model hpcm-base --checkpoint HPCM_Base_0.0018.pth.tar HPCM_Base_0.0035.pth.tar \\
      --dataset kodak/ --output base.json --plot rd.png
  hpcm eval --checkpoint runs/phase2/best.pt --dataset kodak/ --output phase2.json
  hpcm bd-rate base.json phase2.json
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from hpcm_models.registry import available_models

    description = "Evaluate checkpoints (one rate point each) with real entropy coding."
    p = subcommand(subparsers, "eval", HELP, description, EPILOG)
    p.add_argument(
        "--model",
        choices=available_models(),
        help="model name (needed for raw state dicts; read from training checkpoints)",
    )
    p.add_argument("--checkpoint", type=Path, nargs="+", metavar="CKPT", help="one per rate point")
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="evaluate freshly initialized weights instead (smoke tests; the numbers mean nothing)",
    )
    p.add_argument("--model-kwargs", type=json_object, metavar="JSON", help="constructor options")
    p.add_argument("--seed", type=int, default=0, help="seed of --random-weights")
    p.add_argument("--dataset", type=Path, required=True, metavar="DIR", help="image folder")
    p.add_argument("--max-images", type=int, help="only the first N images (sorted by path)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument("--output", type=Path, metavar="JSON", help="write CompressAI-style results")
    p.add_argument("--name", help="curve name in the JSON and the plot (default: the model)")
    p.add_argument("--plot", type=Path, metavar="IMAGE", help="draw the RD curve (e.g. rd.png)")
    p.add_argument(
        "--plot-metric", choices=("psnr", "ms-ssim"), default="psnr", help="quality axis"
    )
    p.add_argument(
        "--reference",
        choices=("kodak", "clic-pro-valid", "tecnick", "none"),
        default="kodak",
        help="published HPCM curves drawn in the plot (default: kodak)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hpcm_models.datasets import find_images
    from hpcm_models.evaluation import results_document

    if bool(args.checkpoint) == bool(args.random_weights):
        raise HPCMError("give --checkpoint CKPT [CKPT ...] or --random-weights (not both)")
    if args.random_weights and args.model is None:
        raise HPCMError("--random-weights needs --model")
    if args.max_images is not None and args.max_images < 1:
        raise HPCMError(f"expected --max-images >= 1, got {args.max_images}")
    files = find_images(args.dataset)[: args.max_images]
    device = prepare_device(args.device)
    points, model_name = _rate_points(args, files, device)

    name = args.name or model_name
    description = (
        f"{model_name}, actual bitstreams (hpcm eval), {len(files)} images of {args.dataset}, "
        f"device {device}" + (", RANDOM WEIGHTS" if args.random_weights else "")
    )
    document = results_document(
        name, description, points, extra={"model": model_name, "dataset": str(args.dataset)}
    )
    if args.output is not None:
        write_json(args.output, document)
        print(f"wrote {args.output}")
    if args.plot is not None:
        _plot(args, name, description, document)
        print(f"wrote {args.plot}")
    if not all(document["results"]["bit-exact"]):
        print("warning: some images did not decode bit-exactly (see per_image)", file=sys.stderr)
        return 1
    return 0


def _rate_points(
    args: argparse.Namespace, files: list[Path], device: Any
) -> tuple[list[tuple[str, Any]], str]:
    """Every image coded and decoded by each checkpoint (or the random weights): ``([(source,
    per-image results), ...], model name)``; one summary line per point on stdout."""
    from tqdm import tqdm

    from hpcm_models.checkpoints import load_checkpoint, random_model
    from hpcm_models.codec import ImageCodec
    from hpcm_models.evaluation import evaluate_codec, mean_point

    sources = (
        [str(c) for c in args.checkpoint] if args.checkpoint else [f"random(seed={args.seed})"]
    )
    points = []
    model_name = args.model
    for source in sources:
        if args.random_weights:
            model = random_model(
                args.model, seed=args.seed, device=device, **(args.model_kwargs or {})
            )
        else:
            model = load_checkpoint(
                source, args.model, device=device, model_kwargs=args.model_kwargs
            )
        codec = ImageCodec(model)
        model_name = codec.model_id
        with tqdm(total=len(files), desc=Path(source).name, unit="img", file=sys.stderr) as bar:
            results = evaluate_codec(codec, files, progress=lambda *_, bar=bar: bar.update(1))
        print(f"{source}: {_summary(mean_point(results))}")
        points.append((source, results))
        del model, codec
    return points, model_name


def _summary(point: dict[str, Any]) -> str:
    ms = point["ms-ssim-rgb"]
    return (
        f"{point['bpp']:.4f} bpp ({point['bpp-file']:.4f} with the header), "
        f"PSNR {point['psnr-rgb']:.3f} dB"
        + (f", MS-SSIM {ms:.5f} ({point['ms-ssim-rgb-db']:.2f} dB)" if ms is not None else "")
        + f", encode {point['encoding_time'] * 1e3:.0f} ms, decode "
        f"{point['decoding_time'] * 1e3:.0f} ms, "
        f"bit-exact: {'yes' if point['bit-exact'] else 'NO'}"
    )


def _plot(args: argparse.Namespace, name: str, title: str, document: dict[str, Any]) -> None:
    from hpcm_models.evaluation import RDCurve, plot_rd, reference_curves

    key = "psnr-rgb" if args.plot_metric == "psnr" else "ms-ssim-rgb-db"
    values = document["results"][key]
    if any(v is None for v in values):
        raise HPCMError(f"cannot plot {args.plot_metric}: undefined for these images")
    curve = RDCurve(name, tuple(document["results"]["bpp"]), tuple(values))
    refs = [] if args.reference == "none" else reference_curves(args.reference, args.plot_metric)
    plot_rd([curve], args.plot, metric=args.plot_metric, references=refs, title=title)
