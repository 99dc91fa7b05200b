"""Run the fuzz targets of ``tests/models/test_fuzz.py`` for hours (CI runs a few cases only).

The targets alternate in rounds of ``--round`` fresh random cases (Hypothesis, not derandomized, no
example database): the decoder on mutated golden ``.hpcm`` files, the rANS decoder on random tables
and streams (against its reference), the image reader on mutated image files. A failing case is
shrunk by Hypothesis and written to ``--out`` (its exception, traceback and falsifying example), and
the run goes on. Prints the cases run and what they raised every ``--report`` seconds and at the
end, with the process's peak memory; ``--json`` keeps it.

    nice -n 19 uv run python tools/fuzz_codec.py --hours 1 --json fuzz.json
    nice -n 19 uv run python tools/fuzz_codec.py --seconds 60      # a short look
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import platform
import resource
import signal
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ROOT / "tests" / "models" / "test_fuzz.py"


def load_targets():
    """``tests/models/test_fuzz.py`` as a module (the tests folder is not a package; its helpers
    are imported from ``tests/``, as pytest's ``pythonpath`` does)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import load_module

    return load_module(TARGETS, "hpcm_fuzz_targets")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_round(strategy, check, examples: int, counter: collections.Counter, name: str) -> None:
    """``examples`` fresh cases of ``check`` (raises what a failing, shrunk case raises)."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def round_(case) -> None:
        counter[name] += 1
        check(case)

    round_()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--round", type=int, default=500, help="cases per round and target")
    parser.add_argument("--report", type=float, default=600.0, help="seconds between reports")
    parser.add_argument("--out", type=Path, default=Path("fuzz-findings"))
    parser.add_argument("--json", type=Path, help="write the summary here")
    args = parser.parse_args(argv)
    budget = args.hours * 3600 + args.seconds
    if budget <= 0:
        parser.error("give --hours or --seconds")
    torch.set_num_threads(1)
    # Pillow warns about the damage it skips (TIFF tags beyond the file, ...): expected here.
    warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
    fuzz = load_targets()
    scratch = Path(tempfile.mkdtemp(prefix="hpcm-fuzz-")) / "image"
    targets = {
        "decoder": (fuzz.mutated_files(), lambda case: fuzz.check_decoder(*case)),
        "ans": (fuzz.ans_cases(), lambda case: fuzz.check_ans(*case)),
        "image": (
            st.tuples(st.sampled_from(sorted(fuzz.IMAGES)), fuzz.byte_ops),
            lambda case: fuzz.check_image_reader(
                scratch, case[0], fuzz._edit(fuzz.IMAGES[case[0]], case[1])
            ),
        ),
    }
    cases: collections.Counter[str] = collections.Counter()
    findings: list[dict] = []
    start = last_report = time.monotonic()
    rounds = 0

    def summary() -> dict:
        return {
            "seconds": round(time.monotonic() - start, 1),
            "rounds": rounds,
            "cases": dict(cases),
            "outcomes": dict(sorted(fuzz.STATS.items())),
            "findings": findings,
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "machine": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
        }

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C: report
    try:
        while time.monotonic() - start < budget:
            for name, (strategy, check) in targets.items():
                try:
                    run_round(strategy, check, args.round, cases, name)
                except Exception as err:  # a finding: keep it and go on
                    args.out.mkdir(parents=True, exist_ok=True)
                    report = "".join(traceback.format_exception(err))
                    path = args.out / f"{name}-{len(findings):03d}.txt"
                    path.write_text(report)
                    findings.append({"target": name, "error": repr(err)[:300], "file": str(path)})
                    print(f"FINDING in {name}: {err!r} (written to {path})", flush=True)
            rounds += 1
            if time.monotonic() - last_report >= args.report:
                last_report = time.monotonic()
                keys = ("seconds", "cases", "findings", "peak_rss_mib")
                print(json.dumps({k: summary()[k] for k in keys}), flush=True)
    except KeyboardInterrupt:
        print("stopped early (SIGINT or SIGTERM)", flush=True)
    result = summary()
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
