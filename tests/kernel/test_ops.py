"""The public op and its registration: validation, dtypes, strides, torch.library, dispatch."""

from __future__ import annotations

import pytest
import torch

import biwkv4_kernel
from biwkv4_kernel import DISABLE_CUDA_ENV, DISABLE_TRITON_ENV, biwkv4, naive_biwkv4
from biwkv4_kernel import ops as ops_module

F32 = torch.float32


def inputs(
    B: int = 2,
    T: int = 11,
    C: int = 3,
    dtype: torch.dtype = F32,
    device: str | torch.device = "cpu",
    requires_grad: bool = False,
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(C, generator=g) / T
    u = torch.randn(C, generator=g) / T
    k = torch.randn(B, T, C, generator=g)
    v = torch.randn(B, T, C, generator=g)
    w, u = (x.to(device=device, dtype=F32 if dtype != torch.float64 else dtype) for x in (w, u))
    k, v = (x.to(device=device, dtype=dtype) for x in (k, v))
    return tuple(x.requires_grad_(requires_grad) for x in (w, u, k, v))


# --- validation -------------------------------------------------------------------------------


def test_rejects_wrong_shapes() -> None:
    w, u, k, v = inputs(C=64)
    with pytest.raises(ValueError, match=r"expected w of shape \[C\]=\[64\], got \[63\]"):
        biwkv4(w[:63], u, k, v)
    with pytest.raises(ValueError, match=r"expected u of shape \[C\]=\[64\], got \[1, 64\]"):
        biwkv4(w, u[None], k, v)
    with pytest.raises(ValueError, match=r"expected k of shape \[B, T, C\], got \[11, 64\]"):
        biwkv4(w, u, k[0], v)
    with pytest.raises(ValueError, match=r"expected v of shape \[B, T, C\]=\[2, 11, 64\]"):
        biwkv4(w, u, k, v[:, :5])


def test_rejects_empty_dimensions() -> None:
    w, u, k, v = inputs()
    with pytest.raises(ValueError, match=r"B, T, C >= 1, got \[2, 0, 3\]"):
        biwkv4(w, u, k[:, :0], v[:, :0])
    with pytest.raises(ValueError, match=r"B, T, C >= 1, got \[0, 11, 3\]"):
        biwkv4(w, u, k[:0], v[:0])
    with pytest.raises(ValueError, match=r"B, T, C >= 1, got \[2, 11, 0\]"):
        biwkv4(w[:0], u[:0], k[..., :0], v[..., :0])


def test_rejects_wrong_dtypes_and_devices() -> None:
    w, u, k, v = inputs()
    with pytest.raises(ValueError, match=r"expected v of dtype torch.float32 \(the dtype of k\)"):
        biwkv4(w, u, k, v.double())
    with pytest.raises(ValueError, match=r"expected k of dtype float16, bfloat16, float32 or"):
        biwkv4(w, u, k.int(), v.int())
    with pytest.raises(ValueError, match=r"expected w of a floating-point dtype, got torch.int64"):
        biwkv4(w.long(), u, k, v)
    with pytest.raises(ValueError, match=r"expected u on cpu \(the device of k\), got meta"):
        biwkv4(w, u.to("meta"), k, v)
    with pytest.raises(TypeError, match=r"expected k to be a torch.Tensor, got list"):
        biwkv4(w, u, k.tolist(), v)  # type: ignore[arg-type]


def test_internal_ops_check_their_arguments() -> None:
    w, u, k, v = inputs()
    with pytest.raises(ValueError, match=r"expect w, u of dtype torch.float32"):
        torch.ops.biwkv4_kernel.forward(w.double(), u, k, v, False)
    with pytest.raises(ValueError, match=r"expect w, u of shape \[C\]"):
        torch.ops.biwkv4_kernel.forward(w[:2], u, k, v, False)


# --- dtypes, strides, statistics ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, F32, torch.float64])
def test_output_and_gradient_dtypes(dtype: torch.dtype) -> None:
    w, u, k, v = inputs(dtype=dtype)
    w = w.to(torch.bfloat16).requires_grad_()  # any float dtype for w and u
    u = u.double().requires_grad_()
    k.requires_grad_()
    v.requires_grad_()
    y = biwkv4(w, u, k, v)
    assert y.dtype == dtype
    assert y.shape == k.shape
    assert y.is_contiguous()
    y.sum().backward()
    assert (w.grad.dtype, u.grad.dtype) == (torch.bfloat16, torch.float64)
    assert (k.grad.dtype, v.grad.dtype) == (dtype, dtype)


def test_non_contiguous_inputs() -> None:
    w, u, k, v = inputs(B=2, T=13, C=5)
    gy = torch.randn(2, 13, 5)
    # Same values behind other strides: channel-major storage, every other element, expanded w.
    k_t = k.transpose(1, 2).contiguous().transpose(1, 2)
    v_s = torch.stack([v, torch.zeros_like(v)], dim=-1)[..., 0]
    w_e = w[:1].expand(5).clone()
    w_x = w[:1].expand(5)
    assert not k_t.is_contiguous()
    assert not v_s.is_contiguous()
    assert w_x.stride() == (0,)
    expected = biwkv4(w_e, u, k, v)
    torch.testing.assert_close(biwkv4(w_x, u, k_t, v_s), expected, rtol=0, atol=0)

    leaves = [t.clone().requires_grad_() for t in (w_e, u, k, v)]
    biwkv4(*leaves).backward(gy)
    k_t.requires_grad_()
    v_s.requires_grad_()
    biwkv4(w_e, u, k_t, v_s).backward(gy.transpose(1, 2).contiguous().transpose(1, 2))
    torch.testing.assert_close(k_t.grad, leaves[2].grad, rtol=0, atol=0)
    torch.testing.assert_close(v_s.grad, leaves[3].grad, rtol=0, atol=0)


def test_stats_only_when_needed() -> None:
    w, u, k, v = inputs()
    y, lse = torch.ops.biwkv4_kernel.forward(w, u, k, v, False)
    assert lse.shape == (0,)
    assert lse.dtype == F32
    y2, lse2 = torch.ops.biwkv4_kernel.forward(w, u, k, v, True)
    assert lse2.shape == k.shape
    assert lse2.dtype == F32
    assert torch.equal(y, y2)
    # lse is log Σ_i exp(score): softmax(score) = exp(score - lse) sums to one.
    T = k.shape[1]
    dist = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).abs().float()
    scores = -(dist - 1)[:, :, None] * w + k[:, None]
    scores = torch.where(torch.eye(T, dtype=torch.bool)[:, :, None], (u + k)[:, :, None], scores)
    torch.testing.assert_close(lse2, torch.logsumexp(scores, dim=2))


def test_backward_recomputes_missing_stats() -> None:
    """Calling the raw op with need_stats=False on tensors that need grads still differentiates."""
    w, u, k, v = inputs(requires_grad=True)
    y, _ = torch.ops.biwkv4_kernel.forward(w, u, k, v, False)
    y.sum().backward()
    leaves = [t.detach().clone().requires_grad_() for t in (w, u, k, v)]
    biwkv4(*leaves).sum().backward()
    for a, b in zip((w, u, k, v), leaves, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


def test_no_stats_under_no_grad(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    original = ops_module.scan.scan_forward

    def spy(*args: torch.Tensor | bool) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(bool(args[4]))
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(ops_module.scan, "scan_forward", spy)
    w, u, k, v = inputs(requires_grad=True)
    with torch.no_grad():
        biwkv4(w, u, k, v)
    biwkv4(w.detach(), u.detach(), k.detach(), v.detach())
    biwkv4(w, u, k, v)
    assert seen == [False, False, True]


# --- torch.library ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("need_stats", [True, False])
def test_opcheck_forward(dtype: torch.dtype, need_stats: bool) -> None:
    args = inputs(B=2, T=6, C=3, dtype=dtype, requires_grad=dtype != torch.bfloat16)
    torch.library.opcheck(torch.ops.biwkv4_kernel.forward.default, (*args, need_stats))


@pytest.mark.parametrize("dtype", [F32, torch.float16])
def test_opcheck_backward(dtype: torch.dtype) -> None:
    w, u, k, v = inputs(B=2, T=6, C=3, dtype=dtype)
    y, lse = torch.ops.biwkv4_kernel.forward(w, u, k, v, True)
    gy = torch.randn_like(y)
    torch.library.opcheck(torch.ops.biwkv4_kernel.backward.default, (w, u, k, v, y, lse, gy))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_forward_and_backward(backend: str) -> None:
    def loss(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (biwkv4(w, u, k * 2, v).sin() * torch.arange(3.0)).sum()

    compiled = torch.compile(loss, fullgraph=True, backend=backend)
    eager_args = inputs(B=2, T=9, C=3, requires_grad=True)
    compiled_args = [t.detach().clone().requires_grad_() for t in eager_args]
    out_eager, out_compiled = loss(*eager_args), compiled(*compiled_args)
    torch.testing.assert_close(out_compiled, out_eager)
    out_eager.backward()
    out_compiled.backward()
    for a, b in zip(compiled_args, eager_args, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_torch_export() -> None:
    class Mix(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.full((4,), 0.1))
            self.u = torch.nn.Parameter(torch.zeros(4))

        def forward(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return biwkv4(self.w, self.u, k, v)

    k, v = torch.randn(1, 7, 4), torch.randn(1, 7, 4)
    exported = torch.export.export(Mix(), (k, v))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "biwkv4_kernel.forward.default" in targets
    torch.testing.assert_close(exported.module()(k, v), Mix()(k, v))


# --- dispatch -----------------------------------------------------------------------------------


def test_package_exports() -> None:
    assert biwkv4_kernel.cuda_kernel_available() in (True, False)
    assert isinstance(biwkv4_kernel.cuda_kernel_status(), str)
    assert DISABLE_CUDA_ENV == "BIWKV4_DISABLE_CUDA"


def test_cuda_dispatch_honours_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled kernel is chosen only when available, not disabled, and not float64."""
    from biwkv4_kernel import _ext, _triton

    monkeypatch.setattr(_ext, "cuda_kernel_available", lambda: True)
    monkeypatch.setattr(_triton, "triton_kernel_available", lambda: True)
    k32, k64 = torch.zeros(1, 1, 1), torch.zeros(1, 1, 1, dtype=torch.float64)
    monkeypatch.delenv(DISABLE_CUDA_ENV, raising=False)
    assert ops_module._cuda_path(k32) == "cuda"
    assert ops_module._cuda_path(k64) == "pytorch"
    for value, disabled in (("1", True), ("0", False), ("", False), ("off", False), ("yes", True)):
        monkeypatch.setenv(DISABLE_CUDA_ENV, value)  # read on every call
        assert ops_module._cuda_path(k32) == ("triton" if disabled else "cuda")


@pytest.mark.cuda
def test_pytorch_path_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """With both kernels switched off the scan runs on the GPU, matches the reference, captures."""
    monkeypatch.setenv(DISABLE_CUDA_ENV, "1")
    monkeypatch.setenv(DISABLE_TRITON_ENV, "1")
    assert biwkv4_kernel.gpu_backend() == "pytorch"
    args = inputs(B=2, T=70, C=5, device="cuda", requires_grad=True)
    y = biwkv4(*args)
    gy = torch.randn_like(y)
    y.backward(gy)
    ref_args = [t.detach().double().requires_grad_() for t in args]
    y_ref = naive_biwkv4(*ref_args)
    y_ref.backward(gy.double())
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(args, ref_args, strict=True):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-4)

    static = [t.detach().clone() for t in args]
    biwkv4(*static)  # warm up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = biwkv4(*static)
    static[2].copy_(static[2] * 0.5)
    graph.replay()
    torch.testing.assert_close(out, biwkv4(*static), rtol=0, atol=0)
