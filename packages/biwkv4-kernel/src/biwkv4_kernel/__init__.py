"""biwkv4-kernel: the bidirectional WKV op of Vision-RWKV, exact and fast."""

from .naive import naive_biwkv4
from .ops import biwkv4, cuda_kernel_available

__version__ = "0.1.0"

__all__ = ["__version__", "biwkv4", "cuda_kernel_available", "naive_biwkv4"]
