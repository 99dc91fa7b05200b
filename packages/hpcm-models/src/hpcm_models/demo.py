"""``hpcm demo``: a real compress → decompress round trip on bundled photos, per model.

By default the models with shipped weights (:mod:`hpcm_models.pretrained`), at every shipped
quality: real rates and PSNRs. Otherwise (``--random-weights``, or a model without shipped
weights or a checkpoint) HPCM-Base, HPCM-Large and the RWKV variants with random weights. Each
bundled photo is coded to an ``.hpcm`` bitstream through :class:`hpcm_models.codec.ImageCodec`
and decoded, and the demo reports the size, the quality, the timings and whether the decoder
rebuilt exactly the encoder's latents. Rows of trained weights are also set against JPEG
(Pillow, 4:2:0) at the same rate on the same images (:mod:`hpcm_models.baselines`), so the first
command shows what the codec is worth.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .pretrained import ShippedWeights, shipped_weights
from .registry import BUILTIN_MODELS

__all__ = [
    "DEMO_IMAGES",
    "DEMO_MODELS",
    "QUICK_MODEL_KWARGS",
    "DemoRow",
    "DemoRun",
    "bundled_image",
    "demo_runs",
    "find_checkpoint",
    "format_demo_table",
    "run_demo",
]

#: The models the demo builds with random weights, in table order: every built-in model.
DEMO_MODELS: tuple[str, ...] = BUILTIN_MODELS

#: Default photos (``hpcm_models/data``): a 171×256 colour photo and a 192×192 grayscale one, both
#: padded to 256×256 by the codec (and cropped back), so padding and gray images are exercised.
DEMO_IMAGES: tuple[str, ...] = ("rocket.png", "camera.png")

#: ``--quick``: the real architecture and coding schedule at M=32, N=16 with narrow transforms,
#: so the whole demo takes seconds on a CPU.
QUICK_MODEL_KWARGS: dict[str, Any] = {
    "M": 32,
    "N": 16,
    "config": {
        "transform_channels": [16, 32, 64],
        "g_a_depths": [1, 1, 1],
        "g_s_depths": [1, 1, 1],
    },
}


def bundled_image(name: str) -> Path:
    """Path of a photo shipped in ``hpcm_models/data`` (see its README for sources, licenses)."""
    path = Path(str(resources.files("hpcm_models").joinpath("data", name)))
    if not path.is_file():
        raise FileNotFoundError(f"no bundled image {name!r} in {path.parent}")
    return path


def find_checkpoint(directory: Path, model: str) -> Path | None:
    """The checkpoint of ``model`` in ``directory``: ``<model>.pt``, ``<model>.pth.tar``,
    ``<model>/best.pt`` or ``<model>/latest.pt`` (the first that exists), else None."""
    for candidate in (
        directory / f"{model}.pt",
        directory / f"{model}.pth.tar",
        directory / model / "best.pt",
        directory / model / "latest.pt",
    ):
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True)
class DemoRun:
    """What the demo runs for one row: a model and its weights (a checkpoint, shipped weights, or
    random weights when both are None)."""

    model: str
    checkpoint: Path | None = None
    shipped: ShippedWeights | None = None

    @property
    def weights(self) -> str:
        """``"random"``, the checkpoint path, or ``"shipped q2 (λ=0.0067)"``."""
        if self.checkpoint is not None:
            return str(self.checkpoint)
        if self.shipped is not None:
            return f"shipped q{self.shipped.quality} (λ={self.shipped.lmbda:g})"
        return "random"


def demo_runs(
    models: Sequence[str], *, checkpoint_dir: Path | None = None, pretrained: bool = False
) -> list[DemoRun]:
    """The demo's rows: per model its checkpoint in ``checkpoint_dir`` (:func:`find_checkpoint`);
    else, with ``pretrained``, one row per shipped quality; else random weights."""
    shipped = shipped_weights() if pretrained else ()
    runs = []
    for name in models:
        checkpoint = find_checkpoint(checkpoint_dir, name) if checkpoint_dir else None
        own = [e for e in shipped if e.model == name] if checkpoint is None else []
        runs += [DemoRun(name, shipped=e) for e in own] or [DemoRun(name, checkpoint)]
    return runs


@dataclass(frozen=True)
class DemoRow:
    """One model's round trips, averaged over the images.

    Attributes:
        model: registry name.
        weights: ``"random"``, the checkpoint path, or ``"shipped qQ (λ=…)"``.
        params: parameter count.
        bpp: mean bits per pixel of the entropy-coded streams.
        bpp_file: mean bits per pixel of the whole ``.hpcm`` files.
        psnr: mean PSNR (dB) of the decoded images (None if a decoder refused a file).
        encode_ms, decode_ms: mean times per image.
        bit_exact: every decoder rebuilt exactly the encoder's latents.
        images: per-image results (:class:`hpcm_models.evaluation.ImageResult` as dicts).
        quality: the shipped quality (None for other weights).
        jpeg_psnr: mean PSNR of JPEG at each image's rate (whole files against whole files,
            quality interpolated; :func:`hpcm_models.baselines.compare_matched_rate`); None for
            random weights, or where no image's rate is within JPEG's range.
        delta_jpeg: mean of the per-image ``PSNR − JPEG PSNR`` over ``jpeg_compared`` images.
        jpeg_compared: images whose rate JPEG reaches (0 when not compared).
    """

    model: str
    weights: str
    params: int
    bpp: float
    bpp_file: float
    psnr: float | None
    encode_ms: float
    decode_ms: float
    bit_exact: bool
    images: list[dict[str, Any]]
    quality: int | None = None
    jpeg_psnr: float | None = None
    delta_jpeg: float | None = None
    jpeg_compared: int = 0


def run_demo(
    models: Sequence[str] = DEMO_MODELS,
    images: Sequence[str | Path] | None = None,
    *,
    checkpoint_dir: Path | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    quick: bool = False,
    pretrained: bool = False,
    compare_jpeg: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[DemoRow]:
    """Round-trip ``images`` through every model; see the module docstring.

    Args:
        models: registry names.
        images: image paths; default the bundled :data:`DEMO_IMAGES`.
        checkpoint_dir: where to look for trained weights (:func:`find_checkpoint`).
        device: where to run.
        seed: seed of the random weights (the same seed gives the same weights and bitstreams).
        quick: random models are small (:data:`QUICK_MODEL_KWARGS`) instead of M=320, N=256.
        pretrained: models with shipped weights get one row per shipped quality; models with
            neither a checkpoint nor shipped weights use random weights (:func:`demo_runs`).
        compare_jpeg: set rows of trained weights (shipped or a checkpoint) against JPEG at the
            same rate (one JPEG sweep per image, made once).
    """
    from .baselines import compare_matched_rate, evaluate_classic_image
    from .checkpoints import load_checkpoint, random_model
    from .codec import ImageCodec
    from .evaluation import evaluate_image, mean_point
    from .image_io import read_image
    from .pretrained import load_pretrained

    paths = [Path(p) for p in images] if images else [bundled_image(n) for n in DEMO_IMAGES]
    pictures = [(p.name, read_image(p)) for p in paths]
    kwargs = dict(QUICK_MODEL_KWARGS) if quick else {}
    sweeps: list[Any] = []  # JPEG's sweep of each image, made when first needed
    rows = []
    for run in demo_runs(models, checkpoint_dir=checkpoint_dir, pretrained=pretrained):
        name = run.model
        if progress:
            progress(f"{name}: building ({run.weights})")
        if run.checkpoint is not None:
            model = load_checkpoint(run.checkpoint, name, device=device)
        elif run.shipped is not None:
            model = load_pretrained(name, run.shipped.quality, device=device)
        else:
            model = random_model(name, seed=seed, device=device, **kwargs)
        codec = ImageCodec(model, name)
        if not rows:
            # One untimed round trip first: the first call of a process pays one-time costs
            # (lazy initialization, allocator growth) that are no model's own.
            codec.decode(codec.encode(pictures[0][1]))
        results = []
        for label, picture in pictures:
            if progress:
                progress(f"{name}: {label} ({picture.width}x{picture.height} {picture.mode})")
            results.append(evaluate_image(codec, picture, label))
        point = mean_point(results)
        jpeg = None
        if compare_jpeg and run.weights != "random":
            for label, picture in pictures[len(sweeps) :]:
                if progress:
                    progress(f"JPEG: {label} at every quality")
                sweeps.append(evaluate_classic_image(picture, "jpeg", name=label))
            jpeg = compare_matched_rate(run.weights, results, sweeps)
        rows.append(
            DemoRow(
                model=name,
                weights=run.weights,
                params=sum(p.numel() for p in model.parameters()),
                bpp=point["bpp"],
                bpp_file=point["bpp-file"],
                psnr=point["psnr-rgb"],
                encode_ms=point["encoding_time"] * 1e3,
                decode_ms=point["decoding_time"] * 1e3,
                bit_exact=point["bit-exact"],
                images=[dataclasses.asdict(r) for r in results],
                quality=run.shipped.quality if run.shipped is not None else None,
                jpeg_psnr=jpeg.classic_psnr if jpeg else None,
                delta_jpeg=jpeg.delta_psnr if jpeg else None,
                jpeg_compared=jpeg.compared if jpeg else 0,
            )
        )
        del model, codec
    return rows


def format_demo_table(rows: Sequence[DemoRow]) -> str:
    """The demo's table (Markdown). JPEG's columns are ``-`` where not compared and carry a
    ``*`` where only some images' rates were within JPEG's range."""
    lines = [
        "| model | weights | params | bpp | PSNR (dB) | JPEG PSNR, same bpp | Δ JPEG (dB) | "
        "encode ms | decode ms | bit-exact |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        psnr = "n/a" if r.psnr is None or math.isnan(r.psnr) else f"{r.psnr:.2f}"
        jpeg, delta = "-", "-"
        if r.jpeg_psnr is not None and r.delta_jpeg is not None:
            partial = "*" if r.jpeg_compared < len(r.images) else ""
            jpeg, delta = f"{r.jpeg_psnr:.2f}{partial}", f"{r.delta_jpeg:+.2f}{partial}"
        lines.append(
            f"| {r.model} | {r.weights} | {r.params / 1e6:.2f} M | {r.bpp:.4f} | {psnr} | "
            f"{jpeg} | {delta} | {r.encode_ms:.0f} | {r.decode_ms:.0f} | "
            f"{'yes' if r.bit_exact else 'NO'} |"
        )
    return "\n".join(lines)
