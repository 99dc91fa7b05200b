"""Architecture hyperparameters of the HPCM family (what differs between Base and Large)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HPCM_BASE", "HPCM_LARGE", "HPCM_MICRO", "HPCM_SMALL", "HPCM_SMALL_NARROW", "HPCMConfig"]


@dataclass(frozen=True)
class HPCMConfig:
    """Depths and widths of one HPCM model. ``M`` and ``N`` are constructor arguments instead.

    Attributes:
        g_a_depths: PConvRB blocks after each downsampling of the analysis transform, at
            ``transform_channels[0]``, ``[1]`` and ``[2]`` channels.
        g_s_depths: PConvRB blocks after each upsampling of the synthesis transform, at
            ``transform_channels[2]``, ``[1]`` and ``[0]`` channels.
        h_a_depths: PConvRB blocks of the hyper-analysis, before its first downsampling (at M
            channels) and after it (at N channels).
        h_s_depths: PConvRB blocks of the hyper-synthesis, after its first upsampling (at N
            channels) and after its second (at 2M channels).
        prior_s1_s2_depths: DWConvRB blocks in ``branch_1`` and ``branch_2`` of the spatial prior
            shared by stages s1 and s2.
        prior_s3_depths: the same for the spatial prior of stage s3.
        transform_channels: widths of the three resolutions of ``g_a``/``g_s``.
        mlp_ratio: hidden width of PConvRB, relative to its input.
        partial_ratio: PConvRB convolves ``dim // partial_ratio`` channels with its 3×3 kernel.
        num_heads: heads of the context cells' attention (must divide 2M).
        window_sizes: attention window of the context cells of s1, s2 and s3.
    """

    g_a_depths: tuple[int, int, int]
    g_s_depths: tuple[int, int, int]
    prior_s1_s2_depths: tuple[int, int]
    prior_s3_depths: tuple[int, int]
    h_a_depths: tuple[int, int] = (1, 3)
    h_s_depths: tuple[int, int] = (3, 1)
    transform_channels: tuple[int, int, int] = (96, 192, 384)
    mlp_ratio: int = 4
    partial_ratio: int = 4
    num_heads: int = 32
    window_sizes: tuple[int, int, int] = (4, 8, 8)


#: HPCM-Base (``src/models/HPCM_Base.py``): 68,505,299 parameters at M=320, N=256.
HPCM_BASE = HPCMConfig(
    g_a_depths=(2, 2, 4),
    g_s_depths=(4, 2, 2),
    prior_s1_s2_depths=(2, 1),
    prior_s3_depths=(3, 2),
)

#: HPCM-Large (``src/models/HPCM_Large.py``): 89,718,803 parameters at M=320, N=256.
HPCM_LARGE = HPCMConfig(
    g_a_depths=(2, 2, 8),
    g_s_depths=(8, 2, 2),
    prior_s1_s2_depths=(2, 2),
    prior_s3_depths=(4, 3),
)

#: The narrowest model that still runs the whole coding schedule (every module type, all 11
#: steps): with M=16, N=8 it has well under a million parameters and codes a 1000-px image in
#: seconds on a CPU. For smoke tests, CI and examples of code built on this package — not for
#: compression.
HPCM_MICRO = HPCMConfig(
    g_a_depths=(1, 1, 1),
    g_s_depths=(1, 1, 1),
    prior_s1_s2_depths=(1, 1),
    prior_s3_depths=(1, 1),
    h_a_depths=(1, 1),
    h_s_depths=(1, 1),
    transform_channels=(8, 8, 16),
    num_heads=8,
)

#: The small presets (``hpcm-small`` and the RWKV phases' ``-small`` models, with M=64, N=64):
#: HPCM-Base's architecture with one PConvRB per transform stage but the last (two), single-block
#: spatial priors but for s3's first branch, and 8 heads of 16 channels. Chosen by measurement
#: (``docs/models.md``, "Small presets"): fp16 weights of 6.5 MiB for HPCM, so that three rate
#: points ship in under 20 MiB, and about a second to code a 768×512 photo each way on a 2-core
#: CPU.
HPCM_SMALL = HPCMConfig(
    g_a_depths=(1, 1, 2),
    g_s_depths=(2, 1, 1),
    prior_s1_s2_depths=(1, 1),
    prior_s3_depths=(2, 1),
    transform_channels=(48, 96, 176),
    num_heads=8,
)

#: :data:`HPCM_SMALL` with a narrower last transform stage (160 channels) and single-block priors:
#: the small presets of phases 3 and 4, whose RWKV fusion nets and priors would otherwise take
#: their fp16 weights over 8 MiB.
HPCM_SMALL_NARROW = HPCMConfig(
    g_a_depths=(1, 1, 2),
    g_s_depths=(2, 1, 1),
    prior_s1_s2_depths=(1, 1),
    prior_s3_depths=(1, 1),
    transform_channels=(48, 96, 160),
    num_heads=8,
)
