"""HPCM-Base and HPCM-Large: model, configuration and the geometry of the coding schedule."""

from .config import HPCM_BASE, HPCM_LARGE, HPCM_MICRO, HPCMConfig
from .model import HPCM, CodingStep, HPCMBase, HPCMLarge

__all__ = [
    "HPCM",
    "HPCM_BASE",
    "HPCM_LARGE",
    "HPCM_MICRO",
    "CodingStep",
    "HPCMBase",
    "HPCMConfig",
    "HPCMLarge",
]
