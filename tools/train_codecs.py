#!/usr/bin/env python3
"""Train a plan of codecs side by side on one GPU, then export their weights for shipping.

A plan (``tools/plans/*.json``) lists runs of ``hpcm train`` that share settings (``common``) and
differ in model, λ or seed. Every run is one ``hpcm train`` process with the flags printed to its
``command.txt``, so any single run can be repeated by hand. All runs start together: small models
leave most of a GPU idle, so several of them share it at little cost each.

The number of steps is either given (``--steps``), or derived from a time budget
(``--time-budget``): the runs first train together for ``--probe-steps`` steps, the slowest run's
measured rate sets the steps that fit the budget, and the real runs start from scratch with that
count (rounded down to a multiple of 250). The count is written to ``summary.json``; pass it as
``--steps`` to repeat the training elsewhere.

After training, each run's final weights (``latest.pt``, the end of the learning-rate schedule;
never ``best.pt``, which is chosen on the validation images that evaluation uses) are written in
fp16 to ``EXPORT/NAME.pt`` — ``{"model": state_dict, "model_name", "model_kwargs", "meta"}``,
readable by ``hpcm compress --checkpoint`` and ``hpcm eval --checkpoint``.

The Phase-1 study and the first stage of the shipped ``hpcm-small`` weights came from these two
commands on one H100 (the step counts are what ``--time-budget`` fitted into the device's
10-minute calls: 13.1 steps/s for each of 7 runs sharing the GPU under MPS)::

    python tools/train_codecs.py tools/plans/small_codecs.json --data data/photos \
        --output runs/small --steps 3750 --export weights/3750      # the study: every run
    python tools/train_codecs.py tools/plans/small_codecs.json --data data/photos \
        --output runs/small --steps 7250 --stop-at 6000 --resume --export weights/6000 \
        --only hpcm-small-q1 hpcm-small-q2 hpcm-small-q3            # stage 1 of the shipped weights

and the shipped weights continued from those with ``tools/plans/small_codecs_longer.json`` to 30000
(quality 1) and 42000 steps (qualities 2, 3): the commands are in ``docs/models.md`` ("How they
were trained"). A run that starts ``from_baseline`` records the file it continued from and the
steps behind it in its export (``meta["continued_from"]``, ``meta["total_steps"]``).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import hashlib
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Flags of `hpcm train` that the plan's settings map to (booleans are switches).
_FLAGS = {
    "batch_size": "--batch-size",
    "patch_size": "--patch-size",
    "lr": "--lr",
    "amp": "--amp",
    "clip_grad": "--clip-grad",
    "num_workers": "--num-workers",
    "seed": "--seed",
    "lmbda": "--lmbda",
    "model": "--model",
    "cuda_graphs": "--cuda-graphs",
    "cache_images": "--cache-images",
    "from_baseline": "--from-baseline",
    "warmup_steps": "--warmup-steps",
}
_PLAN_ONLY = {"name"}


def load_plan(path: Path) -> list[dict[str, Any]]:
    """The plan's runs, each with the common settings filled in."""
    plan = json.loads(path.read_text())
    runs = []
    names = set()
    for run in plan["runs"]:
        merged = {**plan.get("common", {}), **run}
        unknown = set(merged) - set(_FLAGS) - _PLAN_ONLY
        if unknown:
            raise SystemExit(f"{path}: run {run.get('name')!r} has unknown settings {unknown}")
        if merged["name"] in names:
            raise SystemExit(f"{path}: run name {merged['name']!r} is used twice")
        names.add(merged["name"])
        runs.append(merged)
    return runs


def train_command(
    run: dict[str, Any],
    data: Path,
    output: Path,
    steps: int,
    extra: tuple[str, ...] = (),
    save_every: int | None = None,
) -> list[str]:
    """The ``hpcm train`` command line of one run (``extra``: more flags, e.g. ``--resume``;
    ``save_every``: steps between saves, default a quarter of the run)."""
    cmd = [sys.executable, "-m", "hpcm_models.cli", "train"]
    for key, flag in _FLAGS.items():
        if key not in run:
            continue
        value = run[key]
        if isinstance(value, bool):
            cmd += [flag] if value else []
        else:
            cmd += [flag, str(value)]
    cmd += [
        "--dataset", str(data / "train"), "--val-dataset", str(data / "val"),
        "--output", str(output / run["name"]), "--steps", str(steps),
        "--val-every", str(steps), "--save-every", str(save_every or max(steps // 4, 1)),
        "--log-every", str(max(1, min(50, steps // 4))), "--no-progress", "--no-tensorboard",
        *extra,
    ]  # fmt: skip
    return cmd


def launch(
    runs: list[dict[str, Any]],
    data: Path,
    output: Path,
    steps: int,
    deadline: float = math.inf,
    extra: tuple[str, ...] = (),
    save_every: int | None = None,
) -> dict[str, Any]:
    """Start every run and wait for all, or stop them at ``deadline`` (``time.monotonic()``);
    returns name → return code and seconds."""
    procs = {}
    for run in runs:
        directory = output / run["name"]
        directory.mkdir(parents=True, exist_ok=True)
        cmd = train_command(run, data, output, steps, extra, save_every)
        with (directory / "command.txt").open("a") as f:  # a resumed run adds its command
            f.write(" ".join(cmd[1:]) + "\n")
        log = open(directory / "stdout.log", "w")  # noqa: SIM115 - closed below
        procs[run["name"]] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
    start = time.monotonic()
    results: dict[str, Any] = {}
    while len(results) < len(procs):
        for name, (proc, log) in procs.items():
            if name in results:
                continue
            if time.monotonic() > deadline and proc.poll() is None:
                # hpcm train saves latest.pt every --save-every steps: what it has stays usable.
                print(f"{name}: stopped at the deadline", flush=True)
                proc.terminate()
                proc.wait()
                results[name] = {"stopped_at_deadline": True}
            elif proc.poll() is None:
                continue
            log.close()
            results[name] = {
                **results.get(name, {}),
                "returncode": proc.returncode,
                "seconds": round(time.monotonic() - start, 1),
            }
            if proc.returncode:
                print(
                    f"{name}: hpcm train exited {proc.returncode}; see {output / name}/stdout.log"
                )
        time.sleep(1)
    return results


def _log_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def probe_rate(runs: list[dict[str, Any]], data: Path, output: Path, probe_steps: int) -> float:
    """Steps per second of the slowest run when all train together (after warm-up)."""
    results = launch(runs, data, output, probe_steps)
    rates = []
    for run in runs:
        rows = _log_rows(output / run["name"] / "train_log.csv")
        if results[run["name"]]["returncode"] or len(rows) < 2:
            raise SystemExit(f"probe run {run['name']} failed; see {output / run['name']}")
        first, last = rows[len(rows) // 2], rows[-1]  # skip graph capture and warm-up
        rates.append(
            (int(last["step"]) - int(first["step"]))
            / (float(last["seconds"]) - float(first["seconds"]))
        )
    return min(rates)


def continuation(baseline: Path) -> dict[str, Any]:
    """Where a run that started from ``--from-baseline`` weights came from: the file's name and
    SHA-256, and the optimizer steps behind it (its ``meta``'s ``total_steps``, else ``step``;
    ``None`` for a file that does not say, such as the authors' checkpoints)."""
    from hpcm_models.checkpoints import read_checkpoint
    from hpcm_models.errors import CheckpointError

    steps = None
    try:
        obj = read_checkpoint(baseline)
    except CheckpointError:  # a file that cannot be read safely says nothing of its steps
        obj = None
    meta = obj.get("meta") if isinstance(obj, dict) else None
    if isinstance(meta, dict):
        steps = meta.get("total_steps", meta.get("step"))
    return {
        "file": baseline.name,
        "sha256": _sha256(baseline),
        "total_steps": steps if isinstance(steps, int) else None,
    }


def export(
    run_dir: Path, target: Path, meta: dict[str, Any], baseline: Path | None = None
) -> dict[str, Any]:
    """Write the run's final weights in fp16 with what is needed to rebuild and cite them.

    ``meta["total_steps"]`` counts every optimizer step behind the weights: the run's, plus
    those of the ``baseline`` it started from (``meta["continued_from"]``,
    :func:`continuation`); ``None`` when the baseline does not say."""
    import torch

    from hpcm_models.checkpoints import load_training_checkpoint
    from hpcm_models.pretrained import fp16_state_dict

    ckpt = load_training_checkpoint(run_dir / "latest.pt")
    meta = {**meta, "step": ckpt["step"], "train_args": ckpt["args"], "total_steps": ckpt["step"]}
    if baseline is not None:
        before = continuation(baseline)
        meta["continued_from"] = before
        steps = before["total_steps"]
        meta["total_steps"] = None if steps is None else steps + int(ckpt["step"])
    out = {
        "model": fp16_state_dict(ckpt["model"], str(run_dir / "latest.pt")),
        "model_name": ckpt["model_name"],
        "model_kwargs": ckpt["model_kwargs"],
        "meta": meta,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, target)
    return {"file": str(target), "bytes": target.stat().st_size, "step": ckpt["step"]}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("plan", type=Path)
    p.add_argument("--data", type=Path, required=True, help="photo set with train/ and val/")
    p.add_argument("--output", type=Path, required=True, help="run directories")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these runs of the plan")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--steps", type=int, help="optimizer steps of every run")
    g.add_argument("--time-budget", type=float, metavar="S", help="seconds for the real runs")
    p.add_argument("--probe-steps", type=int, default=150)
    p.add_argument("--resume", action="store_true", help="continue each run (hpcm train --resume)")
    p.add_argument("--stop-at", type=int, metavar="STEP", help="end each run at STEP (hpcm train)")
    p.add_argument(
        "--save-every",
        type=int,
        metavar="N",
        help="steps between saves of latest.pt (default: a quarter of the run); with --deadline, "
        "what a stopped run loses",
    )
    p.add_argument("--export", type=Path, metavar="DIR", help="write fp16 weights here")
    p.add_argument(
        "--summary", type=Path, metavar="FILE", help="write it here (default: OUTPUT/summary.json)"
    )
    p.add_argument(
        "--deadline",
        type=float,
        metavar="S",
        help="stop every run this many seconds after the start (their last saved state is "
        "exported, marked in summary.json)",
    )
    args = p.parse_args(argv)
    deadline = time.monotonic() + args.deadline if args.deadline else math.inf

    runs = load_plan(args.plan)
    if args.only:
        missing = set(args.only) - {r["name"] for r in runs}
        if missing:
            raise SystemExit(f"no run named {sorted(missing)} in {args.plan}")
        runs = [r for r in runs if r["name"] in args.only]
    summary: dict[str, Any] = {"plan": str(args.plan), "runs": [r["name"] for r in runs]}
    steps = args.steps
    if steps is None:
        t = time.perf_counter()
        rate = probe_rate(runs, args.data, args.output / "_probe", args.probe_steps)
        steps = max(250, int(rate * args.time_budget) // 250 * 250)
        summary["probe"] = {
            "steps_per_second": round(rate, 3),
            "seconds": round(time.perf_counter() - t, 1),
            "budget": args.time_budget,
        }
        print(f"probe: {rate:.2f} steps/s for the slowest run: {steps} steps", flush=True)
    summary["steps"] = steps
    extra = ("--resume",) if args.resume else ()
    extra += ("--stop-at", str(args.stop_at)) if args.stop_at else ()
    summary["results"] = launch(
        runs, args.data, args.output, steps, deadline, extra, args.save_every
    )
    if args.export is not None:
        import torch

        meta = {
            "plan": args.plan.name,
            "data_manifest_sha256": _sha256(args.data / "manifest.json"),
            "torch": str(torch.__version__),  # a TorchVersion would need an allowlist to load
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "date": _dt.date.today().isoformat(),
        }
        for run in runs:
            directory = args.output / run["name"]
            if (directory / "latest.pt").is_file():
                baseline = run.get("from_baseline")
                summary["results"][run["name"]]["export"] = export(
                    directory,
                    args.export / f"{run['name']}.pt",
                    {**meta, "run": run},
                    Path(baseline) if baseline else None,
                )
            val = _log_rows(directory / "val_log.csv")
            if val:
                summary["results"][run["name"]]["val"] = val[-1]
    (args.summary or args.output / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    failed = any(
        r["returncode"] and not r.get("stopped_at_deadline") for r in summary["results"].values()
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
