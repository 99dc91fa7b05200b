"""How far this platform's float32 decoding of the golden files is from exact arithmetic: the
measurement behind the cross-platform tolerance of ``tests/models/test_golden.py``
(``make_golden.MAX_LEVELS``, ``tests/models/golden/README.md``).

For each golden file: the decoder's float32 pixels (before rounding, in 8-bit levels) against
the same decoder in float64 (hyperprior, context model and synthesis) fed the same integer
latents; how many samples lie near a half level (those can round the other way on another
platform); the pixels' difference from the decoded golden image; and how many samples one latent
of ŷ off by one changes (what a broken decoder does, at least).

    uv run python tools/golden_roundoff.py [--json roundoff.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
from pathlib import Path

import make_golden as golden
import numpy as np
import torch

from hpcm_models.image_io import restore_image

NEAR = (2e-4, 5e-4, 1e-3)  # distances to a half level, in levels


def measure(entry: dict) -> dict:
    """The numbers of one golden file (see the module docstring)."""
    codec = golden.golden_codec(entry["model"], entry["weights"] == "lively")
    model, recorded = codec.model, {"symbols": []}
    run_schedule, hyper = model.run_schedule, model.h_s.forward

    def recording_schedule(params, code):
        def recording_code(*args):
            symbols = code(*args)
            recorded["symbols"].append(symbols.clone())
            return symbols

        return run_schedule(params, recording_code)

    def recording_hyper(z):
        recorded["z"] = z.clone()  # ẑ + means_hyper
        return hyper(z)

    model.run_schedule, model.h_s.forward = recording_schedule, recording_hyper
    decoded = codec.decode_detailed((golden.DEFAULT_OUTPUT / entry["file"]).read_bytes())
    del model.run_schedule, model.h_s.forward
    exact = copy.deepcopy(model).double()
    symbols = iter(recorded["symbols"])
    with torch.no_grad():
        z_hat = (recorded["z"].double() - exact.means_hyper).round()
        params = exact.h_s(z_hat + exact.means_hyper)
        y_hat = exact.run_schedule(params, lambda *a: next(symbols).double())
        x_exact = exact.g_s(y_hat).clamp(0, 1)
    h, w = entry["height"], entry["width"]
    ours, ideal = (x[0, :, :h, :w].double() * 255 for x in (decoded.x_hat, x_exact))
    if entry["mode"] in ("L", "LA"):  # the gray sample is the mean of the three planes
        ours, ideal = ours.mean(0), ideal.mean(0)
    to_half = (ideal - ideal.floor() - 0.5).abs()
    reference = golden.load_image(golden.DEFAULT_OUTPUT / golden.decoded_name(entry))
    alpha = np.asarray(reference)[..., -1] if "A" in entry["mode"] else None
    with torch.no_grad():
        changed = []  # one latent of each channel off by one, in turn
        for c in range(decoded.y_hat.shape[1]):
            y = decoded.y_hat.clone()
            y[0, c, 0, 0] += 1
            image = restore_image(model.g_s(y).clamp(0, 1), decoded.header, alpha)
            changed.append(golden.compare_pixels(image, reference))
    diff = golden.compare_pixels(decoded.image, reference)
    return {
        "file": entry["file"],
        "samples": ideal.numel(),
        "max_float32_error_levels": (ours - ideal).abs().max().item(),
        "max_y_hat_error": (decoded.y_hat.double() - y_hat).abs().max().item(),
        "rounded_otherwise_than_float64": int((ours.round() != ideal.round()).sum()),
        "closest_to_half_levels": to_half.min().item(),
        "near_half": {f"{t:g}": int((to_half < t).sum()) for t in NEAR},
        "allowed": diff.allowed,
        "differing_from_golden": diff.differing,
        "one_latent_off_min_samples": min(d.differing for d in changed),
        "one_latent_off_min_levels": min(d.max_levels for d in changed),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    entries = json.loads((golden.DEFAULT_OUTPUT / golden.MANIFEST).read_text())["files"]
    machine = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    print(" ".join(f"{k}={v}" for k, v in machine.items()))
    near = " ".join(f"<{t:g}" for t in NEAR)
    print(
        f"{'file':32} {'samples':>7} {'f32 err':>8} {'flips':>5} {'closest':>8} {near:>18} "
        f"{'allowed':>7} {'differ':>6} {'1 latent: samples, levels':>26}"
    )
    rows = []
    for entry in entries:
        r = measure(entry)
        rows.append(r)
        counts = " ".join(f"{n:>5}" for n in r["near_half"].values())
        print(
            f"{r['file']:32} {r['samples']:>7} {r['max_float32_error_levels']:>8.1e} "
            f"{r['rounded_otherwise_than_float64']:>5} {r['closest_to_half_levels']:>8.1e} "
            f"{counts:>18} {r['allowed']:>7} {r['differing_from_golden']:>6} "
            f"{r['one_latent_off_min_samples']:>19}, {r['one_latent_off_min_levels']:>4}"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "files": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
