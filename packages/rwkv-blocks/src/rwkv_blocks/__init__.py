"""rwkv-blocks: bidirectional RWKV building blocks for vision models, on [B, C, H, W] maps."""

__version__ = "0.1.0"

__all__ = ["__version__"]
