"""hpcm-models: HPCM learned image codecs and their RWKV context-model variants."""

from .errors import HPCMError

__version__ = "0.1.0"

__all__ = ["HPCMError", "__version__"]
