"""The candidates for the codec's entropy coder, measured side by side (docs/performance.md,
"Entropy coder"): symbols/s of encode and decode on one host thread, whether two threads help,
and how long each holds the GIL.

* ``CompressAI, Python lists``: CompressAI 1.2.8's rANS as ``codec.py`` used it (the baseline).
* ``hpcm_models.ans, arrays``: the chosen coder (the same bitstream).
* ``constriction, a model per table``: constriction's ``AnsCoder`` with one ``Categorical`` per
  table row (quantized by constriction to its 24-bit precision: another bitstream), symbols
  grouped by row within each coding step (a stable sort per step, which the decoder can repeat
  because it knows a step's rows before decoding it). Only if ``constriction`` is installed
  (``pip install constriction``; not a dependency).
* constriction's bound: all symbols of a latent with a single mid-size model, one call, no
  grouping: what its loops cost without per-call overhead (not a usable coder).

Symbols: ``real``, the z and y symbols and table rows of the benchmark photo (768x512) coded by
HPCM-Base with the weight recipe (one eager encoder pass, ~30 s on a CPU); ``synthetic``, the same
counts with rows spread uniformly over the 40 narrowest scales and symbols drawn from each row's
own distribution (what a trained model's latents look like to the coder).

    python benchmarks/compare_entropy_coders.py --json coders.json
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from typing import Any

import numpy as np
import torch
from bench_codec import (
    CoderPath,
    Latents,
    bench_image,
    coded_steps,
    coder_paths,
    coder_tables,
    cpu_timed,
    gil_stall_ms,
    machine,
    measure_coders,
    print_coder,
    write_json,
)

from hpcm_models import ans, get_model
from hpcm_models.ans_reference import CompressAIDecoder
from hpcm_models.codec import ImageCodec
from hpcm_models.recipe import fill_recipe_weights

BASELINE = "CompressAI, Python lists"


def synthetic(latents: Latents, tables: dict[str, ans.AnsTables], seed: int = 0) -> Latents:
    """The same step sizes with rows uniform over the 40 narrowest scales (z keeps its rows) and
    each symbol drawn from its row's distribution."""
    rng = np.random.default_rng(seed)
    out: Latents = {}
    for latent, chunk in latents.items():
        t = tables[latent]
        out[latent] = []
        for _, rows in chunk:
            if latent == "y":
                rows = rng.integers(0, min(40, t.rows), rows.size).astype(np.int32)
            symbols = np.empty(rows.size, dtype=np.int32)
            for r in np.unique(rows):
                at = np.flatnonzero(rows == r)
                p = np.diff(t.cdf[r, : t.counts[r] + 1]) / (1 << ans.PRECISION)
                symbols[at] = rng.choice(t.counts[r], at.size, p=p) + t.offsets[r]
            out[latent].append((symbols, rows))
    return out


def constriction_paths(latents: Latents, tables: dict[str, ans.AnsTables]) -> dict[str, CoderPath]:
    """constriction's AnsCoder, a Categorical per row, symbols grouped by row per step; and the
    one-model bound."""
    import constriction

    categorical = constriction.stream.model.Categorical
    coder_class = constriction.stream.stack.AnsCoder
    models = {
        latent: [
            categorical(np.diff(t.cdf[r, : t.counts[r] + 1]) / (1 << ans.PRECISION), perfect=False)
            for r in range(t.rows)
        ]
        for latent, t in tables.items()
    }

    def groups(rows: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        cuts = [0, *(np.flatnonzero(np.diff(ordered)) + 1).tolist(), rows.size]
        return order, [(int(ordered[a]), a, b) for a, b in itertools.pairwise(cuts)]

    def encode() -> list[bytes]:
        streams = []
        for latent, chunk in latents.items():
            coder, t = coder_class(), tables[latent]
            for symbols, rows in reversed(chunk):  # a stack: the last step first
                order, runs = groups(rows)
                values = (symbols - t.offsets[rows])[order].astype(np.int32)
                for r, a, b in reversed(runs):
                    coder.encode_reverse(values[a:b], models[latent][r])
            streams.append(coder.get_compressed().tobytes())
        return streams

    def decode(streams: list[bytes]) -> list[np.ndarray]:
        out = []
        for (latent, chunk), data in zip(latents.items(), streams, strict=True):
            coder, t = coder_class(np.frombuffer(data, np.uint32).copy()), tables[latent]
            for _, rows in chunk:
                order, runs = groups(rows)
                symbols = np.empty(rows.size, dtype=np.int32)
                for r, a, b in runs:
                    symbols[order[a:b]] = coder.decode(models[latent][r], b - a) + t.offsets[r]
                out.append(symbols)
        return out

    return {"constriction, a model per table": (encode, decode)}


def constriction_bound(
    latents: Latents, tables: dict[str, ans.AnsTables], repeat: int
) -> dict[str, float]:
    """M symbols/s of constriction's loops alone: every symbol of a latent (clipped to the row)
    coded with the single model of row 20, one call per latent (not a usable coder)."""
    import constriction

    coder_class = constriction.stream.stack.AnsCoder
    jobs = []
    for latent, chunk in latents.items():
        t, r = tables[latent], min(20, tables[latent].rows - 1)
        p = np.diff(t.cdf[r, : t.counts[r] + 1]) / (1 << ans.PRECISION)
        model = constriction.stream.model.Categorical(p, perfect=False)
        values = np.concatenate([s for s, _ in chunk]) - t.offsets[r]
        jobs.append((model, np.clip(values, 0, t.counts[r] - 1).astype(np.int32)))

    def encode() -> list[np.ndarray]:
        coders = [coder_class() for _ in jobs]
        for coder, (model, values) in zip(coders, jobs, strict=True):
            coder.encode_reverse(values, model)
        return [coder.get_compressed() for coder in coders]

    streams = encode()

    def decode() -> None:
        for data, (model, values) in zip(streams, jobs, strict=True):
            coder_class(data.copy()).decode(model, values.size)

    count = sum(v.size for _, v in jobs)
    return {
        what: count / (cpu_timed(fn, repeat)["min_ms"] / 1e3) / 1e6
        for what, fn in (("encode", encode), ("decode", decode))
    }


def gil_in_long_calls(latents: Latents, tables: dict[str, ans.AnsTables]) -> dict[str, Any]:
    """Whether each coder releases the GIL: one call on y's symbols repeated 8 times (~4 M), run
    in a thread while this one wakes from 0.1 ms sleeps. Returns, per call, its length and the
    longest wait (ms): about the call's length where the GIL is held throughout, scheduling noise
    where it is released."""
    t = tables["y"]
    symbols = np.tile(np.concatenate([s for s, _ in latents["y"]]), 8)
    rows = np.tile(np.concatenate([r for _, r in latents["y"]]), 8)
    data = ans.encode(symbols, rows, t)
    calls = {
        "hpcm_models.ans encode": lambda: ans.encode(symbols, rows, t),
        "hpcm_models.ans decode": lambda: ans.decode(data, rows, t),
        "CompressAI decode (list in, list out)": lambda: CompressAIDecoder(
            data, rows.size, t
        ).decode(rows),
    }
    try:
        import constriction
    except ImportError:
        pass
    else:
        r = min(20, t.rows - 1)
        p = np.diff(t.cdf[r, : t.counts[r] + 1]) / (1 << ans.PRECISION)
        model = constriction.stream.model.Categorical(p, perfect=False)
        values = np.clip(symbols - t.offsets[r], 0, t.counts[r] - 1).astype(np.int32)
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(values, model)
        words = coder.get_compressed()
        calls["constriction encode (one model)"] = lambda: (
            constriction.stream.stack.AnsCoder().encode_reverse(values, model)
        )
        calls["constriction decode (one model)"] = lambda: constriction.stream.stack.AnsCoder(
            words.copy()
        ).decode(model, values.size)
    out = {}
    for name, fn in calls.items():
        start = time.perf_counter()
        fn()
        length = (time.perf_counter() - start) * 1e3
        out[name] = {"call_ms": length, "longest_wait_ms": gil_stall_ms(fn, runs=1, nap=1e-4)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="hpcm-base")
    parser.add_argument("--size", type=int, nargs=2, default=(768, 512), metavar=("W", "H"))
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    model = fill_recipe_weights(get_model(args.model)).eval()
    model.update()
    codec = ImageCodec(model, args.model)
    image = bench_image(*args.size)
    x = torch.from_numpy(np.array(np.asarray(image).transpose(2, 0, 1), order="C"))[None] / 255
    x = torch.nn.functional.pad(x, (0, -args.size[0] % 128, 0, -args.size[1] % 128), "replicate")
    steps = coded_steps(codec, x.contiguous())
    tables = coder_tables(model)
    real: Latents = {"z": steps[:1], "y": steps[1:]}
    ans.warm_up()
    result: dict[str, Any] = {"benchmark": "compare_entropy_coders", "machine": machine(x.device)}
    try:
        import constriction  # noqa: F401

        result["machine"]["constriction"] = _version("constriction")
    except ImportError:
        print("constriction is not installed: its rows are left out (pip install constriction)")
    m = result["machine"]
    print(f"compare_entropy_coders: {args.model} (weight recipe), {args.size[0]}x{args.size[1]}; "
          f"{m['processor']}; compressai {m['compressai']}, numba {m['numba']}, constriction "
          f"{m.get('constriction', '-')}")  # fmt: skip
    for name, latents in (("real", real), ("synthetic", synthetic(real, tables))):
        paths = coder_paths(latents, tables)
        if "constriction" in m:
            paths.update(constriction_paths(latents, tables))
        rows, checks = measure_coders(paths, latents, args.repeat)
        result[name] = {"rows": rows, "checks": checks}
        print(f"\n{name} symbols:", end="")
        print_coder(rows, checks["coder: symbols"], BASELINE)
        if "constriction" in m:
            bound = constriction_bound(latents, tables, args.repeat)
            result[name]["constriction_bound_msymbols_per_s"] = bound
            print(f"constriction, one model per latent (bound): encode {bound['encode']:.1f}, "
                  f"decode {bound['decode']:.1f} M symbols/s")  # fmt: skip
        print("\n".join(f"{k}: {v}" for k, v in checks.items() if k != "coder: symbols"))
    result["gil"] = gil_in_long_calls(real, tables)
    print("\nGIL: one long call in a thread; the longest another thread waited to wake up")
    for name, row in result["gil"].items():
        print(f"  {name:<38} call {row['call_ms']:7.1f} ms, wait {row['longest_wait_ms']:7.1f} ms")
    write_json(args.json, result)
    return 0


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    sys.exit(main())
