"""The s3 context cells alone: HPCM's cross-attention cell against the RWKV cells, at the latent
sizes of real images, eager and replayed from CUDA graphs."""

from __future__ import annotations

import contextlib
import gc
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..devices import synchronize
from .measure import count_flops, count_ops, count_params, fmt, time_ms

__all__ = [
    "CELL_SIZES",
    "CellResult",
    "CellWorkload",
    "bench_cells",
    "cell_workload",
    "context_cells",
    "format_cell_ratios",
    "format_cell_table",
]


#: Latent sizes (H/16, W/16) of the s3 context cell: Kodak (768×512), 1080p (1920×1080 padded to
#: 1920×1152, the models' multiple of 128) and 4K UHD (3840×2160 padded to 3840×2176).
CELL_SIZES: dict[str, tuple[int, int]] = {
    "kodak": (512 // 16, 768 // 16),
    "1080p": (1152 // 16, 1920 // 16),
    "4k": (2176 // 16, 3840 // 16),
}


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

    from ..layers import CrossAttentionCell

    return {
        "CrossAttentionCell": lambda dim: CrossAttentionCell(dim, window_size, num_heads),
        "RWKVContextCell": lambda dim: RWKVContextCell(dim, hidden_rate=hidden_rate),
        "RWKVContextCellLite": lambda dim: RWKVContextCellLite(dim),
    }


def _arithmetic(
    device: torch.device, precision: str | None, amp: bool
) -> contextlib.AbstractContextManager[None]:
    if precision is not None:
        from ..acceleration import precision as precision_mode

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
    from ..acceleration import GraphChain

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
        from ..acceleration import check_precision

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
        params=count_params(cell),
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
            f"{r.flops_biwkv4 / 1e9:.3f}) | {fmt(r.ops_fwd, 'd')} / {fmt(r.ops_fwd_bwd, 'd')} | "
            f"{r.fwd_ms:.2f} | {fmt(r.fwd_bwd_ms, '.2f')} | {fmt(r.fwd_graph_ms, '.3f')} | "
            f"{fmt(r.fwd_bwd_graph_ms, '.3f')} | {fmt(r.fwd_mib, '.1f')} | "
            f"{fmt(r.fwd_bwd_mib, '.1f')} |"
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
