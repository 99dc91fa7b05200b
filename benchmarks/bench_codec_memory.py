"""Peak memory of ``ImageCodec.encode``/``decode`` per model and image size: the numbers behind
the memory bound of ``docs/format.md`` and the default ``Limits.max_pixels``.

Each model runs in a process of its own (fresh allocator), with random weights (memory depends on
the shapes, not on the values) at ``--M``/``--N`` (default: the model's own), on random-noise images
of each ``--sizes``, in increasing order, after one untimed encode and decode of a 128x128 image
(first-call costs: kernel caches, thread pools). On the CPU the peak is the growth of the resident
set (``VmHWM``, reset through ``/proc/self/clear_refs`` before each call) over the resident set
before it, the weights not counted; glibc is told to return freed memory (a fixed
``MALLOC_MMAP_THRESHOLD_`` in the child's environment, ``malloc_trim`` before each call), so that
memory the previous call freed is not reused unseen. On CUDA it is
``torch.cuda.max_memory_allocated`` over the memory allocated before. Prints a table (bytes per
coded pixel: the peak over the padded pixel count; the process's whole resident peak) and the
weights' size, and with ``--json`` writes everything with the machine and versions.

    python benchmarks/bench_codec_memory.py                       # every built-in model, CPU
    python benchmarks/bench_codec_memory.py --models hpcm-base --sizes 512x512 1024x1024 --M 512
    python benchmarks/bench_codec_memory.py --device cuda --json memory.json
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
from typing import Any

import numpy as np
import torch
from PIL import Image

from hpcm_models import BUILTIN_MODELS, ImageCodec
from hpcm_models.checkpoints import random_model
from hpcm_models.container import Limits


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _release() -> None:
    """Collect garbage and hand freed heap memory back to the system (glibc; elsewhere a no-op)."""
    gc.collect()
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _peak(fn: Any, device: torch.device) -> tuple[int, int]:
    """Peak memory growth of ``fn()`` and the peak itself (the process's resident set on the
    CPU, allocated memory on CUDA), in bytes."""
    _release()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return peak - before, peak
    before = _status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    fn()
    peak = _status_bytes("VmHWM")
    return peak - before, peak


def measure_model(name: str, sizes: list[tuple[int, int]], args: argparse.Namespace) -> list[dict]:
    """Rows of one model (run in this process)."""
    device = torch.device(args.device)
    torch.set_num_threads(1)
    sizes_kwargs = {k: v for k, v in (("M", args.M), ("N", args.N)) if v is not None}
    model = random_model(name, seed=0, device=device, **sizes_kwargs)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    codec = ImageCodec(model, cuda_graphs=False, limits=Limits(max_pixels=1 << 30))
    rng = np.random.default_rng(0)

    def noise(width: int, height: int) -> Image.Image:
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))

    codec.decode(codec.encode(noise(128, 128)))  # first-call costs, not counted below
    rows = []
    for width, height in sizes:
        image = noise(width, height)
        coded = (-(-width // 128) * 128) * (-(-height // 128) * 128)
        data = bytearray()
        encode, encode_peak = _peak(lambda i=image, d=data: d.extend(codec.encode(i)), device)
        decode, decode_peak = _peak(lambda d=data: codec.decode(bytes(d)), device)
        rows.append(
            {
                "model": name, "M": model.M, "N": model.N, "width": width, "height": height,
                "coded_pixels": coded, "file_bytes": len(data), "weights_bytes": weights,
                "encode_bytes": encode, "decode_bytes": decode,
                "encode_bytes_per_pixel": round(encode / coded, 1),
                "decode_bytes_per_pixel": round(decode / coded, 1),
                "process_peak_bytes": max(encode_peak, decode_peak),
            }
        )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(BUILTIN_MODELS))
    parser.add_argument("--sizes", nargs="+", default=["256x256", "512x512", "1024x1024"])
    parser.add_argument("--M", type=int, help="latent channels (default: the model's own)")
    parser.add_argument("--N", type=int, help="hyper-latent channels (default: the model's own)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    if args.one:
        print(json.dumps(measure_model(args.models[0], sizes, args)))
        return 0
    rows = []
    # A fixed mmap threshold (which also stops glibc from raising it after frees): blocks of
    # 128 KiB and more are mapped and unmapped, so freed activations leave the resident set.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 << 10)}
    for name in args.models:
        child = [sys.executable, __file__, "--one", "--models", name, "--sizes", *args.sizes,
                 "--device", args.device]  # fmt: skip
        child += [
            arg for k in ("M", "N") if getattr(args, k) for arg in (f"--{k}", str(getattr(args, k)))
        ]
        out = subprocess.run(child, capture_output=True, text=True, check=True, env=env).stdout
        rows += json.loads(out.strip().splitlines()[-1])
    print(
        f"{'model':18} {'size':>10} {'weights MiB':>11} {'encode B/px':>11} "
        f"{'decode B/px':>11} {'process peak MiB':>16}"
    )
    for r in rows:
        size = f"{r['width']}x{r['height']}"
        print(
            f"{r['model']:18} {size:>10} {r['weights_bytes'] / 2**20:11.0f} "
            f"{r['encode_bytes_per_pixel']:11.0f} {r['decode_bytes_per_pixel']:11.0f} "
            f"{r['process_peak_bytes'] / 2**20:16.0f}"
        )
    if args.json:
        payload = {
            "rows": rows,
            "device": args.device,
            "machine": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "date": datetime.date.today().isoformat(),
        }
        with open(args.json, "w") as f:
            f.write(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
