"""Small presets: HPCM and each RWKV phase at a size whose weights ship and code fast on a CPU.

The full models (68–90 M parameters) are what the paper measures. The small presets keep their
architecture — every module type and the whole 11-step coding schedule — at M=64, N=64 with
narrower transforms (:data:`~hpcm_models.hpcm.config.HPCM_SMALL`), so that their fp16 weights take
at most 8 MiB and a 768×512 photo codes in about a second each way on a 2-core CPU
(``docs/models.md``, "Small presets", has the measured sizes and times). They are registered by
name like any model: ``get_model("hpcm-small")``; constructor arguments still override every
default (``get_model("hpcm-small", M=96)``).

==========================  ==============  =================================================
name                        built on        defaults besides M=64, N=64
==========================  ==============  =================================================
``hpcm-small``              HPCM-Base       ``HPCM_SMALL``
``hpcm-phase1-small``       phase 1         ``HPCM_SMALL``
``hpcm-phase1-lite-small``  phase 1 lite    ``HPCM_SMALL``
``hpcm-phase2-small``       phase 2         ``HPCM_SMALL``
``hpcm-phase3-small``       phase 3         ``HPCM_SMALL_NARROW``, fusion hidden rate 2
``hpcm-phase4-small``       phase 4         ``HPCM_SMALL_NARROW``, cell hidden rates (1, 2, 2),
                                            fusion and prior hidden rates 1
==========================  ==============  =================================================

The four models of the Phase-1 study (``docs/study.md``: HPCM, phase 1, phase 1 with the lite
cell, phase 2) share ``HPCM_SMALL``, so they differ only in their context cells.
"""

from __future__ import annotations

from typing import Any

from .hpcm.config import HPCM_SMALL, HPCM_SMALL_NARROW, HPCMConfig
from .hpcm.model import HPCM, HPCMBase
from .phases.model import HPCMPhase1, HPCMPhase1Lite, HPCMPhase2, HPCMPhase3, HPCMPhase4
from .registry import register_model

__all__ = [
    "SMALL_MODELS",
    "HPCMPhase1LiteSmall",
    "HPCMPhase1Small",
    "HPCMPhase2Small",
    "HPCMPhase3Small",
    "HPCMPhase4Small",
    "HPCMSmall",
]

#: Latent and hyper-latent channels of every small preset.
SMALL_M, SMALL_N = 64, 64


def _small(
    base: type[HPCM], name: str, doc: str, config: HPCMConfig, **defaults: Any
) -> type[HPCM]:
    """A registered subclass of ``base`` whose constructor defaults are the small preset's."""

    def __init__(self: HPCM, M: int = SMALL_M, N: int = SMALL_N, **kwargs: Any) -> None:
        for key, value in defaults.items():
            kwargs.setdefault(key, value)
        base.__init__(self, M, N, **kwargs)

    qualname = "".join(part.capitalize() for part in name.split("-")).replace("Hpcm", "HPCM")
    cls = type(
        qualname,
        (base,),
        {"__init__": __init__, "__doc__": doc, "__module__": __name__, "default_config": config},
    )
    cls.__qualname__ = qualname
    return register_model(name)(cls)


HPCMSmall = _small(
    HPCMBase, "hpcm-small", "HPCM-Base's architecture at the small size (3.4 M parameters).",
    HPCM_SMALL,
)  # fmt: skip
HPCMPhase1Small = _small(
    HPCMPhase1, "hpcm-phase1-small", "Phase 1 at the small size (3.6 M parameters).", HPCM_SMALL
)
HPCMPhase1LiteSmall = _small(
    HPCMPhase1Lite,
    "hpcm-phase1-lite-small",
    "Phase 1 with the lite context cell at the small size (3.4 M parameters).",
    HPCM_SMALL,
)
HPCMPhase2Small = _small(
    HPCMPhase2, "hpcm-phase2-small", "Phase 2 at the small size (3.9 M parameters).", HPCM_SMALL
)
HPCMPhase3Small = _small(
    HPCMPhase3,
    "hpcm-phase3-small",
    "Phase 3 at the small size (3.9 M parameters; a narrower last transform stage and fusion "
    "hidden rate 2 keep its fp16 weights under 8 MiB).",
    HPCM_SMALL_NARROW,
    fusion_hidden_rate=2,
)
HPCMPhase4Small = _small(
    HPCMPhase4,
    "hpcm-phase4-small",
    "Phase 4 at the small size (a narrower last transform stage and hidden rates 1 for the "
    "fusion net and the RWKV priors keep its fp16 weights under 8 MiB).",
    HPCM_SMALL_NARROW,
    cell_hidden_rates=(1, 2, 2),
    fusion_hidden_rate=1,
    prior_hidden_rate=1,
)

#: The small presets, HPCM first (the order of tables in the docs and tools).
SMALL_MODELS: tuple[str, ...] = (
    "hpcm-small",
    "hpcm-phase1-small",
    "hpcm-phase1-lite-small",
    "hpcm-phase2-small",
    "hpcm-phase3-small",
    "hpcm-phase4-small",
)
