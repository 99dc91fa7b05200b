"""Training HPCM and its RWKV variants: rate–distortion loss, data, checkpoints and the loop.

The recipe is the HPCM authors' (LIC-HPCM ``train.py``): Adam, learning rate 1e-4 dropped to
3e-5, 1e-5 and 1e-6 at 91.6 %, 95 % and 98.3 % of training, gradients clipped to norm 1, random
256² crops with horizontal and vertical flips, and the CompressAI loss ``λ·255²·MSE + bpp``
(``λ·(1 − MS-SSIM) + bpp`` for MS-SSIM models). RWKV ``decay``/``boost`` parameters get their own
learning rate (:func:`rwkv_blocks.rwkv_param_groups`).

Reproducibility: the data order, the crops and flips, and the quantization noise of step ``s``
are functions of ``(seed, s, rank)`` alone, so a run resumed from a checkpoint computes exactly
the same steps as one that was never interrupted (bit for bit on CPU; ``tests/cli/test_train.py``
checks it).

Several GPUs: launch with ``torchrun --nproc-per-node N -m hpcm_models.cli train ...``
(DistributedDataParallel; NCCL on CUDA, Gloo on CPU). Rank 0 logs and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .acceleration import GraphedTrainStep, capturable_adam
from .checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    build_model,
    load_training_checkpoint,
    model_kwargs_from_json,
    read_state_dict,
    save_checkpoint,
    to_json,
)
from .devices import resolve_device
from .errors import (
    CheckpointError,
    DatasetError,
    FileAccessError,
    HPCMError,
    ImageError,
    TrainingDivergedError,
)
from .hpcm.model import HPCM
from .image_io import image_size, pad_to_multiple, read_image, to_tensor

__all__ = [
    "HPCM_LR_SCHEDULE",
    "IMAGE_EXTENSIONS",
    "LRSchedule",
    "PatchDataset",
    "RateDistortionLoss",
    "TrainConfig",
    "find_images",
    "train",
]

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

#: The HPCM authors' schedule (``train.py``: 1e-4 until epoch 2750 of 3001, then 3e-5 until 2850,
#: 1e-5 until 2950, then 1e-6): (fraction of the run, factor of the base learning rate).
HPCM_LR_SCHEDULE: tuple[tuple[float, float], ...] = (
    (2750 / 3001, 0.3),
    (2850 / 3001, 0.1),
    (2950 / 3001, 0.01),
)

# pytorch-msssim's 5-scale MS-SSIM with an 11-tap window needs both sides > (11 - 1) · 2⁴.
MS_SSIM_MIN_SIDE = 161


# ---------------------------------------------------------------------------- the loss


class RateDistortionLoss(nn.Module):
    """CompressAI's rate–distortion loss, as HPCM trains with it.

        mse:     L = λ · 255² · MSE(x̂, x) + bpp
        ms-ssim: L = λ · (1 − MS-SSIM(x̂, x)) + bpp

    with ``bpp = Σ −log₂ p / (B·H·W)`` over the likelihoods of ``y`` and ``z``. Computed in float32
    whatever dtype the model ran in (bf16 autocast).

    Args:
        lmbda: λ (HPCM's MSE models: 0.0018 … 0.0483; MS-SSIM models: 2.4 … 60.5).
        metric: ``"mse"`` or ``"ms-ssim"``.

    Shape:
        ``output = {"x_hat": [B, 3, H, W], "likelihoods": {...}}``, ``target: [B, 3, H, W]``; for
        MS-SSIM both H and W must be at least 161.
    """

    def __init__(self, lmbda: float, metric: str = "mse") -> None:
        super().__init__()
        if not (isinstance(lmbda, int | float) and math.isfinite(lmbda) and lmbda > 0):
            raise ValueError(f"expected lmbda to be a finite number > 0, got {lmbda!r}")
        if metric not in ("mse", "ms-ssim"):
            raise ValueError(f"expected metric 'mse' or 'ms-ssim', got {metric!r}")
        self.lmbda = float(lmbda)
        self.metric = metric

    def forward(
        self, output: Mapping[str, Any], target: torch.Tensor, num_pixels: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Loss terms: ``loss``, ``bpp``, ``y_bpp``, ``z_bpp``, ``mse``, ``psnr`` and, for the
        MS-SSIM metric, ``ms_ssim``; all scalars.

        Args:
            output: the model's ``forward`` result.
            target: the original images.
            num_pixels: pixels the rate is spread over (default ``B·H·W`` of ``target``; pass the
                unpadded count when the input was padded).
        """
        B, _, H, W = target.shape
        pixels = num_pixels if num_pixels is not None else B * H * W
        rates = {
            name: torch.log2(lik.float()).sum().neg() / pixels
            for name, lik in output["likelihoods"].items()
        }
        x_hat = output["x_hat"].float()
        mse = F.mse_loss(x_hat, target.float())
        out = {
            "bpp": sum(rates.values()),
            "y_bpp": rates.get("y", torch.zeros((), device=target.device)),
            "z_bpp": rates.get("z", torch.zeros((), device=target.device)),
            "mse": mse,
            "psnr": -10 * torch.log10(mse.detach().clamp_min(1e-20)),
        }
        if self.metric == "mse":
            out["loss"] = self.lmbda * 255**2 * mse + out["bpp"]
        else:
            if min(H, W) < MS_SSIM_MIN_SIDE:
                raise ValueError(
                    f"MS-SSIM (5 scales, 11-tap window) needs images of at least "
                    f"{MS_SSIM_MIN_SIDE}x{MS_SSIM_MIN_SIDE} pixels, got {H}x{W}; use larger "
                    "patches (e.g. --patch-size 256)"
                )
            from pytorch_msssim import ms_ssim

            value = ms_ssim(x_hat, target.float(), data_range=1.0)
            out["ms_ssim"] = value
            out["loss"] = self.lmbda * (1 - value) + out["bpp"]
        return out


# ---------------------------------------------------------------------------- data


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


def _mix(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (stable across processes and Python versions)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class PatchDataset(torch.utils.data.Dataset):
    """Random square crops with random horizontal and vertical flips (HPCM's augmentation).

    Indexed by ``(image_index, sample_seed)``: the crop and flips are drawn from a generator
    seeded with ``sample_seed``, so a sample depends on nothing else (not on the worker that loads
    it, nor on what was loaded before). Images smaller than the patch are left out when the
    dataset is built.

    Args:
        files: image paths.
        patch_size: side of the crops.

    Raises:
        DatasetError: if no image is at least ``patch_size`` on both sides.
    """

    def __init__(self, files: Sequence[Path], patch_size: int) -> None:
        self.patch_size = patch_size
        kept, small = [], 0
        for file in files:
            try:
                width, height = image_size(file)
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
        image = read_image(self.files[index])
        width, height = image.size
        p = self.patch_size
        top = int(torch.randint(0, height - p + 1, (), generator=g))
        left = int(torch.randint(0, width - p + 1, (), generator=g))
        x = to_tensor(image.crop((left, top, left + p, top + p)))
        if bool(torch.rand((), generator=g) < 0.5):
            x = x.flip(-1)
        if bool(torch.rand((), generator=g) < 0.5):
            x = x.flip(-2)
        return x


class _StepSampler(torch.utils.data.Sampler):
    """Infinite stream of ``(image_index, sample_seed)`` for one rank, from a given step on.

    Epoch ``e`` visits the images in the order ``randperm(n)`` seeded by ``(seed, e)``; rank ``r``
    of ``R`` takes every R-th entry from ``r`` (the first ``R·⌊n/R⌋`` entries), ``batch_size`` at a
    time, dropping an incomplete last batch. So the samples of step ``s`` are a function of
    ``(seed, s, rank)`` and a run can restart at any step.
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
            g = torch.Generator().manual_seed(_mix(self.seed, "order", epoch))
            order = torch.randperm(self.n, generator=g)[: (self.n // self.world) * self.world]
            mine = order[self.rank :: self.world].tolist()
            for position in range(batch * self.batch_size, self.steps_per_epoch * self.batch_size):
                sample_seed = _mix(self.seed, "crop", epoch, self.rank, position)
                yield mine[position], sample_seed
            epoch, batch = epoch + 1, 0


# ---------------------------------------------------------------------------- models


# The legacy global NumPy generator is what third-party code (e.g. augmentation libraries) draws
# from, so it is the one saved and restored.
def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):  # fewer GPUs than when saved
            torch.cuda.set_rng_state_all(state["cuda"])
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))  # noqa: NPY002


# ---------------------------------------------------------------------------- configuration


@dataclass
class LRSchedule:
    """Piecewise-constant learning-rate factors: ``factor(step)`` is 1 before the first milestone
    and ``factors[i]`` from ``milestones[i]`` on (absolute optimizer steps, non-decreasing; of
    equal milestones the last factor wins)."""

    milestones: list[int]
    factors: list[float]

    def __post_init__(self) -> None:
        if len(self.milestones) != len(self.factors):
            raise ValueError(
                f"expected as many milestones as factors, got {self.milestones} and {self.factors}"
            )
        if any(b < a for a, b in zip(self.milestones, self.milestones[1:], strict=False)):
            raise ValueError(f"expected non-decreasing milestones, got {self.milestones}")

    @classmethod
    def hpcm(cls, steps: int) -> LRSchedule:
        """The HPCM authors' schedule (:data:`HPCM_LR_SCHEDULE`) stretched over ``steps``."""
        return cls(
            milestones=[max(1, round(f * steps)) for f, _ in HPCM_LR_SCHEDULE],
            factors=[factor for _, factor in HPCM_LR_SCHEDULE],
        )

    def __call__(self, step: int) -> float:
        factor = 1.0
        for milestone, value in zip(self.milestones, self.factors, strict=True):
            if step >= milestone:
                factor = value
        return factor


@dataclass
class TrainConfig:
    """Everything :func:`train` needs; the CLI flags of ``hpcm train`` map onto these fields.

    Attributes:
        model: registered model name (ignored when resuming: the checkpoint's is used).
        dataset: training image folder (searched recursively).
        output: run directory: ``latest.pt``, ``best.pt``, ``train_log.csv``, ``val_log.csv``,
            ``tensorboard/``, ``config.json``.
        steps: total optimizer steps of the run.
        model_kwargs: constructor kwargs, JSON form (see :func:`model_kwargs_from_json`).
        lr_milestones: absolute steps of the learning-rate drops; ``None``: HPCM's schedule
            stretched over ``steps`` (:meth:`LRSchedule.hpcm`). ``lr_factors`` go with them.
        decay_lr: learning rate of the RWKV decay/boost parameters; ``None``: ``lr / 10``.
        clip_grad: maximum gradient norm; 0 disables clipping (the norm is still logged).
        amp: ``"off"`` or ``"bf16"`` (autocast of the forward pass; the loss is float32).
        cuda_graphs: replay each step (forward, loss, backward, clipping, Adam) from one CUDA
            graph (:class:`hpcm_models.acceleration.GraphedTrainStep`), with the fused Adam and
            channels-last memory: single-process CUDA runs only. The same training, without the
            launch overhead that dominates HPCM's steps (``docs/performance.md``).
        from_baseline: HPCM checkpoint whose weights initialize every part the model shares
            with HPCM (:func:`hpcm_models.from_baseline`).
        val_every, save_every, log_every: in optimizer steps; the last step always validates,
            saves and logs.
        max_val_images: validate on at most this many images of ``val_dataset`` (sorted order).
    """

    model: str | None
    dataset: Path
    output: Path
    steps: int
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    patch_size: int = 256
    batch_size: int = 8
    lmbda: float = 0.013
    metric: str = "mse"
    lr: float = 1e-4
    decay_lr: float | None = None
    lr_milestones: list[int] | None = None
    lr_factors: list[float] = field(default_factory=lambda: [f for _, f in HPCM_LR_SCHEDULE])
    clip_grad: float = 1.0
    device: str = "auto"
    amp: str = "off"
    cuda_graphs: bool = False
    resume: bool = False
    from_baseline: Path | None = None
    val_dataset: Path | None = None
    val_every: int = 5000
    max_val_images: int | None = None
    save_every: int = 1000
    log_every: int = 50
    seed: int = 0
    num_workers: int = 2
    progress: bool = True
    tensorboard: bool = True

    def validate(self) -> None:
        """Raise :class:`HPCMError`-derived or ``ValueError`` errors for inconsistent settings."""
        for name in ("steps", "batch_size", "val_every", "save_every", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"expected {name} to be an int >= 1, got {value!r}")
        multiple = HPCM.INPUT_MULTIPLE
        if self.patch_size < multiple or self.patch_size % multiple:
            raise ValueError(
                f"expected --patch-size to be a positive multiple of {multiple} (the models' "
                f"input multiple), got {self.patch_size}"
            )
        if self.metric == "ms-ssim" and self.patch_size < MS_SSIM_MIN_SIDE:
            raise ValueError(
                f"--metric ms-ssim needs patches of at least {MS_SSIM_MIN_SIDE} pixels (5-scale "
                f"MS-SSIM), got --patch-size {self.patch_size}; use 256"
            )
        if self.amp not in ("off", "bf16"):
            raise ValueError(f"expected amp 'off' or 'bf16', got {self.amp!r}")
        if self.num_workers < 0:
            raise ValueError(f"expected num_workers >= 0, got {self.num_workers}")
        if self.lr_milestones is not None and len(self.lr_milestones) != len(self.lr_factors):
            raise ValueError(
                f"expected one --lr-factors value per --lr-milestones value, got "
                f"{self.lr_milestones} and {self.lr_factors}"
            )
        if self.lr_milestones is None and len(self.lr_factors) != len(HPCM_LR_SCHEDULE):
            raise ValueError(
                f"HPCM's schedule has {len(HPCM_LR_SCHEDULE)} milestones: expected "
                f"{len(HPCM_LR_SCHEDULE)} --lr-factors, got {self.lr_factors} (or pass "
                "--lr-milestones)"
            )
        if not (math.isfinite(self.clip_grad) and self.clip_grad >= 0):
            raise ValueError(f"expected clip_grad >= 0, got {self.clip_grad}")


# ---------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_flag: str) -> tuple[_Dist, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = device_flag == "cuda" or (device_flag == "auto" and torch.cuda.is_available())
    if device_flag.startswith("cuda:") and world > 1:
        raise ValueError("under torchrun pass --device cuda (each rank takes its LOCAL_RANK GPU)")
    if world <= 1:
        return _Dist(), resolve_device(device_flag, allow_auto=True)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return _Dist(rank=rank, world=world, local_rank=local_rank), device


# ---------------------------------------------------------------------------- logging


_TRAIN_FIELDS = (
    "step", "loss", "bpp", "y_bpp", "z_bpp", "mse", "psnr", "ms_ssim", "lr", "grad_norm",
    "skipped", "seconds",
)  # fmt: skip
_VAL_FIELDS = ("step", "loss", "bpp", "mse", "psnr", "ms_ssim", "images", "best")


class _CSVLog:
    """Append-only CSV; on resume, rows after the resumed step are dropped (they were logged by
    the interrupted run after its last checkpoint and will be logged again)."""

    def __init__(self, path: Path, fields: Sequence[str], keep_until: int | None) -> None:
        self.path, self.fields = path, tuple(fields)
        rows: list[dict[str, str]] = []
        if keep_until is not None and path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, self.fields)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: Mapping[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow({k: row.get(k, "") for k in self.fields})


def _log(message: str, enabled: bool = True) -> None:
    if enabled:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)


# ---------------------------------------------------------------------------- the loop


def _reduce_mean(values: torch.Tensor, d: _Dist) -> torch.Tensor:
    if d.enabled:
        values = values.clone()
        dist.all_reduce(values)
        values /= d.world
    return values


@torch.no_grad()
def _validate(
    model: HPCM,
    criterion: RateDistortionLoss,
    files: Sequence[Path],
    device: torch.device,
    d: _Dist,
    amp: bool,
) -> dict[str, float]:
    """Mean loss terms over ``files`` (full images, padded to the input multiple, rate over the
    original pixels), estimated from the likelihoods with rounding (``training=False``); shared
    out across ranks."""
    was_training = model.training
    model.eval()
    keys = ("loss", "bpp", "mse", "ms_ssim")
    sums = torch.zeros(len(keys) + 1, dtype=torch.float64, device=device)
    for file in files[d.rank :: d.world]:
        x = to_tensor(read_image(file)).unsqueeze(0).to(device)
        H, W = x.shape[-2:]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(pad_to_multiple(x, model.INPUT_MULTIPLE), training=False)
        out = {"x_hat": out["x_hat"][..., :H, :W], "likelihoods": out["likelihoods"]}
        terms = criterion(out, x, num_pixels=H * W)
        for i, key in enumerate(keys):
            sums[i] += terms[key].double() if key in terms else 0.0
        sums[-1] += 1
    if d.enabled:
        dist.all_reduce(sums)
    model.train(was_training)
    count = max(int(sums[-1].item()), 1)
    means = {key: sums[i].item() / count for i, key in enumerate(keys)}
    means["psnr"] = -10 * math.log10(max(means["mse"], 1e-20))
    means["images"] = int(sums[-1].item())
    if criterion.metric != "ms-ssim":
        del means["ms_ssim"]
    return means


def _describe_settings(cfg: TrainConfig) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = str(value) if isinstance(value, Path) else value
    return out


def _set_lr(group: dict[str, Any], value: float) -> None:
    """Set a param group's learning rate, in place if it is a tensor (CUDA-graph runs)."""
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(value)
    else:
        group["lr"] = value


def _adapt_optimizer(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Make a loaded Adam state fit this run's optimizer: the loaded param groups carry the
    saving run's implementation flags (fused, capturable) and float learning rates, and its step
    counters live where that run kept them. Checkpoints are portable between runs with and
    without ``--cuda-graphs`` this way."""
    capturable = bool(optimizer.defaults.get("capturable"))
    for group in optimizer.param_groups:
        for key in ("fused", "capturable", "foreach"):
            if key in optimizer.defaults:
                group[key] = optimizer.defaults[key]
        for key in ("lr", "initial_lr"):
            if key in group:
                value = float(group[key])
                group[key] = torch.tensor(value, device=device) if capturable else value
    for state in optimizer.state.values():
        if "step" in state:
            step = torch.as_tensor(state["step"], dtype=torch.float32)
            state["step"] = step.to(device) if capturable else step.cpu()


def _plain_lrs(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of an optimizer or scheduler state dict with tensor learning rates as floats."""
    out = dict(state)
    if "param_groups" in out:
        out["param_groups"] = [
            {k: to_json(v) if k in ("lr", "initial_lr") else v for k, v in group.items()}
            for group in out["param_groups"]
        ]
    for key in ("base_lrs", "_last_lr"):
        if key in out:
            out[key] = [to_json(v) for v in out[key]]
    return out


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume training) a model; see the module docstring for the recipe.

    Args:
        cfg: the run's settings.

    Returns:
        A summary: ``{"step", "best_loss", "latest", "best", "skipped_steps"}``.

    Raises:
        DatasetError: for a missing or empty dataset folder.
        CheckpointError: for ``--resume`` without a checkpoint, or a bad ``--from-baseline`` file.
        TrainingDivergedError: if the loss becomes non-finite (the last checkpoint is left as it
            was).
        HPCMError: if ``output`` already holds a run and ``resume`` is not set.
    """
    cfg.validate()
    d, device = _init_distributed(cfg.device)
    try:
        return _train(cfg, d, device)
    finally:
        if d.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, d: _Dist, device: torch.device) -> dict[str, Any]:
    output = Path(cfg.output)
    latest_path, best_path = output / "latest.pt", output / "best.pt"
    files = find_images(cfg.dataset)
    val_files = find_images(cfg.val_dataset) if cfg.val_dataset is not None else []
    if cfg.max_val_images is not None:
        val_files = val_files[: cfg.max_val_images]
    if cfg.metric == "ms-ssim":
        for file in val_files:
            width, height = image_size(file)
            if min(width, height) < MS_SSIM_MIN_SIDE:
                raise DatasetError(
                    f"validation image {str(file)!r} is {width}x{height}: "
                    f"MS-SSIM needs at least {MS_SSIM_MIN_SIDE} pixels per side"
                )

    # ---- where the run starts
    resume_ckpt: dict[str, Any] | None = None
    if cfg.resume:
        resume_ckpt = load_training_checkpoint(latest_path)
        model_name = resume_ckpt["model_name"]
        model_kwargs = dict(resume_ckpt["model_kwargs"])
        if cfg.model is not None and cfg.model != model_name:
            raise HPCMError(
                f"--model {cfg.model} differs from the checkpoint's model {model_name}; drop "
                "--model when resuming (or start a new run in another --output)"
            )
        seed = int(resume_ckpt["args"].get("seed", cfg.seed))
    else:
        if latest_path.exists():
            raise HPCMError(
                f"{str(output)!r} already holds a run (latest.pt): pass --resume to continue it "
                "or choose another --output"
            )
        if cfg.model is None:
            raise HPCMError("--model is required (unless --resume)")
        model_name, model_kwargs, seed = cfg.model, dict(cfg.model_kwargs), cfg.seed
    if d.main:
        output.mkdir(parents=True, exist_ok=True)

    # ---- model, optimizer, schedule
    torch.manual_seed(_mix(seed, "init"))  # identical initial weights on every rank
    warm_note = ""
    if cfg.from_baseline is not None and resume_ckpt is None:
        from .phases import from_baseline

        warm = from_baseline(
            model_name,
            read_state_dict(cfg.from_baseline),
            **model_kwargs_from_json(model_name, model_kwargs),
        )
        model = warm.model
        warm_note = (
            f"initialized from {cfg.from_baseline}: {warm.loaded} tensors loaded; fresh: "
            f"{', '.join(warm.fresh) if warm.fresh else 'nothing'}"
        )
    else:
        model = build_model(model_name, model_kwargs)
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["model"])
    model.to(device).train()
    # Training never codes: the rANS tables are rebuilt by update() before compressing.
    model.entropy_estimation.clear_tables()

    from rwkv_blocks import rwkv_param_groups

    graphs = cfg.cuda_graphs
    if graphs:
        if device.type != "cuda":
            raise HPCMError(f"--cuda-graphs needs a CUDA device, got {device}")
        if d.enabled:
            raise HPCMError(
                "--cuda-graphs runs in a single process; drop it for multi-process (torchrun) runs"
            )
        model.to(memory_format=torch.channels_last)
    decay_lr = cfg.decay_lr if cfg.decay_lr is not None else cfg.lr / 10
    groups = rwkv_param_groups(model, lr=cfg.lr, decay_lr=decay_lr)
    if graphs:
        # Tensor learning rates, which the scheduler updates in place (a float would be frozen
        # into the graph).
        optimizer = capturable_adam(groups, cfg.lr, device)
    else:
        optimizer = torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.lr_milestones is None:
        schedule = LRSchedule.hpcm(cfg.steps)
        schedule.factors = list(cfg.lr_factors)
    else:
        schedule = LRSchedule(list(cfg.lr_milestones), list(cfg.lr_factors))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    start_step, best_loss = 0, math.inf
    if resume_ckpt is not None:
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        _adapt_optimizer(optimizer, device)
        # The schedule comes from this run's flags (it may have been changed on purpose); the
        # scheduler's position comes from the checkpoint.
        saved = {k: v for k, v in resume_ckpt["scheduler"].items() if k != "lr_lambdas"}
        scheduler.load_state_dict({**saved, "lr_lambdas": [None] * len(optimizer.param_groups)})
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            _set_lr(group, float(base) * schedule(scheduler.last_epoch))
        start_step = int(resume_ckpt["step"])
        best = resume_ckpt.get("best_loss")
        best_loss = math.inf if best is None else float(best)
        if d.main and resume_ckpt.get("rng") is not None:
            _set_rng_state(resume_ckpt["rng"])

    criterion = RateDistortionLoss(cfg.lmbda, cfg.metric)
    net: nn.Module = model
    if d.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    # ---- data
    dataset = PatchDataset(files, cfg.patch_size)
    per_rank = len(dataset) // d.world
    if per_rank < cfg.batch_size:
        raise DatasetError(
            f"{len(dataset)} usable images for {d.world} process(es) cannot fill a batch of "
            f"{cfg.batch_size}; lower --batch-size or add images"
        )
    sampler = _StepSampler(len(dataset), cfg.batch_size, seed, d.rank, d.world, start_step)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
    )

    # ---- logs
    writer = None
    if d.main:
        train_log = _CSVLog(
            output / "train_log.csv", _TRAIN_FIELDS, start_step if cfg.resume else 0
        )
        val_log = _CSVLog(output / "val_log.csv", _VAL_FIELDS, start_step if cfg.resume else 0)
        (output / "config.json").write_text(
            json.dumps(
                {**_describe_settings(cfg), "model": model_name, "model_kwargs": model_kwargs,
                 "seed": seed, "world_size": d.world, "device": str(device)},
                indent=1,
            ) + "\n"
        )  # fmt: skip
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(output / "tensorboard"), purge_step=start_step + 1)
        params = sum(p.numel() for p in model.parameters())
        _log(
            f"hpcm train: {model_name} ({params:,} parameters) on {device}"
            f"{f' x {d.world} processes' if d.enabled else ''}; {len(dataset)} training images"
            f"{f' ({dataset.skipped} smaller than the patch left out)' if dataset.skipped else ''}"
            f"; {'resuming at' if cfg.resume else 'starting at'} step {start_step} of {cfg.steps}"
        )
        if warm_note:
            _log(warm_note)

    def checkpoint(step: int) -> dict[str, Any]:
        args = _describe_settings(cfg)
        args.update(seed=seed, model=model_name, world_size=d.world)
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model": model.state_dict(),
            "model_name": model_name,
            "model_kwargs": model_kwargs,
            "optimizer": _plain_lrs(optimizer.state_dict()),
            "scheduler": _plain_lrs(
                {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
            ),
            "step": step,
            "rng": _rng_state(),
            "best_loss": None if math.isinf(best_loss) else best_loss,
            "args": args,
        }

    from tqdm import tqdm

    bar = tqdm(
        total=cfg.steps,
        initial=start_step,
        disable=not (d.main and cfg.progress),
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    params_list = [p for g in optimizer.param_groups for p in g["params"]]
    amp = cfg.amp == "bf16"
    skipped = 0
    t0 = time.perf_counter()
    batches = iter(loader)
    step = start_step
    max_norm = cfg.clip_grad if cfg.clip_grad > 0 else math.inf
    graphed: GraphedTrainStep | None = None
    try:
        while step < cfg.steps:
            x = next(batches).to(device, non_blocking=True)
            if graphs:
                x = x.contiguous(memory_format=torch.channels_last)
            # The quantization noise of this step depends on (seed, step, rank) only.
            torch.manual_seed(_mix(seed, "noise", step, d.rank))
            if graphs:
                if graphed is None:  # the first batch fixes the shape
                    graphed = GraphedTrainStep(
                        model, optimizer, criterion, x, amp=amp, max_norm=max_norm
                    )
                    torch.manual_seed(_mix(seed, "noise", step, d.rank))
                terms = graphed(x)  # the whole step, update included
            else:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    out = net(x)
                terms = criterion(out, x)
            keys = ["loss", "bpp", "y_bpp", "z_bpp", "mse"] + (
                ["ms_ssim"] if "ms_ssim" in terms else []
            )
            stats = _reduce_mean(torch.stack([terms[k].detach().float() for k in keys]), d)
            if not bool(torch.isfinite(stats[0])):
                here = not math.isfinite(terms["loss"].item())
                where = f" on rank {d.rank}" if d.enabled and here else ""
                last = (
                    f"the last good checkpoint, {latest_path} (step "
                    f"{_checkpoint_step(latest_path)}), is left as it was"
                    if latest_path.is_file()
                    else "no checkpoint was written yet"
                )
                raise TrainingDivergedError(
                    f"non-finite loss ({stats[0].item()}) at step {step + 1}{where}; stopped; "
                    f"{last}. Lower --lr, keep --clip-grad on, or try --amp off"
                )
            if graphed is not None:
                grad_norm = terms["grad_norm"]
                updated = not bool(terms["skipped"])
            else:
                optimizer.zero_grad(set_to_none=True)
                terms["loss"].backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params_list, max_norm)
                updated = bool(torch.isfinite(grad_norm))
                if updated:
                    optimizer.step()
            if not updated:
                # The authors skip such batches; the norm is the same on every rank after DDP's
                # all-reduce, so all ranks skip together.
                skipped += 1
                _log(f"step {step + 1}: non-finite gradient norm, update skipped", d.main)
            lr = float(optimizer.param_groups[0]["lr"])
            scheduler.step()
            step += 1
            bar.update(1)

            values = dict(zip(keys, stats.tolist(), strict=True))
            values["psnr"] = -10 * math.log10(max(values["mse"], 1e-20))
            if d.main and (step % cfg.log_every == 0 or step == cfg.steps):
                row = {
                    **values, "step": step, "lr": lr, "grad_norm": float(grad_norm),
                    "skipped": skipped, "seconds": round(time.perf_counter() - t0, 3),
                }  # fmt: skip
                train_log.write(row)
                if writer is not None:
                    for key in (*keys, "psnr", "grad_norm", "lr"):
                        writer.add_scalar(f"train/{key}", row[key], step)
                bar.set_postfix(loss=f"{values['loss']:.4f}", bpp=f"{values['bpp']:.4f}",
                                psnr=f"{values['psnr']:.2f}")  # fmt: skip

            is_best = False
            if val_files and (step % cfg.val_every == 0 or step == cfg.steps):
                val = _validate(model, criterion, val_files, device, d, amp)
                is_best = math.isfinite(val["loss"]) and val["loss"] < best_loss
                if is_best:
                    best_loss = val["loss"]
                if d.main:
                    val_log.write({**val, "step": step, "best": int(is_best)})
                    if writer is not None:
                        for key in ("loss", "bpp", "psnr", "ms_ssim"):
                            if key in val:
                                writer.add_scalar(f"val/{key}", val[key], step)
                    _log(
                        f"step {step}: validation loss {val['loss']:.4f}, bpp {val['bpp']:.4f}, "
                        f"PSNR {val['psnr']:.2f} dB on {val['images']} images"
                        f"{' (best)' if is_best else ''}"
                    )
            if d.main and (is_best or step % cfg.save_every == 0 or step == cfg.steps):
                state = checkpoint(step)
                if step % cfg.save_every == 0 or step == cfg.steps:
                    save_checkpoint(state, latest_path)
                if is_best:
                    save_checkpoint(state, best_path)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        # Workers of an infinite sampler are shut down with the iterator.
        del batches
    if d.enabled:
        dist.barrier()
    return {
        "step": step,
        "best_loss": None if math.isinf(best_loss) else best_loss,
        "latest": str(latest_path),
        "best": str(best_path) if best_path.is_file() else None,
        "skipped_steps": skipped,
    }


def _checkpoint_step(path: Path) -> int | str:
    """The step stored in a training checkpoint ('?' if unreadable)."""
    try:
        return int(load_training_checkpoint(path)["step"])
    except (CheckpointError, KeyError, ValueError):
        return "?"
