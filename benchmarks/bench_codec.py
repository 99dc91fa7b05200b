"""Where the time of the ``.hpcm`` codec goes, stage by stage, with the old and the new entropy
coder side by side, for HPCM-Base and the small preset ``hpcm-small`` on a 768x512 photo.

The photo is the bundled ``coffee.png`` (384x256, CC0) upscaled 2x with Lanczos to 768x512, the
size of a Kodak image, saved as a PNG file. The models carry the deterministic weight recipe of
``tests/models/fixtures/README.md`` (not trained weights: the timing depends on the number of
latents, not on what they are; pass ``--checkpoint`` to time real weights of one model).

Rows per model, all measured in the same run on the same image (``--coders``: both by default):

* ``file encode, <coder>``: the PNG file → ``.hpcm`` file, as ``hpcm compress`` does it after
  loading the model: :func:`~hpcm_models.image_io.read_image`, :meth:`ImageCodec.encode`, the
  atomic write. ``file decode, <coder>``: ``.hpcm`` file → PNG file (read, decode, PNG write).
  ``ans`` is :mod:`hpcm_models.ans`; ``compressai`` the old path, CompressAI's rANS behind Python
  lists (``ImageCodec(coder="compressai")``, the same bytes).
* ``codec encode/decode, <coder>``: the same in memory (Pillow image ⇄ bytes). CUDA only by
  default (``--codec-rows`` on CPU, where it adds little to the file rows but time).
* The stages alone: ``image read (PNG)``, ``image write (PNG)`` (of the decoded image: with the
  weight recipe, noise, which is slow to deflate; ``the source photo`` for a photo's cost, and
  with zlib level 1 instead of Pillow's default 6, for what a faster setting would save);
  ``network, encode`` (g_a, h_a,
  h_s and the 11 coding steps, no entropy coding) and ``network, decode`` (h_s, the 11 steps fed
  zeros, g_s): replayed from the codec's CUDA graphs on a GPU, eager on the CPU;
  ``latent hash (BLAKE2b)`` of every symbol in one thread; ``container write`` and ``container
  read + checks`` (CRCs, header, stream checks, escapes); and the entropy coder alone (below).
  The codec overlaps some of them (the encoder codes step k while the GPU computes step k + 1;
  hashing runs in a worker thread), so a file row is less than the sum of its stages.
* CUDA only: ``encode, eager`` / ``decode, eager`` (no graphs, IEEE float32 synthesis),
  ``decode, fp32 g_s`` (graphs, float32 synthesis), ``model.compress`` / ``model.decompress``
  (CompressAI's contract, no container or hashes) and ``forward`` (one eval pass).

Then the entropy coder alone (one host thread), on the symbols and table rows of this image (z,
then y's 11 coding steps, as the codec codes them): the old path against ``hpcm_models.ans``,
encode and decode, in symbols/s; the two must write identical streams. ``2 threads`` runs two
decodes (or encodes) at once: about 2x one job's throughput where the coder releases the GIL, and
a slowdown where it holds it. ``--coder-only`` skips everything else.

Times are medians over ``--repeat`` runs after ``--warmup`` runs; CUDA runs are synchronized.
Targets (issue 16) on an H200 for HPCM-Base: whole file <= 30 ms each way; the HPCM paper
reports 81.8 / 81.3 ms for encode / decode.

    python benchmarks/bench_codec.py                          # CUDA if there is a GPU
    python benchmarks/bench_codec.py --device cpu --json bench_codec.json
    python benchmarks/bench_codec.py --device cpu --models hpcm-small --coder-only
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
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
from hpcm_models.container import make_header_streams, read_container, write_container
from hpcm_models.devices import deterministic_coding
from hpcm_models.hashes import latent_hasher
from hpcm_models.image_io import read_image, write_atomic, write_image
from hpcm_models.rans import CODERS, check_rans_stream, codec_tables, parse_escapes
from hpcm_models.recipe import fill_recipe_weights

#: Issue 16's targets (H200, HPCM-Base 768x512, whole file) and the paper's times.
TARGET_MS = 30.0
PAPER_MS = {"encode": 81.8, "decode": 81.3}
#: The coder rows' names of the two paths.
PATHS = {"compressai": "CompressAI, Python lists", "ans": "hpcm_models.ans, arrays"}


def bench_image(width: int, height: int) -> Image.Image:
    with Image.open(files("hpcm_models") / "data" / "coffee.png") as image:
        return image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)


def _version(module: str) -> str | None:
    """``module.__version__``, or None where it is not installed (numba on a bare machine)."""
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return None


def machine(device: torch.device) -> dict[str, Any]:
    import compressai

    import biwkv4_kernel
    import rwkv_blocks

    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "compressai": compressai.__version__,
        "numba": _version("numba"),
        "llvmlite": _version("llvmlite"),
        "numpy": np.__version__,
        "pillow": Image.__version__,
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
    """Median/min wall time (ms) of ``fn()``, the process's CPU time (all threads), and the peak
    CUDA memory of one call."""
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    row: dict[str, Any] = {"median_ms": statistics.median(times), "min_ms": min(times)}
    row.update(times_ms=times, cpu_median_ms=statistics.median(cpu), cpu_times_ms=cpu)
    if device.type == "cuda":
        row["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def timed_together(
    jobs: dict[str, Callable[[], Any]], device: torch.device, warmup: int, repeat: int
) -> dict[str, dict[str, Any]]:
    """:func:`timed` of several jobs taking turns (one run of each per round), so that on a
    shared, noisy host every job sees the same conditions; also the process's CPU time of each
    run (all its threads: the work done, whatever else the host runs)."""
    times: dict[str, list[float]] = {name: [] for name in jobs}
    cpu: dict[str, list[float]] = {name: [] for name in jobs}
    for round_ in range(warmup + repeat):
        for name, job in jobs.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            job()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_ >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
                cpu[name].append((time.process_time() - start_cpu) * 1e3)
    return {
        name: {
            "median_ms": statistics.median(t),
            "min_ms": min(t),
            "times_ms": t,
            "cpu_median_ms": statistics.median(cpu[name]),
            "cpu_times_ms": cpu[name],
        }
        for name, t in times.items()
    }


def network_only(
    codec: ImageCodec, x: torch.Tensor, device: torch.device, warmup: int, repeat: int
) -> dict[str, dict[str, Any]]:
    """The codec's network parts alone (no rANS, no hashes, no container), with the host round
    trip per step of real coding: from the codec's CUDA graphs on a GPU, eager on the CPU. The
    decoder's steps are fed zeros (the work does not depend on the values)."""
    model = codec.model
    with codec._coding():
        z_q = torch.round(model.h_a(model.g_a(x)) - model.means_hyper) + 0.0

        def feed(k: int, outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
            return torch.zeros(outputs[0].cpu().numel())

        if device.type != "cuda":

            def encode() -> None:
                with codec._coding():
                    codec._encoder_tensors(x, lambda outputs, like: [t.cpu() for t in outputs])

            def decode() -> None:
                with codec._coding():
                    codec._decoder_tensors(z_q, lambda outputs, like: torch.zeros_like(like))

            return {
                "network, encode": timed(encode, device, warmup, repeat),
                "network, decode": timed(decode, device, warmup, repeat),
            }
        graph = codec._graph("encode", x, codec._encoder_tensors)
        assert graph is not None
        static, chain = graph
        static.copy_(x)
        rows = {
            "network, encode": timed(
                lambda: chain.replay(consume=lambda k, outputs: None), device, warmup, repeat
            )
        }
        graph = codec._graph("decode", z_q, codec._decoder_tensors)
        assert graph is not None
        static, chain = graph
        static.copy_(z_q)
        rows["network, decode"] = timed(lambda: chain.replay(feed), device, warmup, repeat)
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
    return {latent: codec_tables(model, latent) for latent in ("z", "y")}


def coder_paths(latents: Latents, tables: dict[str, ans.AnsTables]) -> dict[str, CoderPath]:
    """The old path (CompressAI behind lists) and the new one (``hpcm_models.ans``), as the
    codec's writer and reader use them: one stream per latent, encoded at once, decoded step by
    step."""

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
        PATHS["compressai"]: (encoder(compressai_encode), old_decode),
        PATHS["ans"]: (encoder(ans.encode), new_decode),
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
) -> tuple[dict[str, Any], dict[str, Any], Latents]:
    """:func:`measure_coders` of the old and new path on this image's own symbols; also returns
    the symbols."""
    steps = coded_steps(codec, x)
    latents = {"z": steps[:1], "y": steps[1:]}
    start = time.perf_counter()
    ans.warm_up()
    load_s = time.perf_counter() - start
    paths = coder_paths(latents, coder_tables(codec.model))
    rows, checks = measure_coders(paths, latents, repeat)
    old, new = (paths[name][0]() for name in paths)
    checks["coder: new streams identical to CompressAI's"] = old == new
    checks["coder: numba kernels load s (compiled at the codec's construction)"] = round(load_s, 3)
    return rows, checks, latents


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


# ---------------------------------------------------------------------------- the codec's stages


def build_model(name: str, checkpoint: str | None, device: torch.device) -> tuple[Any, str]:
    """``name`` with the weight recipe (or the checkpoint's weights), tables built, on
    ``device``; and a description of the weights."""
    if checkpoint:
        return load_checkpoint(checkpoint, name, device=device), f"checkpoint {checkpoint}"
    model = fill_recipe_weights(get_model(name)).eval()
    model.update()
    weights = "deterministic recipe (tests/models/fixtures/README.md), not trained"
    return model.to(device), weights


def file_jobs(codec: ImageCodec, folder: Path) -> dict[str, Callable[[], Any]]:
    """``file encode``: PNG file → ``.hpcm`` file; ``file decode``: back to a PNG file."""
    source = folder / "photo.png"
    target, back = folder / f"photo.{codec.coder}.hpcm", folder / f"photo.{codec.coder}.png"

    def encode_file() -> None:
        data = codec.encode(read_image(source))
        write_atomic(target, lambda f: f.write(data))

    def decode_file() -> None:
        write_image(back, codec.decode(target.read_bytes()), "PNG")

    return {"file encode": encode_file, "file decode": decode_file}


def file_rows(
    codecs: dict[str, ImageCodec], folder: Path, warmup: int, repeat: int, in_memory: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Whole-file encode and decode with each coder, taking turns (and, ``in_memory``, the codec
    alone); the checks that the coders' files and images are identical."""
    jobs: dict[str, Callable[[], Any]] = {}
    outputs: dict[str, tuple[bytes, bytes]] = {}
    image = read_image(folder / "photo.png")
    for coder, codec in codecs.items():
        data = codec.encode(image)
        outputs[coder] = (data, codec.decode(data).tobytes())
        jobs |= {f"{what}, {coder}": job for what, job in file_jobs(codec, folder).items()}
        if in_memory:
            jobs[f"codec encode, {coder}"] = lambda codec=codec: codec.encode(image)
            jobs[f"codec decode, {coder}"] = lambda codec=codec, data=data: codec.decode(data)
    device = next(iter(codecs.values())).device
    first = next(iter(outputs.values()))
    checks = {
        "files of every coder identical": all(o[0] == first[0] for o in outputs.values()),
        "images of every coder identical": all(o[1] == first[1] for o in outputs.values()),
    }
    return timed_together(jobs, device, warmup, repeat), checks


def stage_rows(
    codec: ImageCodec, folder: Path, latents: Latents, warmup: int, repeat: int
) -> dict[str, Any]:
    """The host stages alone: image file I/O, the latent hash, the container."""
    cpu = torch.device("cpu")
    source = folder / "photo.png"
    image = read_image(source)
    data = codec.encode(image)
    decoded = codec.decode(data)
    header, streams = read_container(data)
    chunks = [s for steps in latents.values() for s, _ in steps]

    def hash_symbols() -> None:
        h = latent_hasher(header.width, header.height, header.mode)
        for chunk in chunks:
            h.update(chunk)
        h.digest()

    def read_and_check() -> None:
        h, parts = read_container(data)
        codec.check_header(h)
        z_count, y_count = math.prod(h.z_shape), math.prod(h.y_shape)
        check_rans_stream(parts[0], z_count, "z")
        check_rans_stream(parts[1], y_count, "y")
        parse_escapes(parts[2] if len(parts) > 2 else None, z_count + y_count)

    def write() -> None:
        make_header_streams(list(zip(header.stream_kinds, streams, strict=True)))
        write_container(header, streams)

    return {
        "image read (PNG)": timed(lambda: read_image(source), cpu, warmup, repeat),
        "image write (PNG)": timed(
            lambda: write_image(folder / "write.png", decoded, "PNG"), cpu, warmup, repeat
        ),
        "image write (PNG), the source photo": timed(
            lambda: write_image(folder / "write.png", image, "PNG"), cpu, warmup, repeat
        ),
        "image write (PNG, zlib level 1), the source photo": timed(
            lambda: image.save(folder / "fast.png", compress_level=1), cpu, warmup, repeat
        ),
        "latent hash (BLAKE2b)": timed(hash_symbols, cpu, warmup, repeat),
        "container write": timed(write, cpu, warmup, repeat),
        "container read + checks": timed(read_and_check, cpu, warmup, repeat),
    }


def cuda_rows(
    codec: ImageCodec, image: Image.Image, x: torch.Tensor, warmup: int, repeat: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The GPU's extra rows (see the module docstring) and their checks."""
    model, device = codec.model, codec.device
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
        "decode, fp32 g_s": timed(lambda: exact_synthesis.decode(data), device, warmup, repeat),
        "encode, eager": timed(lambda: eager.encode(image), device, warmup, repeat),
        "decode, eager": timed(lambda: eager.decode(data), device, warmup, repeat),
        "model.compress": timed(compress, device, warmup, repeat),
        "model.decompress": timed(decompress, device, warmup, repeat),
        "forward": timed(forward, device, warmup, repeat),
    }
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
        "model.compress stream bytes": sum(len(s[0]) for s in encoded["strings"]),
    }
    return rows, checks


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Every row of one model (see the module docstring)."""
    cuda = device.type == "cuda"
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    repeat = args.repeat if args.repeat is not None else (10 if cuda else 3)
    model, weights = build_model(name, args.checkpoint, device)
    # The codec as users get it (CUDA graphs, TF32 synthesis), once per coder.
    codecs = {c: ImageCodec(model, name, cuda_graphs=True, coder=c) for c in args.coders}
    codec = next(iter(codecs.values()))
    width, height = args.size
    image = bench_image(width, height)
    x = torch.from_numpy(np.array(np.asarray(image).transpose(2, 0, 1), order="C"))[None]
    x = x.to(device, torch.float32) / 255
    x = F.pad(x, (0, -width % 128, 0, -height % 128), mode="replicate").contiguous()
    result: dict[str, Any] = {
        "model": name,
        "weights": weights,
        "image": f"coffee.png upscaled to {width}x{height} (Lanczos), as PNG",
        "warmup": warmup,
        "repeat": repeat,
        "rows": {},
        "checks": {},
    }
    print(f"\n== {name} ({weights}), {result['image']}")
    coder_rows, coder_checks, latents = coder_rates(codec, x, args.coder_repeat)
    for coder in args.coders:  # the coder alone, as a stage of the file rows (wall time)
        for what in ("encode", "decode"):
            row = coder_rows[f"{what}, {PATHS[coder]}"]["one_thread_wall"]
            result["rows"][f"coding {what}, {coder}"] = row
    if not args.coder_only:
        with tempfile.TemporaryDirectory() as folder:
            image.save(Path(folder) / "photo.png")
            rows, checks = file_rows(codecs, Path(folder), warmup, repeat, cuda or args.codec_rows)
            result["rows"].update(rows)
            result["checks"].update(checks)
            result["rows"].update(stage_rows(codec, Path(folder), latents, warmup, repeat))
        result["rows"].update(network_only(codec, x, device, warmup, repeat))
        if cuda:
            rows, checks = cuda_rows(codec, image, x, warmup, repeat)
            result["rows"].update(rows)
            result["checks"].update(checks)
        data = codec.encode(image)
        decoded = np.asarray(codec.decode(data)).astype(np.float64)
        mse = float(np.mean((decoded - np.asarray(image).astype(np.float64)) ** 2))
        result.update(bytes=len(data), bpp=8 * len(data) / (width * height))
        result["psnr_db"] = 10 * math.log10(255**2 / mse) if mse else math.inf
        print_stages(result)
    result["coder_rows"] = coder_rows
    result["checks"].update(coder_checks)
    print_coder(coder_rows, coder_checks["coder: symbols"], PATHS["compressai"])
    print("\n" + "\n".join(f"{k}: {v}" for k, v in result["checks"].items()))
    return result


#: The stages a whole-file row is made of (in the order they run), for the overlap column.
FILE_STAGES = {
    "encode": ("image read (PNG)", "network, encode", "coding encode", "latent hash (BLAKE2b)",
               "container write"),
    "decode": ("container read + checks", "network, decode", "coding decode",
               "latent hash (BLAKE2b)", "image write (PNG)"),
}  # fmt: skip


def print_stages(result: dict[str, Any]) -> None:
    """The stage table; a file row also shows the sum of its stages (what overlap saved)."""
    rows = result["rows"]
    print(f"file: {result['bytes']} bytes, {result['bpp']:.4f} bpp, PSNR {result['psnr_db']:.2f} "
          f"dB; median of {result['repeat']} after {result['warmup']} warm-up\n")  # fmt: skip
    print(_line("row", "median ms", "min ms", "process CPU ms", "sum of stages"))
    print(_line("-" * 50, *["-" * 14] * 4).replace(" ", "-"))
    for name, row in rows.items():
        stages = ""
        if name.startswith("file "):
            what, coder = name[5:].split(", ")
            parts = [rows.get(s, rows.get(f"{s}, {coder}")) for s in FILE_STAGES[what]]
            if all(p is not None for p in parts):
                stages = f"{sum(p['median_ms'] for p in parts):.1f}"
        cpu = f"{row['cpu_median_ms']:.1f}" if "cpu_median_ms" in row else ""
        print(_line(name, f"{row['median_ms']:.1f}", f"{row['min_ms']:.1f}", cpu, stages))


def _line(name: str, *cells: str) -> str:
    return f"| {name:<50} | " + " | ".join(f"{cell:>14}" for cell in cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=["hpcm-base", "hpcm-small"])
    parser.add_argument("--checkpoint", help="real weights instead of the recipe (one model)")
    parser.add_argument("--coders", nargs="+", choices=CODERS, default=["ans", "compressai"])
    parser.add_argument("--size", type=int, nargs=2, default=(768, 512), metavar=("W", "H"))
    parser.add_argument("--warmup", type=int, default=None, help="default: 3 on CUDA, 1 on CPU")
    parser.add_argument("--repeat", type=int, default=None, help="default: 10 on CUDA, 3 on CPU")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--coder-only", action="store_true", help="only the entropy coder rows")
    parser.add_argument("--coder-repeat", type=int, default=20, help="repeats of the coder rows")
    parser.add_argument("--codec-rows", action="store_true", help="in-memory rows on CPU too")
    args = parser.parse_args(argv)
    if args.checkpoint and len(args.models) != 1:
        parser.error("--checkpoint needs exactly one --models name")

    if args.device.startswith("cuda"):
        # Must be set before the first cuBLAS call for deterministic mode (the CLI does the same).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda, but torch sees no CUDA GPU")
    if args.threads:
        torch.set_num_threads(args.threads)

    result: dict[str, Any] = {
        "benchmark": "bench_codec",
        "machine": machine(device),
        "coders": args.coders,
        "target_ms": TARGET_MS,
        "paper_ms": PAPER_MS,
        "models": {},
    }
    m = result["machine"]
    where = m.get("gpu") or f"{m['processor']}, {m['cpu_count']} cores, load {m['load_average']}"
    print(f"bench_codec on {where}; torch {m['torch']}, compressai {m['compressai']}, numba "
          f"{m['numba']}, hpcm-models {m['hpcm_models']}, Python {m['python']}")  # fmt: skip
    for name in args.models:
        result["models"][name] = bench_model(name, args, device)
    if not args.coder_only:
        print(f"\ntarget (issue 16, H200, HPCM-Base): whole file <= {TARGET_MS:.0f} ms each way "
              f"(HPCM paper: {PAPER_MS['encode']} / {PAPER_MS['decode']} ms)")  # fmt: skip
    write_json(args.json, result)
    return 0


def write_json(path: str | None, result: dict[str, Any]) -> None:
    """Write ``result`` to ``path`` (nothing without one) and say so."""
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
