"""hpcm-models: HPCM learned image codecs and their RWKV context-model variants."""

import warnings as _warnings

with _warnings.catch_warnings():
    # compressai 1.2.8 calls torch.jit.script at import time, which torch >= 2.14 deprecates;
    # users cannot act on that warning, so it is not shown on every `hpcm` run.
    _warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
    import compressai as _compressai  # noqa: F401

from .acceleration import GraphChain, GraphedForward, GraphedTrainStep, capturable_adam
from .checkpoints import load_checkpoint
from .codec import ImageCodec, decode_image, encode_image
from .codec_files import compress_file, decompress_file
from .entropy import GeneralizedGaussian, default_scale_table
from .errors import (
    BitstreamError,
    CheckpointError,
    CorruptBitstreamError,
    DecodeMismatchError,
    DeviceError,
    EncodeError,
    FileAccessError,
    HPCMError,
    ImageError,
    InputShapeError,
    LimitExceededError,
    PretrainedWeightsError,
    TruncatedBitstreamError,
    UnsupportedFormatError,
    WeightsIntegrityError,
    WeightsMismatchError,
)
from .hpcm import (
    HPCM,
    HPCM_BASE,
    HPCM_LARGE,
    HPCM_MICRO,
    CodingStep,
    HPCMBase,
    HPCMConfig,
    HPCMLarge,
)
from .phases import (
    HPCMRWKV,
    HPCMPhase1,
    HPCMPhase1Lite,
    HPCMPhase2,
    HPCMPhase3,
    HPCMPhase4,
    RWKVSpatialPrior,
    WarmStart,
    from_baseline,
)
from .pretrained import load_pretrained, pretrained_models, shipped_weights
from .registry import BUILTIN_MODELS, available_models, get_model, register_model

__version__ = "0.1.0"

__all__ = [
    "BUILTIN_MODELS",
    "HPCM",
    "HPCMRWKV",
    "HPCM_BASE",
    "HPCM_LARGE",
    "HPCM_MICRO",
    "BitstreamError",
    "CheckpointError",
    "CodingStep",
    "CorruptBitstreamError",
    "DecodeMismatchError",
    "DeviceError",
    "EncodeError",
    "FileAccessError",
    "GeneralizedGaussian",
    "GraphChain",
    "GraphedForward",
    "GraphedTrainStep",
    "HPCMBase",
    "HPCMConfig",
    "HPCMError",
    "HPCMLarge",
    "HPCMPhase1",
    "HPCMPhase1Lite",
    "HPCMPhase2",
    "HPCMPhase3",
    "HPCMPhase4",
    "ImageCodec",
    "ImageError",
    "InputShapeError",
    "LimitExceededError",
    "PretrainedWeightsError",
    "RWKVSpatialPrior",
    "TruncatedBitstreamError",
    "UnsupportedFormatError",
    "WarmStart",
    "WeightsIntegrityError",
    "WeightsMismatchError",
    "__version__",
    "available_models",
    "capturable_adam",
    "compress_file",
    "decode_image",
    "decompress_file",
    "default_scale_table",
    "encode_image",
    "from_baseline",
    "get_model",
    "load_checkpoint",
    "load_pretrained",
    "pretrained_models",
    "register_model",
    "shipped_weights",
]
