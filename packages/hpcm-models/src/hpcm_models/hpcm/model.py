"""HPCM: Hierarchical Progressive Context Model (Li et al., ICCV 2025), Base and Large.

Module names, shapes and computations are those of the official implementation (LIC-HPCM,
``src/models/HPCM_Base.py`` / ``HPCM_Large.py``), so its checkpoints load with ``strict=True`` and
an eval-mode forward reproduces its outputs. Entropy coding uses CompressAI's rANS
(:mod:`hpcm_models.rans`) with the entropy model's tables (:mod:`hpcm_models.entropy`).

One module for the whole model (about 650 lines), as the official file it mirrors name for name:
its construction hooks, the coding schedule, the CompressAI contract and checkpoint loading are
read against that file side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from compressai.models import CompressionModel
from torch import nn

from .. import rans
from ..entropy import CODING_BUFFERS, GeneralizedGaussian
from ..errors import CheckpointError, InputShapeError
from ..layers import (
    CrossAttentionCell,
    PConvRB,
    SpatialPrior,
    conv1x1,
    conv2x2_down,
    conv4x4_down,
    deconv2x2_up,
    deconv4x4_up,
)
from ..registry import register_model
from . import geometry as geo
from .config import HPCM_BASE, HPCM_LARGE, HPCMConfig

__all__ = ["HPCM", "CodingStep", "HPCMBase", "HPCMLarge"]


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient."""
    return (torch.round(x) - x).detach() + x


def _add_noise(x: torch.Tensor) -> torch.Tensor:
    """Uniform noise in [-½, ½): the training proxy of rounding."""
    return x + torch.empty_like(x).uniform_(-0.5, 0.5)


class _CodingTable:
    """``model.<name>``: the entropy model's rANS table of that name (read-only), under the
    attribute names of the official code."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, model: HPCM | None, owner: type | None = None) -> Any:
        return self if model is None else getattr(model.entropy_estimation, self.name)

    def __set__(self, model: HPCM, value: Any) -> None:
        raise AttributeError(
            f"{self.name} belongs to the entropy model: use model.update() or "
            f"model.entropy_estimation.set_table({self.name!r}, ...)"
        )


class _Transform(nn.Module):
    """A plain stack of layers kept under the attribute name ``branch`` of the official code."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.branch = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x)


@dataclass(frozen=True)
class CodingStep:
    """One step of the coding schedule, as seen by the code callback of :meth:`HPCM.run_schedule`.

    At every position of the stage grid, the step codes the ``C/k`` channels of one of ``k``
    channel groups (``groups`` says which); ``scales`` and ``means`` are the entropy parameters of
    exactly those latents ("merged" channels, see :func:`hpcm_models.hpcm.geometry.select`).

    Attributes:
        stage: 1, 2 or 3 (¼, ½ and full latent resolution).
        step: step number within the stage (s1: 0-1, s2: 1-3, s3: 2-7, the official numbering).
        groups: int64 ``[h, w]``: channel group coded at each position of the stage grid.
        num_groups: ``k``: 2, 4 or 8.
        scales: ``[B, C/k, h, w]``.
        means: ``[B, C/k, h, w]``.
    """

    stage: int
    step: int
    groups: torch.Tensor
    num_groups: int
    scales: torch.Tensor
    means: torch.Tensor

    def select(self, t: torch.Tensor) -> torch.Tensor:
        """Stage-grid tensor ``[B, C, h, w]`` → the latents of this step ``[B, C/k, h, w]``."""
        return geo.select(t, self.groups, self.num_groups)

    def place(self, v: torch.Tensor) -> torch.Tensor:
        """Latents of this step ``[B, C/k, h, w]`` → stage grid ``[B, C, h, w]`` (0 elsewhere)."""
        return geo.place(v, self.groups, self.num_groups)

    def to_latent(self, v: torch.Tensor) -> torch.Tensor:
        """Latents of this step → their positions in the full latent ``[B, C, H, W]``."""
        return geo.latent_from_stage(self.place(v), self.stage)


#: Callback of :meth:`HPCM.run_schedule`: returns the quantized residuals ``round(y - means)``
#: ``[B, C/k, h, w]`` of the latents coded at a step (computed from ``y`` by the encoder, read from
#: the bitstream by the decoder).
CodeFn = Callable[[CodingStep], torch.Tensor]


class HPCM(CompressionModel):
    """HPCM learned image codec (Li et al., "Learned Image Compression with Hierarchical
    Progressive Context Modeling", ICCV 2025).

    ``g_a`` maps an image ``[B, 3, H, W]`` to the latent ``y`` ``[B, M, H/16, W/16]``; ``h_a`` maps
    ``y`` to the hyper-latent ``z`` ``[B, N, H/64, W/64]``, coded with a learned per-channel
    generalized Gaussian (``means_hyper``, ``scales_hyper``). ``h_s(ẑ)`` gives hyperprior scales and
    means of ``y``, which is then coded in 11 steps over three resolutions (see
    :meth:`run_schedule` and ``docs/models.md``): each step predicts the entropy parameters of
    its latents from everything decoded so far with a spatial prior, and carries a context state
    from step to step through a context cell. ``y`` is coded as ``round(y - mean)`` under a
    generalized Gaussian (β = 1.5) of the predicted scale.

    The modules that the RWKV variants replace are built by overridable factory methods, so a
    variant only overrides construction: :meth:`build_context_cell` (``attn_s1/2/3``, called
    ``cell(x_t, h_prev)``), :meth:`build_context_net` (``context_net[0/1]``, called ``net(x)``)
    and :meth:`build_spatial_prior` (``y_spatial_prior_s1_s2``/``_s3``, called
    ``prior(x, quant_step)``).

    Args:
        M: latent channels (320 in the paper). Must be a multiple of 8, with 2M divisible by
            ``config.num_heads`` (32): a multiple of 16 by default.
        N: hyper-latent channels (256 in the paper); at least ``config.partial_ratio``.
        config: depths and widths; defaults to the class's ``default_config``.

    Shape:
        images ``[B, 3, H, W]`` in [0, 1] with H and W multiples of :attr:`INPUT_MULTIPLE` (128).
    """

    #: Architecture used when ``config`` is not given.
    default_config: ClassVar[HPCMConfig] = HPCM_BASE
    #: Image sides must be multiples of this: y is at 1/16 and its s1 grid, a checkerboard, at
    #: 1/64; the official code needs 256 (attention windows), padding inside the cells gives 128.
    INPUT_MULTIPLE: ClassVar[int] = 128

    # The rANS tables live in the entropy model; these are the official code's names for them.
    scale_table = _CodingTable()
    quantized_cdf_z = _CodingTable()
    cdf_length_z = _CodingTable()
    offset_z = _CodingTable()
    quantized_cdf_y = _CodingTable()
    cdf_length_y = _CodingTable()
    offset_y = _CodingTable()

    def __init__(self, M: int = 320, N: int = 256, *, config: HPCMConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else self.default_config
        for name, value in (("M", M), ("N", N)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"expected {name} to be a positive int, got {value!r}")
        if M % 8 or (2 * M) % config.num_heads:
            raise ValueError(
                f"expected M divisible by 8 (8 channel groups) with 2M divisible by "
                f"num_heads={config.num_heads}, got M={M}"
            )
        if config.partial_ratio > N:
            raise ValueError(f"expected N >= partial_ratio={config.partial_ratio}, got N={N}")
        self.M = M
        self.N = N
        self.config = config

        self.means_hyper = nn.Parameter(torch.zeros(1, N, 1, 1))
        self.scales_hyper = nn.Parameter(torch.ones(1, N, 1, 1))
        self.entropy_estimation = GeneralizedGaussian(beta=1.5, scale_bound=0.12)

        self.g_a, self.g_s, self.h_a, self.h_s = self.build_transforms()

        # 1x1 convolutions applied to [context, decoded latents] before the spatial prior; the
        # official forward indexes them with [i - 1], so step 0 of s2/s3 uses the last one.
        self.y_spatial_prior_adaptor_list_s1 = nn.ModuleList(
            conv1x1(3 * M, 3 * M) for _ in range(1)
        )
        self.y_spatial_prior_adaptor_list_s2 = nn.ModuleList(
            conv1x1(3 * M, 3 * M) for _ in range(3)
        )
        self.y_spatial_prior_adaptor_list_s3 = nn.ModuleList(
            conv1x1(3 * M, 3 * M) for _ in range(6)
        )
        self.y_spatial_prior_s1_s2 = self.build_spatial_prior((1, 2))
        self.y_spatial_prior_s3 = self.build_spatial_prior((3,))
        # Channel gains of the 10 spatial-prior calls: index i-1 at s1, i+1 at s2, i+4 at s3.
        self.adaptive_params_list = nn.ParameterList(
            nn.Parameter(torch.ones(1, 3 * M, 1, 1)) for _ in range(10)
        )
        self.attn_s1 = self.build_context_cell(1)
        self.attn_s2 = self.build_context_cell(2)
        self.attn_s3 = self.build_context_cell(3)
        self.context_net = nn.ModuleList([self.build_context_net(2), self.build_context_net(3)])

    # ------------------------------------------------------------------ construction hooks

    def build_transforms(self) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
        """``(g_a, g_s, h_a, h_s)`` from :attr:`config` (PConvRB stacks with patch convolutions)."""
        cfg, M, N = self.config, self.M, self.N
        c0, c1, c2 = cfg.transform_channels

        def blocks(dim: int, depth: int) -> list[nn.Module]:
            return [PConvRB(dim, cfg.mlp_ratio, cfg.partial_ratio) for _ in range(depth)]

        a0, a1, a2 = cfg.g_a_depths
        g_a = _Transform(
            conv4x4_down(3, c0), *blocks(c0, a0),
            conv2x2_down(c0, c1), *blocks(c1, a1),
            conv2x2_down(c1, c2), *blocks(c2, a2),
            conv2x2_down(c2, M),
        )  # fmt: skip
        s0, s1, s2 = cfg.g_s_depths
        g_s = _Transform(
            deconv2x2_up(M, c2), *blocks(c2, s0),
            deconv2x2_up(c2, c1), *blocks(c1, s1),
            deconv2x2_up(c1, c0), *blocks(c0, s2),
            deconv4x4_up(c0, 3),
        )  # fmt: skip
        ha0, ha1 = cfg.h_a_depths
        h_a = _Transform(*blocks(M, ha0), conv2x2_down(M, N), *blocks(N, ha1), conv2x2_down(N, N))
        hs0, hs1 = cfg.h_s_depths
        h_s = _Transform(
            deconv2x2_up(N, N), *blocks(N, hs0), deconv2x2_up(N, 2 * M), *blocks(2 * M, hs1)
        )
        return g_a, g_s, h_a, h_s

    def build_context_cell(self, stage: int) -> nn.Module:
        """The context cell ``attn_s{stage}`` (stage 1, 2 or 3).

        Called as ``cell(x_t, h_prev) -> h_t`` with ``x_t`` the step's prior output and ``h_prev``
        the state, all ``[B, 2M, h, w]`` on the stage grid. HPCM: windowed cross-attention.
        """
        return CrossAttentionCell(
            2 * self.M,
            window_size=self.config.window_sizes[stage - 1],
            num_heads=self.config.num_heads,
        )

    def build_context_net(self, stage: int) -> nn.Module:
        """The net that fuses the state carried into stage ``stage`` (2 or 3): ``context_net[stage
        - 2]``, called ``net(x)`` on ``[B, 2M, h, w]``. HPCM: a 1×1 convolution."""
        return conv1x1(2 * self.M, 2 * self.M)

    def build_spatial_prior(self, stages: tuple[int, ...]) -> nn.Module:
        """The spatial prior shared by ``stages``: ``(1, 2)`` → ``y_spatial_prior_s1_s2``, ``(3,)``
        → ``y_spatial_prior_s3``. Called ``prior(x, quant_step)`` with ``x`` ``[B, 3M, h, w]`` and
        ``quant_step`` ``[1, 3M, 1, 1]``; returns scales and means ``[B, 2M, h, w]``."""
        depths = self.config.prior_s3_depths if 3 in stages else self.config.prior_s1_s2_depths
        return SpatialPrior(3 * self.M, 2 * self.M, depths)

    # ------------------------------------------------------------------ the coding schedule

    def _code_step(
        self, code: CodeFn, stage: int, step: int, scales: torch.Tensor, means: torch.Tensor
    ) -> torch.Tensor:
        """Code one step; return its decoded latents ``ŷ`` on the stage grid (zeros elsewhere)."""
        k = geo.num_groups(stage)
        groups = geo.step_groups(stage, step, *scales.shape[-2:], device=scales.device)
        merged_means = geo.select(means, groups, k)
        step_info = CodingStep(stage, step, groups, k, geo.select(scales, groups, k), merged_means)
        quantized = code(step_info)
        return geo.place(quantized + merged_means, groups, k)

    def run_schedule(self, params: torch.Tensor, code: CodeFn) -> torch.Tensor:
        """Run the hierarchical progressive context model over the 11 coding steps.

        Encoder, decoder and ``forward`` all go through this one function, so they compute the
        same entropy parameters from the same decoded latents, bit for bit. ``code`` is called once
        per step, in coding order, and returns the quantized residuals of the step's latents.

        Args:
            params: hyperprior output ``h_s(ẑ)`` ``[B, 2M, H, W]``: scales, then means.
            code: the per-step callback (see :data:`CodeFn`).

        Returns:
            ŷ ``[B, M, H, W]``.
        """
        scales_all, means_all = params.chunk(2, dim=1)
        quant_step = self.adaptive_params_list

        # s1: 2 steps on the 1/4 grid; step 0 uses the hyperprior alone.
        scales, means = (
            geo.split_s1(geo.split_s2(scales_all)),
            geo.split_s1(geo.split_s2(means_all)),
        )
        state = torch.cat((scales, means), dim=1)
        y_hat = self._code_step(code, 1, 0, scales, means)
        context = self.y_spatial_prior_s1_s2(
            self.y_spatial_prior_adaptor_list_s1[0](torch.cat((state, y_hat), dim=1)), quant_step[0]
        )
        state = self.attn_s1(context, state)
        y_hat = y_hat + self._code_step(code, 1, 1, *context.chunk(2, dim=1))

        # s2: 3 steps on the 1/2 grid; the state is upsampled and completed with the hyperprior.
        y_hat = geo.merge_s1(y_hat)
        state = torch.cat([geo.merge_s1(t) for t in state.chunk(2, dim=1)], dim=1)
        state = state + torch.cat((geo.s2_hyper(scales_all), geo.s2_hyper(means_all)), dim=1)
        state = self.context_net[0](state)
        adaptors = self.y_spatial_prior_adaptor_list_s2
        for i, step in enumerate(geo.STEPS[2]):
            context = self.y_spatial_prior_s1_s2(
                adaptors[i - 1](torch.cat((state, y_hat), dim=1)), quant_step[i + 1]
            )
            state = self.attn_s2(context, state)
            y_hat = y_hat + self._code_step(code, 2, step, *context.chunk(2, dim=1))

        # s3: 6 steps on the full grid.
        y_hat = geo.merge_s2(y_hat)
        state = torch.cat([geo.merge_s2(t) for t in state.chunk(2, dim=1)], dim=1)
        state = state + torch.cat((geo.s3_hyper(scales_all), geo.s3_hyper(means_all)), dim=1)
        state = self.context_net[1](state)
        adaptors = self.y_spatial_prior_adaptor_list_s3
        last = len(geo.STEPS[3]) - 1
        for i, step in enumerate(geo.STEPS[3]):
            context = self.y_spatial_prior_s3(
                adaptors[i - 1](torch.cat((state, y_hat), dim=1)), quant_step[i + 4]
            )
            if i < last:  # the state after the last step is never used
                state = self.attn_s3(context, state)
            y_hat = y_hat + self._code_step(code, 3, step, *context.chunk(2, dim=1))
        return y_hat

    # ------------------------------------------------------------------ CompressAI contract

    def _check_image(self, x: object) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected x to be a torch.Tensor, got {type(x).__name__}")
        m = self.INPUT_MULTIPLE
        if (
            x.dim() != 4
            or x.shape[1] != 3
            or x.shape[0] < 1
            or x.shape[2] < m
            or x.shape[3] < m
            or x.shape[2] % m
            or x.shape[3] % m
        ):
            raise InputShapeError(
                f"expected an image batch [B, 3, H, W] with H and W positive multiples of {m}, "
                f"got {list(x.shape)}; pad the image (and crop the reconstruction)"
            )
        if not x.is_floating_point():
            raise TypeError(f"expected a floating-point image, got {x.dtype}")

    def _stage_latents(self, y: torch.Tensor) -> dict[int, torch.Tensor]:
        y_s2 = geo.split_s2(y)
        return {1: geo.split_s1(y_s2), 2: y_s2, 3: y}

    def forward(self, x: torch.Tensor, training: bool | None = None) -> dict[str, Any]:
        """Reconstruction and likelihoods of a batch.

        Args:
            x: images ``[B, 3, H, W]``.
            training: quantization proxy: uniform noise for the likelihoods and straight-through
                rounding for ŷ/ẑ if True, rounding if False; ``None`` follows ``self.training``.
                (The official keyword.)

        Returns:
            ``{"x_hat": [B, 3, H, W], "likelihoods": {"y": [B, M, H/16, W/16],
            "z": [B, N, H/64, W/64]}}``.
        """
        self._check_image(x)
        if training is None:
            training = self.training
        y = self.g_a(x)
        z = self.h_a(y)
        if training:
            z_res = z - self.means_hyper
            z_hat = _ste_round(z_res) + self.means_hyper
            z_likelihoods = self.entropy_estimation(_add_noise(z_res), self.scales_hyper)
        else:
            z_res_hat = torch.round(z - self.means_hyper)
            z_hat = z_res_hat + self.means_hyper
            z_likelihoods = self.entropy_estimation(z_res_hat, self.scales_hyper)
        params = self.h_s(z_hat)

        latents = self._stage_latents(y)
        steps: list[tuple[CodingStep, torch.Tensor, torch.Tensor]] = []

        def quantize(step: CodingStep) -> torch.Tensor:
            residual = step.select(latents[step.stage]) - step.means
            # As in the official code, the rounding follows the module's mode, not `training`.
            quantized = _ste_round(residual) if self.training else torch.round(residual)
            steps.append((step, residual, quantized))
            return quantized

        y_hat = self.run_schedule(params, quantize)
        x_hat = self.g_s(y_hat)

        # Every latent is coded at exactly one step: summing each stage's steps on its own grid
        # and moving each stage to full resolution once assembles the same tensors with 2 merges
        # per stage instead of 2 per step.
        grids: dict[int, list[torch.Tensor]] = {}
        for step, residual, quantized in steps:
            placed = [
                step.place(step.scales),
                step.place(_add_noise(residual) if training else quantized),
            ]
            previous = grids.get(step.stage)
            grids[step.stage] = (
                placed
                if previous is None
                else [a + b for a, b in zip(previous, placed, strict=True)]
            )
        scales, values = (
            geo.merge_s2(geo.merge_s1(s1) + s2) + s3
            for s1, s2, s3 in zip(grids[1], grids[2], grids[3], strict=True)
        )
        y_likelihoods = self.entropy_estimation(values, scales)
        return {"x_hat": x_hat, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    # ------------------------------------------------------------------ entropy coding

    def update(
        self,
        scale_table: torch.Tensor | None = None,
        force: bool = False,
        update_quantiles: bool = False,
    ) -> bool:
        """Build the rANS tables: per-channel CDFs of z, and one CDF per scale-table entry for y.

        Call once after loading weights, before :meth:`compress`/:meth:`decompress`.

        Args:
            scale_table: increasing positive scales ``[S]``; default
                ``exp(linspace(log 0.12, log 64, 60))`` (the official test script's).
            force: rebuild even if the tables exist.
            update_quantiles: accepted for CompressAI compatibility; unused.

        Returns:
            True if the tables were (re)built.
        """
        del update_quantiles
        return self.entropy_estimation.update(self.scales_hyper, scale_table, force)

    def aux_loss(self) -> torch.Tensor:
        """Zero: HPCM has no ``EntropyBottleneck`` (its hyper-latent prior is trained with the
        rest of the model), but CompressAI training loops call this."""
        return self.means_hyper.new_zeros(())

    @torch.no_grad()
    def compress(self, x: torch.Tensor) -> dict[str, Any]:
        """Encode images with rANS.

        Each image is coded on its own (batch of one), so each pair of strings decodes
        independently of the rest of the batch.

        Args:
            x: images ``[B, 3, H, W]``, H and W multiples of 128.

        Returns:
            ``{"strings": [y_strings, z_strings], "shape": (H/64, W/64), "y_hat": ŷ}``; each list
            holds B byte strings; ``y_hat`` ``[B, M, H/16, W/16]`` is what the decoder will
            rebuild (beyond CompressAI's contract; e.g. to store a checksum of it).
        """
        self._check_image(x)
        ggm = self.entropy_estimation
        tables_z, tables_y = ggm.rans_tables("z"), ggm.rans_tables("y")
        y_strings: list[bytes] = []
        z_strings: list[bytes] = []
        y_hats: list[torch.Tensor] = []
        for image in x.split(1):
            y = self.g_a(image)
            z = self.h_a(y)
            z_q = torch.round(z - self.means_hyper)
            channel = torch.arange(self.N, device=z.device).view(1, -1, 1, 1).expand_as(z_q)
            encoder = rans.new_encoder(tables_z)
            encoder.encode(_host(z_q.int()), _host(channel))
            z_strings.append(encoder.flush())

            params = self.h_s(z_q + self.means_hyper)
            latents = self._stage_latents(y)
            encoder = rans.new_encoder(tables_y)

            def encode(step: CodingStep, latents=latents, encoder=encoder) -> torch.Tensor:
                # `+ 0.0` turns -0.0 into 0.0, the value the decoder rebuilds from integers.
                quantized = torch.round(step.select(latents[step.stage]) - step.means) + 0.0
                encoder.encode(_host(quantized.int()), _host(ggm.build_indexes(step.scales)))
                return quantized

            y_hats.append(self.run_schedule(params, encode))
            y_strings.append(encoder.flush())
        return {
            "strings": [y_strings, z_strings],
            "shape": tuple(z.shape[-2:]),
            "y_hat": torch.cat(y_hats),
        }

    @torch.no_grad()
    def decompress(self, strings: list[list[bytes]], shape: tuple[int, int]) -> dict[str, Any]:
        """Decode what :meth:`compress` produced.

        Args:
            strings: ``[y_strings, z_strings]``, B byte strings each.
            shape: hyper-latent size ``(H/64, W/64)``.

        Returns:
            ``{"x_hat": [B, 3, H, W], "y_hat": [B, M, H/16, W/16]}``, x̂ clamped to [0, 1].
        """
        if (
            not isinstance(strings, list | tuple)
            or len(strings) != 2
            or not all(isinstance(s, list | tuple) for s in strings)
            or len(strings[0]) != len(strings[1])
            or len(strings[0]) < 1
        ):
            raise InputShapeError(
                "expected strings = [y_strings, z_strings], two equally long non-empty lists of "
                "bytes (as returned by compress)"
            )
        size = tuple(shape)
        if len(size) != 2 or any(not isinstance(s, int) or s < 2 or s % 2 for s in size):
            raise InputShapeError(
                f"expected shape = (H/64, W/64) with both even and >= 2, got {shape!r}"
            )
        ggm = self.entropy_estimation
        tables_z, tables_y = ggm.rans_tables("z"), ggm.rans_tables("y")
        device = self.means_hyper.device
        channel = torch.arange(self.N).view(1, -1, 1, 1).expand(1, self.N, *size)
        x_hats, y_hats = [], []
        for y_string, z_string in zip(*strings, strict=True):
            symbols = rans.new_decoder(z_string, tables_z).decode(_host(channel))
            z_q = torch.from_numpy(symbols).to(device, torch.float32).view(1, self.N, *size)
            params = self.h_s(z_q + self.means_hyper)
            decoder = rans.new_decoder(y_string, tables_y)

            def decode(step: CodingStep, decoder=decoder) -> torch.Tensor:
                symbols = decoder.decode(_host(ggm.build_indexes(step.scales)))
                return torch.from_numpy(symbols).to(device, step.means.dtype).view_as(step.means)

            y_hats.append(self.run_schedule(params, decode))
            x_hats.append(self.g_s(y_hats[-1]).clamp_(0, 1))
        return {"x_hat": torch.cat(x_hats), "y_hat": torch.cat(y_hats)}

    # ------------------------------------------------------------------ checkpoints

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load official (or our own) weights; the coding tables may be empty or built.

        Raises:
            CheckpointError: with ``strict``, if keys are missing or unexpected (the message
                names them); in any case, if a parameter has the wrong shape.
        """
        own = self.state_dict(keep_vars=True)
        if strict:
            missing = [k for k in own if k not in state_dict]
            unexpected = [k for k in state_dict if k not in own]
            if missing or unexpected:
                hint = ""
                if missing and all(k.startswith("adaptive_params_list.") for k in missing):
                    # The published HPCM_Large.py keeps these gains in a plain Python list: they
                    # are neither saved nor trained there, i.e. they stay 1.
                    hint = (
                        " (a checkpoint of the published HPCM_Large.py, whose gains are an "
                        "unregistered list that stays 1: add "
                        f"adaptive_params_list.i = torch.ones(1, {3 * self.M}, 1, 1) for each "
                        "missing i to load it)"
                    )
                raise CheckpointError(
                    f"checkpoint does not match {type(self).__name__}(M={self.M}, N={self.N}): "
                    f"missing keys {_listing(missing)}; unexpected keys {_listing(unexpected)}"
                    f"{hint}"
                )
        wrong = [
            f"{k}: expected {list(own[k].shape)}, got {list(v.shape)}"
            for k, v in state_dict.items()
            if k in own and k not in CODING_BUFFERS and tuple(own[k].shape) != tuple(v.shape)
        ]
        if wrong:
            raise CheckpointError(
                f"checkpoint does not match {type(self).__name__}(M={self.M}, N={self.N}): "
                f"wrong shapes for {_listing(wrong)}"
            )
        return nn.Module.load_state_dict(self, state_dict, strict=strict, assign=assign)

    # The official checkpoints keep the entropy model's rANS tables at the top level of the state
    # dict: they are saved and loaded here, under those names and in that place.

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name, table in self.entropy_estimation.tables().items():
            destination[prefix + name] = table if keep_vars else table.detach()

    def _load_from_state_dict(
        self,
        state_dict: Any,
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        for name in CODING_BUFFERS:
            key = prefix + name
            if key in state_dict:
                # Whatever size (and integer type) the checkpoint's table has.
                self.entropy_estimation.set_table(name, state_dict[key])
                if key in unexpected_keys:
                    unexpected_keys.remove(key)
            elif strict:
                missing_keys.append(key)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any], **kwargs: Any) -> HPCM:
        """Build a model with M and N read from the checkpoint, and load it strictly.

        Keys are remapped first (:func:`hpcm_models.checkpoints.remap_keys`: a ``module.`` prefix
        on every key, from ``nn.DataParallel``, is removed).

        Raises:
            CheckpointError: if the checkpoint does not fit (see :meth:`load_state_dict`).
        """
        from ..checkpoints import remap_keys  # checkpoints builds models: imported at call time

        state_dict = remap_keys(state_dict)
        try:
            N = int(state_dict["means_hyper"].shape[1])
            M = int(state_dict["adaptive_params_list.0"].shape[1]) // 3
        except (KeyError, IndexError, AttributeError) as err:
            raise CheckpointError(
                f"not an HPCM checkpoint: cannot read M and N ({type(err).__name__}: {err})"
            ) from None
        model = cls(M=M, N=N, **kwargs)
        model.load_state_dict(state_dict)
        return model


def _host(t: torch.Tensor) -> Any:
    """A tensor's values, flattened, as a NumPy array on the host."""
    return t.detach().flatten().cpu().numpy()


def _listing(keys: list[str], limit: int = 10) -> str:
    if not keys:
        return "[]"
    shown = ", ".join(keys[:limit])
    more = f", … ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"[{shown}{more}]"


@register_model("hpcm-base")
class HPCMBase(HPCM):
    """HPCM-Base (68.5 M parameters at M=320, N=256): the official ``HPCM_Base.HPCM``."""

    default_config = HPCM_BASE


@register_model("hpcm-large")
class HPCMLarge(HPCM):
    """HPCM-Large (89.7 M parameters at M=320, N=256): the official ``HPCM_Large.HPCM``."""

    default_config = HPCM_LARGE
