"""Build the rwkv-lic photo set (train / val) from free wallpaper packages of Debian.

One command rebuilds it byte for byte (same package versions, same Pillow)::

    uv run python tools/build_dataset.py --out data/photos
    uv run python tools/build_dataset.py --out data/photos --check   # verify against manifest

The packages are fetched with ``apt-get download`` and unpacked with ``dpkg -x``. Only
photographs are kept: every candidate file was looked at on contact sheets (``--sheets DIR``
makes them) and the non-photographs are listed in ``EXCLUDED`` with a one-word reason. Copies
of one picture (several sizes, thumbnails, the same file in two packages) are grouped by a
perceptual fingerprint and only the largest source is kept. Each picture is downscaled with
Lanczos so that its shorter side is ``--short-side`` pixels (never upscaled), centre-cropped to
multiples of 16 and written losslessly; the split into train / val is a ranking by a hash of
the picture's identity. ``manifest.json`` records per file its package, version, source path,
licence, sizes and SHA-256. See docs/data.md.

``mate-backgrounds`` is reserved for independent evaluation: this tool refuses to download,
unpack or read it.

Standalone on purpose (stdlib + Pillow + numpy), so it runs before the workspace is installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import hashlib
import io
import json
import math
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageDraw, ImageOps, features

TOOL_VERSION = "1.0"

PACKAGES: tuple[str, ...] = (
    "plasma-workspace-wallpapers",
    "ukui-wallpapers",
    "lomiri-wallpapers",
    "lomiri-wallpapers-16.04",
    "lomiri-wallpapers-20.04",
    "gnome-backgrounds",
    "sway-backgrounds",
)

# Held out for independent evaluation of the project's codecs: never download, unpack or read.
RESERVED_PACKAGES: frozenset[str] = frozenset({"mate-backgrounds"})

# The versions whose every candidate file was looked at to write EXCLUDED (Debian 12 bookworm).
# Another version may ship other files: the tool stops unless --allow-unreviewed is given.
REVIEWED_VERSIONS: dict[str, str] = {
    "plasma-workspace-wallpapers": "4:5.27.5-2",
    "ukui-wallpapers": "20.04.3-1.1",
    "lomiri-wallpapers": "20.04.0-2",
    "lomiri-wallpapers-16.04": "20.04.0-2",
    "lomiri-wallpapers-20.04": "20.04.0-2",
    "gnome-backgrounds": "43.1-1",
    "sway-backgrounds": "1.7-6",
}

_GNOME = "usr/share/backgrounds/gnome/"
_PLASMA = "usr/share/wallpapers/"
_UKUI = "usr/share/backgrounds/"
_LOMIRI = "usr/share/backgrounds/"

# Non-photographs, as seen on contact sheets: (package, path inside the package) -> reason.
# A path ending in "/" covers every file below it (a Plasma wallpaper is one folder: the picture
# at several sizes, portrait and dark variants, and a screenshot).
EXCLUDED: dict[tuple[str, str], str] = {
    **{
        ("gnome-backgrounds", _GNOME + name): reason
        for stem, reason, exts in (
            ("adwaita", "render", ("-d.webp", "-l.webp")),
            ("blobs", "vector", ("-d.svg", "-l.svg")),
            ("drool", "vector", ("-d.svg", "-l.svg")),
            ("dune", "vector", ("-d.svg", "-l.svg")),
            ("field", "vector", ("-d.svg", "-l.svg")),
            ("grid", "render", ("-d.webp", "-l.webp")),
            ("licorice", "render", ("-d.webp", "-l.webp")),
            ("oceans", "vector", (".svg",)),
            ("pixels", "render", ("-d.webp", "-l.webp")),
            ("symbolic", "pattern", ("-d.webp", "-l.webp")),
            ("truchet", "render", ("-d.webp", "-l.webp")),
            ("vnc", "flat", ("-d.webp", "-l.webp")),
            ("wood", "render", ("-d.webp", "-l.webp")),
        )
        for name in (stem + ext for ext in exts)
    },
    ("lomiri-wallpapers", _LOMIRI + "warty-final-ubuntu.png"): "gradient",
    ("lomiri-wallpapers-16.04", _LOMIRI + "umang_by_Abhishek_Mudgal.jpg"): "render",
    ("lomiri-wallpapers-20.04", _LOMIRI + "Fossa_by_Jasper_Roks.jpg"): "render",
    ("lomiri-wallpapers-20.04", _LOMIRI + "Infinite-Sea_by_Aury88.jpg"): "composite",
    ("lomiri-wallpapers-20.04", _LOMIRI + "Painting-Colors_by__herobrine7gamer.jpg"): "vector",
    **{
        ("plasma-workspace-wallpapers", f"{_PLASMA}{name}/"): reason
        for name, reason in (
            ("Altai", "render"),
            ("Autumn", "painting"),
            ("Canopee", "render"),
            ("Cascade", "render"),
            ("Cluster", "render"),
            ("Elarun", "vector"),
            ("Flow", "render"),
            ("FlyingKonqui", "illustration"),
            ("Honeywave", "render"),
            ("IceCold", "render"),
            ("Kay", "render"),
            ("Kokkini", "render"),
            ("MilkyWay", "render"),
            ("Opal", "render"),
            ("PastelHills", "render"),
            ("Patak", "render"),
            ("SafeLanding", "illustration"),
            ("Shell", "render"),
            ("Volna", "render"),
        )
    },
    ("sway-backgrounds", "usr/share/backgrounds/sway/"): "logo",
    **{
        ("ukui-wallpapers", _UKUI + name): reason
        for name, reason in (
            ("2004default.jpg", "render"),
            ("calla.png", "illustration"),
            ("city.png", "vector"),
            ("desert.png", "vector"),
            ("firstgeneration.jpg", "illustration"),
            ("fluent-color.png", "gradient"),
            ("focal-ubuntukylin.png", "logo"),
            ("goldfish.png", "illustration"),
            ("rhythm.jpg", "render"),
            ("rollpaper.png", "vector"),
            ("string.jpg", "render"),
            ("the-mouse.jpg", "illustration"),
        )
    },
}

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".svg", ".svgz", ".jxl", ".bmp", ".tif", ".tiff", ".gif"}
)
# What Pillow can decode; a candidate with another suffix must be in EXCLUDED.
RASTER_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)
SPLIT_SALT = "rwkv-lic-photos-v1"


class DatasetBuildError(Exception):
    """The set cannot be built or verified; the message says what was expected."""


class ReservedPackageError(DatasetBuildError):
    """A package reserved for independent evaluation was requested."""


@dataclasses.dataclass(frozen=True)
class Params:
    """Everything that decides the output bytes (recorded in the manifest)."""

    short_side: int = 768
    multiple: int = 16
    fmt: str = "webp"
    val_fraction: float = 0.15
    min_val: int = 16
    min_train_fraction: float = 2 / 3
    min_source_short_side: int = 512
    dup_thumb: int = 32
    dup_min_corr: float = 0.90
    dup_max_log_aspect: float = 0.02
    max_mib: float = 40.0


@dataclasses.dataclass(frozen=True)
class PackageSource:
    """One unpacked package: its name, version, the .deb it came from, and where it lies."""

    name: str
    version: str
    root: Path
    deb_name: str = ""
    deb_sha256: str = ""
    deb_bytes: int = 0


@dataclasses.dataclass
class Candidate:
    """An image file inside a package, before and after review."""

    package: str
    path: str  # relative to the package root, POSIX
    file: Path
    excluded: str | None = None
    size: tuple[int, int] = (0, 0)
    fingerprint: np.ndarray | None = None


# --- safety ------------------------------------------------------------------------------------


def check_packages(names: Iterable[str]) -> list[str]:
    """Return ``names`` as a list; raise ReservedPackageError if any is reserved.

    Raises:
        ReservedPackageError: a name is in RESERVED_PACKAGES (compared case-insensitively).
    """
    names = list(names)
    for name in names:
        if name.strip().lower() in RESERVED_PACKAGES:
            raise ReservedPackageError(
                f"{name!r} is reserved for independent evaluation and must never be downloaded, "
                "unpacked or used for training, tuning or testing; remove it from --packages"
            )
    return names


# --- fetching ----------------------------------------------------------------------------------


def _run(cmd: Sequence[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise DatasetBuildError(
            f"{cmd[0]} not found: this tool needs Debian's apt and dpkg"
        ) from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise DatasetBuildError(f"{' '.join(cmd)} failed ({done.returncode}): {' | '.join(tail)}")
    return done.stdout


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_package(name: str, cache: Path, update: bool) -> Path:
    """The .deb of ``name`` in ``cache``, downloaded with ``apt-get download`` if absent."""
    check_packages([name])
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{name}_*.deb"))
    if not debs:
        if update:
            _run(["apt-get", "update"])
        _run(["apt-get", "download", name], cwd=cache)
        debs = sorted(cache.glob(f"{name}_*.deb"))
    if len(debs) != 1:
        found = ", ".join(d.name for d in debs) or "none"
        raise DatasetBuildError(f"expected one {name}_*.deb in {cache}, found {found}")
    return debs[0]


def unpack_package(name: str, deb: Path, dest: Path) -> PackageSource:
    """``dpkg -x`` the .deb into ``dest/name`` and describe it."""
    check_packages([name])
    fields = _run(["dpkg-deb", "-f", str(deb), "Package", "Version"])
    meta = dict(line.split(": ", 1) for line in fields.strip().splitlines())
    if meta.get("Package") != name:
        raise DatasetBuildError(f"{deb} holds package {meta.get('Package')!r}, expected {name!r}")
    root = dest / name
    root.mkdir(parents=True)
    _run(["dpkg", "-x", str(deb), str(root)])
    return PackageSource(
        name=name,
        version=meta["Version"],
        root=root,
        deb_name=deb.name,
        deb_sha256=_sha256_file(deb),
        deb_bytes=deb.stat().st_size,
    )


# --- licences ----------------------------------------------------------------------------------


def parse_copyright(text: str) -> list[dict[str, str]]:
    """The ``Files`` paragraphs of a machine-readable debian/copyright (DEP-5), in order."""
    paragraphs: list[dict[str, str]] = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key is not None:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "files" in fields:
            paragraphs.append(fields)
    return paragraphs


def _pattern_matches(pattern: str, path: str) -> bool:
    # Files: patterns name paths in the source tree ("16.04/x.jpg"); installed files keep only
    # the name (usr/share/backgrounds/x.jpg). Match the full path or a suffix of it, or, for a
    # pattern that names one file exactly, its file name ("debian/*" must not match every file).
    if fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path, "*/" + pattern):
        return True
    name = pattern.rsplit("/", 1)[-1]
    return not any(ch in name for ch in "*?[") and path.rsplit("/", 1)[-1] == name


def licence_for(paragraphs: Sequence[Mapping[str, str]], path: str) -> dict[str, str]:
    """Licence and copyright of ``path`` per DEP-5: the last matching Files paragraph wins."""
    found: Mapping[str, str] | None = None
    for para in paragraphs:
        if any(_pattern_matches(p, path) for p in para["files"].split()):
            found = para
    if found is None:
        raise DatasetBuildError(f"no Files: paragraph of the copyright file covers {path!r}")
    return {
        "license": found.get("license", "").splitlines()[0].strip(),
        "copyright": " ".join(found.get("copyright", "").split()),
        "files_pattern": " ".join(found["files"].split()),
    }


def read_licences(src: PackageSource) -> list[dict[str, str]]:
    """The parsed copyright file of an unpacked package."""
    path = src.root / "usr/share/doc" / src.name / "copyright"
    if not path.is_file():
        raise DatasetBuildError(f"{src.name} has no {path.relative_to(src.root)}")
    return parse_copyright(path.read_text(encoding="utf-8", errors="replace"))


def plasma_metadata(src: PackageSource, path: str) -> dict[str, str]:
    """Author and licence from a Plasma wallpaper's metadata.json (empty if there is none)."""
    parts = path.split("/")
    if len(parts) < 5 or parts[:3] != ["usr", "share", "wallpapers"]:
        return {}
    meta = src.root.joinpath(*parts[:4], "metadata.json")
    if not meta.is_file():
        return {}
    plugin = json.loads(meta.read_text(encoding="utf-8")).get("KPlugin", {})
    authors = ", ".join(a.get("Name", "") for a in plugin.get("Authors", []))
    return {
        "title": plugin.get("Name", ""),
        "author": authors,
        "license": plugin.get("License", ""),
    }


# --- candidates, review, duplicates ------------------------------------------------------------


def exclusion_reason(
    package: str, path: str, excluded: Mapping[tuple[str, str], str] = EXCLUDED
) -> str | None:
    """The reason ``path`` of ``package`` is not a photograph, or None if it is one."""
    if (package, path) in excluded:
        return excluded[(package, path)]
    for (pkg, key), reason in excluded.items():
        if pkg == package and key.endswith("/") and path.startswith(key):
            return reason
    return None


def find_candidates(
    src: PackageSource, excluded: Mapping[tuple[str, str], str] = EXCLUDED
) -> tuple[list[Candidate], int]:
    """Every image file of a package (symlinks are aliases: counted, not read) and their review."""
    found: list[Candidate] = []
    links = 0
    for file in sorted(src.root.rglob("*")):
        if file.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if file.is_symlink():
            links += 1
            continue
        if not file.is_file():
            continue
        rel = file.relative_to(src.root).as_posix()
        reason = exclusion_reason(src.name, rel, excluded)
        if reason is None and file.suffix.lower() not in RASTER_SUFFIXES:
            raise DatasetBuildError(f"{src.name}: {rel} is not a raster image and not in EXCLUDED")
        found.append(Candidate(src.name, rel, file, excluded=reason))
    return found, links


def open_rgb(path: Path, flatten: bool = False) -> Image.Image:
    """Decode an image as 8-bit sRGB RGB, upright (EXIF orientation applied).

    A transparent image is refused (photographs are opaque) unless ``flatten`` puts it on white
    (contact sheets show every candidate).
    """
    with Image.open(path) as im:
        icc = im.info.get("icc_profile")
        if icc:
            desc = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc)))
            if "srgb" not in desc.lower():
                raise DatasetBuildError(f"{path}: ICC profile {desc.strip()!r} is not sRGB")
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            if rgba.getchannel("A").getextrema() != (255, 255):
                if not flatten:
                    raise DatasetBuildError(f"{path}: is transparent; photographs are expected")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                rgba = Image.alpha_composite(white, rgba)
            return rgba.convert("RGB")
        return im.convert("RGB")


def fingerprint(im: Image.Image, side: int = 32) -> np.ndarray:
    """Zero-mean, unit-norm ``[side*side]`` vector of an area-averaged grayscale thumbnail."""
    g = np.asarray(im.convert("L").resize((side, side), Image.Resampling.BOX), dtype=np.float64)
    v = g.ravel() - g.mean()
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-9 else v


def same_picture(
    a: tuple[tuple[int, int], np.ndarray],
    b: tuple[tuple[int, int], np.ndarray],
    params: Params = Params(),
) -> bool:
    """True if (size, fingerprint) pairs ``a`` and ``b`` show the same picture."""
    (wa, ha), fa = a
    (wb, hb), fb = b
    if abs(math.log((wa / ha) / (wb / hb))) > params.dup_max_log_aspect:
        return False
    return float(fa @ fb) >= params.dup_min_corr


def group_duplicates(
    items: Sequence[tuple[tuple[int, int], np.ndarray]], params: Params = Params()
) -> list[list[int]]:
    """Indices of ``items`` grouped by picture (transitively); groups ordered by first index."""
    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            if same_picture(items[i], items[j], params):
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(items)):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


# --- split, resize, encode ---------------------------------------------------------------------


def split_rank(identity: str) -> str:
    """The key that orders pictures for the split (a salted SHA-256 of the identity)."""
    return hashlib.sha256(f"{SPLIT_SALT}:{identity}".encode()).hexdigest()


def n_val_for(n: int, params: Params = Params()) -> int:
    """How many of ``n`` pictures go to val: ``val_fraction`` of them, at least ``min_val``, but
    never so many that fewer than ``min_train_fraction`` of the pictures are left to train on."""
    want = max(math.ceil(params.val_fraction * n), params.min_val)
    cap = n - math.ceil(params.min_train_fraction * n)
    return max(0, min(want, cap))


def assign_splits(identities: Sequence[str], params: Params = Params()) -> dict[str, str]:
    """``{identity: "train" | "val"}``: the ``n_val_for`` lowest split ranks go to val."""
    if len(set(identities)) != len(identities):
        raise DatasetBuildError("picture identities must be distinct")
    order = sorted(identities, key=split_rank)
    n_val = n_val_for(len(order), params)
    return {ident: ("val" if k < n_val else "train") for k, ident in enumerate(order)}


def target_size(w: int, h: int, params: Params = Params()) -> tuple[tuple[int, int], float]:
    """Size after the Lanczos downscale (shorter side -> short_side, never up) and the scale."""
    scale = min(1.0, params.short_side / min(w, h))
    return (max(1, round(w * scale)), max(1, round(h * scale))), scale


def prepare(im: Image.Image, params: Params = Params()) -> Image.Image:
    """Downscale (Lanczos, never up) and centre-crop both sides to multiples of ``multiple``."""
    (w, h), scale = target_size(*im.size, params)
    if scale < 1.0:
        im = im.resize((w, h), Image.Resampling.LANCZOS)
    m = params.multiple
    cw, ch = w // m * m, h // m * m
    if cw == 0 or ch == 0:
        raise DatasetBuildError(f"{im.size} is smaller than {m} pixels on a side")
    left, top = (w - cw) // 2, (h - ch) // 2
    return im.crop((left, top, left + cw, top + ch))


def encode(im: Image.Image, fmt: str) -> bytes:
    """Lossless bytes of ``im`` with no metadata (deterministic for one Pillow build)."""
    buf = io.BytesIO()
    if fmt == "png":
        im.save(buf, format="PNG", optimize=True, compress_level=9)
    elif fmt == "webp":
        # Effort 5/90 is within 1 % of the slowest setting (6/100) in size and ~7x faster.
        im.save(buf, format="WEBP", lossless=True, quality=90, method=5, exact=True)
    else:
        raise DatasetBuildError(f"format must be 'png' or 'webp', got {fmt!r}")
    return buf.getvalue()


def output_name(package: str, path: str, fmt: str) -> str:
    """A stable, readable file name: package + the wallpaper's name (or the file's stem)."""
    parts = path.split("/")
    if parts[:3] == ["usr", "share", "wallpapers"] and len(parts) > 3:
        stem = parts[3] + ("_dark" if "images_dark" in parts else "")
    else:
        stem = Path(path).stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)
    return f"{package}__{stem}.{fmt}"


# --- build -------------------------------------------------------------------------------------


def build(
    out: Path,
    sources: Sequence[PackageSource],
    params: Params = Params(),
    excluded: Mapping[tuple[str, str], str] = EXCLUDED,
    log=print,
) -> dict:
    """Build the set from unpacked packages into ``out`` (replaced atomically) and return the
    manifest. Raises DatasetBuildError on any problem, leaving ``out`` untouched."""
    check_packages(s.name for s in sources)
    if out.exists() and not (out / "manifest.json").is_file():
        raise DatasetBuildError(f"{out} exists and is not a photo set (no manifest.json)")
    by_name = {s.name: s for s in sources}
    pkg_stats: dict[str, dict] = {}
    photos: list[Candidate] = []
    excluded_rows: list[dict] = []
    licences: dict[str, list[dict[str, str]]] = {}
    for src in sources:
        cands, links = find_candidates(src, excluded)
        licences[src.name] = read_licences(src)
        for c in cands:
            if c.excluded:
                excluded_rows.append({"package": c.package, "path": c.path, "reason": c.excluded})
            else:
                photos.append(c)
        pkg_stats[src.name] = {
            "version": src.version,
            "deb": src.deb_name,
            "deb_sha256": src.deb_sha256,
            "deb_bytes": src.deb_bytes,
            "image_files": len(cands),
            "symlinks_skipped": links,
            "excluded_files": sum(c.excluded is not None for c in cands),
            "photo_files": sum(c.excluded is None for c in cands),
        }
    log(f"{len(photos)} photo files, {len(excluded_rows)} non-photo files excluded")

    for c in photos:
        im = open_rgb(c.file)
        c.size = im.size
        c.fingerprint = fingerprint(im, params.dup_thumb)
    groups = group_duplicates([(c.size, c.fingerprint) for c in photos], params)

    pictures: list[tuple[Candidate, list[Candidate]]] = []
    small: list[dict] = []
    for g in groups:
        members = [photos[i] for i in g]
        # Largest source first; ties broken by bytes, then name, so the choice is stable.
        members.sort(
            key=lambda c: (-c.size[0] * c.size[1], -c.file.stat().st_size, c.package, c.path)
        )
        keep = members[0]
        if min(keep.size) < params.min_source_short_side:
            small.append({"package": keep.package, "path": keep.path, "size": list(keep.size)})
            continue
        pictures.append((keep, members[1:]))
    splits = assign_splits([f"{k.package}/{k.path}" for k, _ in pictures], params)

    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        rows = []
        for keep, dups in sorted(pictures, key=lambda p: (p[0].package, p[0].path)):
            ident = f"{keep.package}/{keep.path}"
            split = splits[ident]
            img = prepare(open_rgb(keep.file), params)
            data = encode(img, params.fmt)
            name = output_name(keep.package, keep.path, params.fmt)
            rel = f"{split}/{name}"
            dest = tmp / rel
            if dest.exists():
                raise DatasetBuildError(f"two pictures map to one output name {rel}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            src = by_name[keep.package]
            row = {
                "file": rel,
                "split": split,
                "package": keep.package,
                "version": src.version,
                "source_path": keep.path,
                "source_size": list(keep.size),
                "source_bytes": keep.file.stat().st_size,
                "source_sha256": _sha256_file(keep.file),
                **licence_for(licences[keep.package], keep.path),
                "output_size": list(img.size),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "duplicates": [
                    {"package": d.package, "path": d.path, "size": list(d.size)} for d in dups
                ],
            }
            upstream = plasma_metadata(src, keep.path)
            if upstream:
                row["upstream"] = upstream
            rows.append(row)
        for name, st in pkg_stats.items():
            kept = [r for r in rows if r["package"] == name]
            st["pictures"] = len(kept)
            st["duplicates_merged"] = sum(
                1 for r in rows for d in r["duplicates"] if d["package"] == name
            )
            st["train"] = sum(r["split"] == "train" for r in kept)
            st["val"] = sum(r["split"] == "val" for r in kept)
            st["output_bytes"] = sum(r["bytes"] for r in kept)
        manifest = {
            "name": "rwkv-lic-photos",
            "tool": "tools/build_dataset.py",
            "tool_version": TOOL_VERSION,
            "python": platform.python_version(),
            "pillow": Image.__version__,
            "libwebp": features.version("webp"),
            "zlib": features.version("zlib"),
            "numpy": np.__version__,
            "parameters": dataclasses.asdict(params),
            "reserved_packages_refused": sorted(RESERVED_PACKAGES),
            "packages": pkg_stats,
            "totals": {
                "pictures": len(rows),
                "train": sum(r["split"] == "train" for r in rows),
                "val": sum(r["split"] == "val" for r in rows),
                "image_bytes": sum(r["bytes"] for r in rows),
            },
            "files": rows,
            "excluded": sorted(excluded_rows, key=lambda r: (r["package"], r["path"])),
            "dropped_small": small,
        }
        mjson = (
            json.dumps(manifest, indent=1, ensure_ascii=False, sort_keys=False) + "\n"
        ).encode()
        (tmp / "manifest.json").write_bytes(mjson)
        (tmp / "MANIFEST.md").write_text(manifest_markdown(manifest), encoding="utf-8")
        total = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        if total > params.max_mib * 2**20:
            raise DatasetBuildError(
                f"the set is {total / 2**20:.1f} MiB, over the {params.max_mib} MiB budget; "
                "lower --short-side"
            )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log(
        f"{out}: {manifest['totals']['train']} train + {manifest['totals']['val']} val pictures, "
        f"{total / 2**20:.2f} MiB"
    )
    return manifest


def manifest_markdown(m: Mapping) -> str:
    """A human-readable summary of the manifest (tables per package and per file)."""
    p = m["parameters"]
    lines = [
        "# rwkv-lic photo set",
        "",
        f"Built by `{m['tool']}` {m['tool_version']} (Pillow {m['pillow']}, numpy {m['numpy']}). "
        f"Shorter side {p['short_side']} px (Lanczos, never upscaled), cropped to multiples of "
        f"{p['multiple']}, lossless {p['fmt'].upper()}. Rebuild: "
        "`uv run python tools/build_dataset.py --out data/photos`; verify: add `--check`.",
        "",
        "| package | version | image files | non-photos | photo files | duplicates merged "
        "| pictures | train | val | MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in m["packages"].items():
        lines.append(
            f"| {name} | {s['version']} | {s['image_files']} | {s['excluded_files']} | "
            f"{s['photo_files']} | {s['duplicates_merged']} | {s['pictures']} | {s['train']} | "
            f"{s['val']} | {s['output_bytes'] / 2**20:.2f} |"
        )
    t = m["totals"]
    lines += [
        f"| **total** | | | | | | {t['pictures']} | {t['train']} | {t['val']} | "
        f"{t['image_bytes'] / 2**20:.2f} |",
        "",
        "| file | split | source (package: path) | source px | output px | licence | copyright |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in m["files"]:
        up = r.get("upstream", {})
        who = r["copyright"] + (
            f" (author: {up['author']}; upstream: {up['license']})" if up else ""
        )
        lines.append(
            f"| {r['file']} | {r['split']} | {r['package']}: {r['source_path']} | "
            f"{r['source_size'][0]}x{r['source_size'][1]} | "
            f"{r['output_size'][0]}x{r['output_size'][1]} | {r['license']} | {who} |"
        )
    lines += ["", "Non-photographs left out (looked at on contact sheets):", ""]
    lines += ["| package | path | reason |", "|---|---|---|"]
    lines += [f"| {e['package']} | {e['path']} | {e['reason']} |" for e in m["excluded"]]
    return "\n".join(lines) + "\n"


def check(out: Path) -> list[str]:
    """Problems found verifying ``out`` against its manifest.json (empty list: all good)."""
    mpath = out / "manifest.json"
    if not mpath.is_file():
        return [f"{mpath} not found"]
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        rows = manifest["files"]
    except (ValueError, KeyError) as exc:
        return [f"{mpath} is not a valid manifest: {exc}"]
    problems = []
    listed = set()
    for r in rows:
        f = out / r["file"]
        listed.add(r["file"])
        if r["split"] not in ("train", "val") or not r["file"].startswith(r["split"] + "/"):
            problems.append(f"{r['file']}: split {r['split']!r} does not match its folder")
        if not f.is_file():
            problems.append(f"{r['file']}: missing")
            continue
        data = f.read_bytes()
        if len(data) != r["bytes"] or hashlib.sha256(data).hexdigest() != r["sha256"]:
            problems.append(f"{r['file']}: content differs from the manifest (SHA-256)")
    for f in sorted(out.rglob("*")):
        rel = f.relative_to(out).as_posix()
        if f.is_file() and rel not in listed and rel not in ("manifest.json", "MANIFEST.md"):
            problems.append(f"{rel}: not listed in the manifest")
    pictures = {(r["package"], r["source_path"]) for r in rows}
    if len(pictures) != len(rows):
        problems.append("one source picture is listed twice")
    return problems


# --- review aid --------------------------------------------------------------------------------


def contact_sheets(cands: Sequence[Candidate], dest: Path, per_sheet: int = 12) -> list[Path]:
    """PNG sheets of raster candidates (3 columns, labelled ``index: package path size``)."""
    dest.mkdir(parents=True, exist_ok=True)
    tw, th, cols = 420, 300, 3
    raster = [c for c in cands if c.file.suffix.lower() in RASTER_SUFFIXES]
    paths = []
    index_lines = []
    for s in range(0, len(raster), per_sheet):
        chunk = raster[s : s + per_sheet]
        rows = math.ceil(len(chunk) / cols)
        sheet = Image.new("RGB", (cols * tw, rows * (th + 24)), "white")
        draw = ImageDraw.Draw(sheet)
        for k, c in enumerate(chunk):
            im = open_rgb(c.file, flatten=True)
            size = im.size
            im.thumbnail((tw - 6, th - 6))
            x, y = (k % cols) * tw, (k // cols) * (th + 24)
            sheet.paste(im, (x + 3, y + 3))
            label = f"{s + k}: {c.package} {Path(c.path).name} {size[0]}x{size[1]}"
            draw.text((x + 3, y + th + 2), label[:70], fill="black")
            index_lines.append(f"{s + k}\t{c.package}\t{c.path}\t{size[0]}x{size[1]}\t{c.excluded}")
        p = dest / f"sheet{s // per_sheet:02d}.png"
        sheet.save(p)
        paths.append(p)
    (dest / "index.tsv").write_text("\n".join(index_lines) + "\n", encoding="utf-8")
    return paths


# --- command line ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    d = Params()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="output folder (e.g. data/photos)")
    ap.add_argument("--check", action="store_true", help="verify --out against its manifest")
    ap.add_argument(
        "--cache", type=Path, default=Path.home() / ".cache" / "rwkv-lic-debs", help=".deb cache"
    )
    ap.add_argument("--packages", nargs="+", default=list(PACKAGES), help="Debian packages")
    ap.add_argument("--apt-update", action="store_true", help="run apt-get update before download")
    ap.add_argument("--allow-unreviewed", action="store_true", help="accept unreviewed versions")
    ap.add_argument("--sheets", type=Path, help="also write contact sheets of all candidates here")
    ap.add_argument("--short-side", type=int, default=d.short_side)
    ap.add_argument("--format", dest="fmt", choices=("png", "webp"), default=d.fmt)
    ap.add_argument("--val-fraction", type=float, default=d.val_fraction)
    ap.add_argument("--min-val", type=int, default=d.min_val)
    ap.add_argument("--max-mib", type=float, default=d.max_mib)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.check:
            problems = check(args.out)
            for p in problems:
                print(f"build_dataset: check: {p}", file=sys.stderr)
            if not problems:
                n = len(json.loads((args.out / "manifest.json").read_text())["files"])
                print(f"{args.out}: {n} files match manifest.json")
            return 1 if problems else 0
        names = check_packages(args.packages)
        params = dataclasses.replace(
            Params(),
            short_side=args.short_side,
            fmt=args.fmt,
            val_fraction=args.val_fraction,
            min_val=args.min_val,
            max_mib=args.max_mib,
        )
        with tempfile.TemporaryDirectory(prefix="rwkv-lic-debs-") as work:
            sources = []
            for name in names:
                src = unpack_package(
                    name, fetch_package(name, args.cache, args.apt_update), Path(work)
                )
                reviewed = REVIEWED_VERSIONS.get(name)
                if src.version != reviewed and not args.allow_unreviewed:
                    raise DatasetBuildError(
                        f"{name} {src.version} was not reviewed (EXCLUDED was written for "
                        f"{reviewed}); look at its files (--sheets DIR), update EXCLUDED and "
                        "REVIEWED_VERSIONS, or pass --allow-unreviewed"
                    )
                sources.append(src)
            if args.sheets:
                cands = [c for s in sources for c in find_candidates(s)[0]]
                print(f"contact sheets: {len(contact_sheets(cands, args.sheets))} in {args.sheets}")
            build(args.out, sources, params)
    except DatasetBuildError as exc:
        print(f"build_dataset: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
