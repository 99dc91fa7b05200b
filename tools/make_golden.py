"""Make the golden ``.hpcm`` files of ``tests/models/golden/`` (see its README.md).

Every built-in model at HPCM_MICRO size (M=16, N=8) codes a small source image cut from the
bundled photos (exact crops, no resampling); odd sizes, gray, alpha and a size past one 128-pixel
tile are covered.

The weights follow the scales of the parity recipe (:func:`hpcm_models.recipe.fill_recipe_weights`)
but are drawn from an integer hash instead of ``torch.randn``: the recipe's values depend on the
CPU's vector code (with ``ATEN_CPU_CAPABILITY=default`` both ``torch.randn`` and the float32
``torch.exp`` of the default scale table round differently than with AVX2), and golden files must
decode on every machine the tests run on. For the same reason the scale table is computed in
float64 by Python and rounded to float32 once. Most cases also make the weights "lively" (latents
of a few units, scales over the whole table, some escapes), as ``tests/models/test_codec.py``
does, so that every stream kind and the context model matter.

The script writes the source PNGs, the ``.hpcm`` files, ``golden.json`` with the SHA-256 of
each file and of its decoded pixels, and the decoded images themselves (``decoded/*.png``, whose
pixels must hash to the recorded ``pixels_sha256``). ``tests/models/test_golden.py`` checks that
the source still encodes to exactly that file and that the file still decodes to exactly those
pixels, or, on another platform (torch version, CPU kernels), where float round-off in the
decoder's networks may round a few samples the other way, to the decoded image within
:data:`MAX_LEVELS` (:class:`PixelDiff`).

The golden files exist to catch any change of the bitstream, so this script refuses to overwrite
them: a deliberate format change bumps the format version and adds new golden files beside the old
ones (which must stay decodable). Files that are missing (a new case, e.g. a new built-in model)
are written, identical ones left alone; ``--force`` replaces files whose bytes would change.

    uv run python tools/make_golden.py            # writes the missing golden files
    uv run python tools/make_golden.py --decoded  # writes only the missing decoded images
    uv run python tools/make_golden.py --check    # re-encodes, decodes, compares; writes nothing
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import io
import json
import math
import platform
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

import hpcm_models
from hpcm_models import BUILTIN_MODELS, HPCM, HPCM_MICRO, ImageCodec, get_model
from hpcm_models.demo import bundled_image

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "tests" / "models" / "golden"
MANIFEST = "golden.json"
#: Folder (inside the golden folder) of the decoded images, ``<file stem>.png``.
DECODED = "decoded"
#: Every golden model: HPCM_MICRO at M=16, N=8 (the whole coding schedule, well under 1 M
#: parameters), portable weights (:func:`fill_golden_weights`).
M, N = 16, 8


@dataclass(frozen=True)
class Case:
    """One golden file: ``model`` codes a ``width``x``height`` crop at (left, top) of ``photo``,
    converted to ``mode`` (an alpha channel, if any, is a deterministic pattern)."""

    model: str
    photo: str
    mode: str
    left: int
    top: int
    width: int
    height: int
    lively: bool = True

    @property
    def stem(self) -> str:
        weights = "" if self.lively else "-plain"
        return f"{self.model}{weights}-{self.mode.lower()}-{self.width}x{self.height}"


CASES: tuple[Case, ...] = (
    Case("hpcm-base", "rocket.png", "RGB", 60, 100, 37, 23),  # odd sides, one tile
    Case("hpcm-base", "coffee.png", "RGB", 100, 60, 130, 67),  # two tiles wide
    Case("hpcm-base", "chelsea.png", "RGB", 150, 90, 31, 29, lively=False),  # latents near 0
    Case("hpcm-large", "camera.png", "L", 70, 40, 45, 31),  # gray
    Case("hpcm-phase1", "chelsea.png", "RGBA", 120, 80, 33, 17),  # alpha
    Case("hpcm-phase1-lite", "astronaut.png", "RGB", 30, 150, 47, 19),
    Case("hpcm-phase2", "astronaut.png", "RGB", 90, 30, 40, 40),
    Case("hpcm-phase3", "camera.png", "LA", 20, 100, 24, 41),  # gray with alpha
    Case("hpcm-phase4", "coffee.png", "RGB", 200, 120, 29, 64),
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pixels_sha256(image: Image.Image) -> str:
    """SHA-256 of an image's pixels as Pillow stores them (``np.asarray(image)`` bytes)."""
    return sha256(np.ascontiguousarray(np.asarray(image)).tobytes())


def _uniform(key: str, count: int) -> np.ndarray:
    """``count`` float32 values in [-1, 1) on a 2^-23 grid from splitmix64 seeded with the CRC32
    of ``key``: integer arithmetic only, so the same on every machine."""
    mask = np.uint64(0xFFFFFFFFFFFFFFFF)
    x = (np.arange(1, count + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) & mask
    x = x + np.uint64(zlib.crc32(key.encode()))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    grid = (x >> np.uint64(40)).astype(np.int64) - (1 << 23)  # 24 bits
    return (grid.astype(np.float32) / np.float32(1 << 23)).astype(np.float32)


def fill_golden_weights(model: nn.Module) -> nn.Module:
    """The parity recipe's scales (:func:`hpcm_models.recipe.fill_recipe_weights`) with portable
    uniform values of the same standard deviation instead of ``torch.randn``."""
    with torch.no_grad():
        for key, param in model.named_parameters():
            u = _uniform(key, param.numel()).reshape(param.shape)
            root3 = math.sqrt(3)  # uniform [-1, 1) has standard deviation 1/sqrt(3)
            if key.startswith("scales_hyper"):
                value = np.float32(1.25) + np.float32(0.25) * u
            elif key.startswith("means_hyper"):
                value = np.float32(0.1 * root3) * u
            elif key.startswith("adaptive_params_list"):
                value = np.float32(1) + np.float32(0.1 * root3) * u
            elif param.dim() >= 2:
                value = np.float32(0.8 * root3 / math.sqrt(param.numel() / param.shape[0])) * u
            else:
                value = np.float32(0.01 * root3) * u
            param.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))
    return model


def make_lively(model: HPCM) -> HPCM:
    """Latents of a few units, hyperprior scales over the whole table, a few latents beyond it
    (``lively`` of ``tests/models/test_codec.py``, with exactly rounded float32 arithmetic)."""
    M = model.M
    with torch.no_grad():
        model.g_a.branch[-1].weight.mul_(10)
        to_params = [m for m in model.h_s.modules() if isinstance(m, nn.ConvTranspose2d)][-1]
        to_params.bias[:M].add_(2)
        spread = torch.from_numpy((1 + np.arange(M) * (29 / (M - 1))).astype(np.float32))
        for prior in (model.y_spatial_prior_s1_s2, model.y_spatial_prior_s3):
            # The convolution that outputs the 2M entropy parameters (scales first).
            out = [m for m in prior.modules() if isinstance(m, nn.Conv2d)][-1]
            if out.out_channels != 2 * M:
                raise AssertionError(f"last convolution of {type(prior).__name__}: {out}")
            out.weight.mul_(0.3)
            out.bias[:M].copy_(spread)
    return model


def golden_scale_table() -> torch.Tensor:
    """The default table's 60 log-spaced scales from 0.12 to 64, computed in float64 by Python
    and rounded to float32 once (``torch.exp`` in float32 rounds differently per CPU)."""
    low, high, levels = math.log(0.12), math.log(64.0), 60
    steps = [math.exp(low + (high - low) * i / (levels - 1)) for i in range(levels)]
    return torch.tensor(steps, dtype=torch.float32)


def golden_codec(model_name: str, lively: bool = True) -> ImageCodec:
    """The codec of the golden files of ``model_name``."""
    model = get_model(model_name, M=M, N=N, config=HPCM_MICRO)
    fill_golden_weights(model)
    if lively:
        make_lively(model)
    model.eval().update(scale_table=golden_scale_table(), force=True)
    return ImageCodec(model, model_name)


_cached_codec = functools.cache(golden_codec)


def source_image(case: Case) -> Image.Image:
    """The case's source image: an exact crop (no resampling) of a bundled photo."""
    with Image.open(bundled_image(case.photo)) as photo:
        pixels = np.asarray(photo)
    box = pixels[case.top : case.top + case.height, case.left : case.left + case.width]
    image = Image.fromarray(np.ascontiguousarray(box))
    base = "L" if case.mode.startswith("L") else "RGB"
    image = image.convert(base) if image.mode != base else image
    if "A" in case.mode:
        # A diagonal ramp with a few fully transparent and fully opaque pixels.
        y, x = np.mgrid[: case.height, : case.width]
        alpha = ((x * 255) // max(case.width - 1, 1) + y * 7) % 256
        image.putalpha(Image.fromarray(alpha.astype(np.uint8)))
    if image.mode != case.mode or image.size != (case.width, case.height):
        raise AssertionError(f"{case.stem}: built a {image.mode} {image.size} image")
    return image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


# ---------------------------------------------------------------------------- decoded images

#: Tolerance of a decoded golden image on another platform: each color sample within
#: ``MAX_LEVELS`` of the decoded image, at most :attr:`PixelDiff.allowed` samples differing, alpha
#: exact. Float32 decoding (h_s, context model, g_s) from the same latents is within 7.8e-5 levels
#: of the same decoder in float64 here (AVX2; 5.3e-5 with ATen's scalar and oneDNN's SSE4.1 code),
#: so two such platforms can round only samples that close to a half level differently, and by
#: one level. Even within 5e-4 levels (6x the measured error) of a half level lie only 13 of the
#: 26130 samples of the largest golden file (0.05 %) and at most 5 of any smaller one, never more
#: than 0.1 % of a file's samples or 3, whichever is more. One latent of ŷ off by one changes 199
#: samples or more, some by 5 levels or more (tools/golden_roundoff.py measures all this).
MAX_LEVELS = 1
MAX_DIFFERING_FRACTION = 0.001
MIN_DIFFERING = 3


def decoded_name(entry: dict) -> str:
    """Path, in the golden folder, of the decoded image of a manifest entry."""
    return f"{DECODED}/{Path(entry['file']).stem}.png"


def load_image(path: Path | io.BytesIO) -> Image.Image:
    with Image.open(path) as image:
        image.load()
    return image


@dataclass(frozen=True)
class PixelDiff:
    """How an image differs from the decoded golden image (same mode and size): its color
    samples (one per pixel for L and LA, three for RGB and RGBA) and its alpha samples."""

    samples: int
    differing: int
    max_levels: int
    alpha_differing: int

    @property
    def allowed(self) -> int:
        """Most color samples that may differ: 0.1 % of them, at least ``MIN_DIFFERING``."""
        return max(MIN_DIFFERING, math.ceil(MAX_DIFFERING_FRACTION * self.samples))

    @property
    def exact(self) -> bool:
        return self.differing == 0 and self.alpha_differing == 0

    @property
    def within_tolerance(self) -> bool:
        return (
            self.max_levels <= MAX_LEVELS
            and self.differing <= self.allowed
            and self.alpha_differing == 0
        )

    def __str__(self) -> str:
        share = 100 * self.differing / self.samples
        return (
            f"{self.differing} of {self.samples} color samples ({share:.3f} %) differ, by up to "
            f"{self.max_levels} level(s), and {self.alpha_differing} alpha samples (tolerance: "
            f"up to {MAX_LEVELS} level on at most {self.allowed} color samples, alpha exact)"
        )


def compare_pixels(image: Image.Image, reference: Image.Image) -> PixelDiff:
    """How ``image`` differs from ``reference``, the decoded golden image."""
    if (image.mode, image.size) != (reference.mode, reference.size):
        raise ValueError(
            f"a {image.mode} {image.size} image against a {reference.mode} {reference.size} one"
        )
    diff = np.abs(np.asarray(image, np.int16) - np.asarray(reference, np.int16))
    diff = diff.reshape(image.height, image.width, -1)
    colors = 1 if image.mode.startswith("L") else 3
    return PixelDiff(
        samples=diff[..., :colors].size,
        differing=int(np.count_nonzero(diff[..., :colors])),
        max_levels=int(diff[..., :colors].max()),
        alpha_differing=int(np.count_nonzero(diff[..., colors:])),
    )


# ---------------------------------------------------------------------------- building


def build(cases: tuple[Case, ...]) -> tuple[dict[str, bytes], dict]:
    """Everything the golden folder holds but the decoded images: ``{relative path: bytes}`` and
    the manifest."""
    files: dict[str, bytes] = {}
    entries = []
    for case in cases:
        codec = _cached_codec(case.model, case.lively)
        source = png_bytes(source_image(case))
        with Image.open(io.BytesIO(source)) as image:
            image.load()
            encoded = codec.encode_detailed(image)
        decoded = codec.decode(encoded.data)
        source_name, file_name = f"sources/{case.stem}.png", f"{case.stem}.hpcm"
        files[source_name], files[file_name] = source, encoded.data
        entries.append(
            {
                "file": file_name,
                "source": source_name,
                "model": case.model,
                "model_kwargs": {"M": M, "N": N, "config": "HPCM_MICRO"},
                "weights": "lively" if case.lively else "plain",
                "mode": decoded.mode,
                "width": decoded.width,
                "height": decoded.height,
                "escapes": encoded.escapes,
                "streams": [k.name for k in encoded.header.stream_kinds],
                "file_bytes": len(encoded.data),
                "file_sha256": sha256(encoded.data),
                "source_sha256": sha256(source),
                "pixels_sha256": pixels_sha256(decoded),
            }
        )
    manifest = {
        "about": "Golden .hpcm files: see README.md; made by tools/make_golden.py.",
        "made_with": {
            "hpcm_models": hpcm_models.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "date": datetime.date.today().isoformat(),
        },
        "pixels_sha256": "SHA-256 of the decoded image's pixels, np.asarray(image).tobytes()",
        "files": entries,
    }
    return files, manifest


def _merged_manifest(output: Path, manifest: dict, new: set[str]) -> dict:
    """``manifest`` with the entries of files that already existed kept as they were recorded
    (their ``made_with`` included), so adding a case never rewrites what is there."""
    path = output / MANIFEST
    if not path.is_file():
        return manifest
    recorded = {e["file"]: e for e in json.loads(path.read_text())["files"]}
    stamp = manifest["made_with"]
    files = [
        {**e, "made_with": stamp} if e["file"] in new else recorded.get(e["file"], e)
        for e in manifest["files"]
    ]
    return {**json.loads(path.read_text()), "files": files}


def decode_committed(folder: Path, entry: dict) -> Image.Image:
    """The golden file of a manifest entry, as it is in ``folder``, decoded on this machine."""
    data = (folder / entry["file"]).read_bytes()
    if sha256(data) != entry["file_sha256"]:
        raise SystemExit(f"{folder / entry['file']} is not the recorded file (SHA-256 differs)")
    return _cached_codec(entry["model"], entry["weights"] == "lively").decode(data)


def write_decoded(folder: Path) -> int:
    """Write the decoded image of every file of the manifest that lacks a valid one: the file
    decoded here, written only if its pixels hash to the recorded ``pixels_sha256`` (the
    originals; on another platform a few samples may round differently). Returns the exit
    status."""
    written, refused = [], []
    for entry in json.loads((folder / MANIFEST).read_text())["files"]:
        path = folder / decoded_name(entry)
        if path.is_file() and pixels_sha256(load_image(path)) == entry["pixels_sha256"]:
            continue
        png = png_bytes(decode_committed(folder, entry))
        if pixels_sha256(load_image(io.BytesIO(png))) != entry["pixels_sha256"]:
            refused.append(entry["file"])
            continue
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(png)
        written.append(decoded_name(entry))
    if written:
        print(f"wrote {len(written)} decoded images to {folder}: {', '.join(written)}")
    if refused:
        print(
            f"refusing to write the decoded images of {', '.join(refused)}: they decode here to "
            "other pixels than recorded in golden.json (another platform; a few samples round "
            "differently). Make them where the pixels match, e.g. where the files were made.",
            file=sys.stderr,
        )
    return 1 if refused else 0


def check_decoded(folder: Path) -> list[str]:
    """Decode every file of the manifest here and compare it with its decoded image; prints a
    line per file, returns the problems."""
    problems = []
    for entry in json.loads((folder / MANIFEST).read_text())["files"]:
        name, path = entry["file"], folder / decoded_name(entry)
        absent = [n for n in (name, decoded_name(entry)) if not (folder / n).is_file()]
        if absent:
            problems.append(f"{name}: missing {' and '.join(absent)}")
            continue
        reference = load_image(path)
        if pixels_sha256(reference) != entry["pixels_sha256"]:
            problems.append(f"{decoded_name(entry)}: pixels do not hash to the recorded ones")
            continue
        diff = compare_pixels(decode_committed(folder, entry), reference)
        if diff.exact:
            print(f"{name}: decodes bit-exactly")
        elif diff.within_tolerance:
            print(f"{name}: decodes within tolerance: {diff}")
        else:
            problems.append(f"{name}: decodes beyond tolerance: {diff}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="golden folder")
    parser.add_argument(
        "--force", action="store_true", help="replace golden files whose bytes would change"
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument(
        "--check",
        action="store_true",
        help="re-encode and decode, compare with the existing files; write nothing",
    )
    only.add_argument(
        "--decoded",
        action="store_true",
        help="only write the missing decoded images of the existing files (refused where they "
        "do not decode to the recorded pixels)",
    )
    args = parser.parse_args(argv)
    if {case.model for case in CASES} != set(BUILTIN_MODELS):
        raise SystemExit(f"CASES must cover every built-in model: {BUILTIN_MODELS}")
    if args.decoded:
        return write_decoded(args.output)
    files, manifest = build(CASES)
    missing = {name for name in files if not (args.output / name).is_file()}
    differ = [
        name
        for name, data in files.items()
        if name not in missing and (args.output / name).read_bytes() != data
    ]
    if args.check:
        same = not differ and not missing
        print("files identical" if same else f"differ: {differ}, missing: {sorted(missing)}")
        problems = check_decoded(args.output) if (args.output / MANIFEST).is_file() else []
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if differ or missing or problems else 0
    if differ and not args.force:
        print(
            f"refusing to overwrite {len(differ)} golden file(s) in {args.output} whose bytes "
            f"would change (e.g. {differ[0]}): they guard the bitstream. Pass --force to replace "
            "them (a format change adds new files and keeps the old ones instead).",
            file=sys.stderr,
        )
        return 1
    written = missing | set(differ)
    if not written:
        print(f"{args.output} holds every golden file, identical")
        return write_decoded(args.output)
    (args.output / "sources").mkdir(parents=True, exist_ok=True)
    for name in sorted(written):
        (args.output / name).write_bytes(files[name])
    new = {name for name in written if name.endswith(".hpcm")}
    merged = manifest if args.force else _merged_manifest(args.output, manifest, new)
    (args.output / MANIFEST).write_text(json.dumps(merged, indent=1) + "\n")
    names = ", ".join(sorted(written))
    print(f"wrote {len(written)} files and {MANIFEST} to {args.output}: {names}")
    return write_decoded(args.output)


if __name__ == "__main__":
    raise SystemExit(main())
