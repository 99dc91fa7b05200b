"""Fast paths (hpcm_models.acceleration): precision modes, CUDA graph chains, the graphed forward
and training step. The graphed paths must compute what the eager ones compute."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hpcm_models import HPCM_MICRO, get_model
from hpcm_models.acceleration import (
    GraphChain,
    GraphedForward,
    GraphedTrainStep,
    RecentGraphs,
    capturable_adam,
    fp32_precision,
    precision,
)
from hpcm_models.losses import RateDistortionLoss

MICRO_KWARGS = {"M": 16, "N": 8, "config": HPCM_MICRO}


def _precisions() -> tuple[str, str, str]:
    b = torch.backends
    return (b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision, b.mkldnn.fp32_precision)


# ---------------------------------------------------------------- CPU: modes and errors


def test_precision_modes_set_and_restore_the_backends() -> None:
    before = _precisions()
    with precision("fp32", "cpu"):
        assert _precisions()[:2] == ("ieee", "ieee")
        assert not torch.is_autocast_enabled("cpu")
    with precision("tf32", "cpu"):
        assert _precisions()[:2] == ("tf32", "tf32")
        assert _precisions()[2] == before[2]  # TF32 is a CUDA mode: oneDNN is left alone
    with precision("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert _precisions() == before
    with fp32_precision("ieee"):
        assert _precisions() == ("ieee", "ieee", "ieee")
    assert _precisions() == before


def test_precision_restores_after_an_error() -> None:
    before = _precisions()
    with pytest.raises(RuntimeError, match="boom"), precision("tf32", "cpu"):
        raise RuntimeError("boom")
    assert _precisions() == before


@pytest.mark.parametrize("mode", ["fp16", "float32", None, "BF16"])
def test_unknown_precision_is_refused(mode) -> None:
    with pytest.raises(ValueError, match="expected a precision in"), precision(mode, "cpu"):
        pass


def test_graphs_need_cuda() -> None:
    with pytest.raises(ValueError, match="GraphChain needs a CUDA device, got cpu"):
        GraphChain(lambda split: None, "cpu")
    model = get_model("hpcm-base", **MICRO_KWARGS)
    with pytest.raises(ValueError, match="GraphedForward needs a CUDA device"):
        GraphedForward(model)(torch.rand(1, 3, 128, 128))
    with pytest.raises(TypeError, match=r"expected x to be a torch\.Tensor"):
        GraphedForward(model)([1, 2, 3])
    optimizer = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="GraphedTrainStep needs a CUDA device"):
        GraphedTrainStep(model, optimizer, RateDistortionLoss(0.01), torch.rand(1, 3, 128, 128))


def test_recent_graphs_keeps_the_most_recently_used() -> None:
    built: list[str] = []

    def build(key: str):
        return lambda: built.append(key) or f"graph {key}"

    cache = RecentGraphs(2)
    assert cache.get("a", build("a")) == "graph a"
    assert cache.get("b", build("b")) == "graph b"
    assert cache.get("a", build("a")) == "graph a"  # cached: not rebuilt, now the most recent
    assert cache.get("c", build("c")) == "graph c"  # drops b, the least recently used
    assert built == ["a", "b", "c"]
    assert cache.keys() == ["a", "c"]
    assert "b" not in cache
    assert len(cache) == 2
    with pytest.raises(ValueError, match="max_entries to be an int >= 1"):
        RecentGraphs(0)


def test_capturable_adam_has_tensor_learning_rates_per_group() -> None:
    fast, slow = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2))
    optimizer = capturable_adam([{"params": [fast], "lr": 1e-3}, {"params": [slow]}], 1e-4, "cpu")
    assert optimizer.defaults["fused"]
    assert optimizer.defaults["capturable"]
    lrs = [group["lr"] for group in optimizer.param_groups]
    assert all(isinstance(lr, torch.Tensor) for lr in lrs)
    assert [float(lr) for lr in lrs] == pytest.approx([1e-3, 1e-4])
    assert [group["params"] for group in optimizer.param_groups] == [[fast], [slow]]
    # Plain parameters make one group, as for any optimizer.
    plain = capturable_adam(iter([fast, slow]), 1e-4, "cpu")
    assert [group["params"] for group in plain.param_groups] == [[fast, slow]]
    assert isinstance(plain.param_groups[0]["lr"], torch.Tensor)


def test_channels_last_gives_the_same_forward() -> None:
    """The fast training step runs the model channels-last; the schedule's reshapes must not care
    about the memory format."""
    torch.manual_seed(0)
    model = get_model("hpcm-phase2", **MICRO_KWARGS).eval()
    x = torch.rand(2, 3, 128, 256)
    with torch.no_grad():
        reference = model(x)
        model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out["x_hat"], reference["x_hat"], rtol=1e-4, atol=1e-5)
    for name in ("y", "z"):
        torch.testing.assert_close(
            out["likelihoods"][name], reference["likelihoods"][name], rtol=1e-4, atol=1e-6
        )


# ---------------------------------------------------------------- CUDA


@pytest.mark.cuda
def test_graph_chain_splits_where_the_host_steps_in() -> None:
    x = torch.arange(6.0, device="cuda")
    seen: list[float] = []

    def body(split):
        a = x * 2
        b = split((a.sum(),), a)  # the host sees a's sum and sends back a buffer like a
        c = b + a
        d = split((c.max(),), c[:2])
        return c, d * 10

    chain = GraphChain(body, "cuda")
    assert len(chain) == 3

    def feed(k: int, outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        seen.append(float(outputs[0]))
        return torch.full((6,) if k == 0 else (2,), float(k + 1))

    c, d = chain.replay(feed)
    assert seen == [30.0, 11.0]
    assert c.tolist() == [1.0, 3.0, 5.0, 7.0, 9.0, 11.0]
    assert d.tolist() == [20.0, 20.0]
    x.copy_(torch.ones(6))  # inputs are read at every replay
    seen.clear()
    c, d = chain.replay(feed)
    assert seen == [12.0, 3.0]
    assert c.tolist() == [3.0] * 6
    with pytest.raises(ValueError, match="needs a feed"):
        chain.replay()


@pytest.mark.cuda
def test_graph_chain_taps_are_consumed_in_order_while_the_device_runs() -> None:
    x = torch.arange(4.0, device="cuda")
    big = torch.randn(2048, 2048, device="cuda")

    def body(split):
        total = x.clone()
        for k in range(3):
            total = total + k
            split((total * 1, (big @ big).sum().view(1) * 0 + k), None)  # device busy after
        return total * 1

    chain = GraphChain(body, "cuda")
    assert len(chain) == 4
    seen = []
    result = chain.replay(
        consume=lambda k, host: seen.append((k, host[0].tolist(), host[1].item()))
    )
    assert [k for k, _, _ in seen] == [0, 1, 2]
    assert seen[0][1] == [0.0, 1.0, 2.0, 3.0]
    assert seen[2][1] == [3.0, 4.0, 5.0, 6.0]
    assert [v for _, _, v in seen] == [0.0, 1.0, 2.0]
    assert result.tolist() == [3.0, 4.0, 5.0, 6.0]
    assert all(h[0].is_pinned() for h in chain.host if h is not None)
    with pytest.raises(ValueError, match="needs a consume"):
        chain.replay()


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["hpcm-base", "hpcm-phase1", "hpcm-phase4"])
def test_graphed_forward_equals_the_eager_forward(name) -> None:
    torch.manual_seed(0)
    model = get_model(name, **MICRO_KWARGS).cuda().eval()
    fast = GraphedForward(model, precision="fp32")
    for seed in (1, 2):  # the second call replays the captured graph with new data
        x = torch.rand(1, 3, 256, 384, generator=torch.Generator().manual_seed(seed)).cuda()
        with torch.no_grad(), precision("fp32", "cuda"):
            reference = model(x, training=False)
        out = fast(x)
        # The same computation; cuDNN may pick other algorithms under capture (no deterministic
        # mode here), so equal up to float32 round-off.
        torch.testing.assert_close(out["x_hat"], reference["x_hat"], rtol=1e-4, atol=1e-5)
        for name in ("y", "z"):
            torch.testing.assert_close(
                out["likelihoods"][name], reference["likelihoods"][name], rtol=1e-4, atol=1e-6
            )
    snapshot = out["x_hat"].clone()
    fast(torch.zeros_like(x))
    assert torch.equal(out["x_hat"], snapshot)  # outputs are copies, not the graph's memory


@pytest.mark.cuda
def test_graphed_bf16_forward_is_close_to_float32() -> None:
    torch.manual_seed(0)
    model = get_model("hpcm-phase1", **MICRO_KWARGS).cuda().eval()
    x = torch.rand(1, 3, 256, 256, device="cuda")
    with torch.no_grad(), precision("fp32", "cuda"):
        reference = model(x, training=False)
    out = GraphedForward(model, precision="bf16")(x)
    bits = [-torch.log2(o["likelihoods"]["y"]).sum().item() for o in (out, reference)]
    assert abs(bits[0] - bits[1]) / bits[1] < 0.02
    assert (out["x_hat"].float() - reference["x_hat"]).abs().mean() < 0.02


class _Net(nn.Module):
    """A deterministic stand-in with the HPCM loss interface (no training noise)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 3, 1))

    def forward(self, x: torch.Tensor) -> dict:
        x_hat = self.body(x)
        return {"x_hat": x_hat, "likelihoods": {"y": torch.sigmoid(x_hat) * 0.5 + 0.25}}


def _fused_adam(model: nn.Module) -> torch.optim.Adam:
    return capturable_adam(model.parameters(), 1e-2, "cuda")


@pytest.mark.cuda
def test_graphed_train_step_equals_eager_steps() -> None:
    torch.manual_seed(0)
    eager, graphed = _Net().cuda(), _Net().cuda()
    graphed.load_state_dict(eager.state_dict())
    loss_fn = RateDistortionLoss(0.01)
    eager_opt = torch.optim.Adam(eager.parameters(), lr=1e-2, fused=True)
    graphed_opt = _fused_adam(graphed)
    batches = [torch.rand(4, 3, 32, 32, device="cuda") for _ in range(5)]
    step = GraphedTrainStep(graphed, graphed_opt, loss_fn, batches[0], amp=False, max_norm=0.5)
    # Construction changed nothing.
    assert all(
        torch.equal(a, b) for a, b in zip(eager.parameters(), graphed.parameters(), strict=True)
    )
    for batch in batches:
        eager_opt.zero_grad()
        loss = loss_fn(eager(batch), batch)["loss"]
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(eager.parameters(), 0.5)
        eager_opt.step()
        out = step(batch)
        torch.testing.assert_close(out["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out["grad_norm"], norm, rtol=1e-5, atol=1e-6)
        assert out["skipped"].item() == 0.0
    for a, b in zip(eager.parameters(), graphed.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert int(graphed_opt.state[next(graphed.parameters())]["step"]) == len(batches)


@pytest.mark.cuda
def test_graphed_train_step_skips_non_finite_gradients_and_follows_the_lr() -> None:
    torch.manual_seed(0)
    model = _Net().cuda()
    optimizer = _fused_adam(model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.0 if s >= 1 else 1.0)
    batch = torch.rand(2, 3, 16, 16, device="cuda")
    step = GraphedTrainStep(model, optimizer, RateDistortionLoss(0.01), batch, amp=False)
    before = [p.detach().clone() for p in model.parameters()]
    out = step(torch.full_like(batch, math.nan))
    assert out["skipped"].item() == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert int(optimizer.state[next(model.parameters())]["step"]) == 0
    step(batch)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    scheduler.step()  # lr -> 0 in place: the graph must follow
    after = [p.detach().clone() for p in model.parameters()]
    step(batch)
    assert all(torch.equal(a, b) for a, b in zip(after, model.parameters(), strict=True))
    with pytest.raises(ValueError, match="built for batches"):
        step(torch.rand(1, 3, 16, 16, device="cuda"))


@pytest.mark.cuda
def test_graphed_train_step_refuses_unsupported_optimizers() -> None:
    model = _Net().cuda()
    batch = torch.rand(2, 3, 16, 16, device="cuda")
    loss_fn = RateDistortionLoss(0.01)
    with pytest.raises(ValueError, match="fused=True, capturable=True"):
        GraphedTrainStep(model, torch.optim.Adam(model.parameters()), loss_fn, batch)
    with pytest.raises(ValueError, match=r"supports torch\.optim\.Adam"):
        GraphedTrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn, batch)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["hpcm-base", "hpcm-phase4"])
def test_graphed_hpcm_training_learns(name) -> None:
    torch.manual_seed(0)
    model = get_model(name, **MICRO_KWARGS).cuda().train().to(memory_format=torch.channels_last)
    optimizer = _fused_adam(model)
    batch = torch.rand(4, 3, 128, 128, device="cuda").contiguous(memory_format=torch.channels_last)
    step = GraphedTrainStep(model, optimizer, RateDistortionLoss(0.01), batch, max_norm=1.0)
    losses = [float(step(batch)["loss"]) for _ in range(30)]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) < sum(losses[:5])
