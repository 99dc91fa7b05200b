"""Training HPCM and its RWKV variants: :func:`train` with a :class:`TrainConfig`.

- :mod:`.config`: the settings and the learning-rate schedule;
- :mod:`.loop`: the loop, as short named steps (set up or resume, one step, validate and log,
  save);
- :mod:`.state`: what a checkpoint holds besides the weights (optimizer, scheduler, RNGs);
- :mod:`.logs`: CSV logs, TensorBoard, ``config.json``;
- :mod:`.distributed`: several processes under ``torchrun``.

The loss is in :mod:`hpcm_models.losses`, the data in :mod:`hpcm_models.datasets`, the checkpoint
format in :mod:`hpcm_models.checkpoints`.
"""

from .config import HPCM_LR_SCHEDULE, LRSchedule, TrainConfig
from .loop import train

__all__ = ["HPCM_LR_SCHEDULE", "LRSchedule", "TrainConfig", "train"]
