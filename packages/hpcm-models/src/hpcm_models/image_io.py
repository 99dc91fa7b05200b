"""Image files and the pixels the models see: the one reader and the one writer.

- :func:`read_image` is how the codec, training and evaluation read an image: one frame, fully
  loaded, EXIF orientation applied, size limits checked on the file's header before any pixel is
  decoded (Pillow's decompression-bomb checks give way to them), more than 8 bits per sample
  refused (:func:`check_bit_depth`), pipes read with the file-size limit; :func:`image_size` is
  its header-only sibling (nothing decoded).
- :func:`image_planes` / :func:`restore_image`: any Pillow mode ⇄ the 8-bit RGB planes the codec
  codes (gray coded as RGB, alpha kept apart).
- :func:`to_tensor` and :func:`pad_to_multiple`: images as model inputs.
- :func:`write_image` writes a lossless image file, atomically
  (:func:`hpcm_models.files.write_atomic`, the one writer of every file this package writes).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .container import PAD_MULTIPLE, Header, ImageMode, Limits
from .errors import FileAccessError, HPCMError, ImageError, LimitExceededError
from .files import cannot_read, read_file, same_file, write_atomic

__all__ = [
    "OUTPUT_FORMATS",
    "check_bit_depth",
    "check_format_keeps",
    "check_image_size",
    "image_planes",
    "image_size",
    "output_format",
    "pad_to_multiple",
    "read_file",
    "read_image",
    "restore_image",
    "same_file",
    "to_tensor",
    "write_atomic",
    "write_image",
]

#: Output image formats by extension: all lossless. JPEG and other lossy formats are refused.
OUTPUT_FORMATS: dict[str, str] = {
    ".png": "PNG",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".ppm": "PPM",
    ".pgm": "PPM",
    ".pnm": "PPM",
    ".webp": "WEBP",
}
_LOSSY_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".jp2", ".j2k", ".jxr", ".heic", ".avif")

# Image modes that carry more than 8 bits per sample; the codec codes 8-bit planes.
_HIGH_DEPTH_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N", "BGR;15", "BGR;16", "BGR;24")

# Raw modes of 8-bit image modes with 16 or 32 bits per sample ("RGB;16B", "LA;16B", "RGBA;16L"),
# which Pillow reads by keeping the high byte; packed pixels ("BGR;16", 5-6-5) do not match.
_DEEP_RAW_MODE = re.compile(r";(16|32|48|64)[A-Z]")

# Formats Pillow may not open: it renders EPS with Ghostscript, an interpreter of a programming
# language, which no untrusted input should reach.
_REFUSED_FORMATS = frozenset({"EPS"})

# EXIF orientations that swap width and height (transpose, rotations by 90° and 270°).
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)

# ---------------------------------------------------------------------------- reading


def _read_formats() -> list[str]:
    """Every format Pillow can open (plugins registered so far included), but the refused ones."""
    Image.init()
    return [fmt for fmt in Image.OPEN if fmt not in _REFUSED_FORMATS]


def _deep_tiles(image: Image.Image) -> list[str]:
    """What the file stores with more than 8 bits per sample, from its tiles (known only until the
    image is loaded): a raw mode such as ``RGB;16B``, or a PNM ``maxval`` above 255."""
    deep = []
    for tile in getattr(image, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        raw = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) else None)
        if isinstance(raw, str) and _DEEP_RAW_MODE.search(raw):
            deep.append(raw)
        elif tile[0] == "ppm" and isinstance(args, tuple) and len(args) > 1 and args[1] > 255:
            deep.append(f"{raw}, maxval {args[1]}")
    return deep


def check_bit_depth(image: Image.Image, name: str = "image") -> None:
    """Refuse images with more than 8 bits per sample, also those Pillow would silently bring to
    8 bits (16-bit RGB, RGBA and LA PNG or TIFF open as 8-bit modes keeping the high byte, PNM
    with a maxval above 255 is rescaled; the file's tiles tell, before the image is loaded).

    Raises:
        ImageError: more than 8 bits per sample.
    """
    deep = _deep_tiles(image)
    if image.mode in _HIGH_DEPTH_MODES or deep:
        what = deep[0] if deep else image.mode
        raise ImageError(
            f"{name} has more than 8 bits per sample ({what}); the codec codes 8-bit images "
            "(convert to 8-bit RGB or L first)"
        )


@contextlib.contextmanager
def _pillow_bomb_limit(max_pixels: int | None) -> Iterator[None]:
    """Pillow's decompression-bomb check (``Image.MAX_IMAGE_PIXELS``: a warning above it, an
    error above twice that) set to our limit, its warning an error: ``None`` while opening, where
    our own check of the header's size follows at once (with our message, and also when the limit
    was raised above Pillow's default), ``max_pixels`` while loading, where plugins check the
    sizes of sub-images (GIF frames, ICO and DCX entries) that no header states. The setting is
    global to Pillow: restored on exit."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _source(path: str | os.PathLike[str], limits: Limits) -> str | os.PathLike[str] | io.BytesIO:
    """What Pillow should open: the path itself if it can seek in it (it then reads only what it
    needs), else the bytes of the pipe or FIFO, read with the file-size limit (Pillow would read a
    stream to its end, unbounded)."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise cannot_read(path, err) from None
    if stat.S_ISDIR(st.st_mode):
        raise FileAccessError(f"cannot read {str(path)!r}: it is a directory")
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
        # No image within the limits needs more than 16 bytes per pixel (16-bit RGBA is 8) and
        # 16 MiB of metadata: a pipe of endless bytes is cut there.
        limit = min(limits.max_file_bytes, 16 * limits.max_pixels + (16 << 20))
        try:
            return io.BytesIO(read_file(path, limit))
        except LimitExceededError:
            raise ImageError(
                f"{str(path)!r} has more than {limit} bytes, more than any image within the "
                f"limit of {limits.max_pixels} pixels"
            ) from None
    return path


@contextlib.contextmanager
def _pillow_errors(path: str | os.PathLike[str], limits: Limits, what: str) -> Iterator[None]:
    """Pillow parses untrusted bytes, and what its plugins raise on a damaged file is no contract:
    besides OSError, ValueError and SyntaxError, fuzzing found TypeError (a TIFF whose second page
    lacks its size, raised while counting frames), and IndexError, struct.error or EOFError are as
    plausible. Every exception becomes an :class:`ImageError` (ours pass through), with Pillow's
    decompression-bomb check at ``limits``; ``what`` says what was being done."""
    try:
        with _pillow_bomb_limit(limits.max_pixels):
            yield
    except HPCMError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise ImageError(
            f"{str(path)!r} holds a frame or part beyond the limit of {limits.max_pixels} pixels "
            f"({err})"
        ) from None
    except Exception as err:
        raise ImageError(
            f"{str(path)!r} is damaged or truncated ({what}: {type(err).__name__}: {err})"
        ) from None


def _open(path: str | os.PathLike[str], limits: Limits) -> Image.Image:
    """Open lazily (the header only), with the size limits, the bit depth and one frame checked."""
    source = _source(path, limits)
    try:
        with _pillow_bomb_limit(None):
            image = Image.open(source, formats=_read_formats())
    except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
        raise cannot_read(path, err) from None
    except Exception as err:  # Pillow's UnidentifiedImageError, or a plugin's own
        raise ImageError(f"{str(path)!r} is not an image Pillow can read ({err})") from None
    try:
        check_image_size(image.width, image.height, limits, repr(str(path)))
        check_bit_depth(image, repr(str(path)))
        with _pillow_errors(path, limits, "counting its frames"):  # reads every frame header
            frames = getattr(image, "n_frames", 1)
        if frames > 1:
            raise ImageError(
                f"{str(path)!r} has {frames} frames; the codec codes one still image "
                "(extract a frame first)"
            )
    except BaseException:
        image.close()
        raise
    return image


def read_image(path: str | os.PathLike[str], limits: Limits | None = None) -> Image.Image:
    """Open an image file (fully loaded, EXIF orientation applied), in the mode it is stored in.

    Raises:
        FileAccessError: the file cannot be opened.
        ImageError: not an image Pillow reads, damaged, several frames, or too large.
    """
    limits = limits or Limits()
    with _open(path, limits) as image:
        size = image.size
        with _pillow_errors(path, limits, "decoding"):
            image.load()
        if image.size != size:  # a plugin that chose its size while loading
            check_image_size(image.width, image.height, limits, repr(str(path)))
        with _pillow_errors(path, limits, "applying its EXIF orientation"):
            return ImageOps.exif_transpose(image)


def image_size(path: str | os.PathLike[str], limits: Limits | None = None) -> tuple[int, int]:
    """``(width, height)`` of the image :func:`read_image` would return, from the file's header
    (no pixel is decoded). Raises what :func:`read_image` raises for the header."""
    limits = limits or Limits()
    with _open(path, limits) as image:
        width, height = image.size
        with _pillow_errors(path, limits, "reading its EXIF data"):
            orientation = image.getexif().get(_EXIF_ORIENTATION)
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return width, height


def check_image_size(
    width: int, height: int, limits: Limits, name: str = "image", multiple: int = PAD_MULTIPLE
) -> None:
    """Raise :class:`ImageError` for an empty image or one beyond ``limits`` (its pixels counted
    once padded to multiples of ``multiple``, as the model codes them and the decoder counts
    them)."""
    if not (0 < width <= limits.max_side and 0 < height <= limits.max_side):
        raise ImageError(f"{name} of {width}x{height} pixels: sides must be 1..{limits.max_side}")
    coded_w, coded_h = -(-width // multiple) * multiple, -(-height // multiple) * multiple
    if coded_w * coded_h > limits.max_pixels:
        raise ImageError(
            f"{name} of {width}x{height} pixels, coded as {coded_w}x{coded_h}, exceeds the limit "
            f"of {limits.max_pixels} pixels (raise it with --max-pixels if the machine has the "
            "memory: see docs/format.md)"
        )


# ---------------------------------------------------------------------------- pixels


def image_planes(image: Image.Image) -> tuple[np.ndarray, ImageMode, np.ndarray | None]:
    """8-bit RGB planes ``[H, W, 3]``, the mode to restore, and the alpha plane ``[H, W]`` if any.

    Raises:
        ImageError: for modes with more than 8 bits per sample, or modes not listed in
            :meth:`hpcm_models.ImageCodec.encode`.
    """
    check_bit_depth(image)
    mode = image.mode
    if mode == "1":
        image = image.convert("L")
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif mode == "RGBa":
        image = image.convert("RGBA")
    elif mode == "La":
        image = image.convert("LA")
    elif mode in ("CMYK", "YCbCr", "RGBX"):
        image = image.convert("RGB")
    if image.mode not in ("RGB", "L", "RGBA", "LA"):
        raise ImageError(
            f"image mode {image.mode!r} is not supported; expected RGB, L, RGBA, LA, P, 1, CMYK "
            "or YCbCr"
        )
    restore = ImageMode[image.mode]
    alpha = np.asarray(image.getchannel("A")) if restore.has_alpha else None
    rgb = np.asarray(image.convert("RGB"))
    return rgb, restore, alpha


def restore_image(x_hat: torch.Tensor, header: Header, alpha: np.ndarray | None) -> Image.Image:
    """Crop the decoded ``[1, 3, H, W]`` (in [0, 1]) and turn it into an image of the mode the
    header records."""
    x = x_hat[0, :, : header.height, : header.width]
    if header.mode in (ImageMode.L, ImageMode.LA):
        # The three decoded planes of a gray image differ slightly; their mean is the best gray.
        x = x.mean(dim=0, keepdim=True)
    pixels = x.mul(255).round_().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    if alpha is not None:
        pixels = np.concatenate([pixels, alpha[:, :, None]], axis=2)
    if pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    image = Image.fromarray(np.ascontiguousarray(pixels))
    if image.mode != header.mode.name:
        raise AssertionError(f"restored mode {image.mode} instead of {header.mode.name}")
    return image


def to_tensor(image: Image.Image) -> torch.Tensor:
    """Any image → its 8-bit RGB pixels as float32 ``[3, H, W]`` in [0, 1] (the models' input)."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate the last row and column of ``[..., H, W]`` up to multiples of ``multiple``
    (cheaper to code than zeros: the padding continues the image instead of adding an edge)."""
    pad_h, pad_w = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x


# ---------------------------------------------------------------------------- writing


def output_format(path: Path) -> str:
    """The Pillow format to write ``path`` in, from its extension (:data:`OUTPUT_FORMATS`).

    Raises:
        ImageError: for a lossy format or an unknown extension.
    """
    ext = path.suffix.lower()
    if ext in OUTPUT_FORMATS:
        return OUTPUT_FORMATS[ext]
    supported = ", ".join(OUTPUT_FORMATS)
    if ext in _LOSSY_EXTENSIONS:
        raise ImageError(
            f"refusing to write {str(path)!r}: {ext} is a lossy format and would distort the "
            f"decoded image again; use a lossless one ({supported})"
        )
    raise ImageError(f"cannot write {str(path)!r}: unknown image extension; use {supported}")


def _save_image(image: Image.Image, f: BinaryIO, fmt: str) -> None:
    options = {"lossless": True, "exact": True} if fmt == "WEBP" else {}
    try:
        image.save(f, format=fmt, **options)
    except (OSError, ValueError, KeyError) as err:
        raise ImageError(f"cannot write a {image.mode} image as {fmt}: {err}") from None


def check_format_keeps(mode: str, fmt: str) -> None:
    """Refuse a format that cannot store ``mode`` or would silently drop its alpha (Pillow writes
    RGBA as PPM or BMP without alpha). Gray stored as RGB (WebP) keeps every value: allowed."""
    buffer = io.BytesIO()
    _save_image(Image.new(mode, (1, 1)), buffer, fmt)
    buffer.seek(0)
    with Image.open(buffer) as back:
        if "A" in mode and "A" not in back.mode:
            raise ImageError(
                f"{fmt} cannot store the alpha channel of a {mode} image; use .png, .tif or .webp"
            )


def write_image(
    path: Path,
    image: Image.Image,
    fmt: str,
    *,
    protect: Mapping[str, str | os.PathLike[str] | None] | None = None,
    write_through: bool = False,
) -> None:
    """Write ``image`` to ``path`` in the Pillow format ``fmt`` (lossless settings), atomically;
    ``protect`` and ``write_through`` as for :func:`hpcm_models.files.write_atomic`."""
    write_atomic(
        path, lambda f: _save_image(image, f, fmt), protect=protect, write_through=write_through
    )
