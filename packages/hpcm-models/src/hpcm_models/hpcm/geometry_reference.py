"""Reference for :mod:`hpcm_models.hpcm.geometry`: the official boolean masks, applied literally.

The official HPCM code tiles small 0/1 patterns into per-channel masks and moves latents with
``masked_select`` and boolean-mask assignment (both follow raster order over ``[B, C, H, W]``).
This module rebuilds those masks from the same patterns and applies them the same way. It is slow
and allocation-heavy on purpose: it exists so that tests can check the index arithmetic of
:mod:`~hpcm_models.hpcm.geometry` against it, at any size.
"""

from __future__ import annotations

import torch

__all__ = [
    "combine_reference",
    "merge_reference",
    "s2_hyper_reference",
    "s3_hyper_reference",
    "split_s1_reference",
    "split_s2_reference",
    "step_mask_reference",
    "uncombine_reference",
]

_TWO = ((1, 0), (0, 1))
_FOUR = (((1, 0), (0, 0)), ((0, 1), (0, 0)), ((0, 0), (1, 0)), ((0, 0), (0, 1)))
# The eight 4×4 patterns of s3 (two positions each) …
_EIGHT = (
    ((1, 0, 0, 0), (0, 0, 0, 0), (0, 0, 1, 0), (0, 0, 0, 0)),
    ((0, 0, 1, 0), (0, 0, 0, 0), (1, 0, 0, 0), (0, 0, 0, 0)),
    ((0, 0, 0, 0), (0, 1, 0, 0), (0, 0, 0, 0), (0, 0, 0, 1)),
    ((0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 0, 0), (0, 1, 0, 0)),
    ((0, 1, 0, 0), (0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 0, 0)),
    ((0, 0, 0, 1), (0, 0, 0, 0), (0, 1, 0, 0), (0, 0, 0, 0)),
    ((0, 0, 0, 0), (1, 0, 0, 0), (0, 0, 0, 0), (0, 0, 1, 0)),
    ((0, 0, 0, 0), (0, 0, 1, 0), (0, 0, 0, 0), (1, 0, 0, 0)),
)
# … and their first halves (one position each), used to drop hyperprior positions at s2.
_EIGHT_FIRST = tuple((p[0], p[1], (0, 0, 0, 0), (0, 0, 0, 0)) for p in _EIGHT)
_GROUP_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
_GROUP_ORDER_SWAPPED = (1, 3, 5, 7, 0, 2, 4, 6)
_FOUR_STEPS = ((0, 1, 2, 3), (3, 2, 1, 0), (2, 3, 0, 1), (1, 0, 3, 2))
_EIGHT_STEPS = (
    (0, 2, 4, 6, 1, 3, 5, 7),
    (1, 3, 5, 7, 0, 2, 4, 6),
    (2, 4, 6, 0, 3, 5, 7, 1),
    (3, 5, 7, 1, 2, 4, 6, 0),
    (4, 6, 0, 2, 5, 7, 1, 3),
    (5, 7, 1, 3, 4, 6, 0, 2),
    (6, 0, 2, 4, 7, 1, 3, 5),
    (7, 1, 3, 5, 6, 0, 2, 4),
)


def _tile(pattern: tuple[tuple[int, ...], ...], h: int, w: int) -> torch.Tensor:
    micro = torch.tensor(pattern, dtype=torch.bool)
    ph, pw = micro.shape
    return micro.repeat(-(-h // ph), -(-w // pw))[:h, :w]


def _channels(masks: list[torch.Tensor], C: int) -> torch.Tensor:
    """Per-group ``[h, w]`` masks → ``[C, h, w]``, each repeated over its group's C/k channels."""
    k = len(masks)
    return torch.cat([m.expand(C // k, *m.shape) for m in masks], dim=0)


def _s2_masks(H: int, W: int) -> list[torch.Tensor]:
    return [
        _tile(_EIGHT[a], H, W) | _tile(_EIGHT[b], H, W)
        for a, b in zip(_GROUP_ORDER, _GROUP_ORDER_SWAPPED, strict=True)
    ]


def _rec_s2_masks(h: int, w: int) -> list[torch.Tensor]:
    return [_tile(p, h, w) for p in _FOUR]


def _split(t: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
    B, C, H, W = t.shape
    k = len(masks)
    parts = []
    for g, m in enumerate(masks):
        chunk = t[:, g * C // k : (g + 1) * C // k]
        selected = chunk.masked_select(m.to(t.device).expand_as(chunk))
        parts.append(selected.view(B, C // k, H // 2, W // 2))
    return torch.cat(parts, dim=1)


def split_s2_reference(t: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, C, H/2, W/2]`` with the official masks."""
    return _split(t, _s2_masks(*t.shape[-2:]))


def split_s1_reference(t: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w] -> [B, C, h/2, w/2]`` with the official masks."""
    return _split(t, _rec_s2_masks(*t.shape[-2:]))


def merge_reference(t: torch.Tensor, stage: int) -> torch.Tensor:
    """Official ``recon_for_s2_s3``: stage ``stage`` grid (1 or 2) → next finer grid."""
    B, C, h, w = t.shape
    masks = _rec_s2_masks(2 * h, 2 * w) if stage == 1 else _s2_masks(2 * h, 2 * w)
    full = _channels(masks, C).to(t.device).expand(B, C, 2 * h, 2 * w)
    out = t.new_zeros(B, C, 2 * h, 2 * w)
    out[full] = t.reshape(-1)
    return out


def s2_hyper_reference(params: torch.Tensor) -> torch.Tensor:
    """Official ``get_s2_hyper_with_mask``: ``[B, C, H, W] -> [B, C, H/2, W/2]``."""
    B, C, H, W = params.shape
    first = [_tile(_EIGHT_FIRST[i], H, W) for i in _GROUP_ORDER]
    source = _channels([s & ~f for s, f in zip(_s2_masks(H, W), first, strict=True)], C)
    target = _channels(_rec_s2_masks(H // 2, W // 2), C)
    out = params.new_zeros(B, C, H // 2, W // 2)
    out[~target.to(params.device).expand(B, -1, -1, -1)] = params[
        source.to(params.device).expand(B, -1, -1, -1)
    ]
    return out


def s3_hyper_reference(params: torch.Tensor) -> torch.Tensor:
    """Official ``get_s3_hyper_with_mask``: the values off each group's s2 positions."""
    B, C, H, W = params.shape
    coded = _channels(_s2_masks(H, W), C).to(params.device).expand(B, -1, -1, -1)
    out = params.new_zeros(B, C, H, W)
    out[~coded] = params[~coded]
    return out


def step_mask_reference(stage: int, step: int, C: int, h: int, w: int) -> torch.Tensor:
    """Official step mask ``[C, h, w]`` (bool) of step ``step`` of stage ``stage``."""
    if stage == 1:
        first, second = _tile(_TWO, h, w), ~_tile(_TWO, h, w)
        return _channels([first, second] if step == 0 else [second, first], C)
    if stage == 2:
        four = _rec_s2_masks(h, w)
        return _channels([four[p] for p in _FOUR_STEPS[step]], C)
    eight = [_tile(p, h, w) for p in _EIGHT]
    return _channels([eight[p] for p in _EIGHT_STEPS[step]], C)


def combine_reference(t: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Official ``combine_for_writing``: the sum of the k channel chunks of ``t · mask``."""
    return sum((t * mask.to(t)).chunk(k, dim=1))  # type: ignore[return-value]


def uncombine_reference(v: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Official decoder side: ``cat([v] * k) · mask``."""
    return torch.cat([v] * k, dim=1) * mask.to(v)
