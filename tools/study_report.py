#!/usr/bin/env python3
"""The Phase-1 study's report (``docs/study.md``): its tables, the seed statistics and the RD plot.

One command, from the small JSON summaries committed under ``docs/results/``::

    uv run python tools/study_report.py                  # prints the tables, writes the plot
    uv run python tools/study_report.py --write-docs     # and rewrites the generated blocks

or, where the raw artefacts of the GPU runs are present, rebuilding those summaries first::

    uv run python tools/study_report.py --runs runs --write-docs

``--runs DIR`` reads (all written by ``tools/train_codecs.py``, ``tools/gpu_train.sh`` and
``hpcm eval``), for every run of :data:`STUDY_RUNS` (``CALL/RUN``: a device call's folder under
``DIR`` and the run's name):

- ``DIR/CALL/gpu/RUN/{config.json,train_log.csv,val_log.csv}`` (or ``DIR/CALL/RUN/``): its
  training, and ``DIR/CALL/gpu/gpu.txt``: the machine of the call. Throughput is measured among
  all runs of the call that have a training log (they shared one GPU);
- ``DIR/CALL/RUN.pt`` (or ``DIR/CALL/weights/RUN.pt``, ``DIR/CALL/gpu/weights/RUN.pt``): its fp16
  export (only its ``meta`` is read);
- ``study-RUN.json`` in ``--evals`` folders or ``DIR/eval``: ``hpcm eval --checkpoint RUN.pt
  --dataset data/photos/val --output study-RUN.json`` (per-image results);
- ``DIR/gpu1/cells.json``: ``benchmarks/bench_context_cells.py`` on the GPU;

A call folder that does not exist leaves its runs out, with a note (the report takes any number
of seeds per model). ``--shipped-eval FILE`` (default ``DIR/eval/shipped6000.json``) is ``hpcm
eval --quality 1 2 3 --compare jpeg webp`` of the shipped weights (or ``--checkpoint`` of files
holding them: their weights hashes are checked against the package's ``index.json``); it can be
given without ``--runs`` to update the shipped-weights results alone.

It writes ``docs/results/study-small-codecs.json``, ``docs/results/shipped-hpcm-small-eval.json``
and ``docs/results/h100-bench-context-cells.json``, building each study model on the CPU to count
its parameters and FLOPs (``hpcm_models.benchmark.count_flops``, eval forward at 768×512).
``--write-docs`` replaces the blocks between ``<!-- study_report:NAME -->`` and
``<!-- /study_report:NAME -->`` in ``docs/study.md`` and ``docs/models.md`` with the tables.

The study compares models trained at one λ, so they land at different rates: the comparison is
the RD loss at that λ (what training minimizes), per image ``λ·255²·MSE + bpp`` with the MSE on
[0, 1] values, ``MSE = 10^(−PSNR/10)``, and bpp the rANS streams' bits, averaged over the images.
Each model was trained with several seeds; the seeds of one model measure training noise, and a
difference between models counts only if it stands out of that noise (:func:`compare_seeds`).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import re
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
STUDY_JSON = "study-small-codecs.json"
SHIPPED_JSON = "shipped-hpcm-small-eval.json"
CELLS_JSON = "h100-bench-context-cells.json"
PLOT = ROOT / "docs" / "img" / "study-rd.png"
DOCS = (ROOT / "docs" / "study.md", ROOT / "docs" / "models.md")

#: Every run of the study, per model, as ``CALL/RUN`` (the device call's folder under ``--runs``
#: and the run's name). The first model is the reference; seed 0 of each model comes from the
#: call that trained the first study (``tools/plans/small_codecs.json``), the others from
#: ``tools/plans/phase1_seeds.json``. A run's seed is read from its ``config.json``.
STUDY_RUNS: dict[str, tuple[str, ...]] = {
    "hpcm-small": ("gpu1/hpcm-small-q2", "gpu1/hpcm-small-q2-seed1", "gpu3/hpcm-small-s2"),
    "hpcm-phase1-small": (
        "gpu1/hpcm-phase1-small-q2",
        "gpu3/hpcm-phase1-small-s1",
        "gpu3/hpcm-phase1-small-s2",
    ),
    "hpcm-phase1-lite-small": (
        "gpu1/hpcm-phase1-lite-small-q2",
        "gpu3/hpcm-phase1-lite-small-s1",
        "gpu3/hpcm-phase1-lite-small-s2",
    ),
    "hpcm-phase2-small": (
        "gpu1/hpcm-phase2-small-q2",
        "gpu3/hpcm-phase2-small-s1",
        "gpu3/hpcm-phase2-small-s2",
    ),
}
#: The plans and commands of the device calls (for the summary).
CALLS = {
    "gpu1": (
        "tools/plans/small_codecs.json",
        "python tools/train_codecs.py tools/plans/small_codecs.json --data data/photos "
        "--output runs/small --steps 3750 --export weights/3750",
    ),
    "gpu3": (
        "tools/plans/phase1_seeds.json",
        "python tools/train_codecs.py tools/plans/phase1_seeds.json --data data/photos "
        "--output runs/gpu --steps 3750 --export runs/gpu/weights --only hpcm-small-s2 "
        "hpcm-phase1-small-s1 hpcm-phase1-small-s2 hpcm-phase1-lite-small-s1 "
        "hpcm-phase1-lite-small-s2 hpcm-phase2-small-s1 hpcm-phase2-small-s2",
    ),
}
#: Training settings every run of the study must share (the seed is the only other difference).
RECIPE_KEYS = (
    "steps", "patch_size", "batch_size", "lmbda", "metric", "lr", "decay_lr", "lr_milestones",
    "lr_factors", "clip_grad", "amp", "cuda_graphs", "from_baseline", "cache_images", "dataset",
)  # fmt: skip
#: Size at which FLOPs are counted (width, height): the issue's 768×512 photo.
FLOPS_SIZE = (768, 512)
#: Training-log steps before this one are left out of throughput (CUDA-graph capture, warm-up).
WARMUP_STEP = 500
#: Training-loss batches compared between runs of one seed: the last this many steps.
LAST_STEPS = 500
#: The bar of issue 14: PSNR at least this much above JPEG at each shipped rate point.
JPEG_BAR_DB = 2.0
#: Two-sided level of Welch's test in :func:`compare_seeds`.
ALPHA = 0.05
#: Per-run metrics: key, column title, format.
METRICS = (
    ("rd_loss", "RD loss", ".4f"),
    ("val_loss", "val loss (training's)", ".4f"),
    ("bpp", "bpp", ".4f"),
    ("psnr", "PSNR (dB)", ".3f"),
    ("ms_ssim", "MS-SSIM", ".4f"),
)


# ---------------------------------------------------------------------------- pure functions


def rd_loss(bpp: float, psnr: float, lmbda: float) -> float:
    """The training objective of one image, ``λ·255²·MSE + bpp``, from its PSNR.

    Args:
        bpp: bits per pixel.
        psnr: PSNR in dB of 8-bit RGB, so that the MSE on [0, 1] values is ``10^(−PSNR/10)``.
        lmbda: the λ of training.

    Raises:
        ValueError: for a negative or non-finite bpp or λ, or a non-finite PSNR.
    """
    if not (math.isfinite(bpp) and bpp >= 0 and math.isfinite(lmbda) and lmbda >= 0):
        raise ValueError(f"expected finite bpp >= 0 and lambda >= 0, got {bpp!r}, {lmbda!r}")
    if not math.isfinite(psnr):
        raise ValueError(f"expected a finite PSNR, got {psnr!r}")
    return lmbda * 255**2 * 10 ** (-psnr / 10) + bpp


def image_losses(per_image: Sequence[Mapping[str, Any]], lmbda: float) -> dict[str, float]:
    """``{image: rd_loss}`` of per-image results (``image``, ``bpp``, ``psnr`` keys).

    Raises:
        ValueError: if an image appears twice.
    """
    losses: dict[str, float] = {}
    for row in per_image:
        name = str(row["image"])
        if name in losses:
            raise ValueError(f"image {name!r} appears twice")
        losses[name] = rd_loss(float(row["bpp"]), float(row["psnr"]), lmbda)
    return losses


def paired_differences(test: Mapping[Any, float], reference: Mapping[Any, float]) -> list[float]:
    """``test[key] − reference[key]`` for every key, in the reference's order.

    Raises:
        ValueError: if the two were not measured on the same keys (images, steps, seeds).
    """
    if set(test) != set(reference):
        only_test, only_ref = sorted(set(test) - set(reference)), sorted(set(reference) - set(test))
        raise ValueError(
            f"not the same items: only in the test {only_test}, only in the reference {only_ref}"
        )
    if not reference:
        raise ValueError("no items to pair")
    return [test[key] - value for key, value in reference.items()]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1; 0 for a single value)."""
    if not values:
        raise ValueError("expected at least one value")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def spread(values: Sequence[float]) -> dict[str, float]:
    """``{"n", "mean", "std", "min", "max"}`` of values (std: n − 1; 0 for a single value)."""
    mean, std = mean_std(values)
    return {"n": len(values), "mean": mean, "std": std, "min": min(values), "max": max(values)}


def compare_seeds(test: Sequence[float], reference: Sequence[float]) -> dict[str, Any]:
    """Whether two models differ by more than their seeds do, from one value per seed.

    Args:
        test, reference: one value per trained seed of each model (e.g. its mean RD loss).

    Returns:
        ``diff`` (difference of the means, test − reference), ``se`` (its standard error,
        ``sqrt(s²_test/n_test + s²_ref/n_ref)``), Welch's ``t``, ``df`` and two-sided ``p``
        (``None`` unless both models have 2 seeds or more), ``overlap`` (whether the two
        ranges of seeds, min to max, overlap) and ``beyond``: the difference stands out of
        the seed noise only if Welch's test rejects at :data:`ALPHA` **and** every seed of one
        model is on the same side of every seed of the other (``None`` when it cannot be
        tested). With 2–3 seeds a model's variance is estimated poorly, so the second
        condition keeps one lucky draw of a small spread from making a difference.
    """
    from scipy import stats

    if not test or not reference:
        raise ValueError("expected at least one value of each model")
    diff = statistics.fmean(test) - statistics.fmean(reference)
    overlap = max(min(test), min(reference)) <= min(max(test), max(reference))
    out: dict[str, Any] = {
        "diff": diff, "se": None, "t": None, "df": None, "p": None, "overlap": overlap,
        "beyond": None,
    }  # fmt: skip
    if len(test) < 2 or len(reference) < 2:
        return out
    va, vb = statistics.variance(test) / len(test), statistics.variance(reference) / len(reference)
    se = math.sqrt(va + vb)
    out["se"] = se
    if se == 0:
        out.update(t=math.copysign(math.inf, diff) if diff else 0.0, p=0.0 if diff else 1.0)
    else:
        t = diff / se
        df = (va + vb) ** 2 / (va**2 / (len(test) - 1) + vb**2 / (len(reference) - 1))
        out.update(t=t, df=df, p=float(2 * stats.t.sf(abs(t), df)))
    out["beyond"] = bool(out["p"] < ALPHA and not overlap)
    return out


def paired_t(differences: Mapping[str, float]) -> dict[str, float] | None:
    """The paired t-test of per-seed differences (their :func:`spread`): ``{"t", "df", "p"}``
    (two-sided), or ``None`` for fewer than 2 pairs; ``t`` is infinite if all are equal."""
    from scipy import stats

    n, mean, std = differences["n"], differences["mean"], differences["std"]
    if n < 2:
        return None
    if std == 0:
        return {
            "t": math.copysign(math.inf, mean) if mean else 0.0,
            "df": n - 1,
            "p": float(not mean),
        }
    t = mean / (std / math.sqrt(n))
    return {"t": t, "df": n - 1, "p": float(2 * stats.t.sf(abs(t), n - 1))}


def one_way_anova(groups: Mapping[str, Sequence[float]]) -> dict[str, float] | None:
    """One-way ANOVA of values grouped by model: do the models differ at all?

    Returns:
        ``{"F", "p", "df_between", "df_within"}``, or ``None`` with fewer than 2 groups or no
        group of 2 values (no within-model variance to compare with).
    """
    from scipy import stats

    values = [list(v) for v in groups.values() if v]
    df_within = sum(len(v) - 1 for v in values)
    if len(values) < 2 or df_within < 1:
        return None
    result = stats.f_oneway(*values)
    return {
        "F": float(result.statistic),
        "p": float(result.pvalue),
        "df_between": len(values) - 1,
        "df_within": df_within,
    }


def pooled_std(groups: Mapping[str, Sequence[float]]) -> tuple[float, int] | None:
    """The seed standard deviation pooled over the models (each weighted by its n − 1), and its
    degrees of freedom; ``None`` if no model has 2 values."""
    pairs = [(statistics.variance(v), len(v) - 1) for v in groups.values() if len(v) > 1]
    df = sum(d for _, d in pairs)
    if not df:
        return None
    return math.sqrt(sum(var * d for var, d in pairs) / df), df


def shared_rates(
    logs: Mapping[str, Sequence[tuple[int, float]]], warmup_step: int = WARMUP_STEP
) -> dict[str, dict[str, float]]:
    """Training steps per second of runs that shared one GPU, while all of them ran.

    Args:
        logs: per run, ``(step, seconds since the run started)`` rows of its training log.
        warmup_step: the first row counted (steps before it include CUDA-graph capture).

    Returns:
        Per run ``{"steps_per_second", "from_s", "to_s", "steps"}``, measured from the row at
        ``warmup_step`` to the last row logged before the first run finished, so every run is
        timed while all of them ran (the runs start within seconds of each other).

    Raises:
        ValueError: for a run without a row at ``warmup_step`` or a row after it in the window.
    """
    if not logs:
        raise ValueError("expected the logs of at least one run")
    end = min(rows[-1][1] for rows in logs.values())
    rates: dict[str, dict[str, float]] = {}
    for name, rows in logs.items():
        start = [(s, t) for s, t in rows if s == warmup_step]
        inside = [(s, t) for s, t in rows if s > warmup_step and t <= end]
        if not start or not inside:
            raise ValueError(
                f"run {name!r}: expected a row at step {warmup_step} and one after it before "
                f"{end:.1f} s (when the first run finished)"
            )
        (s0, t0), (s1, t1) = start[0], inside[-1]
        rates[name] = {
            "steps_per_second": (s1 - s0) / (t1 - t0),
            "from_s": t0,
            "to_s": t1,
            "steps": s1 - s0,
        }
    return rates


def run_metrics(run: Mapping[str, Any], lmbda: float) -> dict[str, float | None]:
    """One run's numbers (:data:`METRICS`): held-out RD loss (mean of the per-image losses), bpp,
    PSNR, MS-SSIM, and the validation loss its training logged (``None`` if it has none)."""
    e = run["eval"]
    return {
        "rd_loss": statistics.fmean(image_losses(run["per_image"], lmbda).values()),
        "val_loss": run["val"]["loss"] if run.get("val") else None,
        "bpp": e["bpp"],
        "psnr": e["psnr"],
        "ms_ssim": e["ms_ssim"],
    }


def by_model(runs: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Runs grouped by model (first-seen order), each group sorted by seed.

    Raises:
        ValueError: if one model has a seed twice.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault(run["model"], []).append(run)
    for model, group in groups.items():
        seeds = [r["seed"] for r in group]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"model {model!r} has a seed twice: {sorted(seeds)}")
        group.sort(key=lambda r: r["seed"])
    return groups


def seed_statistics(
    runs: Sequence[Mapping[str, Any]], reference: str, lmbda: float
) -> dict[str, dict[str, Any]]:
    """Per model, the spread of each metric over its seeds and its comparison with ``reference``.

    Returns:
        ``{model: {"seeds": [...], "spread": {metric: spread}, "compare": {metric:
        compare_seeds(model, reference)}, "paired": {metric: spread of the differences to the
        reference's run of the same seed, or None}}}``; the reference's own ``compare`` values
        are None. Runs of one seed saw the same batches and quantization noise
        (``hpcm_models.datasets.StepSampler``), so pairing by seed removes the data order from
        the difference, not the initialization.
    """
    groups = by_model(runs)
    if reference not in groups:
        raise ValueError(f"model {reference!r} is not among the runs' models {sorted(groups)}")
    values = {
        model: {r["seed"]: run_metrics(r, lmbda) for r in group} for model, group in groups.items()
    }
    out: dict[str, dict[str, Any]] = {}
    for model, per_seed in values.items():
        ref = values[reference]
        entry: dict[str, Any] = {"seeds": list(per_seed), "spread": {}, "compare": {}, "paired": {}}
        for key, _, _ in METRICS:
            mine = [v[key] for v in per_seed.values() if v[key] is not None]
            theirs = [v[key] for v in ref.values() if v[key] is not None]
            if not mine:
                continue
            entry["spread"][key] = spread(mine)
            entry["compare"][key] = (
                compare_seeds(mine, theirs) if theirs and model != reference else None
            )
            shared = [
                s for s in per_seed if s in ref and None not in (per_seed[s][key], ref[s][key])
            ]
            entry["paired"][key] = (
                spread(
                    paired_differences(
                        {s: per_seed[s][key] for s in shared}, {s: ref[s][key] for s in shared}
                    )
                )
                if shared
                else None
            )
        out[model] = entry
    return out


def same_batch_differences(
    runs: Sequence[Mapping[str, Any]], reference: str
) -> dict[str, dict[str, float] | None]:
    """Per model, its training loss minus the reference model's on the same logged batches.

    A run's batches and quantization noise are functions of its seed and step alone
    (``hpcm_models.datasets.StepSampler``), so a run and the reference model's run of the same
    seed saw the very same batches: their per-batch differences measure the models (and their
    initializations), not the crops. Each seed gives the mean difference over the batches.

    Args:
        runs: ``{"model", "seed", "train": {"losses_end": {step: loss}}}`` each.
        reference: the model to subtract.

    Returns:
        ``{model: spread over its seeds of the per-seed mean difference, with "batches": the
        batches per seed; or None if no seed of it has a run of the reference}``.
    """
    groups = by_model(runs)
    if reference not in groups:
        raise ValueError(f"model {reference!r} is not among the runs' models {sorted(groups)}")
    ref = {r["seed"]: r["train"]["losses_end"] for r in groups[reference]}
    out: dict[str, dict[str, float] | None] = {}
    for model, group in groups.items():
        per_seed = [
            paired_differences(r["train"]["losses_end"], ref[r["seed"]])
            for r in group
            if r["seed"] in ref
        ]
        if not per_seed:
            out[model] = None
            continue
        out[model] = {
            **spread([statistics.fmean(d) for d in per_seed]),
            "batches": len(per_seed[0]),
        }
    return out


def relative_rates(runs: Sequence[Mapping[str, Any]], reference: str) -> dict[str, float | None]:
    """Per model, the mean over its runs of its training speed ÷ the reference model's in the
    same device call (the runs of a call shared one GPU, so only ratios within a call mean
    something); ``None`` for a model with no run in a call that trained the reference."""
    ref_rates: dict[str, list[float]] = {}
    for r in runs:
        if r["model"] == reference:
            ref_rates.setdefault(r["call"], []).append(r["train"]["steps_per_second"])
    out: dict[str, float | None] = {}
    for model, group in by_model(runs).items():
        ratios = [
            r["train"]["steps_per_second"] / statistics.fmean(ref_rates[r["call"]])
            for r in group
            if r["call"] in ref_rates
        ]
        out[model] = statistics.fmean(ratios) if ratios else None
    return out


def replace_blocks(text: str, blocks: Mapping[str, str]) -> tuple[str, list[str]]:
    """Replace the generated blocks of a document.

    A block is the text between ``<!-- study_report:NAME -->`` and ``<!-- /study_report:NAME
    -->`` lines; the blocks named in ``blocks`` get that text (the markers stay).

    Returns:
        The new text and the names of the blocks that were found.

    Raises:
        ValueError: for a block that is opened but not closed, or a name not in ``blocks``.
    """
    found: list[str] = []

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in blocks:
            raise ValueError(f"no generated text for block {name!r} (have {sorted(blocks)})")
        found.append(name)
        body = blocks[name].rstrip()
        return f"<!-- study_report:{name} -->\n{body}\n<!-- /study_report:{name} -->"

    pattern = re.compile(r"<!-- study_report:([\w-]+) -->\n.*?<!-- /study_report:\1 -->", re.S)
    new = pattern.sub(fill, text)
    opened = re.findall(r"<!-- study_report:([\w-]+) -->", new)
    if sorted(opened) != sorted(found):
        unclosed = sorted(set(opened) - set(found))
        raise ValueError(f"block(s) {unclosed} opened but not closed")
    return new, found


# ---------------------------------------------------------------------------- reading runs/


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"{path} does not exist (see --help for the layout of --runs)") from None


def _first(paths: Sequence[Path], what: str) -> Path:
    for path in paths:
        if path.exists():
            return path
    raise SystemExit(f"no {what}: looked for {', '.join(str(p) for p in paths)}")


def _log_times(path: Path) -> list[tuple[int, float]]:
    with path.open(newline="") as f:
        return [(int(r["step"]), float(r["seconds"])) for r in csv.DictReader(f)]


def _train_losses(path: Path, first: int, last: int) -> dict[str, float]:
    """``{step: loss}`` of the logged batches from ``first`` to ``last`` (string keys, as JSON
    writes them)."""
    with path.open(newline="") as f:
        rows = csv.DictReader(f)
        return {r["step"]: float(r["loss"]) for r in rows if first <= int(r["step"]) <= last}


def _val(path: Path) -> dict[str, float] | None:
    """The last row of a run's ``val_log.csv`` (the validation at its final step)."""
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    last = rows[-1]
    return {"step": int(last["step"]), **{k: float(last[k]) for k in ("loss", "bpp", "psnr")}}


@functools.cache
def _cost(model_name: str) -> dict[str, int]:
    """Parameters and FLOPs of one eval forward at :data:`FLOPS_SIZE`, as ``hpcm bench`` counts."""
    import torch

    from hpcm_models.benchmark import count_flops
    from hpcm_models.benchmark.measure import count_params
    from hpcm_models.checkpoints import build_model

    print(f"counting FLOPs of {model_name} at {FLOPS_SIZE[0]}x{FLOPS_SIZE[1]}", flush=True)
    torch.manual_seed(0)
    model = build_model(model_name, {}).eval()
    x = torch.rand(1, 3, FLOPS_SIZE[1], FLOPS_SIZE[0])

    def forward() -> None:
        with torch.no_grad():
            model(x, training=False)

    counted, wkv = count_flops(forward)
    return {"params": count_params(model), "flops_counted": counted, "flops_biwkv4": wkv}


def time_codecs(checkpoints: Mapping[str, Path], image_file: Path, rounds: int) -> dict[str, Any]:
    """Encode and decode one 768×512 crop with each checkpoint, interleaved, ``rounds`` times.

    The machine is shared: interleaving spreads the load over all models alike, and the fastest
    round is the least disturbed one. Returns per run the fastest and median times (ms).
    """
    import torch

    from hpcm_models import ImageCodec
    from hpcm_models.checkpoints import load_checkpoint
    from hpcm_models.evaluation import evaluate_image
    from hpcm_models.image_io import read_image

    image = read_image(image_file)
    width, height = FLOPS_SIZE
    left, top = (image.width - width) // 2, (image.height - height) // 2
    image = image.crop((left, top, left + width, top + height))
    codecs = {run: ImageCodec(load_checkpoint(path)) for run, path in checkpoints.items()}
    times: dict[str, list[tuple[float, float]]] = {run: [] for run in codecs}
    for i in range(rounds + 1):  # round 0 warms up
        for run, codec in codecs.items():
            result = evaluate_image(codec, image)
            if i:
                times[run].append((1000 * result.encoding_time, 1000 * result.decoding_time))
        print(f"timing round {i}/{rounds}", flush=True)
    return {
        "image": f"{image_file.name}, centre crop {width}x{height}",
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "device": "cpu: the project's shared 2-core VM, other jobs running; interleaved rounds",
        "runs": {
            run: {
                "encode_ms_min": min(e for e, _ in t),
                "decode_ms_min": min(d for _, d in t),
                "encode_ms_median": statistics.median(e for e, _ in t),
                "decode_ms_median": statistics.median(d for _, d in t),
            }
            for run, t in times.items()
        },
    }


def _gpu_text(path: Path) -> dict[str, Any]:
    """``gpu.txt`` of a device call: ``GPU, driver`` then ``torch X`` and a few lines."""
    lines = path.read_text().splitlines()
    gpu, _, driver = lines[0].partition(", ")
    torch_line = next((s for s in lines if s.startswith("torch ")), "torch ?")
    return {"gpu": gpu, "driver": driver, "torch": torch_line.split()[1], "notes": lines[2:]}


class _Call:
    """Where one device call's artefacts are (``DIR/CALL``, its run logs under ``gpu/`` or not)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs = root / "gpu" if (root / "gpu").is_dir() else root

    def run_dir(self, name: str) -> Path:
        return _first([self.logs / name, self.root / name], f"run folder of {name}")

    def export(self, name: str) -> Path:
        places = (self.root, self.root / "weights", self.logs / "weights")
        return _first([p / f"{name}.pt" for p in places], f"export of {name}")

    def logged_runs(self) -> list[str]:
        """Every run of the call that logged training steps (they all shared the GPU; a run that
        stopped before its first logged step, such as a failed start, took no part)."""
        return sorted(
            p.parent.name
            for p in self.logs.glob("*/train_log.csv")
            if not p.parent.name.startswith("_") and _log_times(p)
        )


def _eval_summary(evaluated: Mapping[str, Any], i: int = 0) -> dict[str, Any]:
    res = evaluated["results"]
    return {
        "bpp": res["bpp"][i],
        "bpp_file": res["bpp-file"][i],
        "psnr": res["psnr-rgb"][i],
        "ms_ssim": res["ms-ssim-rgb"][i],
        "encode_ms": 1000 * res["encoding_time"][i],
        "decode_ms": 1000 * res["decoding_time"][i],
        "bit_exact": res["bit-exact"][i],
        "images": res["images"][i],
    }


def _per_image(evaluated: Mapping[str, Any], i: int = 0) -> list[dict[str, Any]]:
    keys = ("image", "width", "height", "bpp", "bpp_file", "psnr", "ms_ssim")
    return [
        {k: r[k] for k in keys}
        | {"encode_ms": 1000 * r["encoding_time"], "decode_ms": 1000 * r["decoding_time"]}
        for r in evaluated["per_image"][i]
    ]


def collect_study(
    runs: Path, evals: Sequence[Path], data: Path | None, rounds: int
) -> dict[str, Any]:
    """The study's summary from the raw artefacts (see the module docstring for the layout), with
    CPU codec times on the first image of ``data`` (skipped if ``data`` is None)."""
    from hpcm_models.checkpoints import read_checkpoint

    calls: dict[str, _Call] = {}
    missing: set[str] = set()
    for names in STUDY_RUNS.values():
        for entry in names:
            call = entry.split("/")[0]
            if (runs / call).is_dir():
                calls.setdefault(call, _Call(runs / call))
            elif call not in missing:
                missing.add(call)
                print(f"note: {runs / call} does not exist: its runs are left out", file=sys.stderr)
    rates = {
        name: shared_rates({n: _log_times(c.run_dir(n) / "train_log.csv") for n in c.logged_runs()})
        for name, c in calls.items()
    }
    recipe: dict[str, Any] | None = None
    manifests, call_info, out_runs = set(), {}, []
    for model, names in STUDY_RUNS.items():
        for entry in names:
            call_name, name = entry.split("/")
            if call_name not in calls:
                continue
            call = calls[call_name]
            directory = call.run_dir(name)
            config = _read_json(directory / "config.json")
            if config["model"] != model:
                raise SystemExit(f"{entry} trained {config['model']}, not {model}")
            mine = {k: config.get(k) for k in RECIPE_KEYS}
            if recipe is None:
                recipe = mine
            elif mine != recipe:
                diff = {k: (v, recipe[k]) for k, v in mine.items() if v != recipe[k]}
                raise SystemExit(f"{entry}: not the study's recipe: {diff}")
            meta = read_checkpoint(call.export(name))["meta"]
            if meta["step"] != config["steps"]:
                raise SystemExit(f"{entry}: the export is of step {meta['step']}")
            manifests.add(meta.get("data_manifest_sha256"))
            evaluated = _read_json(
                _first([d / f"study-{name}.json" for d in evals], f"evaluation of {name}")
            )
            if Path(evaluated["points"][0]).name != f"{name}.pt":
                raise SystemExit(f"study-{name}.json evaluated {evaluated['points'][0]}")
            steps = config["steps"]
            out_runs.append(
                {
                    "run": name,
                    "model": model,
                    "seed": config["seed"],
                    "call": call_name,
                    "lmbda": config["lmbda"],
                    "steps": steps,
                    "train": {
                        **{k: round(v, 3) for k, v in rates[call_name][name].items()},
                        "losses_end": _train_losses(
                            directory / "train_log.csv", steps - LAST_STEPS, steps
                        ),
                    },
                    "val": _val(directory / "val_log.csv"),
                    "eval": _eval_summary(evaluated),
                    "per_image": _per_image(evaluated),
                }
            )
            if call_name not in call_info:
                plan, command = CALLS.get(call_name, ("?", "?"))
                call_info[call_name] = {
                    **_gpu_text(_first([call.logs / "gpu.txt", call.root / "gpu.txt"], "gpu.txt")),
                    "runs_sharing_gpu": len(call.logged_runs()),
                    "plan": plan,
                    "command": command,
                    "date": meta.get("date"),
                }
    if recipe is None:
        raise SystemExit(f"no study run found under {runs}")
    if len(manifests) != 1:
        raise SystemExit(f"the runs were trained on different data (manifests {manifests})")
    timing = None  # filled below, or kept from the summary already written (--time-rounds 0)
    if data is not None and rounds > 0:
        from hpcm_models.datasets import find_images

        chosen = []  # the first seed of every model, and the reference's second: the noise
        for model, group in by_model(out_runs).items():
            chosen += group[: 2 if model == next(iter(STUDY_RUNS)) else 1]
        checkpoints = {r["run"]: calls[r["call"]].export(r["run"]) for r in chosen}
        timing = time_codecs(checkpoints, find_images(data)[0], rounds)
    seeds = by_model(out_runs)
    return {
        "description": (
            "The Phase-1 study of issue 14: the small HPCM, phase 1, phase 1 with the lite cell "
            "and phase 2 trained alike at one lambda, several seeds each, evaluated with real "
            "bitstreams on the 8 held-out photos (tools/study_report.py --runs runs)."
        ),
        "lmbda": recipe["lmbda"],
        "steps": recipe["steps"],
        "recipe": recipe,
        "reference": next(iter(STUDY_RUNS)),
        "seeds": {model: [r["seed"] for r in group] for model, group in seeds.items()},
        "data_manifest_sha256": manifests.pop(),
        "flops_size": list(FLOPS_SIZE),
        "costs": {model: _cost(model) for model in seeds},
        "calls": call_info,
        "throughput_note": (
            f"steps/s of each run from step {WARMUP_STEP} until the first run of its device call "
            "finished, all runs of the call sharing the GPU under MPS: not a run alone; compare "
            "within a call"
        ),
        "evaluation": {
            "dataset": "data/photos/val",
            "device": "cpu: the project's shared 2-core VM under load from other jobs",
            "command": (
                "hpcm eval --checkpoint RUN.pt --dataset data/photos/val --output study-RUN.json"
            ),
        },
        "runs": out_runs,
        "cpu_timing": timing,
    }


def _delta_rows(compare: Mapping[str, Any], codec: str) -> dict[str, Mapping[str, Any]]:
    return {row["point"]: row for row in compare["codecs"][codec]["rows"]}


def _shipped_entry(
    point: str, base: Path, entries: Sequence[Any], evaluated_hash: str | None = None
) -> Any:
    """The index entry of an evaluated point: ``"MODEL qN"`` (the package's weights, as ``hpcm
    eval --quality`` names them) or a checkpoint, recognized by its weights hash.
    ``evaluated_hash``: the weights hash ``hpcm eval`` recorded for the point, which must be the
    entry's (an evaluation of weights that have since been replaced is refused)."""
    from hpcm_models.checkpoints import load_checkpoint
    from hpcm_models.hashes import weights_hash

    for entry in entries:
        if point == entry.label:
            if evaluated_hash is not None and evaluated_hash != entry.weights_hash:
                raise SystemExit(
                    f"{point} was evaluated with weights {evaluated_hash}, but index.json ships "
                    f"{entry.weights_hash} as {entry.file}: evaluate the shipped weights again"
                )
            return entry
    path = _first([Path(point), base / point, base / point.removeprefix("runs/")], point)
    built = weights_hash(load_checkpoint(path)).hex()
    for entry in entries:
        if built == entry.weights_hash:
            return entry
    raise SystemExit(f"{point} does not hold any shipped weights of index.json")


def collect_shipped(path: Path, base: Path) -> dict[str, Any]:
    """The shipped weights' evaluation (``hpcm eval --compare jpeg webp``), checked against the
    package's index. ``base``: where relative checkpoint and curve paths of the file start."""
    from hpcm_models import pretrained

    evaluated = _read_json(path)
    compare = evaluated["compare"]
    deltas = {codec: _delta_rows(compare, codec) for codec in ("jpeg", "webp")}
    entries = pretrained.shipped_weights()
    points = []
    hashes = evaluated.get("weights_hashes") or [None] * len(evaluated["points"])
    for i, point in enumerate(evaluated["points"]):
        entry = _shipped_entry(point, base, entries, hashes[i])
        per_image = {
            r["image"]: {"image": r["image"], "bpp_file": r["bpp_file"], "psnr": r["psnr"]}
            for r in evaluated["per_image"][i]
        }
        for codec, rows in deltas.items():
            for r in rows[point]["per_image"]:
                per_image[r["image"]][f"delta_{codec}"] = r["delta_psnr"]
        summary = _eval_summary(evaluated, i)
        points.append(
            {
                "model": entry.model,
                "quality": entry.quality,
                "lmbda": entry.lmbda,
                "file": entry.file,
                "bytes": entry.bytes,
                "sha256": entry.sha256,
                "weights_hash": entry.weights_hash,
                "trained": dict(entry.trained),
                "evaluated": point,
                **{k: summary[k] for k in ("bpp", "bpp_file", "psnr", "ms_ssim", "bit_exact")},
                "encode_ms": summary["encode_ms"],
                "decode_ms": summary["decode_ms"],
                **{
                    f"{codec}_{key}": rows[point][src]
                    for codec, rows in deltas.items()
                    for key, src in (
                        ("delta", "delta_psnr"),
                        ("psnr", "classic_psnr"),
                        ("quality", "classic_quality"),
                        ("compared", "compared"),
                    )
                },
                "per_image": list(per_image.values()),
            }
        )
    curves = {}
    for codec in ("jpeg", "webp"):
        entry = compare["codecs"][codec]
        curve_file = entry.get("curve_file") or f"{path.with_suffix('')}.{codec}.json"
        curve = _read_json(
            _first(
                [Path(curve_file), base / curve_file, path.parent / Path(curve_file).name],
                curve_file,
            )
        )
        curves[codec] = {
            "encoder": curve["encoder"],
            "quality": [int(p.split()[-1]) for p in curve["points"]],
            "bpp": curve["results"]["bpp"],
            "psnr": curve["results"]["psnr-rgb"],
            "bd_rate_percent": entry["bd_rate_percent"],
            "bd_psnr_db": entry["bd_psnr_db"],
        }
    sources = " ".join(evaluated["points"])
    return {
        "description": (
            "hpcm eval of the shipped weights on the held-out photos, against Pillow's JPEG and "
            "WebP at the same bpp (whole files, per image). The classic curves are means over "
            "the images at each quality setting. Written by tools/study_report.py."
        ),
        "command": f"hpcm eval [{sources}] --dataset {evaluated['dataset']} --compare jpeg webp",
        "dataset": evaluated["dataset"],
        "device": "cpu: the project's shared 2-core VM under load from other jobs",
        "rate": compare["rate"],
        "method": compare["method"],
        "points": points,
        "classic": curves,
    }


def collect(
    runs: Path | None,
    evals: Sequence[Path],
    shipped_eval: Path | None,
    results: Path,
    data: Path | None,
    rounds: int,
) -> None:
    """Write the summaries under ``results`` from the raw artefacts: all three from ``runs``, or
    only the shipped weights' from ``shipped_eval``."""
    results.mkdir(parents=True, exist_ok=True)
    written: list[tuple[str, Any]] = []
    if runs is not None:
        cells = _read_json(runs / "gpu1" / "cells.json")
        written.append((CELLS_JSON, cells))
        study = collect_study(runs, [*evals, runs / "eval"], data, rounds)
        if study["cpu_timing"] is None and (results / STUDY_JSON).is_file():
            study["cpu_timing"] = json.loads((results / STUDY_JSON).read_text()).get("cpu_timing")
        written.append((STUDY_JSON, study))
        shipped_eval = shipped_eval or runs / "eval" / "shipped6000.json"
    if shipped_eval is not None:
        base = runs.parent if runs is not None else Path.cwd()
        written.append((SHIPPED_JSON, collect_shipped(shipped_eval, base)))
    for name, summary in written:
        (results / name).write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {results / name}")


# ---------------------------------------------------------------------------- the report


_LABELS = {
    "hpcm-small": "HPCM",
    "hpcm-phase1-small": "phase 1 (seed's RWKV cell)",
    "hpcm-phase1-lite-small": "phase 1 lite (lite cell)",
    "hpcm-phase2-small": "phase 2 (RWKV cells s1-s3)",
}


def _label(model: str) -> str:
    return _LABELS.get(model, model)


def _spread_cell(s: Mapping[str, float] | None, spec: str, signed: bool = False) -> str:
    """``mean ± std (min – max)``, or the value alone for one seed."""
    if s is None:
        return "—"
    sign = "+" if signed else ""
    if s["n"] == 1:
        return f"{s['mean']:{sign}{spec}}"
    return (
        f"{s['mean']:{sign}{spec}} ± {s['std']:{spec}} "
        f"({s['min']:{sign}{spec}} – {s['max']:{sign}{spec}})"
    )


def study_table(study: Mapping[str, Any]) -> str:
    """Per model: cost, then each metric's mean ± std (min – max) over the seeds (markdown)."""
    lmbda = study["lmbda"]
    width, height = study["flops_size"]
    stats = seed_statistics(study["runs"], study["reference"], lmbda)
    speed = relative_rates(study["runs"], study["reference"])
    timing = (study.get("cpu_timing") or {}).get("runs", {})
    titles = " | ".join(title for _, title, _ in METRICS)
    lines = [
        f"| model | seeds | params (M) | GFLOPs at {width}×{height} (counter + Bi-WKV) | {titles} "
        f"| encode / decode ms, {width}×{height}, CPU | training speed ÷ HPCM (same call) |",
        "|---|---|---|---|" + "---|" * len(METRICS) + "---|---|",
    ]
    for model, group in by_model(study["runs"]).items():
        cost = study["costs"][model]
        flops = (cost["flops_counted"] + cost["flops_biwkv4"]) / 1e9
        s = stats[model]["spread"]
        cells = " | ".join(_spread_cell(s.get(key), spec) for key, _, spec in METRICS)
        timed = [timing[r["run"]] for r in group if r["run"] in timing]
        times = (
            " / ".join(
                f"{statistics.fmean(t[k] for t in timed):.0f}"
                for k in ("encode_ms_min", "decode_ms_min")
            )
            if timed
            else "—"
        )
        ratio = speed[model]
        lines.append(
            f"| {_label(model)} | {', '.join(str(r['seed']) for r in group)} | "
            f"{cost['params'] / 1e6:.3f} | {flops:.2f} ({cost['flops_counted'] / 1e9:.2f} + "
            f"{cost['flops_biwkv4'] / 1e9:.3f}) | {cells} | {times} | "
            f"{'—' if ratio is None else f'{ratio:.2f}×'} |"
        )
    return "\n".join(lines)


def runs_table(study: Mapping[str, Any]) -> str:
    """One row per run: its seed, device call, metrics, throughput and CPU times (markdown)."""
    lmbda = study["lmbda"]
    timing = (study.get("cpu_timing") or {}).get("runs", {})
    titles = " | ".join(title for _, title, _ in METRICS)
    lines = [
        f"| model | seed | run | call | {titles} | train steps/s (call's runs sharing the GPU) "
        "| encode / decode ms, CPU |",
        "|---|---|---|---|" + "---|" * len(METRICS) + "---|---|",
    ]
    for model, group in by_model(study["runs"]).items():
        for r in group:
            m = run_metrics(r, lmbda)
            cells = " | ".join(
                "—" if m[key] is None else f"{m[key]:{spec}}" for key, _, spec in METRICS
            )
            t = timing.get(r["run"])
            times = "—" if t is None else f"{t['encode_ms_min']:.0f} / {t['decode_ms_min']:.0f}"
            sharing = study["calls"][r["call"]]["runs_sharing_gpu"]
            lines.append(
                f"| {_label(model)} | {r['seed']} | `{r['run']}` | {r['call']} | {cells} | "
                f"{r['train']['steps_per_second']:.1f} ({sharing}) | {times} |"
            )
    return "\n".join(lines)


def calls_list(study: Mapping[str, Any]) -> str:
    """The device calls that trained the runs: machine, sharing, plan, command (markdown)."""
    lines = []
    for name, c in study["calls"].items():
        runs = [f"`{r['run']}`" for r in study["runs"] if r["call"] == name]
        notes = "; ".join(c["notes"])
        lines.append(
            f"- **{name}** ({c['date'] or 'date not recorded'}): {c['gpu']} (driver {c['driver']}, "
            f"torch {c['torch']}; {notes}), {c['runs_sharing_gpu']} runs sharing it; the study's "
            f"runs {', '.join(runs)} of `{c['plan']}`:\n  `{c['command']}`"
        )
    return "\n".join(lines)


def _p(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def noise_table(study: Mapping[str, Any]) -> str:
    """Each model against the reference: differences of the seed means, their noise, the tests
    (markdown), then the pooled seed spread and a one-way ANOVA of the RD loss."""
    lmbda, reference = study["lmbda"], study["reference"]
    stats = seed_statistics(study["runs"], reference, lmbda)
    train = same_batch_differences(study["runs"], reference)
    lines = [
        f"| model | Δ RD loss vs {_label(reference)} (means) | ± SE | Welch t (df) | p | seed "
        "ranges overlap? | paired by seed (same batches): Δ RD loss | paired t, p | Δ bpp | "
        "Δ PSNR (dB) | "
        f"Δ training loss, same batches (last {LAST_STEPS} steps) | beyond the seed noise? |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, entry in stats.items():
        if model == reference:
            continue
        c = entry["compare"]["rd_loss"]
        if c["beyond"] is None:
            verdict = "cannot tell (one seed)"
        else:
            verdict = "**yes**" if c["beyond"] else "no"
        if c["t"] is None:
            t = "—"
        else:
            t = f"{c['t']:+.2f}" + ("" if c["df"] is None else f" ({c['df']:.1f})")
        se = "—" if c["se"] is None else f"{c['se']:.4f}"
        paired = entry["paired"]["rd_loss"]
        test = None if paired is None else paired_t(paired)
        pt = "—" if test is None else f"{test['t']:+.2f}, {_p(test['p'])}"
        lines.append(
            f"| {_label(model)} | {c['diff']:+.4f} | {se} | {t} | {_p(c['p'])} | "
            f"{'yes' if c['overlap'] else 'no'} | "
            f"{_spread_cell(paired, '.4f', signed=True)} | {pt} | "
            f"{entry['compare']['bpp']['diff']:+.4f} | {entry['compare']['psnr']['diff']:+.3f} | "
            f"{_spread_cell(train[model], '.4f', signed=True)} | {verdict} |"
        )
    groups = {
        model: [run_metrics(r, lmbda)["rd_loss"] for r in group]
        for model, group in by_model(study["runs"]).items()
    }
    notes = []
    pooled = pooled_std(groups)
    if pooled is not None:
        ref = stats[reference]["spread"]["rd_loss"]
        notes.append(
            f"Seed standard deviation of the RD loss: {_label(reference)} {ref['std']:.4f} "
            f"(range {ref['max'] - ref['min']:.4f} over {ref['n']} seeds); pooled over the "
            f"{len(groups)} models {pooled[0]:.4f} ({pooled[1]} degrees of freedom)."
        )
    anova = one_way_anova(groups)
    if anova is not None:
        notes.append(
            f"One-way ANOVA of the RD loss over the {len(groups)} models: F({anova['df_between']}, "
            f"{anova['df_within']}) = {anova['F']:.2f}, p = {_p(anova['p'])}."
        )
    return "\n".join(lines) + ("\n\n" + " ".join(notes) if notes else "")


def _signed(value: float, spec: str) -> str:
    """A signed number with a typographic minus, as the docs write them."""
    return f"{value:+{spec}}".replace("-", "\u2212")


def _steps(trained: Mapping[str, Any]) -> Any:
    """Optimizer steps behind shipped weights: all of them (``total_steps``, counting the weights
    a run continued from); ``"N + ?"`` where the weights continued from do not say theirs;
    else the run's own, else ``"?"``."""
    if "total_steps" not in trained:
        return trained.get("step", "?")
    if trained["total_steps"] is None:
        return f"{trained.get('step', '?')} + ?"
    return trained["total_steps"]


def shipped_block(shipped: Mapping[str, Any]) -> str:
    """The shipped weights: the table with the held-out results, sizes, BD-rates and the bar."""
    from hpcm_models.pretrained import MAX_SHIPPED_BYTES

    points = shipped["points"]
    lines = [
        "| model | quality | λ | file | bytes | SHA-256 | steps | val bpp | val PSNR (dB) | "
        f"val MS-SSIM | Δ JPEG (dB) | Δ WebP (dB) | images ≥ {JPEG_BAR_DB:g} dB over JPEG |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    below = []  # (quality, codec, images below the codec's lowest rate)
    for p in points:
        # An image whose rate JPEG cannot reach (below its quality 1, above its highest) has no
        # JPEG PSNR to compare with: it is left out of Δ and of the count, and said so.
        deltas = [r["delta_jpeg"] for r in p["per_image"] if r["delta_jpeg"] is not None]
        over = sum(d >= JPEG_BAR_DB for d in deltas)
        counted = f"{over}/{len(deltas)}"
        for codec in ("jpeg", "webp"):
            missing = len(p["per_image"]) - p.get(f"{codec}_compared", len(p["per_image"]))
            if missing:
                below.append((p["quality"], codec, missing))
                if codec == "jpeg":
                    counted += f" (+{missing} outside JPEG's rates)"
        jpeg = _signed(p["jpeg_delta"], ".2f")
        if p["jpeg_delta"] >= JPEG_BAR_DB:
            jpeg = f"**{jpeg}**"
        lines.append(
            f"| `{p['model']}` | {p['quality']} | {p['lmbda']} | `{p['file']}` | {p['bytes']:,} | "
            f"`{p['sha256']}` | {_steps(p['trained'])} | {p['bpp_file']:.4f} | "
            f"{p['psnr']:.2f} | {p['ms_ssim']:.4f} | {jpeg} | {_signed(p['webp_delta'], '.2f')} | "
            f"{counted} |"
        )
    total = sum(p["bytes"] for p in points)
    n = len(points[0]["per_image"])
    met = [p["quality"] for p in points if p["jpeg_delta"] >= JPEG_BAR_DB]
    missed = [
        f"quality {p['quality']} by {JPEG_BAR_DB - p['jpeg_delta']:.2f} dB ({p['jpeg_delta']:+.2f})"
        for p in points
        if p["jpeg_delta"] < JPEG_BAR_DB
    ]
    if not missed:
        bar = "is met at every shipped rate point"
    elif met:
        bar = f"is met at quality {', '.join(map(str, met))} only; it is missed at " + ", ".join(
            missed
        )
    else:
        bar = "is met at no shipped rate point; it is missed at " + ", ".join(missed)
    bd = ", ".join(
        f"**{_signed(c['bd_rate_percent'], '.1f')} % against "
        f"{'JPEG' if codec == 'jpeg' else 'WebP'}** (BD-PSNR {_signed(c['bd_psnr_db'], '.2f')} dB)"
        for codec, c in shipped["classic"].items()
        if c["bd_rate_percent"] is not None
    )
    webp = [p["webp_delta"] for p in points]
    if all(d < 0 for d in webp):
        versus = f"behind WebP at every point, by {-max(webp):.2f} to {-min(webp):.2f} dB"
    elif all(d >= 0 for d in webp):
        versus = f"ahead of WebP at every point, by {min(webp):.2f} to {max(webp):.2f} dB"
    else:
        versus = "against WebP " + ", ".join(
            f"{_signed(d, '.2f')} dB at quality {p['quality']}"
            for p, d in zip(points, webp, strict=True)
        )
    lo, hi = points[0], points[-1]
    text = [
        "\n".join(lines),
        f"Together {total:,} bytes ({total / 2**20:.2f} MiB; the package's weights may take "
        f"{MAX_SHIPPED_BYTES / 2**20:g} MiB). bpp: whole `.hpcm` files; PSNR (RGB) "
        f"and MS-SSIM: means over the {n} held-out pictures of the photo set "
        f"({'all' if all(p['bit_exact'] for p in points) else '**not all**'} decoded bit-exact). "
        "Δ: PSNR of the learned codec minus Pillow's at the same bpp (whole files, quality "
        "interpolated per image; [tools.md](tools.md#against-jpeg-and-webp---compare-jpeg-webp)), "
        "averaged over the images"
        + "".join(
            f"; at quality {q} over {n - k} of the {n} images for "
            f"{'JPEG' if codec == 'jpeg' else 'WebP'}: on {k} the learned codec's rate is outside "
            "the rates Pillow's quality settings reach"
            for q, codec, k in below
        )
        + "."
        + (f" BD-rate over the {len(points)} points: {bd}." if bd else ""),
        f"**The bar of issue 14** (PSNR at least {JPEG_BAR_DB:g} dB above JPEG at every shipped "
        f"rate point) **{bar}**. The codec is {versus}. From quality {lo['quality']} to "
        f"{hi['quality']} the rate grows "
        f"{hi['bpp_file'] / lo['bpp_file']:.1f}× and the PSNR {hi['psnr'] - lo['psnr']:.2f} dB; "
        f"JPEG at the same rates gains {hi['jpeg_psnr'] - lo['jpeg_psnr']:.2f} dB, WebP "
        f"{hi['webp_psnr'] - lo['webp_psnr']:.2f} dB.",
    ]
    return "\n\n".join(text)


def cell_table(cells: Mapping[str, Any], cell: str = "RWKVContextCellLite") -> str:
    """The lite cell's ratios to the cross-attention cell, same size and precision (markdown)."""
    by_key = {(c["cell"], c["size_name"], c["precision"]): c for c in cells["cells"]}
    keys = ("flops", "fwd_mib", "fwd_bwd_mib", "fwd_graph_ms", "fwd_bwd_graph_ms")
    lines = [
        "| size | precision | ÷ CrossAttentionCell: FLOPs | fwd MiB | fwd+bwd MiB | graph fwd ms | "
        "graph fwd+bwd ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for (name, size, precision), c in by_key.items():
        if name != cell:
            continue
        base = by_key[("CrossAttentionCell", size, precision)]
        ratios = " | ".join(f"{c[k] / base[k]:.2f}×" for k in keys)
        lines.append(f"| {size} | {precision} | {ratios} |")
    return "\n".join(lines)


_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
_MARKERS = "s^Dv"


def plot(study: Mapping[str, Any], shipped: Mapping[str, Any], path: Path) -> None:
    """Three panels: the RD plane with JPEG, WebP and the shipped codec; the study's runs up
    close with each model's mean ± std; the RD loss of every seed by model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lmbda = study["lmbda"]
    groups = by_model(study["runs"])
    fig, (ax, zx, bx) = plt.subplots(1, 3, figsize=(15, 4.4), dpi=90)
    try:
        shipped_bpp = [p["bpp_file"] for p in shipped["points"]]
        lo, hi = min(0.06, min(shipped_bpp) * 0.8), max(0.26, max(shipped_bpp) * 1.15)
        for codec, style, name in (("jpeg", "k--", "JPEG"), ("webp", "k:", "WebP")):
            c = shipped["classic"][codec]
            pts = [(b, q) for b, q in zip(c["bpp"], c["psnr"], strict=True) if lo <= b <= hi]
            ax.plot(*zip(*pts, strict=True), style, lw=1, label=f"{name} (Pillow)")
        pts = [(p["bpp_file"], p["psnr"]) for p in shipped["points"]]
        steps = {str(_steps(p["trained"])) for p in shipped["points"]}
        ax.plot(
            *zip(*pts, strict=True),
            "o-",
            color="0.5",
            label=f"hpcm-small shipped ({'/'.join(sorted(steps))} steps)",
        )
        for i, (model, group) in enumerate(groups.items()):
            color, marker = _COLORS[i % len(_COLORS)], _MARKERS[i % len(_MARKERS)]
            bpp = [r["eval"]["bpp_file"] for r in group]
            psnr = [r["eval"]["psnr"] for r in group]
            label = f"{_label(model)}, {len(group)} seed{'s' if len(group) > 1 else ''}"
            ax.plot(statistics.fmean(bpp), statistics.fmean(psnr), marker, color=color, label=label)
            zx.plot(bpp, psnr, marker, color=color, alpha=0.45, ms=6)
            (mb, sb), (mp, sp) = mean_std(bpp), mean_std(psnr)
            zx.errorbar(
                mb, mp, xerr=sb, yerr=sp, fmt=marker, color=color, ms=9, capsize=3, label=label
            )
            losses = [run_metrics(r, lmbda)["rd_loss"] for r in group]
            bx.plot([i] * len(losses), losses, marker, color=color, alpha=0.5, ms=6)
            for r, loss in zip(group, losses, strict=True):
                bx.annotate(
                    str(r["seed"]),
                    (i, loss),
                    xytext=(6, -3),
                    textcoords="offset points",
                    fontsize=7,
                )
            m, s = mean_std(losses)
            bx.errorbar(i + 0.2, m, yerr=s, fmt="o", color="k", capsize=4)
            if model == study["reference"]:
                bx.axhspan(
                    min(losses), max(losses), color="0.88", label=f"{_label(model)}: range of seeds"
                )
        n = len(study["runs"][0]["per_image"])
        ax.set(
            xlabel="bits per pixel (whole files)",
            ylabel="PSNR RGB (dB)",
            title=f"means over the {n} held-out photos",
        )
        zx.set(
            xlabel="bits per pixel (whole files)",
            ylabel="PSNR RGB (dB)",
            title=f"λ={lmbda}, {study['steps']} steps: seeds (light), mean ± std",
        )
        bx.set_xticks(
            range(len(groups)),
            [_label(m) for m in groups],
            rotation=12,
            fontsize="x-small",
            ha="right",
        )
        bx.set(
            ylabel=f"RD loss at λ={lmbda} (held-out)",
            title="each seed (numbered), mean ± std (black)",
        )
        for axis in (ax, zx, bx):
            axis.grid(alpha=0.3)
        ax.legend(fontsize="x-small", loc="lower right")
        zx.legend(fontsize="x-small", loc="best")
        bx.legend(fontsize="x-small", loc="upper right")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)


def blocks(results: Path) -> dict[str, str]:
    """The generated blocks of the docs, by name, from the summaries in ``results``."""
    study = _read_json(results / STUDY_JSON)
    shipped = _read_json(results / SHIPPED_JSON)
    cells = _read_json(results / CELLS_JSON)
    return {
        "study-calls": calls_list(study),
        "study-table": study_table(study),
        "study-runs": runs_table(study),
        "study-noise": noise_table(study),
        "cell-table": cell_table(cells),
        "shipped": shipped_block(shipped),
    }


def write_docs(generated: Mapping[str, str], docs: Sequence[Path] = DOCS) -> list[str]:
    """Rewrite the generated blocks of ``docs``; returns the names written."""
    written = []
    for doc in docs:
        text = doc.read_text()
        new, found = replace_blocks(text, generated)
        if new != text:
            doc.write_text(new)
        written += [f"{doc.name}:{name}" for name in found]
    return written


def report(results: Path, plot_path: Path | None) -> str:
    """The whole report as markdown; writes the plot unless ``plot_path`` is None."""
    study = _read_json(results / STUDY_JSON)
    generated = blocks(results)
    calls = "; ".join(
        f"{name}: {c['gpu']} (torch {c['torch']}, {c['runs_sharing_gpu']} runs sharing it)"
        for name, c in study["calls"].items()
    )
    parts = [
        f"Study: λ = {study['lmbda']}, {study['steps']} steps, seeds {study['seeds']}; trained in "
        f"{calls}; evaluated on {study['evaluation']['dataset']} ({study['evaluation']['device']})",
        "Per model, mean ± std (min – max) over the seeds",
        generated["study-table"],
        "Every run",
        generated["study-runs"],
        f"Against {_label(study['reference'])}: differences of the seed means and the seed noise",
        generated["study-noise"],
        "Shipped weights on the held-out photos, against JPEG and WebP",
        generated["shipped"],
        "The lite cell against the cross-attention cell (issue 15)",
        generated["cell-table"],
    ]
    if plot_path is not None:
        plot(study, _read_json(results / SHIPPED_JSON), plot_path)
        parts.append(f"wrote {plot_path}")
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See the module docstring (and docs/study.md) for the layout of --runs.",
    )
    parser.add_argument("--runs", type=Path, help="rebuild the summaries from these raw artefacts")
    parser.add_argument(
        "--evals",
        type=Path,
        nargs="+",
        default=[],
        metavar="DIR",
        help="with --runs: folders of study-RUN.json evaluations, searched before RUNS/eval",
    )
    parser.add_argument(
        "--shipped-eval",
        type=Path,
        metavar="FILE",
        help="rebuild the shipped weights' summary from this hpcm eval --compare jpeg webp output "
        "(default with --runs: RUNS/eval/shipped6000.json)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=ROOT / "data" / "photos" / "val",
        help="with --runs: the held-out photos; the first one is cropped to 768x512 and coded by "
        "one run of every model to time them side by side (default: data/photos/val)",
    )
    parser.add_argument(
        "--time-rounds",
        type=int,
        default=5,
        help="with --runs: interleaved timing rounds (0: keep the times already in the summary)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the summaries")
    parser.add_argument("--plot", type=Path, default=PLOT, help="the RD plot (PNG)")
    parser.add_argument("--no-plot", action="store_true", help="print the tables only")
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help="rewrite the generated blocks of docs/study.md and docs/models.md",
    )
    args = parser.parse_args(argv)
    if args.runs is not None or args.shipped_eval is not None:
        data = args.data if args.data.is_dir() else None
        if args.runs is not None and data is None and args.time_rounds > 0:
            print(f"{args.data} does not exist: no CPU timing", file=sys.stderr)
        collect(args.runs, args.evals, args.shipped_eval, args.results, data, args.time_rounds)
    print(report(args.results, None if args.no_plot else args.plot))
    if args.write_docs:
        for name in write_docs(blocks(args.results)):
            print(f"wrote the block {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
