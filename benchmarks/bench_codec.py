"""Encode and decode time of a 768x512 photo with the ``.hpcm`` codec (inference + entropy coding).

The photo is the bundled ``coffee.png`` (384x256, CC0) upscaled 2x with Lanczos to 768x512, the
size of a Kodak image. The model is HPCM-Base (M=320, N=256) with the deterministic weight recipe
of ``tests/models/fixtures/README.md`` (not trained weights: the timing depends on the number of
latents, not on what they are; pass ``--checkpoint`` to time real weights).

Rows, all measured in the same run on the same image:

* ``codec encode`` / ``codec decode``: :meth:`ImageCodec.encode` / :meth:`ImageCodec.decode`,
  everything a user waits for: image conversion, padding, the network, rANS, hashes, container
  (and on decode its validation and the latent-hash check).
* ``encode, eager`` / ``decode, eager``: the codec without CUDA graphs and with an IEEE float32
  synthesis transform (the baseline).
* ``decode, fp32 g_s``: the codec (graphs) with its synthesis transform in IEEE float32 instead
  of TF32 (the bits are the same either way).
* ``model.compress`` / ``model.decompress``: the model's own CompressAI-style coding of the
  padded tensor (no container, no hashes): the baseline the codec adds its safety to.
* ``encode network (graph)`` / ``decode network (graph)`` (CUDA): the codec's network parts
  alone, replayed from their CUDA graphs; the rest of a codec row is rANS, hashing and I/O.
* ``forward``: one eval forward pass without entropy coding (all of g_a, h_a, h_s, the 11-step
  context model and g_s).

Then the entropy coder alone (one host thread), on the symbols and table rows of this image (z,
then y's 11 coding steps, as the codec codes them): the old path, CompressAI's rANS behind Python
lists as ``codec.py`` uses it, against ``hpcm_models.ans`` (NumPy arrays, numba), encode and
decode, in symbols/s; the two must write identical streams. ``2 threads`` runs two decodes (or
encodes) at once: about 2x one job's throughput where the coder releases the GIL, and a slowdown
where it holds it. ``--coder-only`` skips the codec rows.

Times are medians over ``--repeat`` runs after ``--warmup`` runs; CUDA runs are synchronized.
Target (issues 7, 9) on an H200: <= 40 ms each for encode and decode; the HPCM paper reports
81.8 / 81.3 ms.

    python benchmarks/bench_codec.py                          # CUDA if there is a GPU
    python benchmarks/bench_codec.py --device cpu --repeat 2 --json bench_codec.json
    python benchmarks/bench_codec.py --device cpu --coder-only     # the entropy coder alone
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from importlib.resources import files
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import hpcm_models
from hpcm_models import ans, get_model
from hpcm_models.ans_reference import CompressAIDecoder, compressai_encode
from hpcm_models.checkpoints import load_checkpoint
from hpcm_models.codec import ImageCodec
from hpcm_models.devices import deterministic_coding
from hpcm_models.recipe import fill_recipe_weights

TARGET_MS = 40.0
PAPER_MS = {"encode": 81.8, "decode": 81.3}


def bench_image(width: int, height: int) -> Image.Image:
    with Image.open(files("hpcm_models") / "data" / "coffee.png") as image:
        return image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)


def machine(device: torch.device) -> dict[str, Any]:
    import compressai
    import llvmlite
    import numba

    import biwkv4_kernel
    import rwkv_blocks

    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "compressai": compressai.__version__,
        "numba": numba.__version__,
        "llvmlite": llvmlite.__version__,
        "numpy": np.__version__,
        "hpcm_models": hpcm_models.__version__,
        "rwkv_blocks": rwkv_blocks.__version__,
        "biwkv4_kernel": biwkv4_kernel.__version__,
        "device": str(device),
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1))
        info.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeat: int) -> dict[str, Any]:
    """Median/min wall time (ms) of ``fn()``, and the peak CUDA memory of one call."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    row: dict[str, Any] = {"median_ms": statistics.median(times), "min_ms": min(times)}
    row["times_ms"] = times
    if device.type == "cuda":
        row["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def network_only(
    codec: ImageCodec, x: torch.Tensor, device: torch.device, warmup: int, repeat: int
) -> dict[str, dict[str, Any]]:
    """The CUDA-graph network parts of encode and decode alone (no rANS, no container): the
    decoder chain is fed zeros, with the same host round trip per step as real decoding."""
    rows = {}
    with codec._coding():
        graph = codec._graph("encode", x, codec._encoder_tensors)
        assert graph is not None
        static, chain = graph
        static.copy_(x)
        rows["encode network (graph)"] = timed(
            lambda: chain.replay(consume=lambda k, outputs: None), device, warmup, repeat
        )
        model = codec.model
        z_q = torch.round(model.h_a(model.g_a(x)) - model.means_hyper) + 0.0
        graph = codec._graph("decode", z_q, codec._decoder_tensors)
        assert graph is not None
        static, chain = graph
        static.copy_(z_q)

        def feed(k: int, outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
            return torch.zeros(outputs[0].cpu().numel())

        rows["decode network (graph)"] = timed(lambda: chain.replay(feed), device, warmup, repeat)
    return rows


def coded_steps(codec: ImageCodec, x: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """(symbols as coded, table rows) of z and of each coding step of y, int32, in coding order:
    what the codec hands its entropy coder for this image (one eager encoder pass)."""
    steps: list[tuple[np.ndarray, np.ndarray]] = []

    def split(outputs: tuple[torch.Tensor, ...], like: None) -> None:
        _, coded, rows, _ = (t.cpu().numpy() for t in outputs)
        steps.append((coded, rows))

    with codec._coding():
        codec._encoder_tensors(x, split)
    return steps


Streams = list[bytes]
#: An entropy-coding path: (encode every latent -> streams, decode the streams -> symbols).
CoderPath = tuple[Callable[[], Streams], Callable[[Streams], list[np.ndarray]]]
Latents = dict[str, list[tuple[np.ndarray, np.ndarray]]]


def coder_tables(model: torch.nn.Module) -> dict[str, ans.AnsTables]:
    """The model's escape-free rANS tables of z and y (what the codec codes with)."""
    return {
        latent: ans.AnsTables.from_cdfs(
            getattr(model, f"quantized_cdf_{latent}").cpu(),
            getattr(model, f"cdf_length_{latent}").cpu(),
            getattr(model, f"offset_{latent}").cpu(),
            name=latent,
        )
        for latent in ("z", "y")
    }


def coder_paths(latents: Latents, tables: dict[str, ans.AnsTables]) -> dict[str, CoderPath]:
    """The old path (CompressAI behind lists, as ``codec.py`` codes) and the new one
    (``hpcm_models.ans``): one stream per latent, encoded at once, decoded step by step."""

    def encoder(encode: Callable[..., bytes]) -> Callable[[], Streams]:
        def run() -> Streams:
            return [
                encode(np.concatenate([s for s, _ in chunk]),
                       np.concatenate([r for _, r in chunk]), tables[latent])
                for latent, chunk in latents.items()
            ]  # fmt: skip

        return run

    def old_decode(streams: Streams) -> list[np.ndarray]:
        out = []
        for (latent, chunk), data in zip(latents.items(), streams, strict=True):
            decoder = CompressAIDecoder(data, sum(r.size for _, r in chunk), tables[latent])
            out += [decoder.decode(rows) for _, rows in chunk]
        return out

    def new_decode(streams: Streams) -> list[np.ndarray]:
        out = []
        for (latent, chunk), data in zip(latents.items(), streams, strict=True):
            decoder = ans.AnsDecoder(data, tables[latent])
            out += [decoder.decode(rows) for _, rows in chunk]
            decoder.finish()
        return out

    return {
        "CompressAI, Python lists": (encoder(compressai_encode), old_decode),
        "hpcm_models.ans, arrays": (encoder(ans.encode), new_decode),
    }


def cpu_timed(fn: Callable[[], Any], repeat: int) -> dict[str, Any]:
    """Best/median CPU time (ms) of the calling thread over ``repeat`` calls after one: on a
    shared host, a single-threaded coder's own time, without the time others took the core."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.thread_time()
        fn()
        times.append((time.thread_time() - start) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "times_ms": times}


def measure_coders(
    paths: dict[str, CoderPath], latents: Latents, repeat: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Symbols/s of each path, encode and decode: one thread (CPU time), the speedup of two jobs
    on two threads over two in a row (wall time), the longest GIL stall it causes. Returns (rows,
    checks)."""
    symbols = [s for chunk in latents.values() for s, _ in chunk]
    count = sum(s.size for s in symbols)
    rows: dict[str, Any] = {}
    checks: dict[str, Any] = {"coder: symbols": count}
    for name, (encode, decode) in paths.items():
        streams = encode()
        decoded = decode(streams)
        checks[f"coder: {name}: round trip"] = all(
            np.array_equal(a, b) for a, b in zip(decoded, symbols, strict=True)
        )
        checks[f"coder: {name}: stream bytes"] = sum(map(len, streams))
        for what, fn in (("encode", encode), ("decode", lambda d=decode, s=streams: d(s))):
            one = cpu_timed(fn, repeat)
            one_wall = timed(fn, torch.device("cpu"), 0, repeat)
            two_wall = timed(lambda fn=fn: in_threads(fn, 2), torch.device("cpu"), 1, repeat)
            rows[f"{what}, {name}"] = {
                "symbols_per_s": count / (one["min_ms"] / 1e3),
                "median_symbols_per_s": count / (one["median_ms"] / 1e3),
                "two_threads_speedup": 2 * one_wall["min_ms"] / two_wall["min_ms"],
                "gil_stall_ms": gil_stall_ms(fn),
                "one_thread_cpu": one,
                "one_thread_wall": one_wall,
                "two_threads_wall": two_wall,
            }
    return rows, checks


def coder_rates(
    codec: ImageCodec, x: torch.Tensor, repeat: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`measure_coders` of the old and new path on this image's own symbols."""
    steps = coded_steps(codec, x)
    latents = {"z": steps[:1], "y": steps[1:]}
    start = time.perf_counter()
    ans.warm_up()
    load_s = time.perf_counter() - start
    paths = coder_paths(latents, coder_tables(codec.model))
    rows, checks = measure_coders(paths, latents, repeat)
    old, new = (paths[name][0]() for name in paths)
    checks["coder: new streams identical to CompressAI's"] = old == new
    checks["coder: numba kernels load/compile s"] = round(load_s, 3)
    return rows, checks


def gil_stall_ms(fn: Callable[[], Any], runs: int = 3, nap: float = 2e-4) -> float:
    """Longest time another Python thread waited to wake up from ``nap``-second sleeps while
    ``fn`` ran ``runs`` times in the background: about the longest call's length where ``fn``
    holds the GIL through a call, scheduling noise (well below a call) where it releases it."""
    done = threading.Event()

    def background() -> None:
        for _ in range(runs):
            fn()
        done.set()

    worst = 0.0
    thread = threading.Thread(target=background)
    thread.start()
    while not done.is_set():
        start = time.perf_counter()
        time.sleep(nap)
        worst = max(worst, time.perf_counter() - start)
    thread.join()
    return worst * 1e3


def in_threads(fn: Callable[[], Any], count: int) -> None:
    threads = [threading.Thread(target=fn) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def print_coder(rows: dict[str, Any], count: int, baseline: str) -> None:
    print(f"\nentropy coder alone: {count:,} symbols; M symbols/s of one thread (its CPU time), "
          f"best and median of the repeats; vs {baseline}")  # fmt: skip
    width = max(len(name) for name in rows)
    print(f"| {'path':<{width}} | {'best':>6} | {'median':>6} | {'vs old':>7} | {'2 threads':>9} "
          f"| {'GIL stall':>9} |")  # fmt: skip
    print(f"|{'-' * (width + 2)}|{'-' * 8}|{'-' * 8}|{'-' * 9}|{'-' * 11}|{'-' * 11}|")
    for name, row in rows.items():
        what = name.split(",")[0]
        ratio = row["symbols_per_s"] / rows[f"{what}, {baseline}"]["symbols_per_s"]
        print(
            f"| {name:<{width}} | {row['symbols_per_s'] / 1e6:>6.1f} | "
            f"{row['median_symbols_per_s'] / 1e6:>6.1f} | {ratio:>6.1f}x | "
            f"{row['two_threads_speedup']:>8.2f}x | {row['gil_stall_ms']:>6.1f} ms |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="hpcm-base")
    parser.add_argument("--checkpoint", help="real weights instead of the recipe")
    parser.add_argument("--size", type=int, nargs=2, default=(768, 512), metavar=("W", "H"))
    parser.add_argument("--warmup", type=int, default=None, help="default: 3 on CUDA, 1 on CPU")
    parser.add_argument("--repeat", type=int, default=None, help="default: 10 on CUDA, 3 on CPU")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--coder-only", action="store_true", help="only the entropy coder rows")
    parser.add_argument("--coder-repeat", type=int, default=20, help="repeats of the coder rows")
    args = parser.parse_args(argv)

    if args.device.startswith("cuda"):
        # Must be set before the first cuBLAS call for deterministic mode (the CLI does the same).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda, but torch sees no CUDA GPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    repeat = args.repeat if args.repeat is not None else (10 if cuda else 3)

    if args.checkpoint:
        model = load_checkpoint(args.checkpoint, args.model, device=device)
        weights = f"checkpoint {args.checkpoint}"
    else:
        model = fill_recipe_weights(get_model(args.model)).eval()
        model.update()
        model = model.to(device)
        weights = "deterministic recipe (tests/models/fixtures/README.md), not trained"
    # The codec as users get it (CUDA graphs once a size repeats, TF32 synthesis).
    codec = ImageCodec(model, args.model, cuda_graphs=True)
    width, height = args.size
    image = bench_image(width, height)
    x = torch.from_numpy(np.array(np.asarray(image).transpose(2, 0, 1), order="C"))[None]
    x = x.to(device, torch.float32) / 255
    x = F.pad(x, (0, -width % 128, 0, -height % 128), mode="replicate").contiguous()

    result: dict[str, Any] = {
        "benchmark": "bench_codec",
        "machine": machine(device),
        "model": args.model,
        "weights": weights,
        "image": f"coffee.png upscaled to {width}x{height} (Lanczos)",
        "warmup": warmup,
        "repeat": repeat,
        "target_ms": TARGET_MS,
        "paper_ms": PAPER_MS,
        "rows": {},
        "checks": {},
    }
    m = result["machine"]
    where = m.get("gpu") or f"{m['processor']}, {m['torch_threads']} threads"
    print(f"bench_codec: {args.model} ({weights}), {result['image']}")
    print(f"{where}; torch {m['torch']}, compressai {m['compressai']}, numba {m['numba']}, "
          f"hpcm-models {m['hpcm_models']}")  # fmt: skip
    if not args.coder_only:
        result.update(time_codec(codec, image, x, warmup, repeat))
        print_codec(result)
    coder_rows, coder_checks = coder_rates(codec, x, args.coder_repeat)
    result["coder_rows"] = coder_rows
    result["checks"].update(coder_checks)
    print_coder(coder_rows, coder_checks["coder: symbols"], "CompressAI, Python lists")
    print("\n" + "\n".join(f"{k}: {v}" for k, v in result["checks"].items()))
    if not args.coder_only:
        print(f"\ntarget: <= {TARGET_MS:.0f} ms each on an H200 (HPCM paper: "
              f"{PAPER_MS['encode']} / {PAPER_MS['decode']} ms)")  # fmt: skip
    write_json(args.json, result)
    return 0


def write_json(path: str | None, result: dict[str, Any]) -> None:
    """Write ``result`` to ``path`` (nothing without one) and say so."""
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {path}")


def time_codec(
    codec: ImageCodec, image: Image.Image, x: torch.Tensor, warmup: int, repeat: int
) -> dict[str, Any]:
    """The codec rows (see the module docstring), their checks and the file's size and PSNR."""
    model, device = codec.model, codec.device
    # The baseline of the same run: the codec without graphs and with an IEEE float32 synthesis.
    eager = ImageCodec(model, codec.model_id, cuda_graphs=False, synthesis="fp32")
    exact_synthesis = ImageCodec(model, codec.model_id, cuda_graphs=True, synthesis="fp32")
    data = codec.encode(image)
    encoded = model.compress(x)

    def forward() -> None:
        with deterministic_coding(device), torch.no_grad():
            model(x, training=False)

    def compress() -> None:
        with deterministic_coding(device):
            model.compress(x)

    def decompress() -> None:
        with deterministic_coding(device):
            model.decompress(encoded["strings"], encoded["shape"])

    rows = {
        "codec encode": timed(lambda: codec.encode(image), device, warmup, repeat),
        "codec decode": timed(lambda: codec.decode(data), device, warmup, repeat),
        "decode, fp32 g_s": timed(lambda: exact_synthesis.decode(data), device, warmup, repeat),
        "encode, eager": timed(lambda: eager.encode(image), device, warmup, repeat),
        "decode, eager": timed(lambda: eager.decode(data), device, warmup, repeat),
        "model.compress": timed(compress, device, warmup, repeat),
        "model.decompress": timed(decompress, device, warmup, repeat),
        "forward": timed(forward, device, warmup, repeat),
    }
    if device.type == "cuda":
        rows.update(network_only(codec, x, device, warmup, repeat))
    decoded = codec.decode_detailed(data)
    eager_decoded = eager.decode_detailed(data)
    checks = {
        "graph and eager files identical": eager.encode(image) == data,
        "graph and eager decodes identical (fp32 g_s)": torch.equal(
            exact_synthesis.decode_detailed(data).x_hat, eager_decoded.x_hat
        ),
        "tf32 g_s: max pixel difference to fp32": int(
            np.abs(
                np.asarray(eager_decoded.image).astype(int) - np.asarray(decoded.image).astype(int)
            ).max()
        ),
    }
    rgb = np.asarray(image).astype(np.float64)
    mse = float(np.mean((np.asarray(decoded.image).astype(np.float64) - rgb) ** 2))
    return {
        "bytes": len(data),
        "bpp": 8 * len(data) / (image.width * image.height),
        "model_stream_bytes": sum(len(s[0]) for s in encoded["strings"]),
        "psnr_db": 10 * math.log10(255**2 / mse) if mse else math.inf,
        "rows": rows,
        "checks": checks,
    }


def print_codec(result: dict[str, Any]) -> None:
    rows = result["rows"]
    print(f"file: {result['bytes']} bytes, {result['bpp']:.4f} bpp ({result['model_stream_bytes']} "
          f"bytes of model streams); median of {result['repeat']} after {result['warmup']} "
          "warm-up\n")  # fmt: skip
    baseline = {
        "codec encode": "encode, eager",
        "codec decode": "decode, eager",
        "decode, fp32 g_s": "decode, eager",
        "encode, eager": "model.compress",
        "decode, eager": "model.decompress",
    }
    print(
        f"| {'step':<26} | {'median ms':>9} | {'min ms':>8} | {'vs baseline':>22} | "
        f"{'vs target':>9} |"
    )
    print(f"|{'-' * 28}|{'-' * 11}|{'-' * 10}|{'-' * 24}|{'-' * 11}|")
    for name, row in rows.items():
        ratio = row["median_ms"] / rows[baseline[name]]["median_ms"] if name in baseline else None
        versus = f"{ratio:.2f}x {baseline[name].split(',')[0]}" if ratio else ""
        target = row["median_ms"] / TARGET_MS if name.startswith("codec") else None
        print(
            f"| {name:<26} | {row['median_ms']:>9.1f} | {row['min_ms']:>8.1f} | "
            f"{versus:>22} | {f'{target:.2f}x' if target else '':>9} |"
        )


if __name__ == "__main__":
    sys.exit(main())
