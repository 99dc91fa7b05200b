"""OmniShift: the branch math, reparameterization, and saving/loading a fused model."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from rwkv_blocks import BiRWKVBlock, OmniShift, RWKVFusionNet, reparameterize_model

SIZES = [(1, 1), (7, 5), (33, 17)]
BRANCHES = ("conv1x1", "conv3x3", "conv5x5", "alpha")


def branch_reference(m: OmniShift, x: torch.Tensor) -> torch.Tensor:
    """α0·x + α1·DW1x1(x) + α2·DW3x3(x) + α3·DW5x5(x), each branch convolved on its own."""
    C = m.dim
    a = m.alpha
    return (
        a[0] * x
        + a[1] * F.conv2d(x, m.conv1x1.weight, groups=C)
        + a[2] * F.conv2d(x, m.conv3x3.weight, padding=1, groups=C)
        + a[3] * F.conv2d(x, m.conv5x5.weight, padding=2, groups=C)
    )


@pytest.mark.parametrize(("H", "W"), SIZES)
def test_forward_matches_branch_sum(H, W, randomize) -> None:
    m = randomize(OmniShift(6, dtype=torch.float64))
    x = torch.randn(2, 6, H, W, dtype=torch.float64, requires_grad=True)
    y, y_ref = m(x), branch_reference(m, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    # ... and so do the gradients of the input and of every branch parameter.
    g = torch.randn_like(y)
    params = [x, *m.parameters()]
    grads = torch.autograd.grad(y, params, g)
    grads_ref = torch.autograd.grad(y_ref, params, g)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_init_keeps_identity_branch() -> None:
    m = OmniShift(4)
    torch.testing.assert_close(m.alpha.detach(), torch.ones(4))


@pytest.mark.parametrize(("H", "W"), SIZES)
def test_reparameterize_preserves_eval_output(H, W, randomize) -> None:
    m = randomize(OmniShift(8)).eval()
    x = torch.randn(2, 8, H, W)
    with torch.no_grad():
        before = m(x)
        m.reparameterize()
        after = m(x)
    assert (after - before).abs().max().item() <= 1e-5


def test_reparameterize_removes_branches_and_is_idempotent(randomize) -> None:
    m = randomize(OmniShift(8))
    assert not m.is_reparameterized
    m.reparameterize()
    assert m.is_reparameterized
    for name in BRANCHES:
        assert not hasattr(m, name), f"branch {name} survived reparameterize()"
    assert list(m.state_dict()) == ["reparam_conv.weight"]
    conv, weight = m.reparam_conv, m.reparam_conv.weight.detach().clone()
    m.reparameterize()
    assert m.reparam_conv is conv
    assert torch.equal(m.reparam_conv.weight, weight)


def test_fused_kernel_stays_trainable() -> None:
    m = OmniShift(4)
    m.reparameterize()
    m(torch.randn(1, 4, 6, 6)).sum().backward()
    assert m.reparam_conv.weight.grad is not None
    assert m.reparam_conv.weight.grad.abs().sum() > 0


def test_reparameterize_keeps_dtype() -> None:
    m = OmniShift(4, dtype=torch.float64)
    m.reparameterize()
    assert m.reparam_conv.weight.dtype == torch.float64


@pytest.mark.parametrize(("H", "W"), SIZES)
def test_reparameterize_model_preserves_eval_output(H, W, randomize) -> None:
    model = randomize(torch.nn.Sequential(BiRWKVBlock(8, hidden_rate=2), RWKVFusionNet(8)))
    model.eval()
    x = torch.randn(2, 8, H, W)
    fused = reparameterize_model(model)
    shifts = [m for m in fused.modules() if isinstance(m, OmniShift)]
    assert len(shifts) == 4
    assert all(m.is_reparameterized for m in shifts)
    # By default the model is copied and left as it was (timm's convention).
    assert not any(m.is_reparameterized for m in model.modules() if isinstance(m, OmniShift))
    with torch.no_grad():
        assert (fused(x) - model(x)).abs().max().item() <= 1e-5


def test_reparameterize_model_inplace_and_idempotent(randomize) -> None:
    model = randomize(RWKVFusionNet(8, num_blocks=2)).eval()
    x = torch.randn(1, 8, 5, 7)
    with torch.no_grad():
        before = model(x)
    assert reparameterize_model(model, inplace=True) is model
    once = {k: v.clone() for k, v in model.state_dict().items()}
    assert reparameterize_model(model, inplace=True) is model
    assert all(torch.equal(once[k], v) for k, v in model.state_dict().items())
    assert not any(k.endswith(("alpha", "conv1x1.weight")) for k in once)
    with torch.no_grad():
        assert (model(x) - before).abs().max().item() <= 1e-5


def test_reparameterize_model_rejects_non_modules() -> None:
    with pytest.raises(TypeError, match=r"nn\.Module"):
        reparameterize_model({"not": "a module"})


def _roundtrip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_fused_state_dict_save_and_load(randomize) -> None:
    """The recipe of docs/blocks.md: build, reparameterize, then load the fused checkpoint."""
    trained = reparameterize_model(randomize(BiRWKVBlock(8)).eval())
    state = _roundtrip(trained.state_dict())

    fresh = reparameterize_model(BiRWKVBlock(8), inplace=True).eval()
    fresh.load_state_dict(state)
    x = torch.randn(2, 8, 7, 5)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), trained(x), rtol=0, atol=0)


def test_loading_fused_checkpoint_into_unfused_model_says_what_to_do(randomize) -> None:
    state = reparameterize_model(randomize(BiRWKVBlock(8))).state_dict()
    with pytest.raises(RuntimeError, match=r"reparameterize_model\(model, inplace=True\) before"):
        BiRWKVBlock(8).load_state_dict(state)
    # strict=False cannot make the mismatch go away silently either.
    with pytest.raises(RuntimeError, match="holds a reparameterized"):
        BiRWKVBlock(8).load_state_dict(state, strict=False)


def test_loading_unfused_checkpoint_into_fused_model_says_what_to_do() -> None:
    state = BiRWKVBlock(8).state_dict()
    fused = reparameterize_model(BiRWKVBlock(8))
    with pytest.raises(RuntimeError, match="load the state_dict first"):
        fused.load_state_dict(state)
