"""Cost of the models and of the s3 context cell: parameters, FLOPs, latency, memory.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix products, convolutions
and attention, 2 FLOPs per multiply–add) plus an analytic count of the bidirectional WKV op, which
the counter cannot see into (:func:`biwkv4_flops`, registered with the counter through its
``custom_mapping``). Element-wise operations (activations, normalizations, the entropy model)
are not counted, as is usual for learned codecs.

Latencies are medians of ``repeat`` timed runs after ``warmup`` untimed ones, synchronized on
CUDA; peak memory is ``torch.cuda.max_memory_allocated`` over one run (CUDA only: there is no
allocator statistic on CPU). ``hpcm bench`` prints the tables and writes the JSON.

One module (about 600 lines): the model and the cell benchmarks share the FLOP, timing and memory
helpers, and their result classes and tables are read together.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .devices import synchronize

__all__ = [
    "BIWKV4_BACKWARD_FLOPS_PER_ELEMENT",
    "BIWKV4_FORWARD_FLOPS_PER_ELEMENT",
    "CELL_SIZES",
    "CellResult",
    "ModelResult",
    "as_dict",
    "bench_cells",
    "bench_models",
    "biwkv4_flops",
    "count_flops",
    "format_cell_table",
    "format_fast_table",
    "format_model_table",
    "machine_info",
    "parse_size",
    "time_ms",
]

#: FLOPs per element ``(b, t, c)`` of the forward Bi-WKV (Vision-RWKV eq. 4 as a two-pass
#: recurrence; exp and division count one each):
#:
#: - left-to-right pass: ``e^k`` (1); ``a ← e^{-w}·a + e^k·v`` (3); ``s ← e^{-w}·s + e^k`` (2)
#: - right-to-left pass: the same with ``e^k`` reused (5)
#: - output: ``e^{u+k}`` (2); ``(a_l + a_r + e^{u+k}·v) / (s_l + s_r + e^{u+k})`` (6)
BIWKV4_FORWARD_FLOPS_PER_ELEMENT = 19
#: The backward (gradients of k, v, w and u) counted as twice the forward, the convention
#: ``FlopCounterMode`` also uses for the backward of matrix products.
BIWKV4_BACKWARD_FLOPS_PER_ELEMENT = 2 * BIWKV4_FORWARD_FLOPS_PER_ELEMENT

#: Latent sizes (H/16, W/16) of the s3 context cell: Kodak (768×512), 1080p (1920×1080 padded to
#: 1920×1152, the models' multiple of 128) and 4K UHD (3840×2160 padded to 3840×2176).
CELL_SIZES: dict[str, tuple[int, int]] = {
    "kodak": (512 // 16, 768 // 16),
    "1080p": (1152 // 16, 1920 // 16),
    "4k": (2176 // 16, 3840 // 16),
}


def biwkv4_flops(B: int, T: int, C: int, *, backward: bool = False) -> int:
    """Analytic FLOPs of one Bi-WKV call on ``k, v: [B, T, C]``: ``19·B·T·C`` forward,
    ``38·B·T·C`` backward (see :data:`BIWKV4_FORWARD_FLOPS_PER_ELEMENT`). Linear in T: the
    reference definition (a softmax over all T positions per output) would be O(B·T²·C)."""
    per = BIWKV4_BACKWARD_FLOPS_PER_ELEMENT if backward else BIWKV4_FORWARD_FLOPS_PER_ELEMENT
    return per * B * T * C


def _biwkv4_forward_formula(w_shape, u_shape, k_shape, *args: Any, **kwargs: Any) -> int:
    return biwkv4_flops(*k_shape)


def _biwkv4_backward_formula(w_shape, u_shape, k_shape, *args: Any, **kwargs: Any) -> int:
    return biwkv4_flops(*k_shape, backward=True)


def _biwkv4_ops() -> dict[Any, Callable[..., int]]:
    import biwkv4_kernel  # noqa: F401  (registers torch.ops.biwkv4_kernel)

    return {
        torch.ops.biwkv4_kernel.forward: _biwkv4_forward_formula,
        torch.ops.biwkv4_kernel.backward: _biwkv4_backward_formula,
    }


def count_flops(fn: Callable[[], Any]) -> tuple[int, int]:
    """Run ``fn()`` under ``FlopCounterMode``; returns ``(counted, biwkv4)``: FLOPs of the ops the
    counter knows (matmul, conv, attention) and the analytic FLOPs of the Bi-WKV calls."""
    from torch.utils.flop_counter import FlopCounterMode

    ops = _biwkv4_ops()
    counter = FlopCounterMode(display=False, custom_mapping=ops)
    with counter:
        fn()
    by_op = counter.get_flop_counts().get("Global", {})
    wkv = sum(v for op, v in by_op.items() if op in ops or str(op).startswith("biwkv4_kernel."))
    return int(counter.get_total_flops() - wkv), int(wkv)


def parse_size(text: str) -> tuple[int, int]:
    """``"768x512"`` → ``(768, 512)`` (width, height).

    Raises:
        ValueError: for anything but two positive integers joined by ``x``.
    """
    parts = text.lower().split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"expected a size WIDTHxHEIGHT such as 768x512, got {text!r}") from None
    if width < 1 or height < 1:
        raise ValueError(f"expected a positive size WIDTHxHEIGHT, got {text!r}")
    return width, height


def machine_info(device: torch.device) -> dict[str, Any]:
    """Machine, device and versions, for the JSON of a benchmark."""
    import biwkv4_kernel
    import hpcm_models
    import rwkv_blocks

    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "hpcm_models": hpcm_models.__version__,
        "rwkv_blocks": rwkv_blocks.__version__,
        "biwkv4_kernel": biwkv4_kernel.__version__,
        "biwkv4_cuda_kernel": biwkv4_kernel.cuda_kernel_available(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
        )
    return info


def time_ms(fn: Callable[[], Any], device: torch.device, repeat: int, warmup: int) -> list[float]:
    """Wall times (ms) of ``repeat`` calls of ``fn()`` after ``warmup`` untimed ones, each
    synchronized with the device (CUDA)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _peak_mib(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Peak allocated memory during ``fn()`` (MiB), including what was allocated before."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


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
    from .acceleration import check_precision

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
    from .checkpoints import build_model

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
    peak = _peak_mib(forward, device)
    return ModelResult(
        model=name,
        params=_params(model),
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
    from .acceleration import GraphedForward

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
    from .losses import RateDistortionLoss

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
    result.train_peak_mib = _peak_mib(step, device)


def _bench_fast_train(
    result: ModelResult, model: nn.Module, batch: torch.Tensor, repeat: int, warmup: int
) -> None:
    """The training step replayed from one CUDA graph (bf16, channels-last, fused Adam)."""
    from .acceleration import GraphedTrainStep, capturable_adam
    from .losses import RateDistortionLoss

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


@dataclass
class CellResult:
    """One context cell at one latent size: ``dim`` channels on ``latent`` = (H, W) positions."""

    cell: str
    size_name: str
    latent: tuple[int, int]
    dim: int
    params: int
    flops_counted: int
    flops_biwkv4: int
    fwd_ms: float
    fwd_bwd_ms: float | None
    fwd_peak_mib: float | None
    fwd_bwd_peak_mib: float | None

    @property
    def flops(self) -> int:
        return self.flops_counted + self.flops_biwkv4


def bench_cells(
    *,
    device: torch.device,
    dim: int = 640,
    sizes: Mapping[str, tuple[int, int]] | None = None,
    window_size: int = 8,
    num_heads: int = 32,
    hidden_rate: float = 4,
    repeat: int = 5,
    warmup: int = 1,
    backward: bool = True,
    amp: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[CellResult]:
    """HPCM's s3 context cell (``CrossAttentionCell``, window 8, 32 heads, 1×1 projections) against
    phase 1's (``RWKVContextCell``, hidden rate 4), alone, on ``[1, dim, H, W]`` maps (one call
    ``cell(x_t, h_prev)``; HPCM calls the s3 cell 5 times per image). ``dim = 2M = 640`` for the
    published models."""
    from rwkv_blocks import RWKVContextCell

    from .layers import CrossAttentionCell

    cells: dict[str, Callable[[], nn.Module]] = {
        "CrossAttentionCell": lambda: CrossAttentionCell(dim, window_size, num_heads),
        "RWKVContextCell": lambda: RWKVContextCell(dim, hidden_rate=hidden_rate),
    }
    results = []
    for size_name, (H, W) in (sizes or CELL_SIZES).items():
        for cell_name, make in cells.items():
            if progress:
                progress(f"{cell_name} at {size_name} ({H}x{W} latents)")
            torch.manual_seed(0)
            cell = make().to(device)
            x_t = torch.randn(1, dim, H, W, device=device)
            h_prev = torch.randn(1, dim, H, W, device=device)

            def forward(cell: nn.Module = cell, x_t=x_t, h_prev=h_prev) -> None:
                with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=amp):
                    cell(x_t, h_prev)

            counted, wkv = count_flops(forward)
            fwd = statistics.median(time_ms(forward, device, repeat, warmup))
            fwd_peak = _peak_mib(forward, device)
            fwd_bwd = fwd_bwd_peak = None
            if backward:
                x_g = x_t.clone().requires_grad_()
                h_g = h_prev.clone().requires_grad_()

                def train_step(cell: nn.Module = cell, x_g=x_g, h_g=h_g) -> None:
                    with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                        out = cell(x_g, h_g)
                    out.float().square().mean().backward()
                    cell.zero_grad(set_to_none=True)
                    x_g.grad = h_g.grad = None

                fwd_bwd = statistics.median(time_ms(train_step, device, repeat, warmup))
                fwd_bwd_peak = _peak_mib(train_step, device)
            results.append(
                CellResult(
                    cell=cell_name,
                    size_name=size_name,
                    latent=(H, W),
                    dim=dim,
                    params=_params(cell),
                    flops_counted=counted,
                    flops_biwkv4=wkv,
                    fwd_ms=fwd,
                    fwd_bwd_ms=fwd_bwd,
                    fwd_peak_mib=fwd_peak,
                    fwd_bwd_peak_mib=fwd_bwd_peak,
                )
            )
            del cell, x_t, h_prev
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results


def as_dict(result: ModelResult | CellResult) -> dict[str, Any]:
    """A result as a JSON-ready dict, with the total ``flops``."""
    out = dataclasses.asdict(result)
    out["flops"] = result.flops
    return out


def _fmt(value: float | None, spec: str) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else format(value, spec)
    )


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
            f"{_fmt(r.eval_peak_mib, '.0f')} | {_fmt(r.train_step_ms, '.1f')} | "
            f"{_fmt(r.train_peak_mib, '.0f')} | {ratio} |"
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
            f"{_fmt(r.eval_fast_bits_rel_diff, '.1e')} | {_fmt(r.train_step_ms, '.1f')} | "
            f"{_fmt(r.train_fast_ms, '.1f')} | {_fmt(train_gain, '.1f')}x | "
            f"{_fmt(r.train_fast_reserved_mib, '.0f')} |"
        )
    return "\n".join(lines)


def format_cell_table(results: Sequence[CellResult]) -> str:
    """Markdown table of :func:`bench_cells` results, RWKV against cross-attention per size."""
    lines = [
        "| size (latent H×W) | cell | params (M) | GFLOPs (counter + Bi-WKV) | fwd ms | "
        "fwd+bwd ms | fwd peak MiB | fwd+bwd peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.size_name} ({r.latent[0]}×{r.latent[1]}) | {r.cell} | {r.params / 1e6:.2f} | "
            f"{r.flops / 1e9:.2f} ({r.flops_counted / 1e9:.2f} + {r.flops_biwkv4 / 1e9:.3f}) | "
            f"{r.fwd_ms:.2f} | {_fmt(r.fwd_bwd_ms, '.2f')} | {_fmt(r.fwd_peak_mib, '.0f')} | "
            f"{_fmt(r.fwd_bwd_peak_mib, '.0f')} |"
        )
    return "\n".join(lines)
