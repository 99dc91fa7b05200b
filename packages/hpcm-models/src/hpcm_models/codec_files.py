"""Image files ⇄ ``.hpcm`` files: the library calls behind ``hpcm compress`` and ``decompress``.

Both read with the safety limits, check everything they can before a model is built (the callers
may pass a function that loads the checkpoint), refuse to overwrite their input, and write
atomically: on any error, nothing is written.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .codec import ImageCodec
from .container import Header, Limits, read_container
from .errors import FileAccessError, WeightsMismatchError
from .hpcm.model import HPCM
from .image_io import (
    check_format_keeps,
    image_planes,
    output_format,
    read_file,
    read_image,
    same_file,
    write_atomic,
    write_image,
)
from .registry import registered_name

__all__ = ["CompressReport", "DecompressReport", "compress_file", "decompress_file"]


@dataclass(frozen=True)
class _CodingReport:
    """What a file-level coding call did. ``bpp`` counts the whole file; ``seconds`` the coding."""

    source: Path
    target: Path
    width: int
    height: int
    mode: str
    num_bytes: int
    bpp: float
    seconds: float
    model_id: str
    device: str

    _verb: ClassVar[str] = "code"

    def summary(self) -> str:
        return (
            f"{self.source} -> {self.target}: {self.width}x{self.height} {self.mode}, "
            f"{self.num_bytes} bytes, {self.bpp:.4f} bpp ({self.model_id} on {self.device}, "
            f"{self._verb} {self.seconds:.2f} s)"
        )


class CompressReport(_CodingReport):
    """What :func:`compress_file` did. ``bpp`` counts the whole file; ``seconds`` the encoding."""

    _verb = "encode"


class DecompressReport(_CodingReport):
    """What :func:`decompress_file` did. ``bpp`` counts the whole file; ``seconds`` the decoding."""

    _verb = "decode"


def compress_file(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    model: HPCM | Callable[[], HPCM],
    *,
    model_id: str | None = None,
    limits: Limits | None = None,
) -> CompressReport:
    """Compress an image file into a ``.hpcm`` file (written atomically).

    Args:
        source: any image Pillow reads (one frame).
        target: the file to write; nothing is written on error.
        model: the model, or a function that builds it (called after the image was read, so a bad
            image fails before a checkpoint is loaded).
        model_id: registry name, if it cannot be found from the model's class.
    """
    source, target = Path(source), Path(target)
    if same_file(source, target):
        raise FileAccessError(f"refusing to overwrite the input {str(source)!r}")
    image = read_image(source, limits)
    image_planes(image)  # fail on an unsupported mode before loading a model
    codec = ImageCodec(model if isinstance(model, HPCM) else model(), model_id, limits=limits)
    start = time.perf_counter()
    data = codec.encode(image)
    seconds = time.perf_counter() - start
    write_atomic(target, lambda f: f.write(data))
    return CompressReport(
        source, target, image.width, image.height, image.mode, len(data),
        8 * len(data) / (image.width * image.height), seconds, codec.model_id, str(codec.device),
    )  # fmt: skip


def decompress_file(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    model: HPCM | Callable[[Header], HPCM],
    *,
    limits: Limits | None = None,
) -> DecompressReport:
    """Decompress a ``.hpcm`` file into an image file (format by extension, lossless only).

    Args:
        source: the ``.hpcm`` file.
        target: the image to write (``.png`` recommended); nothing is written on error.
        model: the model, or a function ``header -> model`` (called after the file was validated,
            so a damaged file fails before a checkpoint is loaded).

    Raises:
        BitstreamError: damaged file, other weights, desynchronized decoder (subclasses).
        ImageError: the output format cannot hold the image (e.g. RGBA as .ppm).
    """
    source, target = Path(source), Path(target)
    limits = limits or Limits()
    fmt = output_format(target)
    if same_file(source, target):
        raise FileAccessError(f"refusing to overwrite the input {str(source)!r}")
    if not target.parent.is_dir():
        raise FileAccessError(f"cannot write {str(target)!r}: directory missing")
    data = read_file(source, limits.max_file_bytes)
    header, _ = read_container(data, limits)
    check_format_keeps(header.mode.name, fmt)
    resolved = model if isinstance(model, HPCM) else model(header)
    with contextlib.suppress(ValueError):  # an unregistered class: the config hash decides
        if registered_name(resolved) != header.model_id:
            raise WeightsMismatchError(
                f"the file was encoded with model {header.model_id!r}, not "
                f"{registered_name(resolved)!r}"
            )
    codec = ImageCodec(resolved, header.model_id, limits=limits)
    start = time.perf_counter()
    image = codec.decode(data)
    seconds = time.perf_counter() - start
    write_image(target, image, fmt)
    return DecompressReport(
        source, target, image.width, image.height, image.mode, len(data),
        8 * len(data) / (image.width * image.height), seconds, codec.model_id, str(codec.device),
    )  # fmt: skip
