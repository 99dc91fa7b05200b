"""The training loop of HPCM and its RWKV variants (:func:`hpcm_models.training.train`).

The recipe is the HPCM authors' (LIC-HPCM ``train.py``): Adam, learning rate 1e-4 dropped to
3e-5, 1e-5 and 1e-6 at 91.6 %, 95 % and 98.3 % of training, gradients clipped to norm 1, random
256² crops with horizontal and vertical flips (:mod:`hpcm_models.datasets`), and the CompressAI
loss ``λ·255²·MSE + bpp`` (``λ·(1 − MS-SSIM) + bpp`` for MS-SSIM models;
:mod:`hpcm_models.losses`). RWKV ``decay``/``boost`` parameters get their own learning rate
(:func:`rwkv_blocks.rwkv_param_groups`). The settings are a :class:`~.config.TrainConfig`.

The loop is a few named steps: :func:`_set_up` (a new run or a resumed one), :func:`_train_step`
(one optimizer step), :func:`_log_step` and :func:`_validate_and_log`, and :func:`_save`.

Reproducibility: the data order, the crops and flips, and the quantization noise of step ``s``
are functions of ``(seed, s, rank)`` alone, so a run resumed from a checkpoint computes exactly
the same steps as one that was never interrupted (bit for bit on CPU; ``tests/cli/test_train.py``
checks it).

Several GPUs: launch with ``torchrun --nproc-per-node N -m hpcm_models.cli train ...``
(DistributedDataParallel; NCCL on CUDA, Gloo on CPU; :mod:`.distributed`). Rank 0 logs
(:mod:`.logs`) and writes checkpoints (:mod:`hpcm_models.checkpoints`, :mod:`.state`). N
processes with ``--batch-size B`` train on the samples, crops and flips that one process with
``--batch-size N·B`` would (:class:`~hpcm_models.datasets.StepSampler`), and DDP averages the
gradients as that process's mean would; only the quantization noise differs (each rank draws its
own), so without noise the two step alike to float rounding (``tests/cli/test_train_ddp.py``).
``--cuda-graphs`` is single-process: refused under torchrun before any device is used.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..acceleration import GraphedTrainStep, capturable_adam
from ..checkpoints import (
    build_model,
    load_training_checkpoint,
    model_kwargs_from_json,
    read_state_dict,
    save_checkpoint,
)
from ..datasets import PatchDataset, StepSampler, find_images, mix_seed
from ..errors import DatasetError, HPCMError, TrainingDivergedError
from ..hpcm.model import HPCM
from ..image_io import image_size, pad_to_multiple, read_image, to_tensor
from ..losses import MS_SSIM_MIN_SIDE, RateDistortionLoss
from ..phases import from_baseline
from .config import LRSchedule, TrainConfig
from .distributed import Dist, init_distributed, launched_processes, reduce_mean, reduce_sum
from .logs import TrainLogs, describe_settings, log
from .state import checkpoint_step, restore_optimizer, set_rng_state, training_checkpoint

__all__ = ["train"]


# ---------------------------------------------------------------------------- the run


@dataclass
class _Run:
    """Everything a run holds while it trains."""

    cfg: TrainConfig
    d: Dist
    device: torch.device
    model_name: str
    model_kwargs: dict[str, Any]
    seed: int
    model: HPCM
    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    criterion: RateDistortionLoss
    dataset: PatchDataset
    loader: torch.utils.data.DataLoader
    val_files: list[Path]
    step: int
    best_loss: float = math.inf
    skipped: int = 0
    logs: TrainLogs | None = None
    graphed: GraphedTrainStep | None = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def latest(self) -> Path:
        return Path(self.cfg.output) / "latest.pt"

    @property
    def best(self) -> Path:
        return Path(self.cfg.output) / "best.pt"


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
    if cfg.cuda_graphs and launched_processes() > 1:
        # Refused before joining the process group or touching a device.
        raise HPCMError(
            f"--cuda-graphs runs in a single process (one GPU), but torchrun started "
            f"{launched_processes()}: drop --cuda-graphs for multi-process runs "
            "(DistributedDataParallel's gradient all-reduce is not captured in the step's graph)"
        )
    d, device = init_distributed(cfg.device)
    try:
        return _train(cfg, d, device)
    finally:
        if d.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, d: Dist, device: torch.device) -> dict[str, Any]:
    run = _set_up(cfg, d, device)
    from tqdm import tqdm

    bar = tqdm(
        total=cfg.end_step,
        initial=run.step,
        disable=not (d.main and cfg.progress),
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    batches = iter(run.loader)
    run.started = time.perf_counter()
    try:
        while run.step < cfg.end_step:
            values, grad_norm, lr = _train_step(run, next(batches))
            bar.update(1)
            if d.main and (run.step % cfg.log_every == 0 or run.step == cfg.end_step):
                _log_step(run, values, grad_norm, lr)
                bar.set_postfix(loss=f"{values['loss']:.4f}", bpp=f"{values['bpp']:.4f}",
                                psnr=f"{values['psnr']:.2f}")  # fmt: skip
            is_best = _validate_and_log(run)
            _save(run, is_best)
    finally:
        bar.close()
        if run.logs is not None:
            run.logs.close()
        # Workers of an infinite sampler are shut down with the iterator.
        del batches
    if d.enabled:
        dist.barrier()
    return {
        "step": run.step,
        "best_loss": None if math.isinf(run.best_loss) else run.best_loss,
        "latest": str(run.latest),
        "best": str(run.best) if run.best.is_file() else None,
        "skipped_steps": run.skipped,
    }


# ---------------------------------------------------------------------------- setting up


def _data_files(cfg: TrainConfig) -> tuple[list[Path], list[Path]]:
    """The training and validation images (checked for MS-SSIM's minimum size)."""
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
    return files, val_files


def _starting_point(cfg: TrainConfig) -> tuple[dict[str, Any] | None, str, dict[str, Any], int]:
    """``(checkpoint to resume or None, model name, model kwargs, seed)`` of the run."""
    latest_path = Path(cfg.output) / "latest.pt"
    if cfg.resume:
        ckpt = load_training_checkpoint(latest_path)
        model_name = ckpt["model_name"]
        if cfg.model is not None and cfg.model != model_name:
            raise HPCMError(
                f"--model {cfg.model} differs from the checkpoint's model {model_name}; drop "
                "--model when resuming (or start a new run in another --output)"
            )
        return ckpt, model_name, dict(ckpt["model_kwargs"]), int(ckpt["args"].get("seed", cfg.seed))
    if latest_path.exists():
        raise HPCMError(
            f"{str(cfg.output)!r} already holds a run (latest.pt): pass --resume to continue it "
            "or choose another --output"
        )
    if cfg.model is None:
        raise HPCMError("--model is required (unless --resume)")
    return None, cfg.model, dict(cfg.model_kwargs), cfg.seed


def _initial_model(
    cfg: TrainConfig, name: str, kwargs: dict[str, Any], seed: int, resuming: bool
) -> tuple[HPCM, str]:
    """The model with its initial weights (fresh, or from ``--from-baseline``) and a note on the
    warm start."""
    torch.manual_seed(mix_seed(seed, "init"))  # identical initial weights on every rank
    if cfg.from_baseline is None or resuming:
        return build_model(name, kwargs), ""
    state = read_state_dict(cfg.from_baseline)
    warm = from_baseline(name, state, **model_kwargs_from_json(name, kwargs))
    fresh = ", ".join(warm.fresh) if warm.fresh else "nothing"
    return warm.model, (
        f"initialized from {cfg.from_baseline}: {warm.loaded} tensors loaded; fresh: {fresh}"
    )


def _optimizer(
    cfg: TrainConfig, model: HPCM, device: torch.device
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, LRSchedule]:
    """Adam over the model's parameter groups, and the learning-rate schedule."""
    from rwkv_blocks import rwkv_param_groups

    if cfg.cuda_graphs:
        if device.type != "cuda":
            raise HPCMError(f"--cuda-graphs needs a CUDA device, got {device}")
        model.to(memory_format=torch.channels_last)
    decay_lr = cfg.decay_lr if cfg.decay_lr is not None else cfg.lr / 10
    groups = rwkv_param_groups(model, lr=cfg.lr, decay_lr=decay_lr)
    if cfg.cuda_graphs:
        # Tensor learning rates, which the scheduler updates in place (a float would be frozen
        # into the graph).
        optimizer = capturable_adam(groups, cfg.lr, device)
    else:
        optimizer = torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.lr_milestones is None:
        milestones = LRSchedule.hpcm(cfg.steps).milestones
    else:
        milestones = list(cfg.lr_milestones)
    schedule = LRSchedule(milestones, list(cfg.lr_factors), warmup=cfg.warmup_steps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), schedule


def _resume(run: _Run, ckpt: Mapping[str, Any], schedule: LRSchedule) -> None:
    """Take the optimizer, the scheduler's position, the best loss and the RNGs from ``ckpt``."""
    restore_optimizer(run.optimizer, run.scheduler, ckpt, schedule, run.device)
    best = ckpt.get("best_loss")
    run.best_loss = math.inf if best is None else float(best)
    if run.d.main and ckpt.get("rng") is not None:
        set_rng_state(ckpt["rng"])


def _loader(
    cfg: TrainConfig, files: list[Path], seed: int, d: Dist, start: int, device: torch.device
) -> tuple[PatchDataset, torch.utils.data.DataLoader]:
    dataset = PatchDataset(files, cfg.patch_size, cache=cfg.cache_images)
    per_rank = len(dataset) // d.world
    if per_rank < cfg.batch_size:
        raise DatasetError(
            f"{len(dataset)} usable images for {d.world} process(es) cannot fill a batch of "
            f"{cfg.batch_size}; lower --batch-size or add images"
        )
    sampler = StepSampler(len(dataset), cfg.batch_size, seed, d.rank, d.world, start)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
    )
    return dataset, loader


def _open_logs(run: _Run, warm_note: str) -> TrainLogs:
    """Rank 0's logs and ``config.json``, and the run's first log lines."""
    cfg, d = run.cfg, run.d
    logs = TrainLogs(Path(cfg.output), run.step if cfg.resume else 0, cfg.tensorboard)
    logs.config(
        {**describe_settings(cfg), "model": run.model_name, "model_kwargs": run.model_kwargs,
         "seed": run.seed, "world_size": d.world, "device": str(run.device)}
    )  # fmt: skip
    params = sum(p.numel() for p in run.model.parameters())
    skipped = run.dataset.skipped
    log(
        f"hpcm train: {run.model_name} ({params:,} parameters) on {run.device}"
        f"{f' x {d.world} processes' if d.enabled else ''}; {len(run.dataset)} training images"
        f"{f' ({skipped} smaller than the patch left out)' if skipped else ''}"
        f"; {'resuming at' if cfg.resume else 'starting at'} step {run.step} of {cfg.steps}"
    )
    if warm_note:
        log(warm_note)
    return logs


def _set_up(cfg: TrainConfig, d: Dist, device: torch.device) -> _Run:
    """A new run, or the interrupted one resumed from ``latest.pt``."""
    files, val_files = _data_files(cfg)
    ckpt, model_name, model_kwargs, seed = _starting_point(cfg)
    if d.main:
        Path(cfg.output).mkdir(parents=True, exist_ok=True)
    model, warm_note = _initial_model(cfg, model_name, model_kwargs, seed, ckpt is not None)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    model.to(device).train()
    # Training never codes: the rANS tables are rebuilt by update() before compressing.
    model.entropy_estimation.clear_tables()
    optimizer, scheduler, schedule = _optimizer(cfg, model, device)
    start = int(ckpt["step"]) if ckpt is not None else 0
    run = _Run(
        cfg, d, device, model_name, model_kwargs, seed, model, model, optimizer, scheduler,
        RateDistortionLoss(cfg.lmbda, cfg.metric), *_loader(cfg, files, seed, d, start, device),
        val_files, start,
    )  # fmt: skip
    if ckpt is not None:
        _resume(run, ckpt, schedule)
    if d.enabled:
        run.net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if d.main:
        run.logs = _open_logs(run, warm_note)
    return run


# ---------------------------------------------------------------------------- the steps


_LOSS_KEYS = ("loss", "bpp", "y_bpp", "z_bpp", "mse")


def _train_step(run: _Run, batch: torch.Tensor) -> tuple[dict[str, float], Any, float]:
    """One optimizer step: ``(mean loss terms over the ranks, gradient norm, learning rate)``.

    Raises:
        TrainingDivergedError: for a non-finite loss on any rank.
    """
    cfg, d, device = run.cfg, run.d, run.device
    x = batch.to(device, non_blocking=True)
    if cfg.cuda_graphs:
        x = x.contiguous(memory_format=torch.channels_last)
    # The quantization noise of this step depends on (seed, step, rank) only.
    torch.manual_seed(mix_seed(run.seed, "noise", run.step, d.rank))
    max_norm = cfg.clip_grad if cfg.clip_grad > 0 else math.inf
    if cfg.cuda_graphs:
        if run.graphed is None:  # the first batch fixes the shape
            run.graphed = GraphedTrainStep(
                run.model, run.optimizer, run.criterion, x, amp=cfg.amp == "bf16", max_norm=max_norm
            )
            torch.manual_seed(mix_seed(run.seed, "noise", run.step, d.rank))
        terms = run.graphed(x)  # the whole step, update included
    else:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16"):
            out = run.net(x)
        terms = run.criterion(out, x)
    keys = list(_LOSS_KEYS) + (["ms_ssim"] if "ms_ssim" in terms else [])
    stats = reduce_mean(torch.stack([terms[k].detach().float() for k in keys]), d)
    if not bool(torch.isfinite(stats[0])):
        _diverged(run, stats[0].item(), math.isfinite(terms["loss"].item()))
    grad_norm, updated = _update(run, terms, max_norm)
    if not updated:
        # The authors skip such batches; the norm is the same on every rank after DDP's
        # all-reduce, so all ranks skip together.
        run.skipped += 1
        log(f"step {run.step + 1}: non-finite gradient norm, update skipped", d.main)
    lr = float(run.optimizer.param_groups[0]["lr"])
    run.scheduler.step()
    run.step += 1
    values = dict(zip(keys, stats.tolist(), strict=True))
    values["psnr"] = -10 * math.log10(max(values["mse"], 1e-20))
    return values, grad_norm, lr


def _update(run: _Run, terms: Mapping[str, Any], max_norm: float) -> tuple[Any, bool]:
    """Backward, clipping and Adam (done inside the graph with ``--cuda-graphs``): ``(gradient
    norm, whether the parameters were updated)``."""
    if run.graphed is not None:
        return terms["grad_norm"], not bool(terms["skipped"])
    optimizer = run.optimizer
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    updated = bool(torch.isfinite(grad_norm))
    if updated:
        optimizer.step()
    return grad_norm, updated


def _diverged(run: _Run, loss: float, finite_here: bool) -> None:
    where = f" on rank {run.d.rank}" if run.d.enabled and not finite_here else ""
    last = (
        f"the last good checkpoint, {run.latest} (step {checkpoint_step(run.latest)}), is left "
        "as it was"
        if run.latest.is_file()
        else "no checkpoint was written yet"
    )
    raise TrainingDivergedError(
        f"non-finite loss ({loss}) at step {run.step + 1}{where}; stopped; {last}. Lower --lr, "
        "keep --clip-grad on, or try --amp off"
    )


def _log_step(run: _Run, values: Mapping[str, float], grad_norm: Any, lr: float) -> None:
    row = {
        **values, "step": run.step, "lr": lr, "grad_norm": float(grad_norm),
        "skipped": run.skipped, "seconds": round(time.perf_counter() - run.started, 3),
    }  # fmt: skip
    assert run.logs is not None
    keys = [k for k in (*_LOSS_KEYS, "ms_ssim") if k in values]
    run.logs.step(row, [*keys, "psnr", "grad_norm", "lr"])


def _validate_and_log(run: _Run) -> bool:
    """Validate when it is time to; whether the model is the best so far."""
    cfg = run.cfg
    if not run.val_files or not (run.step % cfg.val_every == 0 or run.step == cfg.end_step):
        return False
    val = _validate(run.model, run.criterion, run.val_files, run.device, run.d, cfg.amp == "bf16")
    is_best = math.isfinite(val["loss"]) and val["loss"] < run.best_loss
    if is_best:
        run.best_loss = val["loss"]
    if run.d.main:
        assert run.logs is not None
        run.logs.validation({**val, "step": run.step, "best": int(is_best)})
        log(
            f"step {run.step}: validation loss {val['loss']:.4f}, bpp {val['bpp']:.4f}, "
            f"PSNR {val['psnr']:.2f} dB on {val['images']} images{' (best)' if is_best else ''}"
        )
    return is_best


@torch.no_grad()
def _validate(
    model: HPCM,
    criterion: RateDistortionLoss,
    files: Sequence[Path],
    device: torch.device,
    d: Dist,
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
    reduce_sum(sums, d)
    model.train(was_training)
    count = max(int(sums[-1].item()), 1)
    means = {key: sums[i].item() / count for i, key in enumerate(keys)}
    means["psnr"] = -10 * math.log10(max(means["mse"], 1e-20))
    means["images"] = int(sums[-1].item())
    if criterion.metric != "ms-ssim":
        del means["ms_ssim"]
    return means


# ---------------------------------------------------------------------------- saving


def _checkpoint(run: _Run) -> dict[str, Any]:
    """The training checkpoint of the run as it is now."""
    args = describe_settings(run.cfg)
    args.update(seed=run.seed, model=run.model_name, world_size=run.d.world)
    best = None if math.isinf(run.best_loss) else run.best_loss
    return training_checkpoint(
        run.model, run.model_name, run.model_kwargs, run.optimizer, run.scheduler, run.step,
        best, args,
    )  # fmt: skip


def _save(run: _Run, is_best: bool) -> None:
    """Rank 0 writes ``latest.pt`` every ``save_every`` steps and at the end, ``best.pt`` when
    validation improved."""
    cfg = run.cfg
    due = run.step % cfg.save_every == 0 or run.step == cfg.end_step
    if not run.d.main or not (is_best or due):
        return
    state = _checkpoint(run)
    if due:
        save_checkpoint(state, run.latest)
    if is_best:
        save_checkpoint(state, run.best)
