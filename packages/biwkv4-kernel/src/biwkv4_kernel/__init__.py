"""biwkv4-kernel: the bidirectional WKV op of Vision-RWKV, exact and fast.

``biwkv4(w, u, k, v)`` is a PyTorch custom op (``torch.ops.biwkv4_kernel.forward`` / ``.backward``)
with a compiled CUDA kernel, Triton kernels (GPU, no CUDA toolkit needed) and an O(B·T·C) PyTorch
scan for every other device; ``naive_biwkv4`` is the O(T²) reference they are tested against.
See docs/kernel.md.
"""

from ._ext import cuda_kernel_available, cuda_kernel_status
from ._triton import triton_kernel_available, triton_kernel_status
from .naive import naive_biwkv4, naive_biwkv4_rows
from .ops import DISABLE_CUDA_ENV, DISABLE_TRITON_ENV, biwkv4, gpu_backend

__version__ = "0.1.0"

__all__ = [
    "DISABLE_CUDA_ENV",
    "DISABLE_TRITON_ENV",
    "__version__",
    "biwkv4",
    "cuda_kernel_available",
    "cuda_kernel_status",
    "gpu_backend",
    "naive_biwkv4",
    "naive_biwkv4_rows",
    "triton_kernel_available",
    "triton_kernel_status",
]
