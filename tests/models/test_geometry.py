"""The index arithmetic of the coding schedule equals the official boolean masks, at any size."""

from __future__ import annotations

import pytest
import torch

from hpcm_models.hpcm import geometry as geo
from hpcm_models.hpcm import geometry_reference as ref

# Latent sizes (H, W): multiples of 8 (images that are multiples of 128), square or not.
SIZES = [(8, 8), (16, 16), (8, 24), (32, 16), (24, 40)]


@pytest.fixture(params=SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def latent(request) -> torch.Tensor:
    H, W = request.param
    g = torch.Generator().manual_seed(H * 1000 + W)
    return torch.randn(2, 32, H, W, generator=g)


def test_split_and_merge_match_the_masks(latent: torch.Tensor) -> None:
    s2 = geo.split_s2(latent)
    assert torch.equal(s2, ref.split_s2_reference(latent))
    s1 = geo.split_s1(s2)
    assert torch.equal(s1, ref.split_s1_reference(s2))
    assert torch.equal(geo.merge_s1(s1), ref.merge_reference(s1, stage=1))
    assert torch.equal(geo.merge_s2(s2), ref.merge_reference(s2, stage=2))
    # Splitting then merging keeps exactly the stage's positions.
    assert torch.equal(geo.split_s2(geo.merge_s2(s2)), s2)
    assert torch.equal(geo.split_s1(geo.merge_s1(s1)), s1)


def test_hyperprior_resampling_matches_the_masks(latent: torch.Tensor) -> None:
    assert torch.equal(geo.s2_hyper(latent), ref.s2_hyper_reference(latent))
    assert torch.equal(geo.s3_hyper(latent), ref.s3_hyper_reference(latent))


def test_s2_hyper_keeps_the_official_misalignment() -> None:
    """Groups 0-1 get their own hyperprior values; later groups get shifted ones (the quirk)."""
    H = W = 8
    positions = torch.arange(H * W, dtype=torch.float32).view(1, 1, H, W).expand(1, 8, H, W)
    out = geo.s2_hyper(positions.contiguous())  # [1, 8, 4, 4], one channel per group
    for g in range(8):
        (dy, dx), (jy, jx) = geo.S2_PHASES[g], geo.S1_PHASES[g // 2]
        for r in range(H // 2):
            for c in range(W // 2):
                if (r % 2, c % 2) == (jy, jx):
                    assert out[0, g, r, c] == 0  # coded at s1: no hyperprior
                elif g < 2:
                    assert out[0, g, r, c] == (2 * r + dy) * W + (2 * c + dx)
    # Group 2 (s2 phase (0, 1), s1 phase (0, 1) of the s2 grid): s2-grid position (2a, 2b) sits
    # at full-grid (4a, 4b + 1) but receives the hyperprior of (4a, 4b + 3).
    for a in range(H // 4):
        for b in range(W // 4):
            assert out[0, 2, 2 * a, 2 * b] == 4 * a * W + 4 * b + 3


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_steps_match_the_masks(latent: torch.Tensor, stage: int) -> None:
    """select/place equal the official combine-for-writing / decoder expansion of every step."""
    t = latent
    if stage < 3:
        t = geo.split_s2(t)
    if stage < 2:
        t = geo.split_s1(t)
    _, C, h, w = t.shape
    k = geo.num_groups(stage)
    for step in range(2 if stage == 1 else 4 if stage == 2 else 8):
        mask = ref.step_mask_reference(stage, step, C, h, w)
        groups = geo.step_groups(stage, step, h, w, t.device)
        merged = geo.select(t, groups, k)
        assert torch.equal(merged, ref.combine_reference(t, mask, k))
        assert torch.equal(geo.place(merged, groups, k), ref.uncombine_reference(merged, mask, k))


def test_the_schedule_codes_every_latent_exactly_once(latent: torch.Tensor) -> None:
    B, C, H, W = latent.shape
    count = torch.zeros(B, C, H, W)
    for stage, steps in geo.STEPS.items():
        h, w = H >> (3 - stage), W >> (3 - stage)
        for step in steps:
            groups = geo.step_groups(stage, step, h, w, latent.device)
            ones = torch.ones(B, C // geo.num_groups(stage), h, w)
            count += geo.latent_from_stage(geo.place(ones, groups, geo.num_groups(stage)), stage)
    assert torch.equal(count, torch.ones_like(count))


def test_select_and_place_carry_gradients() -> None:
    t = torch.randn(1, 16, 8, 8, requires_grad=True)
    groups = geo.step_groups(3, 4, 8, 8, t.device)
    geo.place(geo.select(t, groups, 8) * 2, groups, 8).sum().backward()
    mask = ref.step_mask_reference(3, 4, 16, 8, 8)
    assert torch.equal(t.grad, 2 * mask.float().unsqueeze(0))
