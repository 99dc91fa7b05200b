"""biwkv4-kernel: the bidirectional WKV op of Vision-RWKV, exact and fast.

``biwkv4(w, u, k, v)`` is a PyTorch custom op (``torch.ops.biwkv4_kernel.forward`` / ``.backward``)
with a CUDA kernel and an O(B·T·C) PyTorch scan for every other device; ``naive_biwkv4`` is the
O(T²) reference it is tested against. See docs/kernel.md.
"""

from ._ext import cuda_kernel_available, cuda_kernel_status
from .naive import naive_biwkv4, naive_biwkv4_rows
from .ops import DISABLE_CUDA_ENV, biwkv4

__version__ = "0.1.0"

__all__ = [
    "DISABLE_CUDA_ENV",
    "__version__",
    "biwkv4",
    "cuda_kernel_available",
    "cuda_kernel_status",
    "naive_biwkv4",
    "naive_biwkv4_rows",
]
