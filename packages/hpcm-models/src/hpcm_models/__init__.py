"""hpcm-models: HPCM learned image codecs and their RWKV context-model variants."""

from .entropy import GeneralizedGaussian, default_scale_table
from .errors import CheckpointError, HPCMError, InputShapeError
from .hpcm import HPCM, HPCM_BASE, HPCM_LARGE, CodingStep, HPCMBase, HPCMConfig, HPCMLarge
from .registry import available_models, get_model, register_model

__version__ = "0.1.0"

__all__ = [
    "HPCM",
    "HPCM_BASE",
    "HPCM_LARGE",
    "CheckpointError",
    "CodingStep",
    "GeneralizedGaussian",
    "HPCMBase",
    "HPCMConfig",
    "HPCMError",
    "HPCMLarge",
    "InputShapeError",
    "__version__",
    "available_models",
    "default_scale_table",
    "get_model",
    "register_model",
]
