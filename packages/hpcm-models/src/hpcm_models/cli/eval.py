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
Each --checkpoint (or each --quality of the shipped weights) is one rate point. Every image is
compressed to an .hpcm bitstream and decoded again: bpp counts the entropy-coded bytes (bpp-file
the whole file), PSNR and MS-SSIM compare the decoded 8-bit image with the original. The JSON is
CompressAI's results format.

examples:
  hpcm eval --quality 1 2 3 --dataset photos/ --compare jpeg webp --output small.json
  hpcm eval --model hpcm-base --checkpoint HPCM_Base_0.0018.pth.tar HPCM_Base_0.0035.pth.tar \\
      --dataset kodak/ --output base.json --plot rd.png
  hpcm eval --checkpoint runs/phase2/best.pt --dataset kodak/ --output phase2.json
  hpcm bd-rate base.json phase2.json
  hpcm eval --checkpoint q1.pt q2.pt --dataset photos/ --compare jpeg webp --output small.json
  hpcm eval --compare jpeg webp --dataset photos/ --output photos.json --plot classic.png

--compare jpeg webp codes every image with Pillow's JPEG (4:2:0, optimized, baseline, qualities
1-100) and WebP (lossy, method 6, qualities 0-100), in memory, and prints for each rate point the
classic codec's PSNR at the learned codec's bpp on each image (linear in bpp between the two
qualities that bracket it; "not reachable" outside the sweep, never extrapolated) and the mean
PSNR gain. The table goes into the --output JSON ("compare"); each classic RD curve is written
beside it as STEM.jpeg.json / STEM.webp.json (CompressAI's layout, for bd-rate and plots).
Without --checkpoint, --quality or --random-weights only the classic codecs are evaluated.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from hpcm_models.pretrained import DEFAULT_MODEL
    from hpcm_models.registry import available_models

    description = "Evaluate checkpoints (one rate point each) with real entropy coding."
    p = subcommand(subparsers, "eval", HELP, description, EPILOG)
    p.add_argument(
        "--model",
        choices=available_models(),
        metavar="NAME",
        help=f"model name (needed for raw state dicts, read from training checkpoints; with "
        f"--quality, default {DEFAULT_MODEL})",
    )
    p.add_argument("--checkpoint", type=Path, nargs="+", metavar="CKPT", help="one per rate point")
    p.add_argument(
        "--quality",
        type=int,
        nargs="+",
        metavar="Q",
        help="evaluate the shipped weights of --model at these qualities (1 = lowest rate)",
    )
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
    p.add_argument(
        "--compare",
        nargs="+",
        choices=("jpeg", "webp"),
        metavar="CODEC",
        help="compare with classic codecs at matched rates: jpeg, webp (Pillow, real files)",
    )
    p.add_argument(
        "--compare-rate",
        choices=("file", "streams"),
        default="file",
        help="learned rate matched against the classic files: the whole .hpcm file (default) or "
        "only its entropy-coded streams",
    )
    p.add_argument(
        "--compare-ms-ssim",
        action="store_true",
        help="also compute MS-SSIM of every classic file (slow: one MS-SSIM per quality)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hpcm_models.datasets import find_images
    from hpcm_models.evaluation import results_document

    if args.compare:
        args.compare = list(dict.fromkeys(args.compare))  # each codec once
    sources = [bool(args.checkpoint), args.quality is not None, args.random_weights]
    if args.compare and not any(sources):
        return run_classic(args)
    if sum(sources) != 1:
        raise HPCMError(
            "give one of --checkpoint CKPT [CKPT ...], --quality Q [Q ...] (the shipped weights) "
            "and --random-weights, or only --compare CODEC"
        )
    if args.random_weights and args.model is None:
        raise HPCMError("--random-weights needs --model")
    if args.quality is not None and args.model_kwargs is not None:
        raise HPCMError("--model-kwargs cannot change the shipped weights' model")
    if args.max_images is not None and args.max_images < 1:
        raise HPCMError(f"expected --max-images >= 1, got {args.max_images}")
    files = find_images(args.dataset)[: args.max_images]
    device = prepare_device(args.device)
    points, model_name, hashes = _rate_points(args, files, device)

    name = args.name or model_name
    description = (
        f"{model_name}, actual bitstreams (hpcm eval), {len(files)} images of {args.dataset}, "
        f"device {device}"
        + (", RANDOM WEIGHTS" if args.random_weights else "")
        + (", shipped weights" if args.quality is not None else "")
    )
    document = results_document(
        name,
        description,
        points,
        extra={"model": model_name, "dataset": str(args.dataset), "weights_hashes": hashes},
    )
    classic = compare_classic(args, files, points, document) if args.compare else {}
    if args.output is not None:
        write_json(args.output, document)
        print(f"wrote {args.output}")
    if args.plot is not None:
        _plot(args, name, description, document, classic)
        print(f"wrote {args.plot}")
    if not all(document["results"]["bit-exact"]):
        print("warning: some images did not decode bit-exactly (see per_image)", file=sys.stderr)
        return 1
    return 0


def _rate_points(
    args: argparse.Namespace, files: list[Path], device: Any
) -> tuple[list[tuple[str, Any]], str, list[str]]:
    """Every image coded and decoded by each checkpoint (or the random weights): ``([(source,
    per-image results), ...], model name, the weights hash of each point)``; one summary line
    per point on stdout. The hashes (those ``.hpcm`` headers record) say which weights a point
    was: a label such as ``hpcm-small q2`` names other weights once new ones ship."""
    from tqdm import tqdm

    from hpcm_models.checkpoints import load_checkpoint, random_model
    from hpcm_models.codec import ImageCodec
    from hpcm_models.evaluation import evaluate_codec, mean_point
    from hpcm_models.pretrained import DEFAULT_MODEL, find_weights, load_pretrained

    # Every quality is looked up before the first is evaluated: a bad one fails at once.
    shipped = {
        entry.label: entry
        for entry in (find_weights(args.model or DEFAULT_MODEL, q) for q in args.quality or ())
    }
    if args.checkpoint:
        sources = [str(c) for c in args.checkpoint]
    else:
        sources = list(shipped) or [f"random(seed={args.seed})"]
    points = []
    hashes = []
    model_name = args.model
    for source in sources:
        if args.random_weights:
            model = random_model(
                args.model, seed=args.seed, device=device, **(args.model_kwargs or {})
            )
        elif source in shipped:
            model = load_pretrained(shipped[source].model, shipped[source].quality, device=device)
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
        hashes.append(codec.weights_hash.hex())
        del model, codec
    return points, model_name, hashes


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


def _plot(
    args: argparse.Namespace,
    name: str,
    title: str,
    document: dict[str, Any],
    classic: dict[str, dict[str, Any]],
) -> None:
    from hpcm_models.evaluation import RDCurve, plot_rd, reference_curves

    key = "psnr-rgb" if args.plot_metric == "psnr" else "ms-ssim-rgb-db"
    values = document["results"][key]
    if any(v is None for v in values):
        raise HPCMError(f"cannot plot {args.plot_metric}: undefined for these images")
    curve = RDCurve(name, tuple(document["results"]["bpp"]), tuple(values))
    refs = [] if args.reference == "none" else reference_curves(args.reference, args.plot_metric)
    refs += classic_plot_curves(classic, args.plot_metric, max(curve.rates))
    plot_rd([curve], args.plot, metric=args.plot_metric, references=refs, title=title)


# ---------------------------------------------------------------------------- classic codecs


def _sweep_classic(args: argparse.Namespace, files: list[Path]) -> dict[str, dict[str, Any]]:
    """Each ``--compare`` codec's sweeps (``"sweeps"``) and results document (``"document"``)."""
    from tqdm import tqdm

    from hpcm_models.baselines import CLASSIC_CODECS, classic_document, evaluate_classic

    classic = {}
    for codec in args.compare:
        label = CLASSIC_CODECS[codec].label
        with tqdm(total=len(files), desc=label, unit="img", file=sys.stderr) as bar:
            sweeps = evaluate_classic(
                files,
                codec,
                ms_ssim=args.compare_ms_ssim,
                progress=lambda *_, bar=bar: bar.update(1),
            )
        document = classic_document(codec, sweeps, str(args.dataset))
        classic[codec] = {"sweeps": sweeps, "document": document}
    return classic


def _write_classic(args: argparse.Namespace, classic: dict[str, dict[str, Any]]) -> None:
    """Write each classic curve beside ``--output``, as ``STEM.CODEC.json``."""
    if args.output is None:
        return
    for codec, entry in classic.items():
        path = args.output.with_name(f"{args.output.stem}.{codec}.json")
        write_json(path, entry["document"])
        entry["path"] = str(path)
        print(f"wrote {path}")


def compare_classic(
    args: argparse.Namespace,
    files: list[Path],
    points: list[tuple[str, Any]],
    document: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """Sweep the ``--compare`` codecs, print the matched-rate table and add it to ``document``
    (``"compare"``); the classic curves are written beside ``--output``."""
    from hpcm_models.baselines import (
        compare_matched_rate,
        comparison_document,
        format_comparison_table,
    )
    from hpcm_models.evaluation import RDCurve

    classic = _sweep_classic(args, files)
    comparisons = {
        codec: [
            compare_matched_rate(label, results, entry["sweeps"], rate=args.compare_rate)
            for label, results in points
        ]
        for codec, entry in classic.items()
    }
    print()
    print(format_comparison_table(comparisons))
    key = "bpp-file" if args.compare_rate == "file" else "bpp"
    learned = RDCurve(
        document["name"], tuple(document["results"][key]), tuple(document["results"]["psnr-rgb"])
    )
    compare = comparison_document(
        comparisons, learned, {c: e["document"] for c, e in classic.items()}
    )
    for entry in compare["codecs"].values():
        if entry.get("bd_rate_percent") is not None:
            print(
                f"BD-rate against {entry['name']}: {entry['bd_rate_percent']:+.2f}% "
                f"(BD-PSNR {entry['bd_psnr_db']:+.3f} dB; learned bpp: {args.compare_rate})"
            )
        elif entry.get("note"):
            print(f"BD-rate against {entry['name']}: n/a ({entry['note']})")
    _write_classic(args, classic)
    for codec, entry in classic.items():
        compare["codecs"][codec]["curve_file"] = entry.get("path")
    document["compare"] = compare
    return classic


def classic_plot_curves(
    classic: dict[str, dict[str, Any]], metric: str, max_bpp: float | None = None
) -> list[Any]:
    """The classic curves to draw, cut just past ``max_bpp`` (the learned curve's highest rate:
    a sweep reaches far higher rates, which would squeeze the plot)."""
    from hpcm_models.baselines import classic_curve
    from hpcm_models.evaluation import RDCurve

    curves = []
    for codec, entry in classic.items():
        curve = classic_curve(entry["document"], metric)
        if curve is None:
            print(f"note: {codec} is not drawn: MS-SSIM needs --compare-ms-ssim", file=sys.stderr)
            continue
        if max_bpp is not None:
            order = sorted(range(len(curve.rates)), key=curve.rates.__getitem__)
            inside = sum(curve.rates[i] <= 1.5 * max_bpp for i in order)
            keep = order[: inside + 1]  # and the first point beyond, so the curve reaches past
            curve = RDCurve(
                curve.name,
                tuple(curve.rates[i] for i in keep),
                tuple(curve.quality[i] for i in keep),
            )
        curves.append(curve)
    return curves


def run_classic(args: argparse.Namespace) -> int:
    """``--compare`` alone: the classic codecs' RD curves on the dataset, no learned codec."""
    from hpcm_models.datasets import find_images
    from hpcm_models.evaluation import plot_rd

    if args.model is not None or args.model_kwargs is not None:
        raise HPCMError(
            "--model and --model-kwargs need --checkpoint, --quality or --random-weights"
        )
    if args.max_images is not None and args.max_images < 1:
        raise HPCMError(f"expected --max-images >= 1, got {args.max_images}")
    files = find_images(args.dataset)[: args.max_images]
    classic = _sweep_classic(args, files)
    for entry in classic.values():
        doc = entry["document"]
        results = doc["results"]
        print(f"{doc['description']}:")
        print("| quality | bpp | PSNR (dB) |\n|---|---|---|")
        for quality, bpp, value in zip(
            results["quality"], results["bpp"], results["psnr-rgb"], strict=True
        ):
            if quality in (results["quality"][0], results["quality"][-1]) or quality % 10 == 0:
                print(f"| {quality} | {bpp:.4f} | {value:.2f} |")
        if doc["dominated"]["points"]:
            print(f"left out (more bits, no better): {', '.join(doc['dominated']['points'])}")
    _write_classic(args, classic)
    if args.plot is not None:
        curves = classic_plot_curves(classic, args.plot_metric)
        if not curves:
            raise HPCMError("nothing to plot: MS-SSIM needs --compare-ms-ssim")
        title = f"{len(files)} images of {args.dataset}"
        plot_rd(curves, args.plot, metric=args.plot_metric, title=title)
        print(f"wrote {args.plot}")
    return 0
