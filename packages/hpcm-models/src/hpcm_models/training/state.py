"""What a training checkpoint holds (:data:`~hpcm_models.checkpoints.CHECKPOINT_FORMAT`) and how a
resumed run takes it back: the weights, optimizer and scheduler state (learning rates as floats,
so that runs with and without CUDA graphs read each other's checkpoints) and the random number
generators."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    load_training_checkpoint,
    to_json,
)
from ..errors import CheckpointError

__all__ = [
    "adapt_optimizer",
    "checkpoint_step",
    "plain_lrs",
    "restore_optimizer",
    "rng_state",
    "set_lr",
    "set_rng_state",
    "training_checkpoint",
]


# The legacy global NumPy generator is what third-party code (e.g. augmentation libraries) draws
# from, so it is the one saved and restored.
def rng_state() -> dict[str, Any]:
    """The state of every random number generator a run draws from (torch, CUDA, Python, NumPy),
    as tensors and plain data (``torch.load(weights_only=True)`` reads it)."""
    np_state = np.random.get_state()  # noqa: NPY002
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):  # fewer GPUs than when saved
            torch.cuda.set_rng_state_all(state["cuda"])
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))  # noqa: NPY002


def set_lr(group: dict[str, Any], value: float) -> None:
    """Set a param group's learning rate, in place if it is a tensor (CUDA-graph runs)."""
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(value)
    else:
        group["lr"] = value


def adapt_optimizer(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
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


def plain_lrs(state: dict[str, Any]) -> dict[str, Any]:
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


def training_checkpoint(
    model: torch.nn.Module,
    model_name: str,
    model_kwargs: Mapping[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    best_loss: float | None,
    args: Mapping[str, Any],
) -> dict[str, Any]:
    """The checkpoint :func:`hpcm_models.training.train` writes after ``step`` steps (the
    scheduler's ``lr_lambdas`` are left out: the resumed run's flags give the schedule)."""
    scheduler_state = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": model.state_dict(),
        "model_name": model_name,
        "model_kwargs": model_kwargs,
        "optimizer": plain_lrs(optimizer.state_dict()),
        "scheduler": plain_lrs(scheduler_state),
        "step": step,
        "rng": rng_state(),
        "best_loss": best_loss,
        "args": args,
    }


def restore_optimizer(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ckpt: Mapping[str, Any],
    schedule: Callable[[int], float],
    device: torch.device,
) -> None:
    """Load the optimizer and the scheduler's position from a training checkpoint, into a run
    whose own flags give the learning-rate ``schedule`` (it may have been changed on purpose)."""
    optimizer.load_state_dict(ckpt["optimizer"])
    adapt_optimizer(optimizer, device)
    saved = {k: v for k, v in ckpt["scheduler"].items() if k != "lr_lambdas"}
    scheduler.load_state_dict({**saved, "lr_lambdas": [None] * len(optimizer.param_groups)})
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        set_lr(group, float(base) * schedule(scheduler.last_epoch))


def checkpoint_step(path: Path) -> int | str:
    """The step stored in a training checkpoint ('?' if unreadable)."""
    try:
        return int(load_training_checkpoint(path)["step"])
    except (CheckpointError, KeyError, ValueError):
        return "?"
