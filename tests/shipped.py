"""Shipped weights made in the tests: micro ``hpcm-small`` models (the whole coding schedule at
M=16, N=8, random weights) at three qualities, in a folder that ``HPCM_WEIGHTS_DIR`` names.

The package's own weights folder is never touched; ``pyproject.toml`` puts ``tests/`` on
``sys.path``, so test modules import this one as ``shipped``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hpcm_models import HPCM_MICRO
from hpcm_models.checkpoints import CHECKPOINT_FORMAT, model_kwargs_to_json, random_model
from hpcm_models.pretrained import add_to_index, make_weights_file

__all__ = ["LMBDAS", "MICRO", "make_weights_dir", "training_checkpoint"]

#: Constructor kwargs (JSON form) of the micro models.
MICRO = model_kwargs_to_json({"M": 16, "N": 8, "config": HPCM_MICRO})
#: The λ of each quality (the plan's, tools/plans/small_codecs.json).
LMBDAS = {1: 0.0035, 2: 0.0067, 3: 0.013}


def training_checkpoint(path: Path, quality: int, model: str = "hpcm-small") -> Path:
    """A checkpoint like ``hpcm train``'s ``latest.pt`` (model, name, kwargs, step, settings;
    seed = quality, so every quality has other weights)."""
    net = random_model(model, seed=quality, **MICRO)
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "model": net.state_dict(),
            "model_name": model,
            "model_kwargs": MICRO,
            "step": 100,
            "args": {"lmbda": LMBDAS[quality], "steps": 100, "batch_size": 2, "seed": quality},
        },
        path,
    )
    return path


def make_weights_dir(root: Path, qualities: tuple[int, ...] = (1, 2, 3)) -> Path:
    """``root/weights``: an ``index.json`` and one weights file per quality of ``hpcm-small``."""
    weights = root / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    for quality in qualities:
        source = training_checkpoint(root / f"latest-q{quality}.pt", quality)
        entry = make_weights_file(source, weights / f"hpcm-small-q{quality}.pt", quality=quality)
        add_to_index(entry, weights)
    return weights
