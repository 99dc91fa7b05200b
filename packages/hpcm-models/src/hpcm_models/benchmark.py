"""Cost of the models and of the s3 context cell: parameters, FLOPs, latency, memory.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix products, convolutions
and attention, 2 FLOPs per multiply–add) plus an analytic count of the bidirectional WKV op, which
the counter cannot see into (:func:`biwkv4_flops`, registered with the counter through its
``custom_mapping``). Element-wise operations (activations, normalizations, the entropy model)
are not counted, as is usual for learned codecs.

Latencies are medians of ``repeat`` timed runs after ``warmup`` untimed ones, synchronized on
CUDA; peak memory is ``torch.cuda.max_memory_allocated`` over one run (CUDA only: there is no
allocator statistic on CPU). The context cells are also timed replayed from a CUDA graph, their
memory is counted as what the cell itself needs (:func:`bench_cells`), and their launches as
dispatched ops (:func:`count_ops`). ``hpcm bench`` prints the tables and writes the JSON.

One module (about 750 lines): the model and the cell benchmarks share the FLOP, op-count, timing
and memory helpers, and their result classes and tables are read together.
"""

from __future__ import annotations

import contextlib
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
from torch.utils._python_dispatch import TorchDispatchMode

from .devices import synchronize

__all__ = [
    "BIWKV4_BACKWARD_FLOPS_PER_ELEMENT",
    "BIWKV4_FORWARD_FLOPS_PER_ELEMENT",
    "CELL_SIZES",
    "CellResult",
    "CellWorkload",
    "ModelResult",
    "as_dict",
    "bench_cells",
    "bench_models",
    "biwkv4_flops",
    "cell_workload",
    "context_cells",
    "count_flops",
    "count_ops",
    "format_cell_ratios",
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


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        computes = any(str(r.type) in ("Tensor", "Tensor[]") for r in returns) and not any(
            r.alias_info is not None for r in returns
        )
        if computes and func.overloadpacket not in _NO_WORK_OPS:
            self.count += 1
        return out


# Ops that return fresh tensors without running a kernel.
_NO_WORK_OPS = (torch.ops.aten.empty, torch.ops.aten.empty_like, torch.ops.aten.empty_strided)


def count_ops(fn: Callable[[], Any]) -> int:
    """Number of ops ``fn()`` dispatches that compute something: every ATen (or custom) op that
    returns a new tensor, not views, aliases or empty allocations. A device-independent proxy for
    kernel launches: on CUDA most such ops are one kernel (a custom op such as Bi-WKV's runs
    3-4, a cuDNN convolution may add a bias kernel)."""
    counter = _OpCounter()
    with counter:
        fn()
    return counter.count


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
    """One context cell at one latent size: ``dim`` channels on ``latent`` = (H, W) positions.

    Times in ms: eager (each call synchronized) and, on CUDA, replayed from a CUDA graph (the
    mean of back-to-back replays: the device time without launch overhead). Memory in MiB (CUDA
    only): ``*_mib`` is what the cell needs — its weights, the two inputs, and the peak of what a
    call allocates on top (activations, outputs and, for fwd+bwd, gradients) — while
    ``*_peak_mib`` is the raw ``torch.cuda.max_memory_allocated``, which also holds whatever else
    the process keeps (cuBLAS workspaces, earlier runs). ``ops_*`` are :func:`count_ops` counts.
    ``precision`` is ``"default"`` (PyTorch's defaults: IEEE float32 matmuls, TF32 cuDNN
    convolutions), ``"bf16-autocast"`` (defaults under bf16 autocast), or a mode of
    :func:`hpcm_models.acceleration.precision` (``"fp32"``, ``"tf32"``, ``"bf16"``).
    """

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
    precision: str = "default"
    ops_fwd: int | None = None
    ops_fwd_bwd: int | None = None
    fwd_graph_ms: float | None = None
    fwd_bwd_graph_ms: float | None = None
    fwd_mib: float | None = None
    fwd_bwd_mib: float | None = None

    @property
    def flops(self) -> int:
        return self.flops_counted + self.flops_biwkv4


def context_cells(
    window_size: int = 8, num_heads: int = 32, hidden_rate: float = 4
) -> dict[str, Callable[[int], nn.Module]]:
    """The s3 context cells that ``hpcm bench`` compares, by name; ``make(dim)`` builds one:
    HPCM's ``CrossAttentionCell`` (``window_size``, ``num_heads``, 1×1 projections), phase 1's
    ``RWKVContextCell`` (``hidden_rate``) and ``RWKVContextCellLite`` (its defaults, as in
    ``hpcm-phase1-lite``)."""
    from rwkv_blocks import RWKVContextCell, RWKVContextCellLite

    from .layers import CrossAttentionCell

    return {
        "CrossAttentionCell": lambda dim: CrossAttentionCell(dim, window_size, num_heads),
        "RWKVContextCell": lambda dim: RWKVContextCell(dim, hidden_rate=hidden_rate),
        "RWKVContextCellLite": lambda dim: RWKVContextCellLite(dim),
    }


def _arithmetic(
    device: torch.device, precision: str | None, amp: bool
) -> contextlib.AbstractContextManager[None]:
    if precision is not None:
        from .acceleration import precision as precision_mode

        return precision_mode(precision, device)
    # Autocast's weight cache would keep casts made during a CUDA-graph capture.
    return torch.autocast(device.type, torch.bfloat16, enabled=amp, cache_enabled=False)


def _cell_mib(fn: Callable[[], Any], device: torch.device, resident: int) -> tuple[float, float]:
    """``(resident + peak allocated on top during fn(), raw peak)`` in MiB (CUDA)."""
    synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return (resident + peak - before) / 2**20, peak / 2**20


def _graph_ms(
    body: Callable[[], Any], device: torch.device, repeat: int, warmup: int, replays: int
) -> float:
    """Mean time (ms) of one replay of ``body`` captured in a CUDA graph, from the median of
    ``repeat`` runs of ``replays`` back-to-back replays."""
    from .acceleration import GraphChain

    chain = GraphChain(lambda split: body(), device)

    def run() -> None:
        for _ in range(replays):
            chain.replay()

    # The chain (its graph and memory pool) goes when this function returns.
    return statistics.median(time_ms(run, device, repeat, warmup)) / replays


def bench_cells(
    *,
    device: torch.device,
    dim: int = 640,
    sizes: Mapping[str, tuple[int, int]] | None = None,
    cells: Mapping[str, Callable[[int], nn.Module]] | None = None,
    repeat: int = 5,
    warmup: int = 1,
    backward: bool = True,
    amp: bool = False,
    precision: str | None = None,
    graph: bool = True,
    graph_replays: int = 10,
    progress: Callable[[str], None] | None = None,
) -> list[CellResult]:
    """Context cells alone on ``[1, dim, H, W]`` maps, one call ``cell(x_t, h_prev)`` (HPCM calls
    the s3 cell 5 times per image; ``dim = 2M = 640`` for the published models).

    Forward (no grad) and forward+backward (the gradients of both inputs and every parameter
    of ``mean(h_t²)``), eagerly and, on CUDA with ``graph``, replayed from CUDA graphs.

    Args:
        device: where to run.
        dim: channels.
        sizes: name → latent (H, W); default :data:`CELL_SIZES`.
        cells: name → ``make(dim)``; default :func:`context_cells`.
        repeat, warmup: timed and untimed runs.
        backward: also time forward+backward.
        amp: bf16 autocast over PyTorch's default settings (``precision`` must then be None).
        precision: ``"fp32"``, ``"tf32"`` or ``"bf16"`` (see
            :func:`hpcm_models.acceleration.precision`); None: PyTorch's defaults.
        graph: also time CUDA-graph replays (CUDA only).
        graph_replays: back-to-back replays per timed run.
    """
    if amp and precision is not None:
        raise ValueError(f"expected amp=False with precision={precision!r} (bf16 is a precision)")
    if precision is not None:
        from .acceleration import check_precision

        check_precision(precision)
    label = precision or ("bf16-autocast" if amp else "default")
    results = []
    for size_name, (H, W) in (sizes or CELL_SIZES).items():
        for cell_name, make in (cells or context_cells()).items():
            if progress:
                progress(f"{cell_name} at {size_name} ({H}x{W} latents), {label}")
            torch.manual_seed(0)
            cell = make(dim).to(device)
            with _arithmetic(device, precision, amp):
                result = _bench_cell(
                    cell,
                    cell_name,
                    size_name,
                    (H, W),
                    device=device,
                    dim=dim,
                    repeat=repeat,
                    warmup=warmup,
                    backward=backward,
                    graph=graph and device.type == "cuda",
                    graph_replays=graph_replays,
                )
            result.precision = label
            results.append(result)
            del cell
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results


@dataclass(frozen=True)
class CellWorkload:
    """The two calls of a context cell that :func:`bench_cells` measures, on fixed random inputs.

    Attributes:
        forward: ``cell(x_t, h_prev)`` without grad; returns ``h_t``.
        forward_backward: ``cell(x_t, h_prev)`` and the gradients of ``mean(h_t²)`` (float32)
            with respect to both inputs and every parameter; returns the gradients.
        resident_bytes: bytes of the inputs and the parameters.
    """

    forward: Callable[[], torch.Tensor]
    forward_backward: Callable[[], tuple[torch.Tensor, ...]]
    resident_bytes: int


def cell_workload(
    cell: nn.Module, dim: int, latent: tuple[int, int], device: torch.device
) -> CellWorkload:
    """The calls of ``cell`` on ``[1, dim, H, W]`` inputs (``latent = (H, W)``) on ``device``."""
    H, W = latent
    x_t = torch.randn(1, dim, H, W, device=device)
    h_prev = torch.randn(1, dim, H, W, device=device)
    params = list(cell.parameters())
    x_g, h_g = x_t.clone().requires_grad_(), h_prev.clone().requires_grad_()

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return cell(x_t, h_prev)

    def forward_backward() -> tuple[torch.Tensor, ...]:
        loss = cell(x_g, h_g).float().square().mean()
        return torch.autograd.grad(loss, [x_g, h_g, *params])

    resident = sum(t.numel() * t.element_size() for t in (x_t, h_prev, *params))
    return CellWorkload(forward, forward_backward, resident)


def _bench_cell(
    cell: nn.Module,
    cell_name: str,
    size_name: str,
    latent: tuple[int, int],
    *,
    device: torch.device,
    dim: int,
    repeat: int,
    warmup: int,
    backward: bool,
    graph: bool,
    graph_replays: int,
) -> CellResult:
    work = cell_workload(cell, dim, latent, device)
    counted, wkv = count_flops(work.forward)
    result = CellResult(
        cell=cell_name,
        size_name=size_name,
        latent=latent,
        dim=dim,
        params=_params(cell),
        flops_counted=counted,
        flops_biwkv4=wkv,
        fwd_ms=statistics.median(time_ms(work.forward, device, repeat, warmup)),
        fwd_bwd_ms=None,
        fwd_peak_mib=None,
        fwd_bwd_peak_mib=None,
        ops_fwd=count_ops(work.forward),
    )
    if device.type == "cuda":
        result.fwd_mib, result.fwd_peak_mib = _cell_mib(work.forward, device, work.resident_bytes)
    if graph:
        result.fwd_graph_ms = _graph_ms(work.forward, device, repeat, warmup, graph_replays)
    if not backward:
        return result
    train = work.forward_backward
    result.fwd_bwd_ms = statistics.median(time_ms(train, device, repeat, warmup))
    result.ops_fwd_bwd = count_ops(train)
    if device.type == "cuda":
        result.fwd_bwd_mib, result.fwd_bwd_peak_mib = _cell_mib(train, device, work.resident_bytes)
    if graph:
        result.fwd_bwd_graph_ms = _graph_ms(train, device, repeat, warmup, graph_replays)
    return result


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
    """Markdown table of :func:`bench_cells` results."""
    lines = [
        "| size (latent H×W) | cell | precision | params (M) | GFLOPs (counter + Bi-WKV) | "
        "ops fwd / fwd+bwd | fwd ms | fwd+bwd ms | graph fwd ms | graph fwd+bwd ms | fwd MiB | "
        "fwd+bwd MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.size_name} ({r.latent[0]}×{r.latent[1]}) | {r.cell} | {r.precision} | "
            f"{r.params / 1e6:.2f} | {r.flops / 1e9:.2f} ({r.flops_counted / 1e9:.2f} + "
            f"{r.flops_biwkv4 / 1e9:.3f}) | {_fmt(r.ops_fwd, 'd')} / {_fmt(r.ops_fwd_bwd, 'd')} | "
            f"{r.fwd_ms:.2f} | {_fmt(r.fwd_bwd_ms, '.2f')} | {_fmt(r.fwd_graph_ms, '.3f')} | "
            f"{_fmt(r.fwd_bwd_graph_ms, '.3f')} | {_fmt(r.fwd_mib, '.1f')} | "
            f"{_fmt(r.fwd_bwd_mib, '.1f')} |"
        )
    return "\n".join(lines)


def format_cell_ratios(results: Sequence[CellResult], baseline: str = "CrossAttentionCell") -> str:
    """Markdown table of each cell's FLOPs, memory and times divided by those of ``baseline``
    at the same size and precision (measured in the same run); empty without a baseline."""
    base = {(r.size_name, r.precision): r for r in results if r.cell == baseline}
    metrics = (
        "flops",
        "fwd_mib",
        "fwd_bwd_mib",
        "fwd_ms",
        "fwd_bwd_ms",
        "fwd_graph_ms",
        "fwd_bwd_graph_ms",
    )
    lines = [
        f"| size | cell | precision | ÷ {baseline}: FLOPs | fwd MiB | fwd+bwd MiB | fwd ms | "
        "fwd+bwd ms | graph fwd ms | graph fwd+bwd ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        b = base.get((r.size_name, r.precision))
        if b is None or r.cell == baseline:
            continue
        ratios = []
        for name in metrics:
            num, den = getattr(r, name), getattr(b, name)
            ratios.append(f"{num / den:.2f}×" if num is not None and den else "n/a")
        lines.append(f"| {r.size_name} | {r.cell} | {r.precision} | " + " | ".join(ratios) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""
