"""Image files ⇄ ``.hpcm`` files: the library calls behind ``hpcm compress`` and ``decompress``.

Both read with the safety limits (a ``.hpcm`` file is read no further than its validated header
announces), check everything they can before a model is built (the callers may pass a function
that loads the checkpoint), refuse to write over their input or any other protected file (the
checkpoint) and over anything that is not a regular file unless asked to write through it
(:func:`hpcm_models.files.check_output`), and write atomically: on any error, nothing is written.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .codec import ImageCodec
from .container import MAX_HEAD_BYTES, Header, Limits, container_size, read_container
from .errors import WeightsMismatchError
from .files import check_output, open_input, read_upto, write_atomic
from .hpcm.model import HPCM
from .image_io import check_format_keeps, image_planes, output_format, read_image, write_image
from .registry import registered_name

__all__ = [
    "CompressReport",
    "DecompressReport",
    "compress_file",
    "decompress_file",
    "read_hpcm_file",
]


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


PathLike = str | os.PathLike[str]


def read_hpcm_file(path: PathLike, limits: Limits | None = None) -> bytes:
    """The bytes of a ``.hpcm`` file, read no further than its header announces: the header is
    read and validated first (:func:`~hpcm_models.container.container_size`), so garbage, a pipe
    or ``/dev/zero`` is refused after a few bytes, and a file is never read past
    ``limits.max_file_bytes``.

    Raises:
        FileAccessError: missing, a directory, or not readable.
        BitstreamError: a subclass, for a damaged or oversized header.
    """
    limits = limits or Limits()
    with open_input(path) as f:
        head = read_upto(f, MAX_HEAD_BYTES, str(path))
        size = container_size(head, limits)
        # One byte more than announced, so that read_container reports trailing bytes as such.
        return head + read_upto(f, max(size + 1 - len(head), 0), str(path))


def _protected(source: Path, protect: Mapping[str, PathLike | None] | None) -> dict:
    return {"input": source, **(protect or {})}


def compress_file(
    source: PathLike,
    target: PathLike,
    model: HPCM | Callable[[], HPCM],
    *,
    model_id: str | None = None,
    limits: Limits | None = None,
    protect: Mapping[str, PathLike | None] | None = None,
    write_through: bool = False,
) -> CompressReport:
    """Compress an image file into a ``.hpcm`` file (written atomically).

    Args:
        source: any image Pillow reads (one frame).
        target: the file to write; nothing is written on error.
        model: the model, or a function that builds it (called after the image was read, so a bad
            image fails before a checkpoint is loaded).
        model_id: registry name, if it cannot be found from the model's class.
        limits: safety limits (default :class:`~hpcm_models.container.Limits`).
        protect: other files that must not be overwritten, by role (``{"checkpoint": path}``);
            the input always is.
        write_through: write through a symbolic link, or into a FIFO or character device, at
            ``target`` (``--force``) instead of refusing (:func:`~hpcm_models.files.check_output`).
    """
    source, target = Path(source), Path(target)
    protected = _protected(source, protect)
    check_output(target, protect=protected, write_through=write_through)
    image = read_image(source, limits)
    image_planes(image)  # fail on an unsupported mode before loading a model
    codec = ImageCodec(model if isinstance(model, HPCM) else model(), model_id, limits=limits)
    start = time.perf_counter()
    data = codec.encode(image)
    seconds = time.perf_counter() - start
    write_atomic(target, lambda f: f.write(data), protect=protected, write_through=write_through)
    return CompressReport(
        source, target, image.width, image.height, image.mode, len(data),
        8 * len(data) / (image.width * image.height), seconds, codec.model_id, str(codec.device),
    )  # fmt: skip


def decompress_file(
    source: PathLike,
    target: PathLike,
    model: HPCM | Callable[[Header], HPCM],
    *,
    limits: Limits | None = None,
    protect: Mapping[str, PathLike | None] | None = None,
    write_through: bool = False,
) -> DecompressReport:
    """Decompress a ``.hpcm`` file into an image file (format by extension, lossless only).

    Args:
        source: the ``.hpcm`` file.
        target: the image to write (``.png`` recommended); nothing is written on error.
        model: the model, or a function ``header -> model`` (called after the file was validated
            against ``limits``, so a damaged or oversized file fails before a checkpoint is
            loaded or a model built).
        limits, protect, write_through: as for :func:`compress_file`.

    Raises:
        BitstreamError: damaged file, other weights, desynchronized decoder (subclasses).
        ImageError: the output format cannot hold the image (e.g. RGBA as .ppm).
    """
    source, target = Path(source), Path(target)
    limits = limits or Limits()
    fmt = output_format(target)
    protected = _protected(source, protect)
    check_output(target, protect=protected, write_through=write_through)
    data = read_hpcm_file(source, limits)
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
    write_image(target, image, fmt, protect=protected, write_through=write_through)
    return DecompressReport(
        source, target, image.width, image.height, image.mode, len(data),
        8 * len(data) / (image.width * image.height), seconds, codec.model_id, str(codec.device),
    )  # fmt: skip
