"""Classic-codec baselines: Pillow's JPEG and WebP swept over their quality settings with real
file bytes, and learned codecs compared with them at matched rates.

Each image is coded in memory by Pillow at every quality of a sweep; the rate is the whole file
(``8 · len(file) / pixels``: for JPEG the markers, quantization and Huffman tables are counted,
for WebP the RIFF header), the distortion PSNR (RGB, 8 bits) and, optionally, MS-SSIM of the
decoded image against the 8-bit RGB pixels the learned codec codes. A learned codec's image at
``b`` bpp is compared with the classic codec on the same image at ``b`` bpp, its PSNR
interpolated linearly in bpp between the two sweep points that bracket ``b`` on the image's
rate–distortion frontier (:func:`interpolate_at_rate`); a rate outside the sweep's range is
"not reachable", never extrapolated.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .evaluation import RDCurve, compare_curves, ms_ssim_db, psnr, rgb_ms_ssim
from .image_io import image_planes, read_image

if TYPE_CHECKING:
    from PIL import Image

    from .evaluation import ImageResult

__all__ = [
    "CLASSIC_CODECS",
    "ClassicCodec",
    "ClassicResult",
    "ImageMatch",
    "MatchedRate",
    "RateMatch",
    "classic_curve",
    "classic_document",
    "compare_matched_rate",
    "comparison_document",
    "decode_classic",
    "encode_classic",
    "evaluate_classic",
    "evaluate_classic_image",
    "format_comparison_table",
    "interpolate_at_rate",
    "match_rate",
    "rd_frontier",
]


@dataclass(frozen=True)
class ClassicCodec:
    """A classic codec as Pillow runs it.

    Attributes:
        name: key in :data:`CLASSIC_CODECS` and on the command line.
        label: name in tables, plots and results files.
        format: Pillow's format name.
        options: ``Image.save`` keyword arguments besides ``quality``.
        qualities: the default sweep, ascending.
        libraries: Pillow features that may provide the encoder; the first one present is
            named, with its version, in results files.
    """

    name: str
    label: str
    format: str
    options: tuple[tuple[str, Any], ...]
    qualities: tuple[int, ...]
    libraries: tuple[str, ...]

    def encoder(self) -> str:
        """Encoder and settings in words, with the library versions (for results files)."""
        import PIL
        from PIL import features

        settings = ", ".join(f"{k}={v}" for k, v in self.options)
        present = [f for f in self.libraries if features.version(f) is not None]
        library = f"{present[0]} {features.version(present[0])}" if present else "unknown library"
        return f"Pillow {PIL.__version__} {self.format} ({settings}; {library})"


#: The classic codecs: baseline JPEG with 4:2:0 chroma and optimized Huffman tables (qualities
#: 1–100; libjpeg maps 0 to 1), and lossy WebP at its slowest, best method (qualities 0–100).
CLASSIC_CODECS: dict[str, ClassicCodec] = {
    "jpeg": ClassicCodec(
        "jpeg",
        "JPEG",
        "JPEG",
        (("subsampling", 2), ("optimize", True), ("progressive", False)),
        tuple(range(1, 101)),
        ("libjpeg_turbo", "jpg"),
    ),
    "webp": ClassicCodec(
        "webp",
        "WebP",
        "WEBP",
        (("lossless", False), ("method", 6)),
        tuple(range(0, 101)),
        ("webp",),
    ),
}


def _codec(name: str) -> ClassicCodec:
    if name not in CLASSIC_CODECS:
        raise ValueError(f"expected a classic codec in {sorted(CLASSIC_CODECS)}, got {name!r}")
    return CLASSIC_CODECS[name]


def _qualities(codec: ClassicCodec, qualities: Sequence[int] | None) -> tuple[int, ...]:
    if qualities is None:
        return codec.qualities
    values = tuple(sorted(set(qualities)))
    if len(values) < 2 or any(not isinstance(q, int) or not 0 <= q <= 100 for q in values):
        raise ValueError(
            f"expected at least 2 distinct integer qualities in 0..100, got {list(qualities)}"
        )
    return values


def _rgb(image: Image.Image) -> np.ndarray:
    """The 8-bit RGB pixels ``[H, W, 3]`` the learned codec codes (same mode rules, same errors;
    an alpha plane is left out)."""
    return image_planes(image)[0]


def encode_classic(rgb: np.ndarray, codec: str, quality: int) -> bytes:
    """The file Pillow writes for the 8-bit RGB image ``rgb`` (``[H, W, 3]`` uint8).

    Raises:
        ValueError: for an unknown codec or an array that is not ``[H, W, 3]`` uint8.
    """
    from PIL import Image

    spec = _codec(codec)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 array [H, W, 3], got {rgb.dtype} {list(rgb.shape)}")
    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(
        buffer, format=spec.format, quality=quality, **dict(spec.options)
    )
    return buffer.getvalue()


def decode_classic(data: bytes, codec: str) -> np.ndarray:
    """Decode a file of :func:`encode_classic` to 8-bit RGB ``[H, W, 3]``."""
    from PIL import Image

    spec = _codec(codec)
    with Image.open(io.BytesIO(data), formats=[spec.format]) as image:
        return np.asarray(image.convert("RGB"))


@dataclass(frozen=True)
class ClassicResult:
    """One image coded by a classic codec at one quality.

    Attributes:
        image: file name (or label).
        codec: key in :data:`CLASSIC_CODECS`.
        quality: the encoder's quality setting.
        width, height: image size.
        bytes_file: bytes of the whole file Pillow wrote; ``bpp`` is ``8 · bytes_file /
            (width · height)``.
        psnr: dB on the 8-bit RGB images.
        ms_ssim, ms_ssim_db: 5-scale MS-SSIM and its dB form (``None`` if not computed, or under
            161 pixels a side).
        encoding_time, decoding_time: seconds in Pillow (bytes in memory).
    """

    image: str
    codec: str
    quality: int
    width: int
    height: int
    bytes_file: int
    bpp: float
    psnr: float
    ms_ssim: float | None
    ms_ssim_db: float | None
    encoding_time: float
    decoding_time: float


def evaluate_classic_image(
    image: Image.Image,
    codec: str,
    qualities: Sequence[int] | None = None,
    *,
    name: str = "image",
    ms_ssim: bool = False,
) -> tuple[ClassicResult, ...]:
    """Code ``image`` with a classic codec at every quality (default: the codec's whole sweep)
    and measure each decoded file; one result per quality, ascending.

    Args:
        ms_ssim: also compute MS-SSIM (costly: about as long as the coding itself, per quality).

    Raises:
        ValueError: for an unknown codec or bad qualities.
        ImageError: for an image the learned codec could not code either (e.g. 16-bit).
    """
    spec = _codec(codec)
    rgb = _rgb(image)
    pixels = rgb.shape[0] * rgb.shape[1]
    results = []
    for quality in _qualities(spec, qualities):
        start = time.perf_counter()
        data = encode_classic(rgb, codec, quality)
        encoding_time = time.perf_counter() - start
        start = time.perf_counter()
        decoded = decode_classic(data, codec)
        decoding_time = time.perf_counter() - start
        ms = rgb_ms_ssim(rgb, decoded) if ms_ssim else None
        results.append(
            ClassicResult(
                image=name,
                codec=codec,
                quality=quality,
                width=rgb.shape[1],
                height=rgb.shape[0],
                bytes_file=len(data),
                bpp=8 * len(data) / pixels,
                psnr=psnr(rgb, decoded),
                ms_ssim=ms,
                ms_ssim_db=None if ms is None else ms_ssim_db(ms),
                encoding_time=encoding_time,
                decoding_time=decoding_time,
            )
        )
    return tuple(results)


def evaluate_classic(
    files: Sequence[str | os.PathLike[str]],
    codec: str,
    qualities: Sequence[int] | None = None,
    *,
    ms_ssim: bool = False,
    progress: Callable[[int, int, str], Any] | None = None,
) -> list[tuple[ClassicResult, ...]]:
    """:func:`evaluate_classic_image` for every file (read with
    :func:`hpcm_models.image_io.read_image`), in order: one sweep per image.

    Args:
        progress: optional callable ``progress(done, total, name)`` called after each image.
    """
    sweeps = []
    for i, file in enumerate(files):
        name = Path(file).name
        sweeps.append(
            evaluate_classic_image(read_image(file), codec, qualities, name=name, ms_ssim=ms_ssim)
        )
        if progress is not None:
            progress(i + 1, len(files), name)
    return sweeps


# ---------------------------------------------------------------------------- matched rates


def rd_frontier(rates: Sequence[float], values: Sequence[float]) -> list[int]:
    """Indexes of the rate–distortion frontier, by ascending rate: the points that no other point
    beats (fewer or as many bits and a higher or equal value). Both rate and value strictly
    increase along it; a quality step that costs bits without improving the image (a
    non-monotonic step) is left out, so a matched-rate comparison credits the classic codec
    with its best setting. Non-finite values are left out."""
    if len(rates) != len(values):
        raise ValueError(f"expected as many rates as values, got {len(rates)} and {len(values)}")
    order = sorted(
        (i for i in range(len(rates)) if math.isfinite(rates[i]) and math.isfinite(values[i])),
        key=lambda i: (rates[i], -values[i]),
    )
    frontier: list[int] = []
    for i in order:
        if not frontier or values[i] > values[frontier[-1]]:
            frontier.append(i)
    return frontier


@dataclass(frozen=True)
class RateMatch:
    """A classic codec's value (e.g. PSNR) at a target rate.

    Attributes:
        bpp: the target rate.
        value: interpolated value, or ``None`` if the rate is not reachable.
        quality: the quality setting interpolated the same way (e.g. 37.4).
        bracket: the two qualities whose points bracket the rate (the same twice on an exact hit).
        note: why the rate is not reachable (``None`` if it is).
    """

    bpp: float
    value: float | None
    quality: float | None
    bracket: tuple[int, int] | None
    note: str | None = None


def interpolate_at_rate(
    rates: Sequence[float],
    values: Sequence[float],
    qualities: Sequence[int],
    bpp: float,
) -> RateMatch:
    """The value at rate ``bpp``, linear in bpp between the two neighbouring points of the
    frontier (:func:`rd_frontier`) that bracket it; the quality setting likewise.

    Args:
        rates, values, qualities: one entry per sweep point, any order.
        bpp: the target rate.

    Returns:
        A :class:`RateMatch`; below the frontier's lowest rate or above its highest its value is
        ``None`` and ``note`` says which (the codec cannot make such a file from this sweep).
    """
    if not len(rates) == len(values) == len(qualities):
        raise ValueError(
            f"expected rates, values and qualities of one length, got "
            f"{len(rates)}, {len(values)}, {len(qualities)}"
        )
    if not math.isfinite(bpp):
        raise ValueError(f"expected a finite target rate, got {bpp}")
    front = rd_frontier(rates, values)
    if not front:
        return RateMatch(bpp, None, None, None, "no finite sweep point")
    r = np.array([rates[i] for i in front], dtype=np.float64)
    low, high = front[0], front[-1]
    if not bpp >= r[0]:
        note = (
            f"not reachable: below the lowest rate, {rates[low]:.4g} bpp (quality {qualities[low]})"
        )
        return RateMatch(bpp, None, None, None, note)
    if not bpp <= r[-1]:
        note = (
            f"not reachable: above the highest rate, {rates[high]:.4g} bpp "
            f"(quality {qualities[high]})"
        )
        return RateMatch(bpp, None, None, None, note)
    j = int(np.searchsorted(r, bpp, side="left"))  # r[j - 1] < bpp <= r[j]
    if r[j] == bpp:
        i = front[j]
        return RateMatch(bpp, float(values[i]), float(qualities[i]), (qualities[i], qualities[i]))
    a, b = front[j - 1], front[j]
    t = (bpp - rates[a]) / (rates[b] - rates[a])
    return RateMatch(
        bpp,
        float(values[a] + t * (values[b] - values[a])),
        float(qualities[a] + t * (qualities[b] - qualities[a])),
        (qualities[a], qualities[b]),
    )


def match_rate(sweep: Sequence[ClassicResult], bpp: float, metric: str = "psnr") -> RateMatch:
    """:func:`interpolate_at_rate` over one image's sweep, for ``metric`` ``"psnr"`` or
    ``"ms-ssim"`` (in dB; points without it are left out)."""
    if metric not in ("psnr", "ms-ssim"):
        raise ValueError(f"expected metric 'psnr' or 'ms-ssim', got {metric!r}")
    key = "psnr" if metric == "psnr" else "ms_ssim_db"
    points = [p for p in sweep if getattr(p, key) is not None]
    return interpolate_at_rate(
        [p.bpp for p in points], [getattr(p, key) for p in points], [p.quality for p in points], bpp
    )


@dataclass(frozen=True)
class ImageMatch:
    """One image of a learned rate point against a classic codec at the same rate.

    Attributes:
        image: file name.
        bpp, psnr: the learned codec's rate (file or streams, see :class:`MatchedRate`) and PSNR
            (``None`` if its decoder refused the file).
        classic: the classic codec's PSNR at ``bpp``.
        delta_psnr: ``psnr − classic.value`` in dB, ``None`` when either is missing.
    """

    image: str
    bpp: float
    psnr: float | None
    classic: RateMatch
    delta_psnr: float | None


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


@dataclass(frozen=True)
class MatchedRate:
    """A learned rate point against a classic codec, image by image at the same rate.

    Attributes:
        point: the rate point's label (e.g. the checkpoint).
        codec: key in :data:`CLASSIC_CODECS`.
        rate: ``"file"`` (the whole ``.hpcm`` file against the whole classic file) or
            ``"streams"`` (the learned codec's entropy-coded streams only).
        images: images of the point; ``compared`` of them had a reachable classic rate.
        bpp, psnr: the learned codec's mean rate and PSNR over all images.
        classic_psnr, classic_quality: the classic codec's mean interpolated PSNR and quality
            setting over the compared images.
        delta_psnr: mean of the per-image ``learned − classic`` PSNR over the compared images;
            ``None`` if none could be compared.
        per_image: the per-image matches, in order.
    """

    point: str
    codec: str
    rate: str
    images: int
    compared: int
    bpp: float | None
    psnr: float | None
    classic_psnr: float | None
    classic_quality: float | None
    delta_psnr: float | None
    per_image: tuple[ImageMatch, ...]


def compare_matched_rate(
    point: str,
    learned: Sequence[ImageResult],
    sweeps: Sequence[Sequence[ClassicResult]],
    *,
    rate: str = "file",
) -> MatchedRate:
    """Compare a learned rate point with a classic codec on the same images at the same rates.

    Args:
        point: the rate point's label.
        learned: the learned codec's per-image results (:func:`hpcm_models.evaluation.
            evaluate_codec`).
        sweeps: the classic codec's sweep of each image, in the same order
            (:func:`evaluate_classic`).
        rate: the learned rate to match, ``"file"`` (``bpp_file``: whole file against whole file,
            the default) or ``"streams"`` (``bpp``, the count papers use).

    Raises:
        ValueError: for a bad ``rate``, or images that do not pair up (count or names).
    """
    if rate not in ("file", "streams"):
        raise ValueError(f"expected rate 'file' or 'streams', got {rate!r}")
    if len(learned) != len(sweeps):
        raise ValueError(f"expected one sweep per image: {len(learned)} images, {len(sweeps)}")
    codecs = {p.codec for sweep in sweeps for p in sweep}
    if len(codecs) != 1:
        raise ValueError(f"expected the sweeps of one classic codec, got {sorted(codecs)}")
    matches = []
    for result, sweep in zip(learned, sweeps, strict=True):
        if any(p.image != result.image for p in sweep):
            raise ValueError(f"image {result.image!r} paired with a sweep of another image")
        bpp = result.bpp_file if rate == "file" else result.bpp
        classic = match_rate(sweep, bpp)
        delta = None
        if result.psnr is None:
            classic = RateMatch(bpp, None, None, None, "the learned decoder refused the file")
        elif classic.value is not None:
            delta = result.psnr - classic.value
        matches.append(ImageMatch(result.image, bpp, result.psnr, classic, delta))
    compared = [m for m in matches if m.delta_psnr is not None]
    psnrs = [m.psnr for m in matches if m.psnr is not None]
    return MatchedRate(
        point=point,
        codec=codecs.pop(),
        rate=rate,
        images=len(matches),
        compared=len(compared),
        bpp=_mean([m.bpp for m in matches]),
        psnr=_mean(psnrs),
        classic_psnr=_mean([m.classic.value for m in compared]),  # type: ignore[misc]
        classic_quality=_mean([m.classic.quality for m in compared]),  # type: ignore[misc]
        delta_psnr=_mean([m.delta_psnr for m in compared]),  # type: ignore[misc]
        per_image=tuple(matches),
    )


# ---------------------------------------------------------------------------- curves, reports


def classic_document(
    codec: str, sweeps: Sequence[Sequence[ClassicResult]], dataset: str = ""
) -> dict[str, Any]:
    """The classic codec's RD curve in CompressAI's results layout (see
    :mod:`hpcm_models.evaluation`): one rate point per quality, each the mean over the images
    (``bpp`` = ``bpp-file``: the whole file), labelled in ``"points"``, with the per-image results
    under ``"per_image"``.

    Only the qualities on the frontier of the mean curve (:func:`rd_frontier`, PSNR) are kept,
    so that ``hpcm bd-rate`` and plots can interpolate it; the others are kept in the same
    layout under ``"dominated"`` (``"points"``, ``"results"``, ``"per_image"``).
    """
    spec = _codec(codec)
    if not sweeps or any(len(s) != len(sweeps[0]) for s in sweeps):
        raise ValueError("expected one sweep per image, all over the same qualities")
    qualities = [p.quality for p in sweeps[0]]
    if any([p.quality for p in s] != qualities for s in sweeps):
        raise ValueError("expected one sweep per image, all over the same qualities")
    columns = list(zip(*sweeps, strict=True))  # per quality: the images

    def means(points: Sequence[ClassicResult]) -> dict[str, Any]:
        ms = [p.ms_ssim for p in points]
        mean_ms = None if any(v is None for v in ms) else float(np.mean(ms))  # type: ignore[arg-type]
        bpp = float(np.mean([p.bpp for p in points]))
        return {
            "bpp": bpp,
            "bpp-file": bpp,
            "psnr-rgb": float(np.mean([p.psnr for p in points])),
            "ms-ssim-rgb": mean_ms,
            "ms-ssim-rgb-db": None if mean_ms is None else ms_ssim_db(mean_ms),
            "encoding_time": float(np.mean([p.encoding_time for p in points])),
            "decoding_time": float(np.mean([p.decoding_time for p in points])),
            "quality": points[0].quality,
            "images": len(points),
        }

    rows = [means(c) for c in columns]
    keep = sorted(rd_frontier([r["bpp"] for r in rows], [r["psnr-rgb"] for r in rows]))
    dropped = [i for i in range(len(rows)) if i not in set(keep)]

    def layout(indexes: list[int]) -> dict[str, Any]:
        return {
            "points": [f"quality {qualities[i]}" for i in indexes],
            "results": {key: [rows[i][key] for i in indexes] for key in rows[0]},
            "per_image": [[asdict(p) for p in columns[i]] for i in indexes],
        }

    return {
        "name": f"{spec.label} (Pillow)",
        "description": f"{spec.encoder()}, whole files, {len(sweeps)} images"
        + (f" of {dataset}" if dataset else ""),
        "codec": codec,
        "encoder": spec.encoder(),
        "dataset": dataset,
        **layout(keep),
        "dominated": layout(dropped),
    }


def classic_curve(document: Mapping[str, Any], metric: str = "psnr") -> RDCurve | None:
    """The :class:`~hpcm_models.evaluation.RDCurve` of a :func:`classic_document`; ``None`` for
    ``"ms-ssim"`` when it was not computed."""
    results = document["results"]
    values = results["psnr-rgb" if metric == "psnr" else "ms-ssim-rgb-db"]
    if any(v is None for v in values):
        return None
    return RDCurve(document["name"], tuple(results["bpp"]), tuple(values))


def _bd_against(anchor: RDCurve, test: RDCurve) -> dict[str, Any]:
    """BD-rate/BD-PSNR of ``test`` against ``anchor``, or why there is none."""
    if len(test.rates) < 2:
        return {"bd_rate_percent": None, "bd_psnr_db": None, "note": "needs 2 or more rate points"}
    try:
        result = compare_curves(anchor, test)
    except ValueError as err:
        return {"bd_rate_percent": None, "bd_psnr_db": None, "note": str(err)}
    return {"bd_rate_percent": result.bd_rate, "bd_psnr_db": result.bd_quality, "note": None}


def comparison_document(
    comparisons: Mapping[str, Sequence[MatchedRate]],
    learned: RDCurve,
    classic: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """The matched-rate comparison as JSON: per classic codec, one row per learned rate point
    (:class:`MatchedRate`, per-image matches included) and the Bjøntegaard deltas of the
    learned curve against the classic one (``None``, with a note, where they do not exist).

    Args:
        comparisons: codec → its :class:`MatchedRate` per rate point.
        learned: the learned codec's curve (bpp counted as the comparisons' ``rate``).
        classic: codec → its :func:`classic_document`.
    """
    rates = {r.rate for rows in comparisons.values() for r in rows}
    out: dict[str, Any] = {
        "rate": rates.pop() if len(rates) == 1 else sorted(rates),
        "method": "per image, the classic PSNR at the learned bpp, linear in bpp between the two "
        "qualities that bracket it on the image's RD frontier; no extrapolation; delta = learned "
        "- classic, averaged over the images where the rate is reachable",
        "codecs": {},
    }
    for codec, rows in comparisons.items():
        curve = classic_curve(classic[codec])
        out["codecs"][codec] = {
            "name": classic[codec]["name"],
            "encoder": classic[codec]["encoder"],
            "rows": [asdict(r) for r in rows],
            **(_bd_against(curve, learned) if curve is not None else {}),
        }
    return out


def _cell(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_comparison_table(comparisons: Mapping[str, Sequence[MatchedRate]]) -> str:
    """A Markdown table, one row per learned rate point: its bpp and PSNR, then per classic
    codec its interpolated quality and PSNR at the same bpp and the mean PSNR gain; a ``*``
    marks means over only some images (the others: not reachable), counted in a note below."""
    codecs = list(comparisons)
    if not codecs:
        raise ValueError("expected at least one classic codec")
    points = [r.point for r in comparisons[codecs[0]]]
    labels = {c: CLASSIC_CODECS[c].label for c in codecs}
    header = ["rate point", "bpp", "PSNR"]
    for c in codecs:
        header += [f"{labels[c]} q", f"{labels[c]} PSNR", f"Δ {labels[c]} (dB)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for i, point in enumerate(points):
        first = comparisons[codecs[0]][i]
        cells = [point, _cell(first.bpp, ".4f"), _cell(first.psnr, ".2f")]
        for c in codecs:
            row = comparisons[c][i]
            star = "*" if 0 < row.compared < row.images else ""
            cells += [
                _cell(row.classic_quality, ".1f"),
                _cell(row.classic_psnr, ".2f") + star,
                _cell(row.delta_psnr, "+.2f") + star,
            ]
            if row.compared < row.images:
                # "not reachable: below the lowest rate, 0.1 bpp (quality 1)" → its first part
                reasons = Counter(
                    str(m.classic.note).split(",")[0] for m in row.per_image if m.delta_psnr is None
                )
                notes.append(
                    f"{point}, {labels[c]}: {row.compared} of {row.images} images compared ("
                    + "; ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
                    + ")"
                )
        lines.append("| " + " | ".join(cells) + " |")
    rate = comparisons[codecs[0]][0].rate if points else "file"
    lines.append("")
    lines.append(
        "bpp: the learned codec's "
        + ("whole .hpcm files" if rate == "file" else "entropy-coded streams")
        + "; classic codecs: whole files. Δ = learned − classic PSNR at the same bpp, per image, "
        "averaged over the images."
    )
    lines += [f"* {n}" for n in notes]
    if notes:
        lines.append("(per image, with the classic rates, in the JSON: compare.codecs.*.rows)")
    return "\n".join(lines)
