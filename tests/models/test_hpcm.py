"""HPCM models: official checkpoint layout, the CompressAI contract and bit-exact rANS coding."""

from __future__ import annotations

import dataclasses

import compressai.registry.torch as compressai_registry
import pytest
import torch

import hpcm_models
from hpcm_models import (
    HPCM_BASE,
    HPCM_LARGE,
    CheckpointError,
    HPCMBase,
    HPCMLarge,
    InputShapeError,
    available_models,
    get_model,
)
from hpcm_models.entropy import CODING_BUFFERS

# Narrow transforms keep the coding tests fast; the schedule is the real one.
TINY = dataclasses.replace(HPCM_BASE, transform_channels=(16, 32, 64), g_a_depths=(1, 1, 1))


def tiny_model(parity_weights, name: str = "hpcm-base") -> hpcm_models.HPCM:
    return parity_weights(get_model(name, M=32, N=16, config=TINY)).eval()


@pytest.fixture(scope="module")
def tiny(parity_weights) -> hpcm_models.HPCM:
    model = tiny_model(parity_weights)
    model.update()
    return model


def _record_y_hats(model: hpcm_models.HPCM, monkeypatch) -> list[torch.Tensor]:
    """Make ``model.run_schedule`` remember every ŷ it returns."""
    y_hats: list[torch.Tensor] = []
    run_schedule = model.run_schedule

    def recording(params, code):
        y_hats.append(run_schedule(params, code))
        return y_hats[-1]

    monkeypatch.setattr(model, "run_schedule", recording)
    return y_hats


# ---------------------------------------------------------------- checkpoint layout


@pytest.mark.parametrize(
    ("name", "cls", "params"),
    [("base", HPCMBase, 68_505_299), ("large", HPCMLarge, 89_718_803)],
)
def test_state_dict_is_the_official_schema(name, cls, params, load_schema) -> None:
    model = get_model(f"hpcm-{name}")
    assert type(model) is cls
    ours = [
        [k, list(v.shape), str(v.dtype).removeprefix("torch.")]
        for k, v in model.state_dict().items()
    ]
    assert ours == load_schema(name)  # keys, order, shapes and dtypes
    assert sum(p.numel() for p in model.parameters()) == params
    # An official checkpoint (empty coding tables) loads strictly.
    model.load_state_dict({k: torch.zeros(s) for k, s, _ in load_schema(name)})


def test_registry() -> None:
    assert available_models()[:2] == ["hpcm-base", "hpcm-large"]  # then the RWKV phases
    assert compressai_registry.MODELS["hpcm-base"] is HPCMBase
    assert compressai_registry.MODELS["hpcm-large"] is HPCMLarge
    assert get_model("hpcm-large", M=32, N=16).config == HPCM_LARGE
    with pytest.raises(ValueError, match="unknown model 'hpcm'; available: hpcm-base, hpcm-large"):
        get_model("hpcm")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"M": 40}, "M divisible by 8 .* num_heads=32, got M=40"),
        ({"M": 12}, "M divisible by 8"),
        ({"N": 2}, "N >= partial_ratio=4, got N=2"),
        ({"M": 32.0}, "M to be a positive int"),
    ],
)
def test_constructor_validates_channels(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        HPCMBase(**kwargs)


def test_loading_reports_missing_unexpected_and_misshapen_keys(parity_weights) -> None:
    model = tiny_model(parity_weights)
    state = model.state_dict()
    broken = dict(state)
    del broken["attn_s2.conv_q.weight"]
    broken["attn_s4.conv_q.weight"] = state["attn_s1.conv_q.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys \[attn_s2\.conv_q\.weight\]") as err:
        model.load_state_dict(broken)
    assert "unexpected keys [attn_s4.conv_q.weight]" in str(err.value)

    misshapen = dict(state, **{"context_net.0.weight": torch.zeros(64, 64, 3, 3)})
    with pytest.raises(CheckpointError, match=r"context_net\.0\.weight: expected \[64, 64, 1, 1\]"):
        model.load_state_dict(misshapen)
    # Non-strict loading ignores unknown keys, like nn.Module.
    model.load_state_dict(broken, strict=False)


def test_checkpoints_with_built_tables_load(parity_weights, tiny) -> None:
    """A state dict saved after update() (int32 tables of any size) loads into a fresh model."""
    state = tiny.state_dict()
    assert state["quantized_cdf_y"].dtype == torch.int32
    assert state["quantized_cdf_y"].numel() > 0
    fresh = get_model("hpcm-base", M=32, N=16, config=TINY)
    fresh.load_state_dict(state)
    for name in ("scale_table", "quantized_cdf_y", "offset_y", "quantized_cdf_z", "cdf_length_z"):
        assert torch.equal(getattr(fresh, name), state[name])
    # …and an official one (empty tables) empties them again.
    fresh.load_state_dict(
        {k: torch.empty(0) if k in CODING_BUFFERS else v for k, v in state.items()}
    )
    assert fresh.quantized_cdf_y.numel() == 0


def test_from_state_dict_reads_channels_and_strips_data_parallel_prefix(tiny) -> None:
    state = {f"module.{k}": v for k, v in tiny.state_dict().items()}
    model = HPCMBase.from_state_dict(state, config=TINY)
    assert (model.M, model.N) == (32, 16)
    assert torch.equal(model.g_s.branch[0].weight, tiny.g_s.branch[0].weight)
    with pytest.raises(CheckpointError, match="not an HPCM checkpoint"):
        HPCMBase.from_state_dict({"weight": torch.zeros(1)})


# ---------------------------------------------------------------- forward


def test_forward_contract_and_batch_independence(tiny) -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 128, 256)
    with torch.no_grad():
        out = tiny(x)
        single = tiny(x[1:])
    assert out["x_hat"].shape == (2, 3, 128, 256)
    assert out["likelihoods"]["y"].shape == (2, 32, 8, 16)
    assert out["likelihoods"]["z"].shape == (2, 16, 2, 4)
    torch.testing.assert_close(out["x_hat"][1:], single["x_hat"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["likelihoods"]["y"][1:], single["likelihoods"]["y"])
    assert tiny.aux_loss().item() == 0  # CompressAI training loops call it


def test_channels_last_input_gives_the_same_result(tiny) -> None:
    """Index arithmetic must not assume contiguous NCHW (channels-last is a common fast layout)."""
    torch.manual_seed(1)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        expected = tiny(x)
        got = tiny(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got["x_hat"], expected["x_hat"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["likelihoods"]["y"], expected["likelihoods"]["y"])


def test_training_forward_uses_noise_and_trains_every_parameter(parity_weights) -> None:
    torch.manual_seed(0)
    model = tiny_model(parity_weights).train()
    x = torch.rand(1, 3, 128, 128)
    out = model(x)
    with torch.no_grad():
        rounded = model(x, training=False)  # the official keyword
    assert not torch.equal(out["likelihoods"]["y"], rounded["likelihoods"]["y"])
    torch.testing.assert_close(out["x_hat"], rounded["x_hat"])  # straight-through rounding
    loss = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values())
    (loss + ((out["x_hat"] - x) ** 2).sum()).backward()
    untrained = [k for k, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not untrained
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    "shape", [(1, 3, 100, 128), (1, 3, 128, 64), (3, 128, 128), (1, 1, 128, 128)]
)
def test_inputs_must_be_rgb_multiples_of_128(tiny, shape) -> None:
    with pytest.raises(InputShapeError, match="H and W positive multiples of 128"):
        tiny(torch.rand(shape))
    with pytest.raises(ValueError, match="multiples of 128"):
        tiny.compress(torch.rand(shape))


def test_integer_images_are_rejected(tiny) -> None:
    with pytest.raises(TypeError, match="floating-point image"):
        tiny(torch.zeros(1, 3, 128, 128, dtype=torch.uint8))


# ---------------------------------------------------------------- entropy coding


def test_update_is_idempotent(parity_weights) -> None:
    model = tiny_model(parity_weights)
    assert model.quantized_cdf_y.numel() == 0
    assert model.update() is True
    tables = {name: getattr(model, name).clone() for name in CODING_BUFFERS}
    assert model.update() is False  # already built
    assert model.update(force=True) is True
    for name, value in tables.items():
        assert torch.equal(getattr(model, name), value), name
    assert model.scale_table.shape == (60,)
    assert model.quantized_cdf_z.shape[0] == 16
    model.update(torch.tensor([0.2, 1.0, 5.0]), force=True)
    assert model.quantized_cdf_y.shape[0] == 3
    with pytest.raises(ValueError, match="increasing table of positive scales"):
        model.update(torch.tensor([1.0, 0.5]), force=True)


def test_coding_needs_update(parity_weights) -> None:
    model = tiny_model(parity_weights)
    with pytest.raises(RuntimeError, match=r"call model\.update\(\)"):
        model.compress(torch.rand(1, 3, 128, 128))


@pytest.mark.parametrize(
    "shape",
    [(1, 3, 128, 128), (1, 3, 128, 384), (2, 3, 256, 128), (1, 3, 384, 256)],
    ids=lambda s: f"{s[0]}x{s[2]}x{s[3]}",
)
def test_round_trip_is_bit_exact(tiny, shape, monkeypatch) -> None:
    torch.manual_seed(sum(shape))
    x = torch.rand(shape)
    y_hats = _record_y_hats(tiny, monkeypatch)
    with torch.no_grad():
        out = tiny(x)
        encoded = tiny.compress(x)
        decoded = tiny.decompress(encoded["strings"], encoded["shape"])
    B = shape[0]
    # The decoder rebuilds exactly the ŷ the encoder used.
    assert torch.equal(encoded["y_hat"], decoded["y_hat"])
    assert encoded["shape"] == (shape[2] // 64, shape[3] // 64)
    assert [len(s) for s in encoded["strings"]] == [B, B]
    assert decoded["x_hat"].shape == x.shape
    if B == 1:  # forward, encoder and decoder run the very same computation
        assert torch.equal(y_hats[0], encoded["y_hat"])
        assert torch.equal(decoded["x_hat"], out["x_hat"].clamp(0, 1))
    else:
        torch.testing.assert_close(decoded["x_hat"], out["x_hat"].clamp(0, 1), rtol=1e-4, atol=1e-5)
    estimate = sum(float(-torch.log2(lik).sum()) for lik in out["likelihoods"].values())
    actual = 8 * sum(len(s) for strings in encoded["strings"] for s in strings)
    # rANS adds a few bytes per stream (state flush) to the cost of 16-bit probabilities.
    assert abs(actual - estimate) <= 0.02 * estimate + 100 * 2 * B


def test_each_image_of_a_batch_decodes_alone(tiny) -> None:
    torch.manual_seed(1)
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        encoded = tiny.compress(x)
        both = tiny.decompress(encoded["strings"], encoded["shape"])
        second = tiny.decompress([s[1:] for s in encoded["strings"]], encoded["shape"])
    assert torch.equal(both["x_hat"][1:], second["x_hat"])


@pytest.mark.parametrize(
    ("strings", "shape", "match"),
    [
        ([[b"y"]], (2, 2), r"strings = \[y_strings, z_strings\]"),
        ([[b"y"], [b"z", b"z"]], (2, 2), "equally long"),
        ([[b"y"], [b"z"]], (3, 2), r"shape = \(H/64, W/64\) with both even"),
    ],
)
def test_decompress_validates_its_input(tiny, strings, shape, match) -> None:
    with pytest.raises(InputShapeError, match=match):
        tiny.decompress(strings, shape)


@pytest.mark.cuda
def test_cuda_matches_cpu_and_round_trips(parity_weights) -> None:
    model = tiny_model(parity_weights)
    x = torch.rand(1, 3, 256, 128)
    with torch.no_grad():
        cpu = model(x)
        model.cuda()
        model.update()  # tables are built where the model lives
        gpu = model(x.cuda())
        encoded = model.compress(x.cuda())
        decoded = model.decompress(encoded["strings"], encoded["shape"])
    torch.testing.assert_close(gpu["x_hat"].cpu(), cpu["x_hat"], rtol=1e-3, atol=1e-3)
    assert torch.equal(encoded["y_hat"], decoded["y_hat"])
    assert decoded["x_hat"].device.type == "cuda"
    assert model.quantized_cdf_y.device.type == "cuda"
    torch.testing.assert_close(decoded["x_hat"], gpu["x_hat"].clamp(0, 1), rtol=1e-4, atol=1e-4)
