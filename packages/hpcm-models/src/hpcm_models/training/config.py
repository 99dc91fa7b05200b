"""The settings of a training run (what ``hpcm train``'s flags map onto) and its learning-rate
schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..hpcm.model import HPCM
from ..losses import MS_SSIM_MIN_SIDE

__all__ = ["HPCM_LR_SCHEDULE", "LRSchedule", "TrainConfig"]

#: The HPCM authors' schedule (``train.py``: 1e-4 until epoch 2750 of 3001, then 3e-5 until 2850,
#: 1e-5 until 2950, then 1e-6): (fraction of the run, factor of the base learning rate).
HPCM_LR_SCHEDULE: tuple[tuple[float, float], ...] = (
    (2750 / 3001, 0.3),
    (2850 / 3001, 0.1),
    (2950 / 3001, 0.01),
)


@dataclass
class LRSchedule:
    """Piecewise-constant learning-rate factors: ``factor(step)`` is 1 before the first milestone
    and ``factors[i]`` from ``milestones[i]`` on (absolute optimizer steps, non-decreasing; of
    equal milestones the last factor wins). With ``warmup`` > 0 the factor also ramps up linearly
    over the first ``warmup`` steps (``(step + 1) / warmup``): Adam's first updates move every
    weight by about the learning rate whatever its gradient, which undoes much of a trained
    model's work when fine-tuning starts from it."""

    milestones: list[int]
    factors: list[float]
    warmup: int = 0

    def __post_init__(self) -> None:
        if len(self.milestones) != len(self.factors):
            raise ValueError(
                f"expected as many milestones as factors, got {self.milestones} and {self.factors}"
            )
        if any(b < a for a, b in zip(self.milestones, self.milestones[1:], strict=False)):
            raise ValueError(f"expected non-decreasing milestones, got {self.milestones}")
        if self.warmup < 0:
            raise ValueError(f"expected warmup >= 0 steps, got {self.warmup}")

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
        if step < self.warmup:
            factor *= (step + 1) / self.warmup
        return factor


@dataclass
class TrainConfig:
    """Everything :func:`train` needs; the CLI flags of ``hpcm train`` map onto these fields.

    Attributes:
        model: registered model name (ignored when resuming: the checkpoint's is used).
        dataset: training image folder (searched recursively).
        output: run directory: ``latest.pt``, ``best.pt``, ``train_log.csv``, ``val_log.csv``,
            ``tensorboard/``, ``config.json``.
        steps: total optimizer steps of the run (the learning-rate schedule spans them).
        stop_at: end this invocation at this step instead of ``steps`` (it validates, saves and
            logs there as at the end; ``--resume`` continues the same schedule later). ``None``:
            run to ``steps``.
        model_kwargs: constructor kwargs, JSON form (see :func:`model_kwargs_from_json`).
        lr_milestones: absolute steps of the learning-rate drops; ``None``: HPCM's schedule
            stretched over ``steps`` (:meth:`LRSchedule.hpcm`). ``lr_factors`` go with them.
        warmup_steps: linear learning-rate warm-up over the first steps (:class:`LRSchedule`);
            0 = none (training from scratch), a few hundred when fine-tuning trained weights.
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
        cache_images: decode the training images once and crop from memory
            (:class:`~hpcm_models.datasets.PatchDataset` ``cache``).
    """

    model: str | None
    dataset: Path
    output: Path
    steps: int
    stop_at: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    patch_size: int = 256
    batch_size: int = 8
    lmbda: float = 0.013
    metric: str = "mse"
    lr: float = 1e-4
    decay_lr: float | None = None
    lr_milestones: list[int] | None = None
    lr_factors: list[float] = field(default_factory=lambda: [f for _, f in HPCM_LR_SCHEDULE])
    warmup_steps: int = 0
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
    cache_images: bool = False
    progress: bool = True
    tensorboard: bool = True

    @property
    def end_step(self) -> int:
        """The step this invocation ends at: ``steps``, or ``stop_at`` if earlier."""
        return self.steps if self.stop_at is None else min(self.steps, self.stop_at)

    def validate(self) -> None:
        """Raise :class:`HPCMError`-derived or ``ValueError`` errors for inconsistent settings."""
        for name in ("steps", "batch_size", "val_every", "save_every", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"expected {name} to be an int >= 1, got {value!r}")
        if self.stop_at is not None and (
            isinstance(self.stop_at, bool) or not isinstance(self.stop_at, int) or self.stop_at < 1
        ):
            raise ValueError(f"expected stop_at to be an int >= 1, got {self.stop_at!r}")
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
        if (
            isinstance(self.warmup_steps, bool)
            or not isinstance(self.warmup_steps, int)
            or (self.warmup_steps < 0)
        ):
            raise ValueError(f"expected warmup_steps to be an int >= 0, got {self.warmup_steps!r}")
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
