"""The models' costs: parameters, FLOPs, eval-forward and training-step latency and memory, and
on CUDA the fast paths against the eager baseline of the same run."""

from __future__ import annotations

import gc
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .measure import count_flops, count_params, fmt, peak_mib, time_ms

__all__ = ["ModelResult", "bench_models", "format_fast_table", "format_model_table"]


@dataclass
class ModelResult:
    """One model's costs. Times in ms (median of the timed runs; all runs in ``*_ms_runs``),
    memory in MiB (CUDA only), FLOPs of one eval forward at ``size`` (batch 1)."""

    model: str
    params: int
    size: tuple[int, int]
    flops_counted: int
    flops_biwkv4: int
    eval_ms: float
    eval_ms_runs: list[float]
    eval_peak_mib: float | None
    train_size: tuple[int, int] | None = None
    train_batch: int | None = None
    train_step_ms: float | None = None
    train_step_ms_runs: list[float] = field(default_factory=list)
    train_peak_mib: float | None = None
    #: The fast paths (CUDA only): eval forward replayed from a CUDA graph in ``fast_precision``;
    #: training step replayed from a CUDA graph with bf16 autocast, channels-last memory and the
    #: fused Adam (:class:`~hpcm_models.acceleration.GraphedTrainStep`).
    #: A graph keeps its memory pool between replays, so the fast paths report the memory
    #: reserved by PyTorch's CUDA allocator after their runs (weights, optimizer state, graph
    #: pools, cache; emptied before each fast path) rather than a peak of allocations.
    fast_precision: str | None = None
    eval_fast_ms: float | None = None
    eval_fast_ms_runs: list[float] = field(default_factory=list)
    eval_fast_reserved_mib: float | None = None
    #: Relative difference of the estimated bits (Σ −log₂ p over y and z) of the fast forward
    #: against the eager float32 one, on the benchmark's random input.
    eval_fast_bits_rel_diff: float | None = None
    train_fast_ms: float | None = None
    train_fast_ms_runs: list[float] = field(default_factory=list)
    train_fast_reserved_mib: float | None = None

    @property
    def flops(self) -> int:
        return self.flops_counted + self.flops_biwkv4


def bench_models(
    names: Sequence[str],
    *,
    device: torch.device,
    size: tuple[int, int],
    model_kwargs: Mapping[str, Any] | None = None,
    train_size: tuple[int, int] | None = (256, 256),
    train_batch: int = 8,
    repeat: int = 5,
    warmup: int = 1,
    amp: bool = False,
    fast: bool = True,
    fast_precision: str = "bf16",
    progress: Callable[[str], None] | None = None,
) -> list[ModelResult]:
    """Parameters, FLOPs, eval-forward latency and peak memory at ``size`` (batch 1), and the time
    of one training step (forward with noise, RD loss, backward, gradient clipping, Adam) at
    ``train_size`` × ``train_batch``; ``train_size=None`` skips training.

    The baseline is eager PyTorch with its default float32 settings (what the authors' code
    runs); on CUDA, ``fast`` also measures the fast paths of :mod:`hpcm_models.acceleration` in
    the same run (see :class:`ModelResult`).

    Args:
        names: registered model names.
        device: where to run.
        size: (width, height) of the eval input; multiples of 128.
        model_kwargs: constructor kwargs (JSON form, see
            :func:`hpcm_models.checkpoints.model_kwargs_from_json`) for every model.
        repeat, warmup: timed and untimed runs.
        amp: bf16 autocast for the baseline's forward passes.
        fast: also measure the fast paths (CUDA only).
        fast_precision: arithmetic of the fast eval forward (``"fp32"``, ``"tf32"``, ``"bf16"``).
    """
    from ..acceleration import check_precision

    check_precision(fast_precision)
    fast = fast and device.type == "cuda"

    results = []
    for name in names:
        # One function call per model: everything it built (graphs, optimizers, closures) is
        # freed before the next model is measured, so peak memory is per model.
        results.append(
            _bench_model(
                name,
                device=device,
                size=size,
                model_kwargs=model_kwargs,
                train_size=train_size,
                train_batch=train_batch,
                repeat=repeat,
                warmup=warmup,
                amp=amp,
                fast=fast,
                fast_precision=fast_precision,
                progress=progress,
            )
        )
        gc.collect()  # CUDA graphs and their memory pools go with their Python objects
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def _bench_model(
    name: str,
    *,
    device: torch.device,
    size: tuple[int, int],
    model_kwargs: Mapping[str, Any] | None,
    train_size: tuple[int, int] | None,
    train_batch: int,
    repeat: int,
    warmup: int,
    amp: bool,
    fast: bool,
    fast_precision: str,
    progress: Callable[[str], None] | None,
) -> ModelResult:
    from ..checkpoints import build_model

    say = progress or (lambda message: None)
    say(f"{name}: building")
    torch.manual_seed(0)
    model = build_model(name, model_kwargs or {}).to(device).eval()
    width, height = size
    x = torch.rand(1, 3, height, width, device=device)
    say(f"{name}: eval forward at {width}x{height}")
    result = _bench_eval(name, model, x, repeat, warmup, amp)
    if fast:
        say(f"{name}: eval forward, CUDA graph, {fast_precision}")
        _bench_fast_eval(result, model, x, fast_precision, repeat, warmup)
    if train_size is not None:
        say(f"{name}: training step at {train_batch}x{train_size[0]}x{train_size[1]}")
        batch = torch.rand(train_batch, 3, train_size[1], train_size[0], device=device)
        _bench_train(result, model, batch, repeat, warmup, amp)
        if fast:
            say(f"{name}: training step, CUDA graph, bf16, channels-last")
            _bench_fast_train(result, model, batch, repeat, warmup)
        del batch
    return result


def _bench_eval(
    name: str, model: nn.Module, x: torch.Tensor, repeat: int, warmup: int, amp: bool
) -> ModelResult:
    """FLOPs, latency and peak memory of the eager eval forward."""
    device = x.device

    def forward(model: nn.Module = model, x: torch.Tensor = x) -> None:
        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=amp):
            model(x, training=False)

    counted, wkv = count_flops(forward)  # doubles as the first warm-up run
    times = time_ms(forward, device, repeat, warmup)
    peak = peak_mib(forward, device)
    return ModelResult(
        model=name,
        params=count_params(model),
        size=(x.shape[-1], x.shape[-2]),
        flops_counted=counted,
        flops_biwkv4=wkv,
        eval_ms=statistics.median(times),
        eval_ms_runs=times,
        eval_peak_mib=peak,
    )


def _bench_fast_eval(
    result: ModelResult, model: nn.Module, x: torch.Tensor, precision: str, repeat: int, warmup: int
) -> None:
    """The eval forward replayed from a CUDA graph in ``precision``, against the eager one."""
    from ..acceleration import GraphedForward

    device = x.device
    torch.cuda.empty_cache()
    graphed = GraphedForward(model, precision=precision)

    def fast_forward(graphed: GraphedForward = graphed, x: torch.Tensor = x) -> Any:
        return graphed(x)

    result.fast_precision = precision
    result.eval_fast_ms_runs = time_ms(fast_forward, device, repeat, warmup + 1)
    result.eval_fast_ms = statistics.median(result.eval_fast_ms_runs)
    result.eval_fast_reserved_mib = torch.cuda.memory_reserved(device) / 2**20
    with torch.no_grad():
        exact = _bits(model(x, training=False))
    result.eval_fast_bits_rel_diff = abs(_bits(fast_forward()) - exact) / exact


def _bench_train(
    result: ModelResult, model: nn.Module, batch: torch.Tensor, repeat: int, warmup: int, amp: bool
) -> None:
    """One eager training step: forward with noise, RD loss, backward, clipping, Adam."""
    from ..losses import RateDistortionLoss

    device = batch.device
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    criterion = RateDistortionLoss(0.013)

    def step(
        model: nn.Module = model,
        batch: torch.Tensor = batch,
        optimizer: torch.optim.Optimizer = optimizer,
        criterion: RateDistortionLoss = criterion,
    ) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=amp):
            out = model(batch)
        criterion(out, batch)["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    train_times = time_ms(step, device, repeat, warmup)
    result.train_size = (batch.shape[-1], batch.shape[-2])
    result.train_batch = batch.shape[0]
    result.train_step_ms = statistics.median(train_times)
    result.train_step_ms_runs = train_times
    result.train_peak_mib = peak_mib(step, device)


def _bench_fast_train(
    result: ModelResult, model: nn.Module, batch: torch.Tensor, repeat: int, warmup: int
) -> None:
    """The training step replayed from one CUDA graph (bf16, channels-last, fused Adam)."""
    from ..acceleration import GraphedTrainStep, capturable_adam
    from ..losses import RateDistortionLoss

    device = batch.device
    torch.cuda.empty_cache()
    model.to(memory_format=torch.channels_last)
    fused = capturable_adam(model.parameters(), 1e-4, device)
    cl_batch = batch.contiguous(memory_format=torch.channels_last)
    graphed_step = GraphedTrainStep(
        model, fused, RateDistortionLoss(0.013), cl_batch, amp=True, max_norm=1.0
    )

    def fast_step(
        graphed_step: GraphedTrainStep = graphed_step, cl_batch: torch.Tensor = cl_batch
    ) -> None:
        graphed_step(cl_batch)

    result.train_fast_ms_runs = time_ms(fast_step, device, repeat, warmup)
    result.train_fast_ms = statistics.median(result.train_fast_ms_runs)
    result.train_fast_reserved_mib = torch.cuda.memory_reserved(device) / 2**20
    del graphed_step, fused, cl_batch
    model.to(memory_format=torch.contiguous_format)


def _bits(output: Mapping[str, Any]) -> float:
    """Estimated bits of a forward pass: Σ −log₂ p over all likelihoods, in float64."""
    return float(sum(-torch.log2(p.double()).sum() for p in output["likelihoods"].values()))


def format_model_table(results: Sequence[ModelResult], baseline: str = "hpcm-base") -> str:
    """Markdown table of :func:`bench_models` results, with ratios to ``baseline`` (if present)."""
    base = next((r for r in results if r.model == baseline), None)
    lines = [
        "| model | params (M) | GFLOPs (counter + Bi-WKV) | eval ms | eval peak MiB | "
        "train step ms | train peak MiB | eval ms vs base |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = f"{r.eval_ms / base.eval_ms:.2f}x" if base is not None else "n/a"
        lines.append(
            f"| {r.model} | {r.params / 1e6:.2f} | {r.flops / 1e9:.1f} "
            f"({r.flops_counted / 1e9:.1f} + {r.flops_biwkv4 / 1e9:.2f}) | {r.eval_ms:.1f} | "
            f"{fmt(r.eval_peak_mib, '.0f')} | {fmt(r.train_step_ms, '.1f')} | "
            f"{fmt(r.train_peak_mib, '.0f')} | {ratio} |"
        )
    return "\n".join(lines)


def format_fast_table(results: Sequence[ModelResult]) -> str:
    """Markdown table of the fast paths against the eager baseline of the same run (models
    measured with ``fast``; empty if none was)."""
    rows = [r for r in results if r.eval_fast_ms is not None]
    if not rows:
        return ""
    lines = [
        "| model | eval ms: eager fp32 | eval ms: graph "
        f"{rows[0].fast_precision} | speed-up | bits rel. diff | train ms: eager fp32 | "
        "train ms: graph bf16 | speed-up | train reserved MiB (fast) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        eval_gain = r.eval_ms / r.eval_fast_ms if r.eval_fast_ms else math.nan
        train_gain = (
            r.train_step_ms / r.train_fast_ms
            if r.train_step_ms is not None and r.train_fast_ms
            else math.nan
        )
        lines.append(
            f"| {r.model} | {r.eval_ms:.1f} | {r.eval_fast_ms:.1f} | {eval_gain:.1f}x | "
            f"{fmt(r.eval_fast_bits_rel_diff, '.1e')} | {fmt(r.train_step_ms, '.1f')} | "
            f"{fmt(r.train_fast_ms, '.1f')} | {fmt(train_gain, '.1f')}x | "
            f"{fmt(r.train_fast_reserved_mib, '.0f')} |"
        )
    return "\n".join(lines)
