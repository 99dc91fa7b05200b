"""Image files and the pixels the models see: the one reader, the one writer, the one atomic file
writer.

- :func:`read_image` is how the codec, training and evaluation read an image: one frame, fully
  loaded, EXIF orientation applied, size limits checked; :func:`image_size` is its header-only
  sibling (nothing decoded).
- :func:`image_planes` / :func:`restore_image`: any Pillow mode ⇄ the 8-bit RGB planes the codec
  codes (gray coded as RGB, alpha kept apart).
- :func:`to_tensor` and :func:`pad_to_multiple`: images as model inputs.
- :func:`write_image` writes a lossless image file; :func:`write_atomic` is what every file this
  package writes goes through (``.hpcm`` files, images, checkpoints): a temporary file renamed
  over the target, so an error never leaves a partial file.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .container import Header, ImageMode, Limits
from .errors import FileAccessError, ImageError, LimitExceededError

__all__ = [
    "OUTPUT_FORMATS",
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

# EXIF orientations that swap width and height (transpose, rotations by 90° and 270°).
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)

_READ_ERRORS: tuple[tuple[type[OSError], str], ...] = (
    (FileNotFoundError, "no such file"),
    (IsADirectoryError, "it is a directory"),
    (PermissionError, "permission denied"),
)


# ---------------------------------------------------------------------------- reading


def _cannot_read(path: str | os.PathLike[str], err: OSError) -> FileAccessError | None:
    """The :class:`FileAccessError` for a file that is missing, a directory or forbidden."""
    for kind, reason in _READ_ERRORS:
        if isinstance(err, kind):
            return FileAccessError(f"cannot read {str(path)!r}: {reason}")
    return None


def read_file(path: Path, limit: int) -> bytes:
    """The bytes of ``path``, refused if there are more than ``limit``.

    Raises:
        FileAccessError: missing, a directory, or not readable.
        LimitExceededError: larger than ``limit``.
    """
    try:
        size = path.stat().st_size
        if size > limit:
            raise LimitExceededError(f"{str(path)!r} has {size} bytes; the limit is {limit}")
        return path.read_bytes()
    except OSError as err:
        access = _cannot_read(path, err)
        if access is None:
            raise
        raise access from None


def _open(path: str | os.PathLike[str], limits: Limits) -> Image.Image:
    """Open lazily (the header only), with the size limits and one frame checked."""
    try:
        image = Image.open(path)
    except Image.DecompressionBombError as err:
        raise ImageError(f"{str(path)!r}: {err}") from None
    except (Image.UnidentifiedImageError, OSError, ValueError) as err:
        access = _cannot_read(path, err) if isinstance(err, OSError) else None
        if access is not None:
            raise access from None
        raise ImageError(f"{str(path)!r} is not an image Pillow can read ({err})") from None
    try:
        check_image_size(image.width, image.height, limits, str(path))
        if getattr(image, "n_frames", 1) > 1:
            raise ImageError(
                f"{str(path)!r} has {image.n_frames} frames; the codec codes one still image "
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
    with _open(path, limits or Limits()) as image:
        try:
            image.load()
            return ImageOps.exif_transpose(image)
        except (OSError, ValueError, SyntaxError) as err:
            raise ImageError(f"{str(path)!r} is damaged or truncated ({err})") from None


def image_size(path: str | os.PathLike[str], limits: Limits | None = None) -> tuple[int, int]:
    """``(width, height)`` of the image :func:`read_image` would return, from the file's header
    (no pixel is decoded). Raises what :func:`read_image` raises for the header."""
    with _open(path, limits or Limits()) as image:
        width, height = image.size
        if image.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
    return width, height


def check_image_size(width: int, height: int, limits: Limits, name: str = "image") -> None:
    """Raise :class:`ImageError` for an empty image or one beyond ``limits``."""
    if not (0 < width <= limits.max_side and 0 < height <= limits.max_side):
        raise ImageError(f"{name} of {width}x{height} pixels: sides must be 1..{limits.max_side}")
    if width * height > limits.max_pixels:
        raise ImageError(
            f"{name} of {width}x{height} pixels exceeds the limit of {limits.max_pixels} pixels"
        )


# ---------------------------------------------------------------------------- pixels


def image_planes(image: Image.Image) -> tuple[np.ndarray, ImageMode, np.ndarray | None]:
    """8-bit RGB planes ``[H, W, 3]``, the mode to restore, and the alpha plane ``[H, W]`` if any.

    Raises:
        ImageError: for modes with more than 8 bits per sample, or modes not listed in
            :meth:`hpcm_models.ImageCodec.encode`.
    """
    mode = image.mode
    if mode in _HIGH_DEPTH_MODES:
        raise ImageError(
            f"image mode {mode!r} has more than 8 bits per sample; the codec codes 8-bit images "
            "(convert to 8-bit RGB or L first)"
        )
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


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary file in the same directory, then rename it over ``path``:
    an error leaves neither a partial file nor the temporary behind.

    Raises:
        FileAccessError: the directory is missing or not writable, or writing fails.
    """
    directory = path.parent
    if not directory.is_dir():
        raise FileAccessError(f"cannot write {str(path)!r}: directory {str(directory)!r} missing")
    for _ in range(100):
        tmp = directory / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
        except OSError as err:
            raise FileAccessError(f"cannot write {str(path)!r}: {err.strerror}") from None
    else:  # pragma: no cover - 100 random collisions
        raise FileAccessError(f"cannot create a temporary file next to {str(path)!r}")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, FileAccessError):
            raise FileAccessError(f"cannot write {str(path)!r}: {err}") from None
        raise


def same_file(a: Path, b: Path) -> bool:
    """Whether ``b`` exists and is the file ``a`` (an output that would overwrite its input)."""
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


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


def write_image(path: Path, image: Image.Image, fmt: str) -> None:
    """Write ``image`` to ``path`` in the Pillow format ``fmt`` (lossless settings), atomically
    (:func:`write_atomic`)."""
    write_atomic(path, lambda f: _save_image(image, f, fmt))
