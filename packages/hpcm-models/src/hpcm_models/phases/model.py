"""HPCM × RWKV, phases 1-4: HPCM whose context model is progressively made of Bi-RWKV blocks.

Each phase replaces more of HPCM's context model (``docs/models.md``, "RWKV phases"):

=========  ===================================================================================
phase 1    ``attn_s3`` → :class:`~rwkv_blocks.RWKVContextCell` (hidden rate 4)
phase 2    ``attn_s1/2/3`` → RWKVContextCell (hidden rates 2, 3, 4)
phase 3    phase 2 + ``context_net.0/1`` → :class:`~rwkv_blocks.RWKVFusionNet` (1 block, rate 4)
phase 4    phase 3 + ``y_spatial_prior_s1_s2``/``_s3`` → :class:`.RWKVSpatialPrior`
=========  ===================================================================================

``hpcm-phase1-lite`` is phase 1 with :class:`~rwkv_blocks.RWKVContextCellLite` (hidden rate 0.5)
as ``attn_s3``: a Bi-WKV cell cheaper than the cross-attention it replaces.

Everything else — transforms, adaptors, gains, entropy model, the coding schedule — is HPCM's,
with HPCM's module names, so a trained baseline checkpoint fills every unchanged part
(:func:`hpcm_models.from_baseline`).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import ClassVar

from torch import nn

from rwkv_blocks import RWKVContextCell, RWKVContextCellLite, RWKVFusionNet

# rwkv-blocks' check of the rates its modules take (hpcm-models pins rwkv-blocks' minor version).
from rwkv_blocks._checks import check_rate

from ..hpcm.config import HPCMConfig
from ..hpcm.model import HPCM
from ..registry import register_model
from .prior import RWKVSpatialPrior

__all__ = [
    "DEFAULT_CELL_HIDDEN_RATES",
    "HPCMRWKV",
    "LITE_CELL_HIDDEN_RATES",
    "REPLACEABLE_MODULES",
    "HPCMPhase1",
    "HPCMPhase1Lite",
    "HPCMPhase2",
    "HPCMPhase3",
    "HPCMPhase4",
]

#: The modules of HPCM's context model that a variant may replace, by state-dict prefix.
REPLACEABLE_MODULES: tuple[str, ...] = (
    "attn_s1",
    "attn_s2",
    "attn_s3",
    "context_net.0",
    "context_net.1",
    "y_spatial_prior_s1_s2",
    "y_spatial_prior_s3",
)

#: ChannelMix hidden rate of the RWKV context cell of stage 1, 2 and 3 when not given.
DEFAULT_CELL_HIDDEN_RATES: dict[int, float] = {1: 2, 2: 3, 3: 4}
#: Bi-WKV width of an RWKVContextCellLite relative to 2M, per stage, when not given: M channels.
LITE_CELL_HIDDEN_RATES: dict[int, float] = {1: 0.5, 2: 0.5, 3: 0.5}

# Defaults of the other options (docs/models.md, "RWKV phases").
_FUSION_HIDDEN_RATE = 4
_FUSION_BLOCKS = 1
_PRIOR_HIDDEN_RATE = 2  # the hidden width of the DWConvRBs the blocks replace

_CONTEXT_NETS = ("context_net.0", "context_net.1")
_PRIORS = ("y_spatial_prior_s1_s2", "y_spatial_prior_s3")


def _is_under(key: str, prefixes: Sequence[str]) -> bool:
    """Whether the state-dict key ``key`` belongs to one of the modules named by ``prefixes``."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


class HPCMRWKV(HPCM):
    """HPCM with the modules named in :attr:`rwkv_modules` built from Bi-RWKV blocks.

    The base class of the phases: a subclass sets :attr:`rwkv_modules` and nothing else. The
    construction hooks of :class:`~hpcm_models.HPCM` read it, so the attribute is the single source
    of truth for what is RWKV (tests check each module's type against it).

    ==========================  =================================================================
    replaced module             built as
    ==========================  =================================================================
    ``attn_s1/2/3``             ``cell_class(2M, hidden_rate, use_checkpoint)``
    ``context_net.0/1``         ``RWKVFusionNet(2M, fusion_blocks, fusion_hidden_rate, …)``
    ``y_spatial_prior_s1_s2``   ``RWKVSpatialPrior(3M, 2M, config.prior_s1_s2_depths, …)``
    ``y_spatial_prior_s3``      ``RWKVSpatialPrior(3M, 2M, config.prior_s3_depths, …)``
    ==========================  =================================================================

    Options for parts a model does not replace must be left at ``None``: a value there would have
    no effect, so it is refused rather than ignored.

    Args:
        M, N, config: as for :class:`~hpcm_models.HPCM` (HPCM-Base's config by default; pass
            ``config=HPCM_LARGE`` for HPCM-Large's transforms and prior depths).
        cell_hidden_rates: one ``hidden_rate`` per RWKV context cell, in stage order (default
            :attr:`default_cell_hidden_rates`; for RWKVContextCell the ChannelMix width,
            :data:`DEFAULT_CELL_HIDDEN_RATES`: 2, 3, 4 for stages 1, 2, 3).
        fusion_hidden_rate: hidden rate of the RWKVFusionNet blocks (default 4).
        fusion_blocks: Bi-RWKV blocks per RWKVFusionNet (default 1).
        prior_hidden_rate: hidden rate of the RWKVSpatialPrior blocks (default 2, the hidden width
            of the DWConvRBs they replace).
        use_checkpoint: activation checkpointing in every Bi-RWKV block (training memory).

    Raises:
        ValueError: for a non-positive or non-finite rate, a ``cell_hidden_rates`` of the wrong
            length, or an option given for a part this model does not replace.
    """

    #: State-dict prefixes of the modules built from Bi-RWKV blocks (a subset of
    #: :data:`REPLACEABLE_MODULES`); every other module is HPCM's, under HPCM's name.
    rwkv_modules: ClassVar[tuple[str, ...]] = ()
    #: The context cell of the RWKV stages, built ``cell_class(2M, hidden_rate=rate,
    #: use_checkpoint=...)``.
    cell_class: ClassVar[type[nn.Module]] = RWKVContextCell
    #: Stage → the cell's ``hidden_rate`` when ``cell_hidden_rates`` is not given.
    default_cell_hidden_rates: ClassVar[Mapping[int, float]] = DEFAULT_CELL_HIDDEN_RATES

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        names = cls.rwkv_modules
        unknown = [n for n in names if n not in REPLACEABLE_MODULES]
        if unknown or len(set(names)) != len(names):
            raise TypeError(
                f"{cls.__qualname__}.rwkv_modules must be distinct names from "
                f"{REPLACEABLE_MODULES}, got {names!r}"
            )

    def __init__(
        self,
        M: int = 320,
        N: int = 256,
        *,
        config: HPCMConfig | None = None,
        cell_hidden_rates: Sequence[float] | None = None,
        fusion_hidden_rate: float | None = None,
        fusion_blocks: int | None = None,
        prior_hidden_rate: float | None = None,
        use_checkpoint: bool = False,
    ) -> None:
        cls = type(self).__qualname__
        stages = self.rwkv_cell_stages()
        if cell_hidden_rates is None:
            rates = tuple(self.default_cell_hidden_rates[s] for s in stages)
        else:
            if isinstance(cell_hidden_rates, str) or not isinstance(cell_hidden_rates, Sequence):
                raise ValueError(
                    f"expected cell_hidden_rates to be a sequence of numbers, "
                    f"got {cell_hidden_rates!r}"
                )
            if len(cell_hidden_rates) != len(stages):
                raise ValueError(
                    f"{cls} has {len(stages)} RWKV context cell(s) (stages {stages}): expected "
                    f"{len(stages)} cell_hidden_rates, got {tuple(cell_hidden_rates)!r}"
                )
            rates = tuple(check_rate(r, "each cell hidden rate") for r in cell_hidden_rates)

        has_fusion = any(n in _CONTEXT_NETS for n in self.rwkv_modules)
        has_prior = any(n in _PRIORS for n in self.rwkv_modules)
        for value, name, present, part in (
            (fusion_hidden_rate, "fusion_hidden_rate", has_fusion, "context_net"),
            (fusion_blocks, "fusion_blocks", has_fusion, "context_net"),
            (prior_hidden_rate, "prior_hidden_rate", has_prior, "spatial prior"),
        ):
            if value is not None and not present:
                raise ValueError(
                    f"{cls} has no RWKV {part} (rwkv_modules={self.rwkv_modules}), so {name} "
                    f"would have no effect; leave it unset"
                )
        if fusion_blocks is not None and (
            isinstance(fusion_blocks, bool)
            or not isinstance(fusion_blocks, numbers.Integral)
            or fusion_blocks < 0
        ):
            raise ValueError(f"expected fusion_blocks to be an int >= 0, got {fusion_blocks!r}")
        if not isinstance(use_checkpoint, bool):
            raise ValueError(f"expected use_checkpoint to be a bool, got {use_checkpoint!r}")

        # Read by the construction hooks, which HPCM.__init__ calls (plain attributes may be set
        # before nn.Module.__init__).
        #: One hidden rate per RWKV context cell, in stage order (see :meth:`rwkv_cell_stages`).
        self.cell_hidden_rates: tuple[float, ...] = rates
        #: Hidden rate and block count of the RWKVFusionNets; ``None`` without them.
        self.fusion_hidden_rate: float | None = None
        self.fusion_blocks: int | None = None
        if has_fusion:
            self.fusion_hidden_rate = (
                _FUSION_HIDDEN_RATE
                if fusion_hidden_rate is None
                else check_rate(fusion_hidden_rate, "fusion_hidden_rate")
            )
            self.fusion_blocks = _FUSION_BLOCKS if fusion_blocks is None else int(fusion_blocks)
        #: Hidden rate of the RWKVSpatialPriors; ``None`` without them.
        self.prior_hidden_rate: float | None = None
        if has_prior:
            self.prior_hidden_rate = (
                _PRIOR_HIDDEN_RATE
                if prior_hidden_rate is None
                else check_rate(prior_hidden_rate, "prior_hidden_rate")
            )
        self.use_checkpoint = use_checkpoint
        super().__init__(M, N, config=config)

    @classmethod
    def rwkv_cell_stages(cls) -> tuple[int, ...]:
        """Stages whose context cell is an RWKVContextCell, increasing (phase 1: ``(3,)``)."""
        return tuple(s for s in (1, 2, 3) if f"attn_s{s}" in cls.rwkv_modules)

    @classmethod
    def is_rwkv_key(cls, key: str) -> bool:
        """Whether the state-dict key ``key`` belongs to a module built from Bi-RWKV blocks (i.e.
        one that starts fresh when the model is initialized from a baseline checkpoint)."""
        return _is_under(key, cls.rwkv_modules)

    # ------------------------------------------------------------------ construction hooks

    def build_context_cell(self, stage: int) -> nn.Module:
        """``attn_s{stage}``: a :attr:`cell_class` if listed in :attr:`rwkv_modules`, else
        HPCM's."""
        if f"attn_s{stage}" not in self.rwkv_modules:
            return super().build_context_cell(stage)
        rate = dict(zip(self.rwkv_cell_stages(), self.cell_hidden_rates, strict=True))[stage]
        return self.cell_class(2 * self.M, hidden_rate=rate, use_checkpoint=self.use_checkpoint)

    def build_context_net(self, stage: int) -> nn.Module:
        """``context_net[stage - 2]``: an RWKVFusionNet if listed in :attr:`rwkv_modules`."""
        if f"context_net.{stage - 2}" not in self.rwkv_modules:
            return super().build_context_net(stage)
        assert self.fusion_blocks is not None
        assert self.fusion_hidden_rate is not None
        return RWKVFusionNet(
            2 * self.M,
            num_blocks=self.fusion_blocks,
            hidden_rate=self.fusion_hidden_rate,
            use_checkpoint=self.use_checkpoint,
        )

    def build_spatial_prior(self, stages: tuple[int, ...]) -> nn.Module:
        """The spatial prior of ``stages``: an RWKVSpatialPrior with the baseline's block counts
        if listed in :attr:`rwkv_modules`, else HPCM's."""
        name = "y_spatial_prior_s3" if 3 in stages else "y_spatial_prior_s1_s2"
        if name not in self.rwkv_modules:
            return super().build_spatial_prior(stages)
        assert self.prior_hidden_rate is not None
        depths = self.config.prior_s3_depths if 3 in stages else self.config.prior_s1_s2_depths
        return RWKVSpatialPrior(
            3 * self.M,
            2 * self.M,
            depths,
            hidden_rate=self.prior_hidden_rate,
            use_checkpoint=self.use_checkpoint,
        )


@register_model("hpcm-phase1")
class HPCMPhase1(HPCMRWKV):
    """Phase 1: the context cell of the full-resolution stage s3, ``attn_s3``, is an
    RWKVContextCell (hidden rate 4); s1 and s2 keep HPCM's window cross-attention."""

    rwkv_modules = ("attn_s3",)


@register_model("hpcm-phase1-lite")
class HPCMPhase1Lite(HPCMRWKV):
    """Phase 1 with the light cell: ``attn_s3`` is an RWKVContextCellLite (hidden rate 0.5: the
    Bi-WKV runs on M channels, no ChannelMix), 0.48× the FLOPs of the cross-attention cell it
    replaces (docs/blocks.md); s1 and s2 keep HPCM's window cross-attention."""

    rwkv_modules = ("attn_s3",)
    cell_class = RWKVContextCellLite
    default_cell_hidden_rates = LITE_CELL_HIDDEN_RATES


@register_model("hpcm-phase2")
class HPCMPhase2(HPCMRWKV):
    """Phase 2: all three context cells ``attn_s1/2/3`` are RWKVContextCells (hidden rates 2, 3,
    4)."""

    rwkv_modules = ("attn_s1", "attn_s2", "attn_s3")


@register_model("hpcm-phase3")
class HPCMPhase3(HPCMRWKV):
    """Phase 3: phase 2, and the two ``context_net`` entries that fuse the state carried into s2
    and s3 are RWKVFusionNets (1 block, hidden rate 4)."""

    rwkv_modules = ("attn_s1", "attn_s2", "attn_s3", "context_net.0", "context_net.1")


@register_model("hpcm-phase4")
class HPCMPhase4(HPCMRWKV):
    """Phase 4: phase 3, and both spatial priors are RWKVSpatialPriors: the whole context model
    is RWKV; only the adaptors and gains stay 1×1 convolutions and channel scales."""

    rwkv_modules = REPLACEABLE_MODULES
