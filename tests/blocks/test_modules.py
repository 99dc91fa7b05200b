"""SpatialMix, ChannelMix, BiRWKVBlock, context cells, RWKVFusionNet: math, shapes, gradients."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from biwkv4_kernel import naive_biwkv4
from rwkv_blocks import (
    BiRWKVBlock,
    ChannelMix,
    OmniShift,
    RWKVContextCell,
    RWKVContextCellLite,
    RWKVFusionNet,
    SpatialMix,
)

SIZES = [(1, 1), (7, 5), (33, 17)]
DIM = 8

MAP_MODULES = {
    "OmniShift": lambda: OmniShift(DIM),
    "SpatialMix": lambda: SpatialMix(DIM),
    "ChannelMix": lambda: ChannelMix(DIM, hidden_rate=2),
    "BiRWKVBlock": lambda: BiRWKVBlock(DIM, hidden_rate=2),
    "RWKVFusionNet": lambda: RWKVFusionNet(DIM, num_blocks=2, hidden_rate=2),
}


def shift_reference(m: OmniShift, x: torch.Tensor) -> torch.Tensor:
    C, a = m.dim, m.alpha
    return (
        a[0] * x
        + a[1] * F.conv2d(x, m.conv1x1.weight, groups=C)
        + a[2] * F.conv2d(x, m.conv3x3.weight, padding=1, groups=C)
        + a[3] * F.conv2d(x, m.conv5x5.weight, padding=2, groups=C)
    )


def spatial_mix_reference(m: SpatialMix, x: torch.Tensor) -> torch.Tensor:
    """SpatialMix from its definition, with the O(T²) reference WKV; [B, C, H, W] -> same."""
    B, C, H, W = x.shape
    T = H * W
    s = shift_reference(m.omni_shift, x).flatten(2).transpose(1, 2)  # raster order, [B, T, C]
    k, v, r = s @ m.key.weight.T, s @ m.value.weight.T, s @ m.receptance.weight.T
    y = naive_biwkv4(m.decay / T, m.boost / T, k, v)
    out = (torch.sigmoid(r) * y) @ m.output.weight.T
    return out.transpose(1, 2).reshape(B, C, H, W)


def channel_mix_reference(m: ChannelMix, x: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape
    s = shift_reference(m.omni_shift, x).flatten(2).transpose(1, 2)
    hidden = torch.relu(s @ m.key.weight.T) ** 2
    out = torch.sigmoid(s @ m.receptance.weight.T) * (hidden @ m.value.weight.T)
    return out.transpose(1, 2).reshape(B, C, H, W)


def layer_norm_channels(ln: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm of each pixel's C-vector of a [B, C, H, W] map, written out."""
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight[:, None, None] + ln.bias[:, None, None]


def block_reference(m: BiRWKVBlock, x: torch.Tensor) -> torch.Tensor:
    x = x + m.gamma1[:, None, None] * spatial_mix_reference(
        m.spatial_mix, layer_norm_channels(m.ln1, x)
    )
    return x + m.gamma2[:, None, None] * channel_mix_reference(
        m.channel_mix, layer_norm_channels(m.ln2, x)
    )


def lite_cell_reference(
    m: RWKVContextCellLite, x_t: torch.Tensor, h_prev: torch.Tensor
) -> torch.Tensor:
    """RWKVContextCellLite from its definition, with the O(T²) reference WKV."""
    B, C, H, W = x_t.shape
    h = h_prev if m.omni_shift is None else shift_reference(m.omni_shift, h_prev)
    x_tokens, h_tokens = x_t.flatten(2).transpose(1, 2), h.flatten(2).transpose(1, 2)
    k, v = h_tokens @ m.key.weight.T, h_tokens @ m.value.weight.T
    r = x_tokens @ m.receptance.weight.T
    y = naive_biwkv4(m.decay / (H * W), m.boost / (H * W), k, v)
    out = (torch.sigmoid(r) * y) @ m.output.weight.T + m.output.bias
    return x_t + out.transpose(1, 2).reshape(B, C, H, W)


def assert_matches_reference(
    module, reference, x: torch.Tensor | tuple[torch.Tensor, ...], tol: float
) -> None:
    """Values and the gradients of the input(s) and of every parameter agree with the reference.

    The reference runs in float64 on a float64 copy of ``module``. Each tensor is compared with an
    absolute tolerance of ``tol`` times its largest reference entry (at least 1e-3), so gradients
    summed over many tokens are held to the same relative precision as the outputs.
    """
    ref_module = copy.deepcopy(module).double()
    inputs = [t.clone().requires_grad_(True) for t in (x if isinstance(x, tuple) else (x,))]
    ref_inputs = [t.detach().double().requires_grad_(True) for t in inputs]
    y, y_ref = module(*inputs), reference(ref_module, *ref_inputs)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    names = ["output", *(f"input {i}" for i in range(len(inputs)))]
    names += [n for n, _ in module.named_parameters()]
    got = [y, *torch.autograd.grad(y, [*inputs, *module.parameters()], g.to(y.dtype))]
    expected = [y_ref, *torch.autograd.grad(y_ref, [*ref_inputs, *ref_module.parameters()], g)]
    for name, a, b in zip(names, got, expected, strict=True):
        # The floor covers gradients that are zero in exact arithmetic (e.g. of the keys on a 1x1
        # map, where the WKV returns v whatever k), which float32 gives as rounding noise.
        atol = tol * max(b.abs().max().item(), 1e-3)
        torch.testing.assert_close(
            a.double(), b, rtol=0, atol=atol, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.fixture
def float64_wkv(monkeypatch) -> None:
    """Route SpatialMix through the float64 reference op, to check the module math exactly."""
    import rwkv_blocks.spatial_mix

    monkeypatch.setattr(rwkv_blocks.spatial_mix, "biwkv4", naive_biwkv4)


@pytest.mark.parametrize(("H", "W"), SIZES)
def test_spatial_mix_matches_reference(H, W, randomize, float64_wkv) -> None:
    torch.manual_seed(0)
    m = randomize(SpatialMix(DIM, dtype=torch.float64))
    x = torch.randn(2, DIM, H, W, dtype=torch.float64)
    assert_matches_reference(m, spatial_mix_reference, x, tol=1e-10)


@pytest.mark.parametrize(("H", "W"), SIZES)
def test_spatial_mix_with_the_real_op_matches_reference(H, W, randomize) -> None:
    torch.manual_seed(0)
    m = randomize(SpatialMix(DIM))
    x = torch.randn(2, DIM, H, W)
    # Float32 end to end (module and op) against the float64 reference.
    assert_matches_reference(m, spatial_mix_reference, x, tol=1e-4)


@pytest.mark.parametrize(("H", "W"), SIZES)
def test_channel_mix_matches_reference(H, W, randomize) -> None:
    torch.manual_seed(0)
    m = randomize(ChannelMix(DIM, hidden_rate=3, dtype=torch.float64))
    assert m.hidden_dim == 3 * DIM
    x = torch.randn(2, DIM, H, W, dtype=torch.float64)
    assert_matches_reference(m, channel_mix_reference, x, tol=1e-10)


@pytest.mark.parametrize(("H", "W"), SIZES)
def test_block_is_pre_norm_residual(H, W, randomize, float64_wkv) -> None:
    torch.manual_seed(0)
    m = randomize(BiRWKVBlock(DIM, hidden_rate=2, dtype=torch.float64))
    x = torch.randn(2, DIM, H, W, dtype=torch.float64)
    assert_matches_reference(m, block_reference, x, tol=1e-10)


def test_block_with_zero_gamma_is_identity() -> None:
    """A residual path exists: with both branches switched off the block returns its input."""
    m = BiRWKVBlock(DIM)
    with torch.no_grad():
        m.gamma1.zero_()
        m.gamma2.zero_()
    x = torch.randn(2, DIM, 7, 5)
    torch.testing.assert_close(m(x), x, rtol=0, atol=0)


@pytest.mark.parametrize("dim", [8, 64])
def test_fresh_block_is_dominated_by_its_residual_path(dim) -> None:
    torch.manual_seed(0)
    m = BiRWKVBlock(dim)
    assert torch.equal(m.gamma1, torch.ones(dim))
    assert torch.equal(m.gamma2, torch.ones(dim))
    x = torch.randn(2, dim, 9, 11)
    with torch.no_grad():
        y = m(x)
    assert torch.isfinite(y).all()
    assert (y - x).norm() / x.norm() < 0.5


def test_decay_and_boost_init() -> None:
    m = SpatialMix(16)
    ratio = torch.linspace(0, 1, 16, dtype=torch.float64)
    torch.testing.assert_close(m.decay.detach().double(), -5 + 8 * ratio**0.7)
    zigzag = torch.tensor([(c + 1) % 3 - 1 for c in range(16)], dtype=torch.float64)
    torch.testing.assert_close(m.boost.detach().double(), math.log(0.3) + 0.5 * zigzag)
    assert SpatialMix(1).decay.item() == -5.0


@pytest.mark.parametrize("name", list(MAP_MODULES))
@pytest.mark.parametrize(("H", "W"), SIZES)
def test_odd_maps_shapes_and_finite_gradients(name, H, W) -> None:
    torch.manual_seed(0)
    m = MAP_MODULES[name]()
    x = torch.randn(2, DIM, H, W, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    assert y.dtype == x.dtype
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    for pname, p in m.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"


CELLS = {
    "RWKVContextCell": lambda: RWKVContextCell(DIM, hidden_rate=2),
    "RWKVContextCellLite": lambda: RWKVContextCellLite(DIM),
    "RWKVContextCellLite+shift": lambda: RWKVContextCellLite(DIM, shift=True),
}


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize(("H", "W"), SIZES)
def test_context_cell_shapes_and_finite_gradients(name, H, W) -> None:
    torch.manual_seed(0)
    cell = CELLS[name]()
    x_t = torch.randn(2, DIM, H, W, requires_grad=True)
    h_prev = torch.randn(2, DIM, H, W, requires_grad=True)
    h_t = cell(x_t, h_prev)
    assert h_t.shape == x_t.shape
    assert h_t.dtype == x_t.dtype
    assert h_t.is_contiguous()
    h_t.square().mean().backward()
    for t in (x_t, h_prev):
        assert torch.isfinite(t.grad).all()
        assert t.grad.abs().sum() > 0, "h_t must depend on both x_t and h_prev"
    for pname, p in cell.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize(("H", "W"), SIZES)
def test_lite_cell_matches_reference(H, W, shift, randomize, float64_wkv) -> None:
    torch.manual_seed(0)
    cell = randomize(RWKVContextCellLite(DIM, hidden_rate=0.75, shift=shift, dtype=torch.float64))
    assert cell.hidden_dim == 6
    inputs = (torch.randn(2, DIM, H, W, dtype=torch.float64) for _ in range(2))
    assert_matches_reference(cell, lite_cell_reference, tuple(inputs), tol=1e-10)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize(("H", "W"), SIZES)
def test_lite_cell_with_the_real_op_matches_reference(H, W, batch, randomize) -> None:
    """Float32 end to end against the float64 reference; batch 1 reads the maps as transposed
    matrices without a copy, larger batches copy the tokens once."""
    torch.manual_seed(0)
    cell = randomize(RWKVContextCellLite(DIM))
    inputs = (torch.randn(batch, DIM, H, W) for _ in range(2))
    assert_matches_reference(cell, lite_cell_reference, tuple(inputs), tol=1e-4)


def test_lite_cell_structure() -> None:
    """Widths, parameter count, and the identity skip: with the output projection zeroed,
    h_t = x_t exactly."""
    cell = RWKVContextCellLite(12)
    assert cell.hidden_dim == 6
    assert [(m.in_features, m.out_features) for m in (cell.receptance, cell.key, cell.value)] == [
        (12, 6)
    ] * 3
    assert (cell.output.in_features, cell.output.out_features) == (6, 12)
    assert cell.omni_shift is None
    assert cell.decay.shape == cell.boost.shape == (6,)
    assert sum(p.numel() for p in cell.parameters()) == 4 * 12 * 6 + 12 + 2 * 6
    assert RWKVContextCellLite(12, hidden_rate=0.25, shift=True).hidden_dim == 3
    # The WKV parameters start as SpatialMix's (Vision-RWKV's init) at the same width.
    reference = SpatialMix(6)
    assert torch.equal(cell.decay, reference.decay)
    assert torch.equal(cell.boost, reference.boost)
    with torch.no_grad():
        cell.output.weight.zero_()
        cell.output.bias.zero_()
    x_t, h_prev = torch.randn(2, 12, 5, 4), torch.randn(2, 12, 5, 4)
    torch.testing.assert_close(cell(x_t, h_prev), x_t, rtol=0, atol=0)
    assert "hidden_dim=6" in repr(cell)


def test_lite_cell_sees_the_whole_state() -> None:
    """The Bi-WKV context is global: the top-left output depends on the bottom-right of h_prev
    (an 8x8 window cell's would not)."""
    torch.manual_seed(0)
    cell = RWKVContextCellLite(DIM)
    x_t = torch.randn(1, DIM, 13, 11)
    h_prev = torch.randn(1, DIM, 13, 11, requires_grad=True)
    cell(x_t, h_prev)[0, :, 0, 0].sum().backward()
    assert h_prev.grad[0, :, -1, -1].abs().sum() > 0


def test_context_cell_structure() -> None:
    cell = RWKVContextCell(6)
    assert (cell.in_proj.in_channels, cell.in_proj.out_channels) == (12, 6)
    assert (cell.out_proj.in_channels, cell.out_proj.out_channels) == (6, 6)
    assert cell.in_proj.kernel_size == cell.out_proj.kernel_size == (1, 1)
    x_t, h_prev = torch.randn(1, 6, 4, 3), torch.randn(1, 6, 4, 3)
    expected = cell.out_proj(cell.block(cell.in_proj(torch.cat([x_t, h_prev], dim=1))))
    torch.testing.assert_close(cell(x_t, h_prev), expected, rtol=0, atol=0)


def test_fusion_net_structure() -> None:
    net = RWKVFusionNet(6, num_blocks=3, hidden_rate=2)
    assert len(net.blocks) == 3
    assert all(isinstance(b, BiRWKVBlock) for b in net.blocks)
    assert net.blocks[0].channel_mix.hidden_dim == 12
    x = torch.randn(1, 6, 5, 4)
    torch.testing.assert_close(net(x), net.proj(net.blocks(x)), rtol=0, atol=0)
    # num_blocks=0 is exactly a conv1x1(dim, dim).
    bare = RWKVFusionNet(6, num_blocks=0)
    torch.testing.assert_close(bare(x), F.conv2d(x, bare.proj.weight, bare.proj.bias))


def test_spatial_mix_sees_the_whole_map() -> None:
    """Bi-WKV is global: the top-left output depends on the bottom-right input (OmniShift alone
    reaches 2 pixels)."""
    torch.manual_seed(0)
    x = torch.randn(1, DIM, 13, 11, requires_grad=True)
    SpatialMix(DIM)(x)[0, :, 0, 0].sum().backward()
    assert x.grad[0, :, -1, -1].abs().sum() > 0
    x.grad = None
    OmniShift(DIM)(x)[0, :, 0, 0].sum().backward()
    assert x.grad[0, :, 3:, :].abs().sum() == 0


@pytest.mark.parametrize("make", [BiRWKVBlock, OmniShift])
def test_forward_tokens_equals_forward(make) -> None:
    torch.manual_seed(0)
    m = make(DIM)
    x = torch.randn(2, DIM, 5, 3)
    tokens = x.flatten(2).transpose(1, 2)  # raster order
    y = m.forward_tokens(tokens, (5, 3))
    torch.testing.assert_close(y.transpose(1, 2).reshape(2, DIM, 5, 3), m(x))


def test_factory_kwargs() -> None:
    cell = RWKVContextCell(4, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in cell.parameters())
    y = cell(
        torch.randn(1, 4, 3, 3, dtype=torch.float64), torch.randn(1, 4, 3, 3, dtype=torch.float64)
    )
    assert y.dtype == torch.float64
    net = RWKVFusionNet(4, num_blocks=2, device="meta")
    assert all(p.device.type == "meta" for p in net.parameters())
    lite = RWKVContextCellLite(4, shift=True, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in lite.parameters())
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    assert lite(x, x).dtype == torch.float64
    assert all(p.device.type == "meta" for p in RWKVContextCellLite(4, device="meta").parameters())


@pytest.mark.cuda
def test_modules_follow_their_device(device) -> None:
    cell = RWKVContextCell(8, hidden_rate=2, device=device)
    x_t = torch.randn(2, 8, 7, 5, device=device, requires_grad=True)
    h_t = cell(x_t, torch.randn(2, 8, 7, 5, device=device))
    h_t.sum().backward()
    decay_grad = cell.block.spatial_mix.decay.grad
    assert h_t.device.type == x_t.grad.device.type == decay_grad.device.type == device.type
    shift = OmniShift(8, device=device)
    shift.reparameterize()
    assert shift.reparam_conv.weight.device.type == device.type
    # The same module moved after construction follows too.
    cpu_cell = RWKVContextCell(8, hidden_rate=2).to(device)
    y = cpu_cell(x_t, x_t).cpu()
    # Loose: cuDNN may run the 1x1 convolutions in TF32.
    torch.testing.assert_close(y, cpu_cell.cpu()(x_t.cpu(), x_t.cpu()), rtol=1e-3, atol=1e-3)
    lite = RWKVContextCellLite(8, shift=True, device=device)
    h_t = lite(x_t, x_t)
    h_t.sum().backward()
    assert h_t.device.type == lite.decay.grad.device.type == device.type
    cpu_lite = copy.deepcopy(lite).cpu()
    torch.testing.assert_close(
        h_t.detach().cpu(), cpu_lite(x_t.cpu(), x_t.cpu()), rtol=1e-3, atol=1e-3
    )


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MAP_MODULES))
@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((2, DIM + 1, 4, 4), r"\[B, C=8, H, W\]"),
        ((2, DIM, 16), r"\[B, C=8, H, W\]"),
        ((2, DIM, 0, 4), "H, W >= 1"),
    ],
)
def test_bad_maps_raise_value_error(name, shape, match) -> None:
    with pytest.raises(ValueError, match=match):
        MAP_MODULES[name]()(torch.randn(shape))


def test_non_tensors_and_integer_maps_raise_type_error() -> None:
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        BiRWKVBlock(DIM)([[1.0]])
    with pytest.raises(TypeError, match="floating-point"):
        BiRWKVBlock(DIM)(torch.ones(1, DIM, 2, 2, dtype=torch.long))


@pytest.mark.parametrize("make", [BiRWKVBlock, OmniShift])
def test_bad_tokens_raise_value_error(make) -> None:
    m = make(DIM)
    with pytest.raises(ValueError, match=r"T=H\*W=12"):
        m.forward_tokens(torch.randn(1, 11, DIM), (3, 4))
    with pytest.raises(ValueError, match="size="):
        m.forward_tokens(torch.randn(1, 12, DIM), (0, 12))


@pytest.mark.parametrize("make", [RWKVContextCell, RWKVContextCellLite])
def test_context_cells_validate_both_inputs(make) -> None:
    cell = make(DIM)
    good = torch.randn(1, DIM, 4, 4)
    with pytest.raises(ValueError, match="h_prev"):
        cell(good, torch.randn(1, 2 * DIM, 4, 4))
    with pytest.raises(ValueError, match="x_t"):
        cell(torch.randn(1, DIM, 4), good)
    with pytest.raises(ValueError, match="same shape"):
        cell(good, torch.randn(1, DIM, 4, 5))
    with pytest.raises(TypeError, match="floating-point"):
        cell(good, good.long())


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: OmniShift(0), "dim"),
        (lambda: SpatialMix(2.5), "dim"),
        (lambda: BiRWKVBlock(True), "dim"),
        (lambda: ChannelMix(8, hidden_rate=0), "hidden_rate"),
        (lambda: ChannelMix(8, hidden_rate=0.1), "hidden_rate"),
        (lambda: BiRWKVBlock(8, hidden_rate="4"), "hidden_rate"),
        (lambda: RWKVContextCell(-1), "dim"),
        (lambda: RWKVContextCellLite(0), "dim"),
        (lambda: RWKVContextCellLite(8, hidden_rate=0.1), "hidden_rate"),
        (lambda: RWKVContextCellLite(8, hidden_rate=-0.5), "hidden_rate"),
        (lambda: RWKVFusionNet(8, num_blocks=-1), "num_blocks"),
        (lambda: RWKVFusionNet(8, num_blocks=1.5), "num_blocks"),
    ],
)
def test_bad_constructor_arguments_raise_value_error(build, match) -> None:
    with pytest.raises(ValueError, match=match):
        build()
