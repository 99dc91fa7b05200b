"""``hpcm bd-rate``: Bjøntegaard delta rate and quality between results files (pchip)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hpcm_models.cli._common import subcommand
from hpcm_models.errors import HPCMError

HELP = "Bjøntegaard delta rate (%%) and PSNR (dB) of results files against an anchor"

EPILOG = """\
A curve is a results JSON file in CompressAI's layout (what `hpcm eval --output` writes) or a
bundled published curve, ref:NAME:DATASET with NAME HPCM-Base or HPCM-Large and DATASET kodak,
clic-pro-valid or tecnick. Negative BD-rate: the test curve needs fewer bits than the anchor.

examples:
  hpcm bd-rate ref:HPCM-Base:kodak phase2.json phase4.json
  hpcm bd-rate base.json phase1.json --metric ms-ssim --json bd.json
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subcommand(
        subparsers,
        "bd-rate",
        HELP,
        "Bjøntegaard deltas (VCEG-M33 with pchip interpolation) against an anchor.",
        EPILOG,
    )
    p.add_argument("anchor", help="anchor curve (results JSON or ref:NAME:DATASET)")
    p.add_argument("tests", nargs="+", metavar="test", help="curves to compare with the anchor")
    p.add_argument(
        "--metric",
        choices=("psnr", "ms-ssim"),
        default="psnr",
        help="quality axis: psnr-rgb, or MS-SSIM in dB (default: psnr)",
    )
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hpcm_models.evaluation import compare_curves, load_curve

    anchor = load_curve(args.anchor, args.metric)
    rows = []
    for source in args.tests:
        test = load_curve(source, args.metric)
        try:
            rows.append((source, compare_curves(anchor, test)))
        except ValueError as err:
            raise HPCMError(f"{source} against {args.anchor}: {err}") from None
    unit = "PSNR" if args.metric == "psnr" else "MS-SSIM"
    name_width = max(len(r.test) for _, r in rows)
    print(f"anchor: {anchor.name} ({args.anchor})")
    print(f"{'curve':<{name_width}}  {'BD-rate':>9}  BD-{unit}")
    for _, r in rows:
        print(f"{r.test:<{name_width}}  {r.bd_rate:>+8.2f}%  {r.bd_quality:>+.3f} dB")
    if args.json is not None:
        payload = {
            "anchor": {"name": anchor.name, "source": args.anchor},
            "metric": args.metric,
            "method": "Bjontegaard (VCEG-M33), pchip interpolation, natural log rate",
            "results": [
                {
                    "name": r.test,
                    "source": source,
                    "bd_rate_percent": r.bd_rate,
                    f"bd_{args.metric.replace('-', '_')}_db": r.bd_quality,
                }
                for source, r in rows
            ],
        }
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    return 0
