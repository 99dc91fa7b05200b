"""Optimizer parameter groups for models that contain RWKV blocks."""

from __future__ import annotations

from typing import Any

from torch import nn

from ._checks import check_rate
from .context import RWKVContextCellLite
from .spatial_mix import SpatialMix

__all__ = ["rwkv_param_groups"]


def rwkv_param_groups(
    model: nn.Module, lr: float, decay_lr: float, weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into optimizer groups.

    The WKV ``decay`` and ``boost`` of every :class:`SpatialMix` and :class:`RWKVContextCellLite`
    enter the exponent of the WKV weights, scaled by the distance between tokens, so a step that
    suits a linear layer can move them too far; they get their own learning rate ``decay_lr`` and
    no weight decay (which would pull them towards 0, i.e. towards a uniform average over the
    whole map). Following common practice (timm's ``param_groups_weight_decay``), the other 1-D
    parameters (norm affines, biases, the γ scales and OmniShift's α) get ``lr`` and no weight
    decay either; everything else gets ``lr`` and ``weight_decay``.

    Args:
        model: any module; parameters with ``requires_grad=False`` are left out.
        lr: learning rate of all parameters but decay/boost.
        decay_lr: learning rate of the decay/boost parameters.
        weight_decay: weight decay of the matrices and conv kernels.

    Returns:
        Non-empty groups among ``"decay"`` (≥2-D weights), ``"no_decay"`` (other 1-D parameters) and
        ``"wkv"`` (decay/boost), each a dict with ``name``, ``params``, ``lr``, ``weight_decay``;
        pass the list to any ``torch.optim`` optimizer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    lr = float(check_rate(lr, "lr", allow_zero=True))
    decay_lr = float(check_rate(decay_lr, "decay_lr", allow_zero=True))
    weight_decay = float(check_rate(weight_decay, "weight_decay", allow_zero=True))

    wkv_ids = {
        id(p)
        for m in model.modules()
        if isinstance(m, SpatialMix | RWKVContextCellLite)
        for p in (m.decay, m.boost)
    }
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "wkv": []}
    for p in model.parameters():  # deduplicates shared parameters
        if not p.requires_grad:
            continue
        if id(p) in wkv_ids:
            groups["wkv"].append(p)
        elif p.dim() <= 1:
            groups["no_decay"].append(p)
        else:
            groups["decay"].append(p)
    settings = {
        "decay": (lr, weight_decay),
        "no_decay": (lr, 0.0),
        "wkv": (decay_lr, 0.0),
    }
    return [
        {"name": name, "params": params, "lr": settings[name][0], "weight_decay": settings[name][1]}
        for name, params in groups.items()
        if params
    ]
