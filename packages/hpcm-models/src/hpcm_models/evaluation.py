"""Evaluation: image metrics, actual-bitstream rate–distortion points, Bjøntegaard deltas, RD plots.

Results use CompressAI's JSON layout (``compressai.utils.eval_model``)::

    {"name": ..., "description": ...,
     "results": {"bpp": [...], "psnr-rgb": [...], "ms-ssim-rgb": [...], "ms-ssim-rgb-db": [...],
                 "encoding_time": [...], "decoding_time": [...], ...}}

with one entry per rate point (checkpoint), each the mean over the images. ``bpp`` counts the
entropy-coded streams (what CompressAI and the papers count); ``bpp-file`` the whole ``.hpcm``
file, header included. PSNR and MS-SSIM are computed on 8-bit images, as CompressAI does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .devices import synchronize
from .errors import DecodeMismatchError, ResultsFormatError
from .image_io import read_image
from .losses import MS_SSIM_MIN_SIDE

if TYPE_CHECKING:
    from PIL import Image

    from .codec import ImageCodec

__all__ = [
    "BDResult",
    "ImageResult",
    "RDCurve",
    "bd_psnr",
    "bd_rate",
    "compare_curves",
    "evaluate_codec",
    "evaluate_image",
    "load_curve",
    "mean_point",
    "ms_ssim_db",
    "plot_rd",
    "psnr",
    "reference_curves",
    "results_document",
    "rgb_ms_ssim",
]


# ---------------------------------------------------------------------------- image metrics


def _as_float_255(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``[B, C, H, W]`` float64 on the 0-255 scale from a Pillow-style array (``[H, W]`` or
    ``[H, W, C]``, uint8) or a tensor (``[C, H, W]`` or ``[B, C, H, W]``; uint8, or float in
    [0, 1])."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.dim() == 3:
            t = t.unsqueeze(0)
    else:
        t = torch.from_numpy(np.array(x))
        if t.dim() == 2:
            t = t.unsqueeze(-1)
        if t.dim() == 3:
            t = t.permute(2, 0, 1).unsqueeze(0)
    if t.dim() != 4:
        raise ValueError(
            "expected an image array [H, W] / [H, W, C] or a tensor [C, H, W] / [B, C, H, W], "
            f"got shape {list(t.shape)}"
        )
    return t.double() if t.dtype == torch.uint8 else t.double() * 255


def psnr(original: torch.Tensor | np.ndarray, decoded: torch.Tensor | np.ndarray) -> float:
    """PSNR in dB between two 8-bit images: uint8 arrays ``[H, W, C]`` (Pillow), or tensors
    ``[C, H, W]``/``[B, C, H, W]`` (float ones in [0, 1] are rounded to 8 bits first). Identical
    images give ``inf``."""
    a, b = (_as_float_255(x).round().clamp(0, 255) for x in (original, decoded))
    if a.shape != b.shape:
        raise ValueError(
            f"expected images of the same shape, got {list(a.shape)} and {list(b.shape)}"
        )
    mse = float((a - b).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def rgb_ms_ssim(
    original: torch.Tensor | np.ndarray, decoded: torch.Tensor | np.ndarray
) -> float | None:
    """MS-SSIM (Wang et al., 2003; 5 scales, pytorch-msssim) of two 8-bit images, on 0-255 values
    as CompressAI computes it; ``None`` for images with a side under 161 pixels, where the 5-scale
    definition does not exist."""
    from pytorch_msssim import ms_ssim

    a, b = (_as_float_255(x).round().clamp(0, 255).float() for x in (original, decoded))
    if min(a.shape[-2:]) < MS_SSIM_MIN_SIDE:
        return None
    return float(ms_ssim(a, b, data_range=255.0))


def ms_ssim_db(value: float) -> float:
    """MS-SSIM in dB, ``−10·log10(1 − MS-SSIM)`` (the scale RD plots use)."""
    return math.inf if value >= 1 else -10 * math.log10(1 - value)


# ---------------------------------------------------------------------------- RD curves


@dataclass(frozen=True)
class RDCurve:
    """Rate–distortion points of one codec: ``rates`` in bpp, ``quality`` in dB (PSNR or MS-SSIM
    dB), same length, one entry per rate point."""

    name: str
    rates: tuple[float, ...]
    quality: tuple[float, ...]


_METRIC_KEYS = {"psnr": "psnr-rgb", "ms-ssim": "ms-ssim-rgb-db"}


def _curve_from_results(name: str, results: Mapping[str, Any], metric: str, where: str) -> RDCurve:
    if metric not in _METRIC_KEYS:
        raise ValueError(f"expected metric 'psnr' or 'ms-ssim', got {metric!r}")
    rates = results.get("bpp")
    key = _METRIC_KEYS[metric]
    quality = results.get(key)
    if quality is None and metric == "ms-ssim" and results.get("ms-ssim-rgb") is not None:
        quality = [ms_ssim_db(v) if v is not None else None for v in results["ms-ssim-rgb"]]
    if rates is None or quality is None:
        raise ResultsFormatError(
            f"{where}: expected results with 'bpp' and {key!r}"
            + (" (or 'ms-ssim-rgb')" if metric == "ms-ssim" else "")
            + f", found keys {sorted(results)}"
        )
    if len(rates) != len(quality):
        raise ResultsFormatError(
            f"{where}: 'bpp' has {len(rates)} entries but {key!r} has {len(quality)}"
        )
    try:
        r, q = tuple(float(v) for v in rates), tuple(float(v) for v in quality)
    except (TypeError, ValueError):
        raise ResultsFormatError(f"{where}: 'bpp' and {key!r} must hold numbers") from None
    return RDCurve(name=name, rates=r, quality=q)


def reference_curves(dataset: str = "kodak", metric: str = "psnr") -> list[RDCurve]:
    """The published HPCM-Base and HPCM-Large points bundled with the package
    (``data/reference_rd.json``; datasets ``kodak``, ``clic-pro-valid``, ``tecnick``)."""
    data = json.loads(resources.files("hpcm_models").joinpath("data/reference_rd.json").read_text())
    metric_name = {"psnr": "psnr", "ms-ssim": "ms-ssim"}[metric]
    curves = [
        _curve_from_results(
            f"{c['name']} (published, {c['dataset']})", c["results"], metric, "reference_rd.json"
        )
        for c in data["curves"]
        if c["dataset"].lower() == dataset.lower() and c["metric"] == metric_name
    ]
    if not curves:
        known = sorted({c["dataset"] for c in data["curves"]})
        raise ResultsFormatError(f"no reference curves for dataset {dataset!r}; known: {known}")
    return curves


def load_curve(source: str | os.PathLike[str], metric: str = "psnr") -> RDCurve:
    """An RD curve from a CompressAI-style results JSON file, or a bundled reference written as
    ``ref:NAME:DATASET`` (e.g. ``ref:HPCM-Base:kodak``).

    Raises:
        ResultsFormatError: if the file is missing, not JSON, or lacks the needed keys.
    """
    text = str(source)
    if text.startswith("ref:"):
        parts = text.split(":")
        if len(parts) != 3:
            raise ResultsFormatError(
                f"expected a reference as ref:NAME:DATASET (e.g. ref:HPCM-Base:kodak), got {text!r}"
            )
        _, name, dataset = parts
        for curve in reference_curves(dataset, metric):
            if curve.name.lower().startswith(name.lower() + " "):
                return curve
        raise ResultsFormatError(f"no bundled reference {name!r} (HPCM-Base, HPCM-Large)")
    path = Path(text)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsFormatError(f"results file {text!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultsFormatError(f"cannot read results file {text!r}: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ResultsFormatError(
            f"{text!r} is not a CompressAI results file (expected an object with 'results')"
        )
    return _curve_from_results(str(data.get("name", path.stem)), data["results"], metric, text)


# ---------------------------------------------------------------------------- Bjøntegaard


def _prepare(x: Sequence[float], y: Sequence[float], what: str) -> tuple[np.ndarray, np.ndarray]:
    x_arr, y_arr = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x_arr.ndim != 1 or x_arr.shape != y_arr.shape or x_arr.size < 2:
        raise ValueError(f"{what}: expected two equally long sequences of at least 2 points")
    if not (np.isfinite(x_arr).all() and np.isfinite(y_arr).all()):
        raise ValueError(f"{what}: expected finite values, got {x_arr.tolist()}, {y_arr.tolist()}")
    order = np.argsort(x_arr, kind="stable")
    x_arr, y_arr = x_arr[order], y_arr[order]
    if np.any(np.diff(x_arr) <= 0):
        raise ValueError(
            f"{what}: expected distinct values to interpolate over, got {x_arr.tolist()}"
        )
    return x_arr, y_arr


def _mean_gap(
    x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, what: str
) -> tuple[float, float, float]:
    """Mean of ``f2 − f1`` over the overlap of the x ranges, ``f`` the pchip interpolants of
    ``(x, y)``; also returns the overlap."""
    from scipy.interpolate import PchipInterpolator

    lo, hi = max(x1[0], x2[0]), min(x1[-1], x2[-1])
    if not hi > lo:
        raise ValueError(
            f"{what}: the curves do not overlap ([{x1[0]:.4g}, {x1[-1]:.4g}] and "
            f"[{x2[0]:.4g}, {x2[-1]:.4g}])"
        )
    area1 = PchipInterpolator(x1, y1).integrate(lo, hi)
    area2 = PchipInterpolator(x2, y2).integrate(lo, hi)
    return float((area2 - area1) / (hi - lo)), float(lo), float(hi)


def _log_rates(
    rates_a: Sequence[float], rates_b: Sequence[float], what: str
) -> tuple[np.ndarray, np.ndarray]:
    """The natural logs of both curves' rates, which must be positive."""
    for name, rates in (("A", rates_a), ("B", rates_b)):
        if any(not r > 0 for r in rates):
            raise ValueError(f"{what}: expected positive rates for curve {name}, got {list(rates)}")
    return np.log(np.asarray(rates_a, dtype=np.float64)), np.log(np.asarray(rates_b, np.float64))


def bd_rate(
    rates_a: Sequence[float],
    quality_a: Sequence[float],
    rates_b: Sequence[float],
    quality_b: Sequence[float],
) -> float:
    """Bjøntegaard delta rate of curve B against anchor A, in percent (negative: B needs fewer
    bits for the same quality).

    Bjøntegaard (VCEG-M33, 2001) with piecewise cubic Hermite (pchip) interpolation instead of
    the original cubic fit (VCEG-AL22): log-rate is interpolated as a function of quality for
    each curve, both are integrated over the quality range they share, and the mean log-rate
    difference ``Δ`` gives ``100·(exp(Δ) − 1)``.

    Args:
        rates_a, quality_a: anchor points (bpp > 0, quality in dB), at least 2, any order.
        rates_b, quality_b: test points.

    Raises:
        ValueError: for fewer than 2 points, repeated or non-finite values, non-positive rates,
            or quality ranges that do not overlap.
    """
    log_a, log_b = _log_rates(rates_a, rates_b, "BD-rate")
    qa, la = _prepare(quality_a, log_a, "BD-rate, curve A")
    qb, lb = _prepare(quality_b, log_b, "BD-rate, curve B")
    gap, _, _ = _mean_gap(qa, la, qb, lb, "BD-rate")
    return 100 * math.expm1(gap)


def bd_psnr(
    rates_a: Sequence[float],
    quality_a: Sequence[float],
    rates_b: Sequence[float],
    quality_b: Sequence[float],
) -> float:
    """Bjøntegaard delta quality (BD-PSNR for PSNR curves) of B against A, in dB (positive: B is
    better at the same rate): quality interpolated (pchip) over log-rate, mean difference over the
    shared log-rate range. Arguments and errors as for :func:`bd_rate`."""
    log_a, log_b = _log_rates(rates_a, rates_b, "BD-PSNR")
    la, qa = _prepare(log_a, quality_a, "BD-PSNR, curve A")
    lb, qb = _prepare(log_b, quality_b, "BD-PSNR, curve B")
    gap, _, _ = _mean_gap(la, qa, lb, qb, "BD-PSNR")
    return gap


@dataclass(frozen=True)
class BDResult:
    """BD-rate (%) and BD-quality (dB) of ``test`` against ``anchor``."""

    anchor: str
    test: str
    bd_rate: float
    bd_quality: float


def compare_curves(anchor: RDCurve, test: RDCurve) -> BDResult:
    """:func:`bd_rate` and :func:`bd_psnr` of two curves."""
    args = (anchor.rates, anchor.quality, test.rates, test.quality)
    return BDResult(anchor.name, test.name, bd_rate(*args), bd_psnr(*args))


# ---------------------------------------------------------------------------- plots


def plot_rd(
    curves: Sequence[RDCurve],
    path: str | os.PathLike[str],
    *,
    metric: str = "psnr",
    references: Sequence[RDCurve] = (),
    title: str | None = None,
) -> None:
    """Write an RD plot (bpp vs PSNR or MS-SSIM dB) as an image (format from the suffix), with
    ``references`` drawn dashed. Uses matplotlib's Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    try:
        reference_style = {"linestyle": "--", "marker": ".", "alpha": 0.7}
        curve_style = {"linestyle": "-", "marker": "o"}
        for group, style in ((references, reference_style), (curves, curve_style)):
            for curve in group:
                order = np.argsort(curve.rates)
                rates, quality = np.asarray(curve.rates)[order], np.asarray(curve.quality)[order]
                ax.plot(rates, quality, label=curve.name, **style)
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel("PSNR (dB)" if metric == "psnr" else "MS-SSIM (dB)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        if title:
            ax.set_title(title)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------- coding images


@dataclass(frozen=True)
class ImageResult:
    """One image coded and decoded through the codec (:class:`hpcm_models.codec.ImageCodec`).

    Attributes:
        image: file name (or label).
        width, height: original size.
        bytes_streams: bytes of the entropy-coded streams (z, y and escapes; not the header, not
            a lossless alpha plane); ``bpp`` is ``8 · bytes_streams / (width · height)``.
        bytes_file: bytes of the whole ``.hpcm`` file; ``bpp_file`` likewise.
        psnr: dB on the 8-bit RGB images (``None`` if the decoder refused the file).
        ms_ssim, ms_ssim_db: 5-scale MS-SSIM and its dB form (``None`` under 161 pixels a side).
        encoding_time, decoding_time: seconds, image in → bytes out and back, on the model's
            device (synchronized).
        bit_exact: the decoder rebuilt exactly the encoder's latents ŷ (``torch.equal``) and the
            file's latent hash matched; False if the decoder refused the file.
    """

    image: str
    width: int
    height: int
    bytes_streams: int
    bytes_file: int
    bpp: float
    bpp_file: float
    psnr: float | None
    ms_ssim: float | None
    ms_ssim_db: float | None
    encoding_time: float
    decoding_time: float
    bit_exact: bool


def evaluate_image(codec: ImageCodec, image: Image.Image, name: str = "image") -> ImageResult:
    """Encode ``image`` to bytes with ``codec``, decode them, and measure the result."""
    from .container import StreamKind

    synchronize(codec.device)
    start = time.perf_counter()
    encoded = codec.encode_detailed(image)
    synchronize(codec.device)
    encoding_time = time.perf_counter() - start
    start = time.perf_counter()
    try:
        decoded = codec.decode_detailed(encoded.data)
    except DecodeMismatchError:
        decoded = None
    synchronize(codec.device)
    decoding_time = time.perf_counter() - start

    header = encoded.header
    pixels = image.width * image.height
    coded = sum(
        length
        for kind, length in zip(header.stream_kinds, header.stream_lengths, strict=True)
        if kind != StreamKind.ALPHA
    )
    quality: tuple[float | None, float | None, float | None] = (None, None, None)
    bit_exact = False
    if decoded is not None:
        original = np.asarray(image.convert("RGB"))
        restored = np.asarray(decoded.image.convert("RGB"))
        ms = rgb_ms_ssim(original, restored)
        quality = (psnr(original, restored), ms, None if ms is None else ms_ssim_db(ms))
        bit_exact = bool(torch.equal(encoded.y_hat, decoded.y_hat))
    return ImageResult(
        image=name,
        width=image.width,
        height=image.height,
        bytes_streams=coded,
        bytes_file=len(encoded.data),
        bpp=8 * coded / pixels,
        bpp_file=8 * len(encoded.data) / pixels,
        psnr=quality[0],
        ms_ssim=quality[1],
        ms_ssim_db=quality[2],
        encoding_time=encoding_time,
        decoding_time=decoding_time,
        bit_exact=bit_exact,
    )


def evaluate_codec(
    codec: ImageCodec,
    files: Sequence[str | os.PathLike[str]],
    progress: Any = None,
) -> list[ImageResult]:
    """:func:`evaluate_image` for every file (read with :func:`hpcm_models.image_io.read_image`).

    Args:
        progress: optional callable ``progress(done, total, name)`` called after each image.
    """
    results = []
    for i, file in enumerate(files):
        results.append(evaluate_image(codec, read_image(file), Path(file).name))
        if progress is not None:
            progress(i + 1, len(files), Path(file).name)
    return results


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def mean_point(results: Sequence[ImageResult]) -> dict[str, Any]:
    """One rate point: the mean of each metric over the images, under CompressAI's keys
    (``bpp``, ``psnr-rgb``, ``ms-ssim-rgb``, ``encoding_time``, ``decoding_time``) plus
    ``bpp-file``, ``ms-ssim-rgb-db`` and ``bit-exact`` (all images). PSNR is the mean of the
    per-image PSNRs, as CompressAI reports it; MS-SSIM is averaged over the images where it is
    defined, and its dB value is taken of that mean."""
    ms = _mean([r.ms_ssim for r in results])
    return {
        "bpp": _mean([r.bpp for r in results]),
        "bpp-file": _mean([r.bpp_file for r in results]),
        "psnr-rgb": _mean([r.psnr for r in results]),
        "ms-ssim-rgb": ms,
        "ms-ssim-rgb-db": None if ms is None else ms_ssim_db(ms),
        "encoding_time": _mean([r.encoding_time for r in results]),
        "decoding_time": _mean([r.decoding_time for r in results]),
        "bit-exact": all(r.bit_exact for r in results),
        "images": len(results),
    }


def results_document(
    name: str,
    description: str,
    points: Sequence[tuple[str, Sequence[ImageResult]]],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """CompressAI's results JSON for rate points ``[(label, per-image results), ...]``: every key
    of :func:`mean_point` becomes a list with one entry per point (``"results"``), and the
    per-image values are kept under ``"per_image"`` (one list per point, labelled in
    ``"points"``)."""
    means = [mean_point(results) for _, results in points]
    keys = list(means[0]) if means else list(mean_point([]))
    return {
        "name": name,
        "description": description,
        **(dict(extra) if extra else {}),
        "points": [label for label, _ in points],
        "results": {key: [m[key] for m in means] for key in keys},
        "per_image": [[dataclasses.asdict(r) for r in results] for _, results in points],
    }
