"""HPCM × RWKV phases 1-4 and phase 1 lite: structure, options, baseline checkpoints, training,
bit-exact coding."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re

import compressai.registry.torch as compressai_registry
import pytest
import torch
from torch import nn

import hpcm_models
from hpcm_models import (
    HPCM_BASE,
    HPCM_LARGE,
    HPCMRWKV,
    CheckpointError,
    HPCMPhase1,
    HPCMPhase1Lite,
    HPCMPhase2,
    HPCMPhase3,
    HPCMPhase4,
    RWKVSpatialPrior,
    WarmStart,
    available_models,
    from_baseline,
    get_model,
)
from hpcm_models.entropy import CODING_BUFFERS
from hpcm_models.layers import Conv1x1, CrossAttentionCell, SpatialPrior
from hpcm_models.phases import (
    DEFAULT_CELL_HIDDEN_RATES,
    LITE_CELL_HIDDEN_RATES,
    REPLACEABLE_MODULES,
)
from hpcm_models.presets import SMALL_MODELS
from rwkv_blocks import (
    BiRWKVBlock,
    RWKVContextCell,
    RWKVContextCellLite,
    RWKVFusionNet,
    SpatialMix,
    rwkv_param_groups,
)

# Narrow transforms keep the tests fast; the context model and the schedule are the real ones.
TINY = dataclasses.replace(HPCM_BASE, transform_channels=(16, 32, 64), g_a_depths=(1, 1, 1))
TINY_LARGE = dataclasses.replace(HPCM_LARGE, transform_channels=(16, 32, 64))
M, N = 32, 16

PHASES = {
    "hpcm-phase1": HPCMPhase1,
    "hpcm-phase2": HPCMPhase2,
    "hpcm-phase3": HPCMPhase3,
    "hpcm-phase4": HPCMPhase4,
}
PHASE_NAMES = list(PHASES)
#: Every RWKV variant: the phases and phase 1 with the lite cell.
VARIANTS = {**PHASES, "hpcm-phase1-lite": HPCMPhase1Lite}
VARIANT_NAMES = list(VARIANTS)

#: Per phase: baseline keys replaced, RWKV keys added (HPCM-Base config; any M, N).
KEY_COUNTS = {
    "hpcm-phase1": (8, 27),
    "hpcm-phase2": (24, 81),
    "hpcm-phase3": (28, 131),
    "hpcm-phase4": (80, 319),
    "hpcm-phase1-lite": (8, 7),
}

#: Parameters at M=320, N=256 (docs/models.md, "RWKV phases").
PARAMETERS = {
    ("hpcm-base", "base"): 68_505_299,
    ("hpcm-phase1", "base"): 73_469_147,
    ("hpcm-phase2", "base"): 80_939_243,
    ("hpcm-phase3", "base"): 91_688_699,
    ("hpcm-phase4", "base"): 129_051_963,
    ("hpcm-phase1-lite", "base"): 67_684_819,
    ("hpcm-large", "large"): 89_718_803,
    ("hpcm-phase1", "large"): 94_682_651,
    ("hpcm-phase2", "large"): 102_152_747,
    ("hpcm-phase3", "large"): 112_902_203,
    ("hpcm-phase4", "large"): 164_276_691,
    ("hpcm-phase1-lite", "large"): 88_898_323,
}


def _module(model: nn.Module, prefix: str) -> nn.Module:
    return model.get_submodule(prefix)


@pytest.fixture(scope="module")
def baseline_state(parity_weights) -> dict[str, torch.Tensor]:
    """A 'trained' tiny HPCM-Base: the parity recipe's weights, coding tables built."""
    model = parity_weights(get_model("hpcm-base", M=M, N=N, config=TINY))
    model.update()
    return model.state_dict()


def warm_phase(name: str, state: dict[str, torch.Tensor], seed: int = 0, **kwargs) -> HPCMRWKV:
    torch.manual_seed(seed)
    return from_baseline(name, state, config=TINY, **kwargs).model


@pytest.fixture(scope="module")
def coders(baseline_state) -> dict[str, HPCMRWKV]:
    """Each variant warm-started from the tiny baseline, in eval mode, tables built."""
    models = {}
    for name in VARIANT_NAMES:
        model = warm_phase(name, baseline_state).eval()
        model.update()
        models[name] = model
    return models


# ---------------------------------------------------------------- registry and structure


def test_registry_and_exports() -> None:
    assert available_models() == sorted(["hpcm-base", "hpcm-large", *VARIANT_NAMES, *SMALL_MODELS])
    assert ("hpcm-base", "hpcm-large", *sorted(VARIANT_NAMES)) == hpcm_models.BUILTIN_MODELS
    for name, cls in VARIANTS.items():
        assert compressai_registry.MODELS[name] is cls
        assert issubclass(cls, HPCMRWKV)
        assert issubclass(cls, hpcm_models.HPCM)
    # Each phase replaces what the previous one did, and more.
    replaced = [set(cls.rwkv_modules) for cls in PHASES.values()]
    assert all(a < b for a, b in itertools.pairwise(replaced))
    assert HPCMPhase1.rwkv_modules == ("attn_s3",)
    assert HPCMPhase2.rwkv_modules == ("attn_s1", "attn_s2", "attn_s3")
    assert set(HPCMPhase3.rwkv_modules) == {
        *HPCMPhase2.rwkv_modules,
        "context_net.0",
        "context_net.1",
    }
    assert set(HPCMPhase4.rwkv_modules) == set(REPLACEABLE_MODULES)


@pytest.mark.parametrize("name", PHASE_NAMES)
@pytest.mark.parametrize("config", [TINY, TINY_LARGE], ids=["base", "large"])
def test_replaced_modules_are_rwkv_and_the_others_hpcm(name, config) -> None:
    model = get_model(name, M=M, N=N, config=config)
    assert type(model) is PHASES[name]
    assert model.config == config
    baseline_types = {
        "attn_s1": CrossAttentionCell,
        "attn_s2": CrossAttentionCell,
        "attn_s3": CrossAttentionCell,
        "context_net.0": Conv1x1,
        "context_net.1": Conv1x1,
        "y_spatial_prior_s1_s2": SpatialPrior,
        "y_spatial_prior_s3": SpatialPrior,
    }
    rwkv_types = {
        "attn_s1": RWKVContextCell,
        "attn_s2": RWKVContextCell,
        "attn_s3": RWKVContextCell,
        "context_net.0": RWKVFusionNet,
        "context_net.1": RWKVFusionNet,
        "y_spatial_prior_s1_s2": RWKVSpatialPrior,
        "y_spatial_prior_s3": RWKVSpatialPrior,
    }
    for prefix in REPLACEABLE_MODULES:
        expected = rwkv_types if prefix in model.rwkv_modules else baseline_types
        assert type(_module(model, prefix)) is expected[prefix], prefix
    # Hidden rates: the 2, 3, 4 for the cells of s1, s2, s3; 4 for the fusion nets.
    for stage in model.rwkv_cell_stages():
        cell = _module(model, f"attn_s{stage}")
        assert cell.block.channel_mix.hidden_dim == DEFAULT_CELL_HIDDEN_RATES[stage] * 2 * M
    assert dict(zip(model.rwkv_cell_stages(), model.cell_hidden_rates, strict=True)) == {
        s: DEFAULT_CELL_HIDDEN_RATES[s] for s in model.rwkv_cell_stages()
    }
    for prefix in ("context_net.0", "context_net.1"):
        if prefix in model.rwkv_modules:
            net = _module(model, prefix)
            assert len(net.blocks) == 1
            assert net.blocks[0].channel_mix.hidden_dim == 4 * 2 * M
    # Phase 4's priors: the baseline's DWConvRB counts, block for block, on 3M channels.
    for prefix, depths in (
        ("y_spatial_prior_s1_s2", config.prior_s1_s2_depths),
        ("y_spatial_prior_s3", config.prior_s3_depths),
    ):
        prior = _module(model, prefix)
        if prefix in model.rwkv_modules:
            assert (len(prior.blocks_1), len(prior.blocks_2)) == depths
            assert all(
                b.dim == 3 * M and b.channel_mix.hidden_dim == 2 * 3 * M for b in prior.blocks_1
            )
            assert (prior.proj.in_channels, prior.proj.out_channels) == (3 * M, 2 * M)
        else:
            assert (len(prior.branch_1), len(prior.branch_2) - 1) == depths
    # Every state-dict key outside the RWKV modules is HPCM's (same name, same shape, same order).
    baseline = get_model("hpcm-base", M=M, N=N, config=config)
    ours = [(k, v.shape) for k, v in model.state_dict().items() if not model.is_rwkv_key(k)]
    theirs = [(k, v.shape) for k, v in baseline.state_dict().items() if not model.is_rwkv_key(k)]
    assert ours == theirs


@pytest.mark.parametrize("config", [TINY, TINY_LARGE], ids=["base", "large"])
def test_phase1_lite_is_phase1_with_the_lite_cell(config) -> None:
    model = get_model("hpcm-phase1-lite", M=M, N=N, config=config)
    assert type(model) is HPCMPhase1Lite
    assert HPCMPhase1Lite.rwkv_modules == HPCMPhase1.rwkv_modules == ("attn_s3",)
    assert HPCMPhase1Lite.cell_class is RWKVContextCellLite
    assert HPCMPhase1.cell_class is RWKVContextCell
    cell = model.attn_s3
    assert type(cell) is RWKVContextCellLite
    # Bi-WKV on M channels (hidden rate 0.5 of 2M), no OmniShift.
    assert (cell.dim, cell.hidden_dim, cell.omni_shift) == (2 * M, M, None)
    assert model.cell_hidden_rates == (LITE_CELL_HIDDEN_RATES[3],) == (0.5,)
    for prefix in ("attn_s1", "attn_s2"):
        assert type(_module(model, prefix)) is CrossAttentionCell
    # Everything but attn_s3 is phase 1's, and so HPCM's.
    phase1 = get_model("hpcm-phase1", M=M, N=N, config=config)
    ours = [(k, v.shape) for k, v in model.state_dict().items() if not model.is_rwkv_key(k)]
    theirs = [(k, v.shape) for k, v in phase1.state_dict().items() if not phase1.is_rwkv_key(k)]
    assert ours == theirs
    # Options: another width, checkpointing; parts it does not replace are refused.
    wide = get_model(
        "hpcm-phase1-lite", M=M, N=N, config=config, cell_hidden_rates=[0.75], use_checkpoint=True
    )
    assert (wide.attn_s3.hidden_dim, wide.attn_s3.use_checkpoint) == (48, True)
    with pytest.raises(ValueError, match="HPCMPhase1Lite has no RWKV context_net"):
        get_model("hpcm-phase1-lite", M=M, N=N, config=config, fusion_blocks=1)
    with pytest.raises(ValueError, match="hidden_rate"):
        get_model("hpcm-phase1-lite", M=M, N=N, config=config, cell_hidden_rates=[0.001])


def test_parameter_counts_at_paper_size() -> None:
    """M=320, N=256 (built on the meta device: shapes only, no memory, no init)."""
    configs = {"base": HPCM_BASE, "large": HPCM_LARGE}
    for (name, config), count in PARAMETERS.items():
        with torch.device("meta"):
            model = get_model(name, config=configs[config])
        assert (model.M, model.N) == (320, 256)
        assert sum(p.numel() for p in model.parameters()) == count, (name, config)


def test_options_reach_the_modules() -> None:
    model = get_model(
        "hpcm-phase4",
        M=M,
        N=N,
        config=TINY,
        cell_hidden_rates=(1, 1.5, 2),
        fusion_hidden_rate=3,
        fusion_blocks=2,
        prior_hidden_rate=1,
        use_checkpoint=True,
    )
    assert [model.get_submodule(f"attn_s{s}").block.channel_mix.hidden_dim for s in (1, 2, 3)] == [
        64,
        96,
        128,
    ]
    assert [len(net.blocks) for net in model.context_net] == [2, 2]
    assert model.context_net[0].blocks[1].channel_mix.hidden_dim == 3 * 2 * M
    assert model.y_spatial_prior_s3.blocks_2[0].channel_mix.hidden_dim == 3 * M
    blocks = [m for m in model.modules() if isinstance(m, BiRWKVBlock)]
    assert len(blocks) == 3 + 4 + 3 + 5
    assert all(b.use_checkpoint for b in blocks)
    assert (model.cell_hidden_rates, model.fusion_hidden_rate, model.fusion_blocks) == (
        (1, 1.5, 2),
        3,
        2,
    )
    # Options of parts a phase does not have are None; phase 1 has one cell.
    phase1 = get_model("hpcm-phase1", M=M, N=N, config=TINY, cell_hidden_rates=[2])
    assert phase1.cell_hidden_rates == (2,)
    assert phase1.attn_s3.block.channel_mix.hidden_dim == 2 * 2 * M
    assert (phase1.fusion_hidden_rate, phase1.fusion_blocks, phase1.prior_hidden_rate) == (
        None,
    ) * 3
    assert not any(m.use_checkpoint for m in phase1.modules() if isinstance(m, BiRWKVBlock))


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        (
            "hpcm-phase1",
            {"cell_hidden_rates": (2, 3, 4)},
            r"1 RWKV context cell\(s\) .* got \(2, 3, 4\)",
        ),
        ("hpcm-phase2", {"cell_hidden_rates": (2, 3)}, "expected 3 cell_hidden_rates"),
        (
            "hpcm-phase2",
            {"cell_hidden_rates": (2, 0, 4)},
            "cell hidden rate to be a finite number > 0",
        ),
        ("hpcm-phase2", {"cell_hidden_rates": 4}, "cell_hidden_rates to be a sequence"),
        ("hpcm-phase2", {"fusion_hidden_rate": 4}, "HPCMPhase2 has no RWKV context_net"),
        ("hpcm-phase3", {"prior_hidden_rate": 2}, "HPCMPhase3 has no RWKV spatial prior"),
        ("hpcm-phase1", {"fusion_blocks": 1}, "no RWKV context_net"),
        ("hpcm-phase3", {"fusion_hidden_rate": float("nan")}, "fusion_hidden_rate to be a finite"),
        ("hpcm-phase3", {"fusion_blocks": -1}, "fusion_blocks to be an int >= 0"),
        ("hpcm-phase4", {"prior_hidden_rate": True}, "prior_hidden_rate to be a finite number"),
        ("hpcm-phase4", {"use_checkpoint": 1}, "use_checkpoint to be a bool"),
        ("hpcm-phase1", {"M": 40}, "M divisible by 8"),
    ],
)
def test_bad_options_are_refused(name, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        get_model(name, **{"M": M, "N": N, "config": TINY, **kwargs})


def test_custom_variants_declare_their_rwkv_modules() -> None:
    class PriorsOnly(HPCMRWKV):
        rwkv_modules = ("y_spatial_prior_s1_s2", "y_spatial_prior_s3")

    model = PriorsOnly(M, N, config=TINY, prior_hidden_rate=1)
    assert PriorsOnly.rwkv_cell_stages() == ()
    assert model.cell_hidden_rates == ()
    assert isinstance(model.attn_s3, CrossAttentionCell)
    assert isinstance(model.y_spatial_prior_s3, RWKVSpatialPrior)
    assert PriorsOnly.is_rwkv_key("y_spatial_prior_s3.proj.weight")
    assert not PriorsOnly.is_rwkv_key("y_spatial_prior_s3x.proj.weight")
    assert not PriorsOnly.is_rwkv_key("y_spatial_prior_adaptor_list_s3.0.weight")
    for bad in (("attn_s4",), ("attn_s1", "attn_s1"), ("context_net",)):
        with pytest.raises(TypeError, match="rwkv_modules must be distinct names"):
            type("Bad", (HPCMRWKV,), {"rwkv_modules": bad})


# ---------------------------------------------------------------- the RWKV spatial prior


def test_rwkv_spatial_prior_computes_its_formula() -> None:
    torch.manual_seed(0)
    prior = RWKVSpatialPrior(12, 8, (2, 1), hidden_rate=2)
    x, gain = torch.randn(2, 12, 5, 7), 1 + torch.rand(1, 12, 1, 1)
    with torch.no_grad():
        expected = prior.proj(prior.blocks_2(prior.blocks_1(x) * gain))
        out = prior(x, gain)
    assert out.shape == (2, 8, 5, 7)
    assert torch.equal(out, expected)
    assert "depths=(2, 1)" in repr(prior)
    empty = RWKVSpatialPrior(12, 8, (0, 0))
    torch.testing.assert_close(empty(x, gain), empty.proj(x * gain))
    with pytest.raises(ValueError, match=r"quant_step of shape \[1, 12, 1, 1\], got \[12\]"):
        prior(x, gain.flatten())
    with pytest.raises(ValueError, match=r"x of shape \[B, 12, H, W\], got \[2, 11, 5, 7\]"):
        prior(x[:, :11], gain)
    with pytest.raises(ValueError, match="depths to be two ints >= 0"):
        RWKVSpatialPrior(12, 8, (2, -1))


# ---------------------------------------------------------------- baseline checkpoints


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_baseline_checkpoint_loads_into_every_unchanged_part(name, baseline_state) -> None:
    model = get_model(name, M=M, N=N, config=TINY)
    result = model.load_state_dict(baseline_state, strict=False)
    rwkv_keys = {k for k in model.state_dict() if model.is_rwkv_key(k)}
    replaced = {k for k in baseline_state if model.is_rwkv_key(k)}
    # Missing: exactly the RWKV modules' keys; unexpected: exactly the replaced modules' keys.
    assert set(result.missing_keys) == rwkv_keys
    assert set(result.unexpected_keys) == replaced
    assert (len(replaced), len(rwkv_keys)) == KEY_COUNTS[name]
    own = model.state_dict()
    for key, value in baseline_state.items():
        if key not in replaced:
            assert torch.equal(own[key], value), key
    # Strict loading names what does not fit.
    first = next(k for k in model.state_dict() if model.is_rwkv_key(k))
    with pytest.raises(CheckpointError, match=rf"missing keys \[{re.escape(first)}, "):
        model.load_state_dict(baseline_state)


def test_from_baseline_loads_shared_parts_and_reports_the_fresh_ones(baseline_state) -> None:
    torch.manual_seed(0)
    start = from_baseline(
        "hpcm-phase3", {f"module.{k}": v for k, v in baseline_state.items()}, config=TINY
    )
    model = start.model
    assert isinstance(start, WarmStart)
    assert type(model) is HPCMPhase3
    assert (model.M, model.N) == (M, N)  # read from the checkpoint
    assert model.training
    assert start.fresh == HPCMPhase3.rwkv_modules
    assert start.loaded == len(baseline_state) - len(CODING_BUFFERS) - KEY_COUNTS["hpcm-phase3"][0]
    assert set(start.ignored) == {k for k in baseline_state if model.is_rwkv_key(k)}
    own = model.state_dict()
    shared = [k for k in own if not model.is_rwkv_key(k) and k not in CODING_BUFFERS]
    assert len(shared) == start.loaded
    assert all(torch.equal(own[k], baseline_state[k]) for k in shared)
    # The fresh parts are the seeded initialization, untouched.
    torch.manual_seed(0)
    init = get_model("hpcm-phase3", M=M, N=N, config=TINY).state_dict()
    assert all(torch.equal(own[k], init[k]) for k in own if model.is_rwkv_key(k))
    # Coding tables are not copied: they would go stale during fine-tuning.
    assert model.quantized_cdf_y.numel() == 0
    names = [n for n, _ in start.named_fresh_parameters()]
    assert names
    assert all(model.is_rwkv_key(n) for n in names)
    assert len(start.fresh_parameters()) == len(names)
    assert sum(p.numel() for p in start.fresh_parameters()) == sum(
        p.numel() for n, p in model.named_parameters() if model.is_rwkv_key(n)
    )


def test_from_baseline_of_hpcm_itself_has_nothing_fresh(baseline_state) -> None:
    start = from_baseline("hpcm-base", baseline_state, config=TINY)
    assert start.fresh == ()
    assert start.ignored == ()
    assert start.loaded == len(baseline_state) - len(CODING_BUFFERS)


def test_from_baseline_starts_a_phase_from_another_phase(coders) -> None:
    """The replaced parts are ignored whatever they hold: phase 1 → phase 2 works, the reverse
    lacks phase 1's cross-attention cells."""
    phase1_state = coders["hpcm-phase1"].state_dict()
    start = from_baseline("hpcm-phase2", phase1_state, config=TINY)
    # Phase 1's cross-attention cells of s1/s2 (8 keys each) and its RWKV cell of s3.
    assert len(start.ignored) == 2 * 8 + KEY_COUNTS["hpcm-phase1"][1]
    assert all(
        torch.equal(start.model.state_dict()[k], v)
        for k, v in phase1_state.items()
        if not start.model.is_rwkv_key(k) and k not in CODING_BUFFERS
    )
    phase2_state = coders["hpcm-phase2"].state_dict()
    with pytest.raises(CheckpointError, match=r"missing keys \[attn_s1\.conv_q\.weight"):
        from_baseline("hpcm-phase1", phase2_state, config=TINY)


def test_from_baseline_refuses_checkpoints_whose_shared_parts_do_not_fit(baseline_state) -> None:
    broken = dict(baseline_state)
    del broken["g_s.branch.0.weight"]
    broken["h_s.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing keys \[g_s\.branch\.0\.weight\]") as err:
        from_baseline("hpcm-phase2", broken, config=TINY)
    assert "unexpected keys [h_s.extra.weight]" in str(err.value)
    assert "shared with HPCM" in str(err.value)
    # A Base checkpoint does not fit a phase with Large's transforms (g_a is deeper there).
    with pytest.raises(CheckpointError, match=r"missing keys \[g_a\.branch\."):
        from_baseline("hpcm-phase1", baseline_state, config=TINY_LARGE)
    # Wrong shapes of shared parts: M and N given explicitly, different from the checkpoint's.
    with pytest.raises(CheckpointError, match=r"wrong shapes for .*means_hyper: expected \[1, 32"):
        from_baseline("hpcm-phase1", baseline_state, M=M, N=2 * N, config=TINY)
    with pytest.raises(CheckpointError, match="not an HPCM checkpoint"):
        from_baseline("hpcm-phase1", {"weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="expected a state dict"):
        from_baseline("hpcm-phase1", [1, 2])
    with pytest.raises(ValueError, match="unknown model 'hpcm-phase5'"):
        from_baseline("hpcm-phase5", baseline_state)


def test_phase_checkpoints_round_trip_through_from_state_dict(coders) -> None:
    model = coders["hpcm-phase4"]
    copy = HPCMPhase4.from_state_dict(model.state_dict(), config=TINY)
    assert all(
        torch.equal(a, b)
        for a, b in zip(copy.state_dict().values(), model.state_dict().values(), strict=True)
    )
    # Other hidden rates than the checkpoint's: named shape errors.
    with pytest.raises(CheckpointError, match=r"wrong shapes for .*attn_s1\.block\.channel_mix"):
        HPCMPhase4.from_state_dict(model.state_dict(), config=TINY, cell_hidden_rates=(4, 4, 4))


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_forward_backward_trains_every_parameter(name, baseline_state) -> None:
    model = warm_phase(name, baseline_state).train()
    torch.manual_seed(1)
    x = torch.rand(1, 3, 128, 128)
    out = model(x)
    assert out["x_hat"].shape == x.shape
    assert out["likelihoods"]["y"].shape == (1, M, 8, 8)
    loss = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values())
    (loss + 100 * ((out["x_hat"] - x) ** 2).sum()).backward()
    assert torch.isfinite(loss)
    untrained = [k for k, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not untrained
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # The WKV decay and boost of every RWKV block (and lite cell) get a gradient; they are what
    # rwkv_param_groups gives their own learning rate.
    mixes = [m for m in model.modules() if isinstance(m, SpatialMix)]
    assert len(mixes) == sum(isinstance(m, BiRWKVBlock) for m in model.modules())
    owners = [*mixes, *(m for m in model.modules() if isinstance(m, RWKVContextCellLite))]
    assert owners
    for owner in owners:
        assert owner.decay.grad.abs().sum() > 0
        assert owner.boost.grad.abs().sum() > 0
    groups = {g["name"]: g for g in rwkv_param_groups(model, lr=1e-4, decay_lr=1e-5)}
    assert len(groups["wkv"]["params"]) == 2 * len(owners)


def test_activation_checkpointing_gives_the_same_gradients(baseline_state) -> None:
    """Phase 3 (cells and fusion nets); the flag reaching every block of phase 4's priors is
    checked in test_options_reach_the_modules, and the blocks' checkpointing in tests/blocks."""
    grads = []
    for use_checkpoint in (False, True):
        model = warm_phase("hpcm-phase3", baseline_state, use_checkpoint=use_checkpoint).train()
        torch.manual_seed(2)  # the same noise in both runs
        out = model(torch.rand(1, 3, 128, 128))
        sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values()).backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=0, atol=0, msg=key)


# ---------------------------------------------------------------- entropy coding


def _record_y_hats(model, monkeypatch) -> list[torch.Tensor]:
    y_hats: list[torch.Tensor] = []
    run_schedule = model.run_schedule

    def recording(params, code):
        y_hats.append(run_schedule(params, code))
        return y_hats[-1]

    monkeypatch.setattr(model, "run_schedule", recording)
    return y_hats


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("hpcm-phase1", (1, 3, 128, 128)),
        ("hpcm-phase1-lite", (1, 3, 128, 128)),
        ("hpcm-phase1-lite", (2, 3, 128, 256)),
        ("hpcm-phase2", (1, 3, 128, 128)),
        ("hpcm-phase3", (1, 3, 128, 128)),
        ("hpcm-phase4", (1, 3, 128, 128)),
        ("hpcm-phase4", (1, 3, 128, 256)),
        ("hpcm-phase2", (2, 3, 256, 128)),
    ],
    ids=lambda v: v if isinstance(v, str) else f"{v[0]}x{v[2]}x{v[3]}",
)
def test_round_trip_is_bit_exact(coders, name, shape, monkeypatch) -> None:
    model = coders[name]
    torch.manual_seed(sum(shape))
    x = torch.rand(shape)
    y_hats = _record_y_hats(model, monkeypatch)
    with torch.no_grad():
        out = model(x)
        encoded = model.compress(x)
        decoded = model.decompress(encoded["strings"], encoded["shape"])
    # The decoder, running the RWKV modules step by step, rebuilds exactly the encoder's ŷ.
    assert torch.equal(encoded["y_hat"], decoded["y_hat"])
    assert decoded["x_hat"].shape == x.shape
    assert encoded["y_hat"].abs().sum() > 0
    B = shape[0]
    if B == 1:  # forward, encoder and decoder run the very same computation
        assert torch.equal(y_hats[0], encoded["y_hat"])
        assert torch.equal(decoded["x_hat"], out["x_hat"].clamp(0, 1))
    else:  # each image of a batch decodes alone
        second = model.decompress([s[1:] for s in encoded["strings"]], encoded["shape"])
        assert torch.equal(second["y_hat"], decoded["y_hat"][1:])
    estimate = sum(float(-torch.log2(lik).sum()) for lik in out["likelihoods"].values())
    actual = 8 * sum(len(s) for strings in encoded["strings"] for s in strings)
    assert abs(actual - estimate) <= 0.02 * estimate + 100 * 2 * B


@pytest.mark.parametrize("name", ["hpcm-phase1", "hpcm-phase1-lite"])
def test_the_rwkv_parts_decide_the_bitstream(coders, name) -> None:
    """Coding depends on the RWKV weights (so the round trips above exercise them)."""
    model = coders[name]
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = model.compress(x)
        cell = model.attn_s3
        decay = (
            cell.decay if isinstance(cell, RWKVContextCellLite) else cell.block.spatial_mix.decay
        )
        saved = decay.clone()
        # From favouring far tokens (decay/T < 0) to favouring near ones on every channel.
        decay.add_(10.0)
        try:
            after = model.compress(x)
        finally:
            decay.copy_(saved)
    assert before["strings"][0] != after["strings"][0]
    assert before["strings"][1] == after["strings"][1]  # z does not depend on the context model


# ---------------------------------------------------------------- CUDA


def _rwkv_inputs(model: HPCMRWKV, prefix: str, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random inputs of the RWKV module ``prefix`` of ``model``, as the schedule calls it."""
    size = (2, 2 * M, 8, 6)
    if prefix.startswith("attn_s"):
        return torch.randn(size, generator=g), torch.randn(size, generator=g)
    if prefix.startswith("context_net"):
        return (torch.randn(size, generator=g),)
    return torch.randn(2, 3 * M, 8, 6, generator=g), 1 + 0.1 * torch.randn(
        1, 3 * M, 1, 1, generator=g
    )


def check_round_trip_on(device: torch.device, name: str, baseline_state) -> None:
    """Encode on ``device``, decode on ``device`` with a second model instance (as another process
    would), and compare the device's results with the CPU's."""
    cpu_model = warm_phase(name, baseline_state).eval()
    encoder = copy.deepcopy(cpu_model).to(device)
    decoder = type(encoder).from_state_dict(encoder.state_dict(), config=TINY).eval().to(device)
    for model in (cpu_model, encoder, decoder):
        model.update()
    assert decoder.quantized_cdf_y.device.type == device.type
    with torch.no_grad():
        # Each RWKV module computes on the device what it computes on the CPU.
        g = torch.Generator().manual_seed(0)
        for prefix in cpu_model.rwkv_modules:
            inputs = _rwkv_inputs(cpu_model, prefix, g)
            expected = cpu_model.get_submodule(prefix)(*inputs)
            actual = encoder.get_submodule(prefix)(*(t.to(device) for t in inputs))
            torch.testing.assert_close(actual.cpu(), expected, rtol=1e-3, atol=2e-4, msg=prefix)

        x = torch.rand(2, 3, 256, 128, generator=torch.Generator().manual_seed(3))
        encoded = encoder.compress(x.to(device))
        decoded = decoder.decompress(encoded["strings"], encoded["shape"])
        on_cpu = cpu_model.compress(x)
        expected_x_hat = torch.cat([encoder.g_s(y).clamp(0, 1) for y in encoded["y_hat"].split(1)])
    assert encoded["y_hat"].device.type == decoded["y_hat"].device.type == device.type
    # Bit-exact on the device: the decoder rebuilds the encoder's ŷ exactly.
    assert torch.equal(encoded["y_hat"], decoded["y_hat"])
    torch.testing.assert_close(decoded["x_hat"], expected_x_hat, rtol=1e-5, atol=1e-5)
    # Float results differ across devices, so a latent near a rounding boundary may flip; the
    # bulk of ŷ must agree. ŷ = round(y - μ) + μ carries μ's round-off in every element, so a flip
    # is a difference of about one quantization step, not any difference.
    flipped = ((encoded["y_hat"].cpu() - on_cpu["y_hat"]).abs() > 0.5).float().mean().item()
    assert flipped < 0.01


@pytest.mark.cuda
@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_cuda_round_trip_is_bit_exact(name, baseline_state, monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    check_round_trip_on(torch.device("cuda"), name, baseline_state)


@pytest.mark.cuda
def test_cuda_training_step_is_finite(baseline_state) -> None:
    model = warm_phase("hpcm-phase4", baseline_state, use_checkpoint=True).cuda().train()
    out = model(torch.rand(2, 3, 128, 128, device="cuda"))
    loss = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values())
    loss.backward()
    assert torch.isfinite(loss)
    for mix in (m for m in model.modules() if isinstance(m, SpatialMix)):
        assert torch.isfinite(mix.decay.grad).all()
        assert mix.decay.grad.abs().sum() > 0
