"""HPCM × RWKV phases 1-4 and phase 1 lite, their RWKV spatial prior, and warm starts from a
trained baseline."""

from .model import (
    DEFAULT_CELL_HIDDEN_RATES,
    HPCMRWKV,
    LITE_CELL_HIDDEN_RATES,
    REPLACEABLE_MODULES,
    HPCMPhase1,
    HPCMPhase1Lite,
    HPCMPhase2,
    HPCMPhase3,
    HPCMPhase4,
)
from .prior import RWKVSpatialPrior
from .warm_start import WarmStart, from_baseline

__all__ = [
    "DEFAULT_CELL_HIDDEN_RATES",
    "HPCMRWKV",
    "LITE_CELL_HIDDEN_RATES",
    "REPLACEABLE_MODULES",
    "HPCMPhase1",
    "HPCMPhase1Lite",
    "HPCMPhase2",
    "HPCMPhase3",
    "HPCMPhase4",
    "RWKVSpatialPrior",
    "WarmStart",
    "from_baseline",
]
