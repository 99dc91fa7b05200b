"""Where each latent lives in HPCM's three-scale coding schedule, as slices, gathers and scatters.

The latent ``y`` ``[B, C, H, W]`` is coded at three resolutions (HPCM §3.2). Channels are split
into 8 groups of C/8; group ``g`` keeps the 2×2 phase ``S2_PHASES[g]`` of the full-resolution grid
on the ½-resolution grid of stage s2 (:func:`split_s2`). In turn, the s2 grid is split into 4
groups of C/4 channels, group ``j`` keeping the 2×2 phase ``S1_PHASES[j]`` on the ¼-resolution grid
of stage s1 (:func:`split_s1`). Stage s1 codes its grid in 2 steps, s2 codes what s1 left of its
grid in 3 steps, s3 codes what s2 left of the full grid in 6 steps. At every step each position of
the stage grid is coded for exactly one channel group, so a step codes ``C/k`` "merged" channels
at every position (k = 2, 4, 8 groups): :func:`select` and :func:`place` convert between a stage
grid and those merged channels.

The official implementation expresses all of this with boolean masks and ``masked_select``;
:mod:`hpcm_models.hpcm.geometry_reference` rebuilds those masks literally, and the tests check that
the functions here give identical tensors.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "S1_PHASES",
    "S2_HYPER_DROPPED",
    "S2_PHASES",
    "S2_STEP_PHASES",
    "S3_PATTERN",
    "S3_STEP_PATTERNS",
    "STEPS",
    "latent_from_stage",
    "merge_s1",
    "merge_s2",
    "num_groups",
    "place",
    "s2_hyper",
    "s3_hyper",
    "select",
    "split_s1",
    "split_s2",
    "step_groups",
]

# (row, col) phase of the full grid that each of the 8 channel groups keeps at s2.
S2_PHASES: tuple[tuple[int, int], ...] = (
    (0, 0), (1, 1), (0, 1), (1, 0), (0, 0), (1, 1), (0, 1), (1, 0),
)  # fmt: skip
# (row, col) phase of the s2 grid that each of the 4 channel groups keeps at s1.
S1_PHASES: tuple[tuple[int, int], ...] = ((0, 0), (0, 1), (1, 0), (1, 1))

# Stage s2, step k: group j codes the s2-grid phase S2_STEP_PHASES[k][j] (phases numbered
# 2·row + col). Step 0 is what s1 coded (group j at S1_PHASES[j]); steps 1-3 are coded at s2.
S2_STEP_PHASES: tuple[tuple[int, ...], ...] = (
    (0, 1, 2, 3),
    (3, 2, 1, 0),
    (2, 3, 0, 1),
    (1, 0, 3, 2),
)

# Stage s3: the full grid is tiled by 4×4 blocks whose 16 positions form 8 patterns of 2.
S3_PATTERN: tuple[tuple[int, ...], ...] = (
    (0, 4, 1, 5),
    (6, 2, 7, 3),
    (1, 5, 0, 4),
    (7, 3, 6, 2),
)
# Stage s3, step k: group g codes pattern S3_STEP_PATTERNS[k][g]. Steps 0-1 are the s2 positions
# (coded at s1/s2); steps 2-7 are coded at s3.
S3_STEP_PATTERNS: tuple[tuple[int, ...], ...] = (
    (0, 2, 4, 6, 1, 3, 5, 7),
    (1, 3, 5, 7, 0, 2, 4, 6),
    (2, 4, 6, 0, 3, 5, 7, 1),
    (3, 5, 7, 1, 2, 4, 6, 0),
    (4, 6, 0, 2, 5, 7, 1, 3),
    (5, 7, 1, 3, 4, 6, 0, 2),
    (6, 0, 2, 4, 7, 1, 3, 5),
    (7, 1, 3, 5, 6, 0, 2, 4),
)

# The coded steps of each stage, in coding order: 2 + 3 + 6 = 11 steps.
STEPS: dict[int, tuple[int, ...]] = {1: (0, 1), 2: (1, 2, 3), 3: (2, 3, 4, 5, 6, 7)}

# Quirk of the official model, kept because checkpoints were trained with it: when the hyperprior
# is resampled onto the s2 grid (:func:`s2_hyper`), group g drops the full-grid position
# S2_HYPER_DROPPED[g] of each 4×4 block. Only for g = 0, 1 is that the position s1 coded.
S2_HYPER_DROPPED: tuple[tuple[int, int], ...] = (
    (0, 0), (1, 1), (0, 1), (1, 0), (0, 2), (1, 3), (0, 3), (1, 2),
)  # fmt: skip


def num_groups(stage: int) -> int:
    """Channel groups that share one coding step: 2 at s1, 4 at s2, 8 at s3."""
    return {1: 2, 2: 4, 3: 8}[stage]


def _split(t: torch.Tensor, phases: tuple[tuple[int, int], ...]) -> torch.Tensor:
    C = t.shape[1]
    c = C // len(phases)
    parts = [t[:, g * c : (g + 1) * c, dy::2, dx::2] for g, (dy, dx) in enumerate(phases)]
    return torch.cat(parts, dim=1)


def _merge(t: torch.Tensor, phases: tuple[tuple[int, int], ...]) -> torch.Tensor:
    B, C, h, w = t.shape
    c = C // len(phases)
    out = t.new_zeros(B, C, 2 * h, 2 * w)
    for g, (dy, dx) in enumerate(phases):
        out[:, g * c : (g + 1) * c, dy::2, dx::2] = t[:, g * c : (g + 1) * c]
    return out


def split_s2(t: torch.Tensor) -> torch.Tensor:
    """Full grid → s2 grid: ``[B, C, H, W] -> [B, C, H/2, W/2]``, group g at ``S2_PHASES[g]``."""
    return _split(t, S2_PHASES)


def merge_s2(t: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_s2`: ``[B, C, h, w] -> [B, C, 2h, 2w]``, zeros elsewhere."""
    return _merge(t, S2_PHASES)


def split_s1(t: torch.Tensor) -> torch.Tensor:
    """s2 grid → s1 grid: ``[B, C, h, w] -> [B, C, h/2, w/2]``, group j at ``S1_PHASES[j]``."""
    return _split(t, S1_PHASES)


def merge_s1(t: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_s1`: ``[B, C, h, w] -> [B, C, 2h, 2w]``, zeros elsewhere."""
    return _merge(t, S1_PHASES)


def latent_from_stage(t: torch.Tensor, stage: int) -> torch.Tensor:
    """Place a stage-grid tensor at its full-resolution latent positions (zeros elsewhere)."""
    if stage == 1:
        return merge_s2(merge_s1(t))
    if stage == 2:
        return merge_s2(t)
    return t


def _inverse(perm: tuple[int, ...]) -> list[int]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv


@functools.lru_cache(maxsize=64)
def _step_groups_cpu(stage: int, step: int, h: int, w: int) -> torch.Tensor:
    rows = torch.arange(h)[:, None]
    cols = torch.arange(w)[None, :]
    if stage == 1:
        # Checkerboard: group 0 takes the even squares at step 0, the odd ones at step 1.
        return ((rows + cols) % 2) ^ step
    if stage == 2:
        phase = 2 * (rows % 2) + cols % 2
        return torch.tensor(_inverse(S2_STEP_PHASES[step]))[phase]
    pattern = torch.tensor(S3_PATTERN)[rows % 4, cols % 4]
    return torch.tensor(_inverse(S3_STEP_PATTERNS[step]))[pattern]


@functools.lru_cache(maxsize=256)
def _on_device(make: Callable[..., Any], device: torch.device, *args: Any) -> Any:
    # The index tensors are built once per size on the CPU and copied to each device once: a copy
    # per call would synchronize the host with the device at every coding step (and cannot be
    # captured in a CUDA graph).
    value = make(*args)
    if isinstance(value, tuple):
        return tuple(v.to(device) for v in value)
    return value.to(device)


def step_groups(stage: int, step: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """Channel group coded at each position of a step: int64 ``[h, w]`` in ``[0, k)``.

    The result is cached per (stage, step, size, device): treat it as read-only.

    Args:
        stage: 1, 2 or 3.
        step: step number within the stage (see :data:`STEPS`).
        h, w: size of the stage grid.
        device: device of the result.
    """
    return _on_device(_step_groups_cpu, torch.device(device), stage, step, h, w)


def select(t: torch.Tensor, groups: torch.Tensor, k: int) -> torch.Tensor:
    """Stage grid → merged channels of one step: ``[B, C, h, w] -> [B, C/k, h, w]``.

    ``out[b, i, r, s] = t[b, groups[r, s] · C/k + i, r, s]``: at each position, the channels of the
    group that is coded there. (The official code writes this as the sum of the k channel chunks of
    the masked tensor.)
    """
    B, C, h, w = t.shape
    index = groups.view(1, 1, 1, h, w).expand(B, 1, C // k, h, w)
    return t.reshape(B, k, C // k, h, w).gather(1, index).squeeze(1)


def place(v: torch.Tensor, groups: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`select`: ``[B, C/k, h, w] -> [B, C, h, w]``, zeros off the step."""
    B, c, h, w = v.shape
    index = groups.view(1, 1, 1, h, w).expand(B, 1, c, h, w)
    return v.new_zeros(B, k, c, h, w).scatter(1, index, v.unsqueeze(1)).reshape(B, k * c, h, w)


@functools.lru_cache(maxsize=16)
def _s2_hyper_index_cpu(H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(H)[:, None]
    cols = torch.arange(W)[None, :]
    rows2 = torch.arange(H // 2)[:, None]
    cols2 = torch.arange(W // 2)[None, :]
    index = torch.zeros(8, (H // 2) * (W // 2), dtype=torch.long)
    valid = torch.zeros(8, (H // 2) * (W // 2), dtype=torch.bool)
    for g, ((dy, dx), (qy, qx)) in enumerate(zip(S2_PHASES, S2_HYPER_DROPPED, strict=True)):
        source = (rows % 2 == dy) & (cols % 2 == dx) & ~((rows % 4 == qy) & (cols % 4 == qx))
        jy, jx = S1_PHASES[g // 2]
        target = ~((rows2 % 2 == jy) & (cols2 % 2 == jx))
        # Both sides are taken in raster order and paired one to one, as the official boolean
        # assignment does.
        index[g, target.flatten()] = source.flatten().nonzero().squeeze(1)
        valid[g, target.flatten()] = True
    return index, valid


def s2_hyper(params: torch.Tensor) -> torch.Tensor:
    """Hyperprior parameters for the s2 positions that s1 did not code: ``[B, C, H, W] -> [B, C,
    H/2, W/2]`` (zeros at the s1 positions).

    For channel group g (of 8), the full-grid values at the group's s2 phase, minus the position
    ``S2_HYPER_DROPPED[g]`` of each 4×4 block, are written in raster order into the s2-grid
    positions outside the group's s1 phase (also in raster order). That is exactly what the official
    model computes; for groups 2-7 it does not align values with their positions (see
    :data:`S2_HYPER_DROPPED`), and trained checkpoints depend on it.
    """
    B, C, H, W = params.shape
    index, valid = _on_device(_s2_hyper_index_cpu, params.device, H, W)
    index = index.view(1, 8, 1, -1).expand(B, 8, C // 8, -1)
    out = params.reshape(B, 8, C // 8, H * W).gather(3, index)
    out = torch.where(valid.view(1, 8, 1, -1), out, 0.0)
    return out.reshape(B, C, H // 2, W // 2)


def s3_hyper(params: torch.Tensor) -> torch.Tensor:
    """Hyperprior parameters for the full-grid positions that s1/s2 did not code: ``[B, C, H, W]``,
    zeros at each group's s2 phase."""
    B, C, H, W = params.shape
    coded = _on_device(_s2_phase_mask_cpu, params.device, H, W).view(1, 8, 1, H, W)
    return torch.where(coded, 0.0, params.reshape(B, 8, C // 8, H, W)).reshape(B, C, H, W)


@functools.lru_cache(maxsize=16)
def _s2_phase_mask_cpu(H: int, W: int) -> torch.Tensor:
    """bool ``[8, H, W]``: the full-grid positions of each channel group's s2 phase."""
    rows = torch.arange(H)[:, None]
    cols = torch.arange(W)[None, :]
    phases = torch.tensor(S2_PHASES)
    return (rows % 2 == phases[:, 0, None, None]) & (cols % 2 == phases[:, 1, None, None])
