"""Training data: image folders, random patches, and a sampler that makes every step's batch a
function of ``(seed, step, rank)``, so that a resumed run sees exactly the batches of an
uninterrupted one, and N processes share out exactly the batches of one."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import DatasetError, FileAccessError, ImageError
from .image_io import image_size, read_image, to_tensor

__all__ = ["IMAGE_EXTENSIONS", "PatchDataset", "StepSampler", "find_images", "mix_seed"]

#: File extensions :func:`find_images` collects (case-insensitive).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".ppm",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)


def find_images(root: str | os.PathLike[str]) -> list[Path]:
    """Every image file under ``root``, recursively, sorted by path.

    Raises:
        DatasetError: if ``root`` is not a directory or holds no image.
    """
    path = Path(root)
    if not path.is_dir():
        raise DatasetError(f"dataset directory {str(path)!r} does not exist or is not a directory")
    files = sorted(
        p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
    if not files:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {str(path)!r}")
    return files


def mix_seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (stable across processes and Python versions)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class PatchDataset(torch.utils.data.Dataset):
    """Random square crops with random horizontal and vertical flips (HPCM's augmentation).

    Indexed by ``(image_index, sample_seed)``: the crop and flips are drawn from a generator
    seeded with ``sample_seed``, so a sample depends on nothing else (not on the worker that loads
    it, nor on what was loaded before). Images smaller than the patch are left out when the
    dataset is built.

    With ``cache=True`` every image is decoded once, at construction, and kept in memory as 8-bit
    RGB (3 bytes a pixel; data-loading workers share it copy-on-write): a crop then costs
    microseconds instead of a full image decode, which is what keeps small models on a GPU fed.
    The samples are the same either way.

    Args:
        files: image paths.
        patch_size: side of the crops.
        cache: decode every image once and crop from memory.

    Raises:
        DatasetError: if no image is at least ``patch_size`` on both sides.
    """

    def __init__(self, files: Sequence[Path], patch_size: int, *, cache: bool = False) -> None:
        self.patch_size = patch_size
        kept, small = [], 0
        self._pixels: list[np.ndarray] | None = [] if cache else None
        for file in files:
            try:
                width, height = image_size(file)
                if min(width, height) >= patch_size and self._pixels is not None:
                    pixels = np.asarray(read_image(file).convert("RGB"), dtype=np.uint8)
                    self._pixels.append(pixels)
            except (FileAccessError, ImageError) as err:
                raise DatasetError(f"cannot read image {str(file)!r}: {err}") from None
            if min(width, height) >= patch_size:
                kept.append(file)
            else:
                small += 1
        if not kept:
            raise DatasetError(
                f"none of the {len(files)} images is at least {patch_size}x{patch_size} pixels; "
                "use a smaller --patch-size or larger images"
            )
        self.files = kept
        #: How many images were left out for being smaller than the patch.
        self.skipped = small

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        index, sample_seed = item
        g = torch.Generator().manual_seed(sample_seed)
        p = self.patch_size
        if self._pixels is not None:
            pixels = self._pixels[index]
            height, width = pixels.shape[:2]
            top = int(torch.randint(0, height - p + 1, (), generator=g))
            left = int(torch.randint(0, width - p + 1, (), generator=g))
            crop = torch.from_numpy(pixels[top : top + p, left : left + p].copy())
            x = crop.permute(2, 0, 1).float().div_(255)
        else:
            image = read_image(self.files[index])
            width, height = image.size
            top = int(torch.randint(0, height - p + 1, (), generator=g))
            left = int(torch.randint(0, width - p + 1, (), generator=g))
            x = to_tensor(image.crop((left, top, left + p, top + p)))
        if bool(torch.rand((), generator=g) < 0.5):
            x = x.flip(-1)
        if bool(torch.rand((), generator=g) < 0.5):
            x = x.flip(-2)
        return x


class StepSampler(torch.utils.data.Sampler):
    """Infinite stream of ``(image_index, sample_seed)`` for one rank, from a given step on.

    Epoch ``e`` visits the images in the order ``randperm(n)`` seeded by ``(seed, e)``; rank ``r``
    of ``R`` takes every R-th entry from ``r`` (the first ``R·⌊n/R⌋`` entries), ``batch_size`` at a
    time, dropping an incomplete last batch. So the samples of step ``s`` are a function of
    ``(seed, s, rank)`` and a run can restart at any step.

    The global batch does not depend on how it is shared out: the crop and flips of a sample are
    seeded by its position in the epoch's order, not by the rank, so step ``s`` of ``R`` ranks
    with batch ``B`` draws exactly the samples of step ``s`` of one process with batch ``R·B``,
    rank ``r`` taking the single process's batch entries ``r::R`` (``tests/cli/test_train_ddp.py``
    trains both and compares the weights).
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, rank: int, world: int, start_step: int
    ) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world, self.start_step = rank, world, start_step
        self.steps_per_epoch = (n // world) // batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, batch = divmod(self.start_step, self.steps_per_epoch)
        while True:
            g = torch.Generator().manual_seed(mix_seed(self.seed, "order", epoch))
            order = torch.randperm(self.n, generator=g).tolist()
            for position in range(batch * self.batch_size, self.steps_per_epoch * self.batch_size):
                index = position * self.world + self.rank  # in the epoch's order
                # The 0 stands where the rank stood in an earlier key: single-process runs keep
                # the crops they always drew.
                yield order[index], mix_seed(self.seed, "crop", epoch, 0, index)
            epoch, batch = epoch + 1, 0
