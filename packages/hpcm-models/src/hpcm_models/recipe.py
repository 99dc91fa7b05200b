"""Deterministic, checkpoint-free weights: the recipe of the official parity fixtures.

The HPCM parity fixtures (``tests/models/fixtures/README.md``) were produced by the authors' code
with every parameter filled from a generator seeded by the CRC32 of its state-dict key. Because the
seed depends only on the key, the recipe gives any model of this package (any M, N, config or RWKV
phase) the same weights on every machine, with realistic scales — for parity tests, benchmarks and
demos that must not depend on a downloaded checkpoint.
"""

from __future__ import annotations

import math
import zlib

import torch
from torch import nn

__all__ = ["fill_recipe_weights"]


def fill_recipe_weights(model: nn.Module) -> nn.Module:
    """Overwrite every parameter of ``model`` in place with the recipe; buffers are left alone.

    ==========================  =================================================================
    key                         value (``g`` seeded with ``zlib.crc32(key)``)
    ==========================  =================================================================
    ``scales_hyper*``           ``1 + 0.5 * rand``
    ``means_hyper*``            ``0.1 * randn``
    ``adaptive_params_list*``   ``1 + 0.1 * randn``
    2 or more dimensions        ``randn * 0.8 / sqrt(numel / shape[0])``
    1 dimension (biases)        ``0.01 * randn``
    ==========================  =================================================================

    Returns:
        ``model``, for chaining.
    """
    with torch.no_grad():
        for key, param in model.named_parameters():
            g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
            shape = param.shape
            if key.startswith("scales_hyper"):
                value = 1 + 0.5 * torch.rand(shape, generator=g)
            elif key.startswith("means_hyper"):
                value = 0.1 * torch.randn(shape, generator=g)
            elif key.startswith("adaptive_params_list"):
                value = 1 + 0.1 * torch.randn(shape, generator=g)
            elif len(shape) >= 2:
                value = torch.randn(shape, generator=g) * 0.8 / math.sqrt(param.numel() / shape[0])
            else:
                value = 0.01 * torch.randn(shape, generator=g)
            param.copy_(value)
    return model
