"""Small presets: registered by name, the architecture of their family, weights that ship."""

from __future__ import annotations

import compressai.registry.torch as compressai_registry
import pytest
import torch

from hpcm_models import (
    HPCMBase,
    HPCMPhase1,
    HPCMPhase1Lite,
    HPCMPhase2,
    HPCMPhase3,
    HPCMPhase4,
    get_model,
)
from hpcm_models.hpcm.config import HPCM_SMALL, HPCM_SMALL_NARROW
from hpcm_models.presets import SMALL_MODELS

FAMILY = {
    "hpcm-small": (HPCMBase, HPCM_SMALL),
    "hpcm-phase1-small": (HPCMPhase1, HPCM_SMALL),
    "hpcm-phase1-lite-small": (HPCMPhase1Lite, HPCM_SMALL),
    "hpcm-phase2-small": (HPCMPhase2, HPCM_SMALL),
    "hpcm-phase3-small": (HPCMPhase3, HPCM_SMALL_NARROW),
    "hpcm-phase4-small": (HPCMPhase4, HPCM_SMALL_NARROW),
}

#: Parameters of each preset (docs/models.md, "Small presets").
PARAMETERS = {
    "hpcm-small": 3_404_875,
    "hpcm-phase1-small": 3_611_219,
    "hpcm-phase1-lite-small": 3_371_851,
    "hpcm-phase2-small": 3_925_603,
    "hpcm-phase3-small": 3_885_571,
    "hpcm-phase4-small": 4_181_283,
}


def test_every_preset_is_listed() -> None:
    assert set(SMALL_MODELS) == set(FAMILY) == set(PARAMETERS)


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_preset_builds_its_family_at_the_small_size(name: str) -> None:
    base, config = FAMILY[name]
    model = get_model(name)
    assert isinstance(model, base)
    assert type(model) is not base  # its own class: the codec writes the preset's name
    assert (model.M, model.N, model.config) == (64, 64, config)
    assert compressai_registry.MODELS[name] is type(model)
    count = sum(p.numel() for p in model.parameters())
    assert count == PARAMETERS[name]
    assert count * 2 <= 8 * 2**20  # fp16 weights fit the 8 MiB budget (issue: shipped weights)


def test_preset_defaults_can_be_overridden() -> None:
    model = get_model("hpcm-phase4-small", M=32, N=16, fusion_hidden_rate=2)
    assert (model.M, model.N, model.fusion_hidden_rate) == (32, 16, 2)
    assert model.prior_hidden_rate == 1  # the preset's other defaults stay
    with pytest.raises(ValueError, match="fusion_hidden_rate"):
        get_model("hpcm-phase1-small", fusion_hidden_rate=2)  # phase 1 has no fusion net


def test_preset_state_dict_loads_into_its_family() -> None:
    """A small preset is its family's architecture: the weights move between the two."""
    small = get_model("hpcm-phase2-small")
    family = HPCMPhase2(64, 64, config=HPCM_SMALL)
    family.load_state_dict(small.state_dict())
    x = torch.rand(1, 3, 128, 128)
    small.eval(), family.eval()
    with torch.no_grad():
        assert torch.equal(small(x)["x_hat"], family(x)["x_hat"])
