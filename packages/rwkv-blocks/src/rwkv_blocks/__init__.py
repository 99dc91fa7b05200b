"""rwkv-blocks: bidirectional RWKV building blocks for vision models, on [B, C, H, W] maps."""

from .block import BiRWKVBlock
from .channel_mix import ChannelMix
from .context import RWKVContextCell, RWKVContextCellLite, RWKVFusionNet
from .omnishift import OmniShift, reparameterize_model
from .optim import rwkv_param_groups
from .spatial_mix import SpatialMix

__version__ = "0.1.0"

__all__ = [
    "BiRWKVBlock",
    "ChannelMix",
    "OmniShift",
    "RWKVContextCell",
    "RWKVContextCellLite",
    "RWKVFusionNet",
    "SpatialMix",
    "__version__",
    "reparameterize_model",
    "rwkv_param_groups",
]
