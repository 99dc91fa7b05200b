"""Speed of the bidirectional WKV op: the compiled CUDA kernel, the Triton kernels and, as the
in-run baseline, the PyTorch path.

For each (B, T, C) and dtype: forward (inference, no lse), forward with the lse statistics that
training needs, and backward, each timed on the device for each GPU implementation (the compiled
CUDA extension and the Triton kernels, whichever are available); for the compiled kernel the
effective bandwidth (bytes that must move: every input read once, every output written once) and
its share of the device-to-device copy bandwidth measured in the same run; the PyTorch path
(`biwkv4_kernel.scan`) on the same device and the speedups over it. A second table compares the
three implementations.

CUDA timings replay a CUDA graph of back-to-back calls (so they measure the kernels, not Python
dispatch), rotating over input sets that together exceed the L2 cache, and report the median of
several replays. On CPU (`--device cpu`) only the PyTorch path runs, on smaller shapes.

    python benchmarks/bench_biwkv4.py                      # CUDA if there is a GPU
    python benchmarks/bench_biwkv4.py --kernels triton     # the Triton kernels only
    python benchmarks/bench_biwkv4.py --device cpu --json bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

import biwkv4_kernel
from biwkv4_kernel import _ext, _triton
from biwkv4_kernel.scan import scan_backward, scan_forward

CUDA_SHAPES = [(1, 1536, 640), (16, 256, 640), (8, 1024, 640), (1, 6144, 640), (1, 32640, 640),
               (64, 256, 640)]  # fmt: skip
CPU_SHAPES = [(1, 256, 64), (4, 256, 640), (1, 1536, 640)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Issue 3's targets on an H200 (µs): forward fp32, backward fp32.
TARGETS_US = {
    (1, 1536, 640): (20, 75),
    (16, 256, 640): (25, 75),
    (1, 32640, 640): (175, 1300),
}


@dataclass
class Row:
    B: int
    T: int
    C: int
    dtype: str
    fwd_us: float | None = None
    fwd_stats_us: float | None = None
    bwd_us: float | None = None
    fwd_GBps: float | None = None
    fwd_copy_pct: float | None = None
    bwd_GBps: float | None = None
    bwd_copy_pct: float | None = None
    triton_fwd_us: float | None = None
    triton_fwd_stats_us: float | None = None
    triton_bwd_us: float | None = None
    torch_fwd_us: float | None = None
    torch_bwd_us: float | None = None
    max_rel_err_vs_torch_path: float | None = None
    triton_max_rel_err_vs_torch_path: float | None = None
    target_fwd_us: float | None = None
    target_bwd_us: float | None = None
    notes: list[str] = field(default_factory=list)


def _inputs(B: int, T: int, C: int, dtype: torch.dtype, device: str, seed: int):
    g = torch.Generator(device="cpu").manual_seed(seed)
    w = (torch.randn(C, generator=g) * 5 / T).to(device)
    u = (torch.randn(C, generator=g) * 5 / T).to(device)
    k = torch.randn(B, T, C, generator=g).to(device, dtype)
    v = torch.randn(B, T, C, generator=g).to(device, dtype)
    return w, u, k, v


def _median_cuda(fn: Callable[[], None], calls: int, repeats: int) -> float:
    """Median time of one call (µs), from a CUDA graph of `calls` calls replayed `repeats` times."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    del graph
    return statistics.median(times)


def _median_eager(fn: Callable[[], None], device: str, min_time: float = 0.3) -> float:
    """Median time of one eager call (µs), synchronizing around each timed call."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    deadline = time.perf_counter() + min_time
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def warm_up(device: str, seconds: float = 1.0) -> None:
    """Run the GPU busy for a while, so that timings start at its working clocks, not idle ones."""
    if device != "cuda":
        return
    x = torch.randn(4096, 4096, device=device)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(10):
            x = torch.tanh(x @ x)
        torch.cuda.synchronize()


def copy_bandwidth_GBps(device: str) -> dict[str, float]:
    """Device-to-device copy rates of 1 GiB of float32 (64 MiB on a CPU), counting bytes read plus
    bytes written: ``memcpy`` (``Tensor.copy_``, on a GPU the copy engine) and ``kernel`` (an
    elementwise kernel, ``torch.mul(x, 1, out=y)``, which moves data the way the op's kernels do).
    ``best`` is the larger: the ceiling the op's bandwidth is compared with."""
    n = (1 << 28) if device == "cuda" else (1 << 24)
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    rates = {}
    for name, fn in (
        ("memcpy", lambda: dst.copy_(src)),
        ("kernel", lambda: torch.mul(src, 1.0, out=dst)),
    ):
        if device == "cuda":
            us = _median_cuda(fn, calls=10, repeats=10)
        else:
            us = _median_eager(fn, device)
        rates[name] = 2 * 4 * n / us / 1e3
    rates["best"] = max(rates.values())
    return rates


def _rotating(make: Callable[[int], tuple], set_bytes: int, l2_bytes: int) -> list[tuple]:
    """Enough input sets that cycling through them does not run out of the L2 cache."""
    count = max(1, min(16, math.ceil(3 * l2_bytes / max(1, set_bytes))))
    return [make(i) for i in range(count)]


def _max_rel_err(ours: tuple, theirs: tuple) -> float:
    return max(
        ((a.double() - b.double()).norm() / b.double().norm()).item()
        for a, b in zip(ours, theirs, strict=True)
    )


def bench_cuda(shape, dtype_name: str, copy_GBps: float, with_torch: bool, kernels: dict) -> Row:
    """One row: each GPU implementation in ``kernels`` ({"cuda": ext, "triton": module}) timed
    with CUDA graphs on the same rotating inputs, and the PyTorch path on the first set."""
    B, T, C = shape
    dtype = DTYPES[dtype_name]
    n = B * T * C
    es = torch.tensor([], dtype=dtype).element_size()
    row = Row(B, T, C, dtype_name)
    if dtype == torch.float32 and shape in TARGETS_US:
        row.target_fwd_us, row.target_bwd_us = TARGETS_US[shape]
    first = next(iter(kernels.values()))
    l2 = torch.cuda.get_device_properties(0).L2_cache_size

    def make(i: int):
        w, u, k, v = _inputs(B, T, C, dtype, "cuda", seed=i)
        y, lse = first.forward(w, u, k, v, True)
        gy = torch.randn_like(y)
        return w, u, k, v, y, lse, gy

    sets = _rotating(make, n * (7 * es + 4), l2)
    step = iter(range(1 << 62))

    def pick():
        return sets[next(step) % len(sets)]

    calls = len(sets) * max(1, 8 // len(sets))
    times = {}
    for name, mod in kernels.items():
        times[name] = (
            _median_cuda(lambda mod=mod: mod.forward(*pick()[:4], False), calls, 20),
            _median_cuda(lambda mod=mod: mod.forward(*pick()[:4], True), calls, 20),
            _median_cuda(lambda mod=mod: mod.backward(*pick()), calls, 20),
        )
    if "cuda" in times:
        row.fwd_us, row.fwd_stats_us, row.bwd_us = times["cuda"]
        fwd_bytes = 3 * n * es  # read k, v; write y
        bwd_bytes = 6 * n * es + 4 * n  # read k, v, y, gy, lse; write gk, gv
        row.fwd_GBps = fwd_bytes / row.fwd_us / 1e3
        row.bwd_GBps = bwd_bytes / row.bwd_us / 1e3
        row.fwd_copy_pct = 100 * row.fwd_GBps / copy_GBps
        row.bwd_copy_pct = 100 * row.bwd_GBps / copy_GBps
    if "triton" in times:
        row.triton_fwd_us, row.triton_fwd_stats_us, row.triton_bwd_us = times["triton"]

    if with_torch:
        w, u, k, v, _, _, gy = sets[0]
        row.torch_fwd_us = _median_eager(lambda: scan_forward(w, u, k, v, False), "cuda")
        y_t, lse_t = scan_forward(w, u, k, v, True)
        row.torch_bwd_us = _median_eager(lambda: scan_backward(w, u, k, v, y_t, lse_t, gy), "cuda")
        # The paths must agree, or the comparison means nothing.
        theirs = (y_t, *scan_backward(w, u, k, v, y_t, lse_t, gy))
        for name, mod in kernels.items():
            y, lse = mod.forward(w, u, k, v, True)
            err = _max_rel_err((y, *mod.backward(w, u, k, v, y, lse, gy)), theirs)
            if name == "cuda":
                row.max_rel_err_vs_torch_path = err
            else:
                row.triton_max_rel_err_vs_torch_path = err
    for name, got, want in (("forward", row.fwd_us, row.target_fwd_us),
                            ("backward", row.bwd_us, row.target_bwd_us)):  # fmt: skip
        if want is not None and got is not None and got > want:
            row.notes.append(f"{name} misses its {want} µs target by {got - want:.1f} µs")
    sets.clear()  # free the inputs before the next shape
    torch.cuda.empty_cache()
    return row


def bench_cpu(shape, dtype_name: str, copy_GBps: float) -> Row:
    B, T, C = shape
    dtype = DTYPES[dtype_name]
    row = Row(B, T, C, dtype_name)
    w, u, k, v = _inputs(B, T, C, dtype, "cpu", seed=0)
    row.torch_fwd_us = _median_eager(lambda: scan_forward(w, u, k, v, False), "cpu")
    y, lse = scan_forward(w, u, k, v, True)
    gy = torch.randn_like(y)
    row.torch_bwd_us = _median_eager(lambda: scan_backward(w, u, k, v, y, lse, gy), "cpu")
    es = k.element_size()
    n = B * T * C
    row.fwd_GBps = 3 * n * es / row.torch_fwd_us / 1e3
    row.bwd_GBps = (6 * n * es + 4 * n) / row.torch_bwd_us / 1e3
    row.fwd_copy_pct = 100 * row.fwd_GBps / copy_GBps
    row.bwd_copy_pct = 100 * row.bwd_GBps / copy_GBps
    return row


def machine(device: str) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "biwkv4_kernel": biwkv4_kernel.__version__,
        "device": device,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            sm_count=props.multi_processor_count,
            l2_MiB=props.L2_cache_size / 2**20,
            memory_GiB=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            cuda_kernel=_ext.cuda_kernel_status(),
            triton_kernel=_triton.triton_kernel_status(),
        )
    return info


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[Row], copy_GBps: float, device: str) -> str:
    bw = ".0f" if device == "cuda" else ".2f"
    head = (
        f"{'B':>3} {'T':>6} {'C':>4} {'dtype':>5} | {'fwd µs':>8} {'+lse µs':>8} {'bwd µs':>8} | "
        f"{'fwd GB/s':>8} {'%copy':>5} {'bwd GB/s':>8} {'%copy':>5} | "
        f"{'torch fwd':>10} {'torch bwd':>10} {'speedup f/b':>12} | target f/b"
    )
    lines = [
        f"device-to-device copy (read + write, the best of memcpy and an elementwise kernel): "
        f"{copy_GBps:.0f} GB/s",
        head,
        "-" * len(head),
    ]
    for r in rows:
        speed = "-"
        if r.fwd_us and r.torch_fwd_us and r.bwd_us and r.torch_bwd_us:
            speed = f"{r.torch_fwd_us / r.fwd_us:.0f}x/{r.torch_bwd_us / r.bwd_us:.0f}x"
        target = "-" if r.target_fwd_us is None else f"{r.target_fwd_us}/{r.target_bwd_us}"
        lines.append(
            f"{r.B:>3} {r.T:>6} {r.C:>4} {r.dtype:>5} | {_fmt(r.fwd_us):>8} "
            f"{_fmt(r.fwd_stats_us):>8} {_fmt(r.bwd_us):>8} | {_fmt(r.fwd_GBps, bw):>8} "
            f"{_fmt(r.fwd_copy_pct, '.0f'):>5} {_fmt(r.bwd_GBps, bw):>8} "
            f"{_fmt(r.bwd_copy_pct, '.0f'):>5} | {_fmt(r.torch_fwd_us, '.0f'):>10} "
            f"{_fmt(r.torch_bwd_us, '.0f'):>10} {speed:>12} | {target}"
            + ("  " + "; ".join(r.notes) if r.notes else "")
        )
    if device == "cpu":
        lines.append("(CPU: the PyTorch path only; its numbers are in the fwd/bwd GB/s columns)")
    return "\n".join(lines)


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.2f}"


def comparison_table(rows: list[Row]) -> str:
    """The three implementations side by side (µs; ratios of times, lower is faster)."""
    head = (
        f"{'B':>3} {'T':>6} {'C':>4} {'dtype':>5} | {'cuda fwd/+lse/bwd µs':>22} | "
        f"{'triton fwd/+lse/bwd µs':>22} | {'triton÷cuda f/b':>15} | "
        f"{'pytorch fwd/bwd µs':>19} | {'pytorch÷triton f/b':>18}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        cuda = f"{_fmt(r.fwd_us)}/{_fmt(r.fwd_stats_us)}/{_fmt(r.bwd_us)}"
        triton = f"{_fmt(r.triton_fwd_us)}/{_fmt(r.triton_fwd_stats_us)}/{_fmt(r.triton_bwd_us)}"
        over_cuda = f"{_ratio(r.triton_fwd_us, r.fwd_us)}/{_ratio(r.triton_bwd_us, r.bwd_us)}"
        torch_path = f"{_fmt(r.torch_fwd_us, '.0f')}/{_fmt(r.torch_bwd_us, '.0f')}"
        speedup = (
            f"{_ratio(r.torch_fwd_us, r.triton_fwd_us)}/{_ratio(r.torch_bwd_us, r.triton_bwd_us)}"
        )
        lines.append(
            f"{r.B:>3} {r.T:>6} {r.C:>4} {r.dtype:>5} | {cuda:>22} | {triton:>22} | "
            f"{over_cuda:>15} | {torch_path:>19} | {speedup:>18}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32,bf16,fp16")
    parser.add_argument("--shapes", help="B,T,C;B,T,C;... (default: the standard set)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch-path baseline")
    parser.add_argument(
        "--kernels",
        default="cuda,triton",
        help="GPU implementations to time, comma-separated: cuda (the compiled extension), triton",
    )
    args = parser.parse_args(argv)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no GPU")
    kernels = {}
    for name in (n.strip() for n in args.kernels.split(",") if n.strip()):
        if name not in ("cuda", "triton"):
            parser.error(f"unknown kernel {name!r}; expected cuda and/or triton")
        if device != "cuda":
            continue
        if name == "cuda" and _ext.cuda_kernel_available():
            kernels[name] = _ext.load_extension()
        elif name == "triton" and _triton.triton_kernel_available():
            kernels[name] = _triton.load_kernels()
        else:
            status = _ext.cuda_kernel_status() if name == "cuda" else _triton.triton_kernel_status()
            print(f"skipping the {name} kernel: {status}", file=sys.stderr)
    if device == "cuda" and not kernels:
        parser.error(f"none of the kernels {args.kernels!r} is available (see above)")
    shapes = (
        [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";")]
        if args.shapes
        else (CUDA_SHAPES if device == "cuda" else CPU_SHAPES)
    )
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in dtypes:
        if d not in DTYPES:
            parser.error(f"unknown dtype {d!r}; expected some of {', '.join(DTYPES)}")

    torch.manual_seed(0)
    warm_up(device)
    copies = copy_bandwidth_GBps(device)
    copy = copies["best"]
    rows = []
    for shape in shapes:
        for d in dtypes:
            if device == "cuda":
                rows.append(bench_cuda(shape, d, copy, not args.no_torch, kernels))
            else:
                rows.append(bench_cpu(shape, d, copy))
            print(f"  done {shape} {d}", file=sys.stderr, flush=True)
    result = {
        "benchmark": "biwkv4",
        "machine": machine(device),
        "copy_bandwidth_GBps": copies,
        "kernels": list(kernels),
        "timing": (
            "median per call over 20 replays of a CUDA graph of back-to-back calls on rotating "
            "inputs"
            if device == "cuda"
            else "median wall time per eager call"
        ),
        "rows": [asdict(r) for r in rows],
    }
    print(json.dumps(result["machine"], indent=None))
    print(table(rows, copy, device))
    if device == "cuda":
        print("\nCompiled CUDA kernel, Triton kernels and the PyTorch path:")
        print(comparison_table(rows))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
