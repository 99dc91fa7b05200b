"""The GPU kernels against the references: values, lse and all four gradients.

Both GPU implementations, the compiled CUDA extension and the Triton kernels, share one contract
(what the torch.library op calls), so the `kernels` fixture runs each contract test on both. Small
T is checked against the O(T²) float64 reference (`naive_biwkv4`, gradients by autograd); long
sequences against the fast PyTorch scan run in float64 on the same GPU. Then the public op, with
each implementation chosen through the environment, and what a user without nvcc gets.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from numerics import assert_close

from biwkv4_kernel import DISABLE_CUDA_ENV, _triton, biwkv4, gpu_backend, naive_biwkv4
from biwkv4_kernel._ext import cuda_kernel_available, cuda_kernel_status, load_extension
from biwkv4_kernel.scan import scan_backward, scan_forward

pytestmark = pytest.mark.cuda

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# ‖out - ref‖ / ‖ref‖ allowed per dtype. fp32 accumulates in fp32 (ex2.approx: ~2e-7 per weight);
# the 16-bit dtypes are bounded by rounding the output (2^-9 for bf16, 2^-11 for fp16).
VALUE_TOL = {torch.float32: 1e-5, torch.bfloat16: 6e-3, torch.float16: 1.5e-3}
# Gradients of 16-bit runs also see the forward's rounded y (through gy·y).
GRAD_TOL = {torch.float32: 5e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


@pytest.fixture(scope="module")
def ext():
    return load_extension()


@pytest.fixture(scope="module", params=["cuda", "triton"])
def kernels(request):
    """The compiled extension, then the Triton kernels: ``forward`` and ``backward``."""
    return load_extension() if request.param == "cuda" else _triton.load_kernels()


# The CUDA tests' relative error: ‖out − ref‖ / ‖ref‖, a reference that is exactly zero (gk and gu
# at T = 1, where y = v) measured against unit-scale data instead, 1e-3 per element.
L2 = {"norm": "l2", "floor": 1e-3}


def _inputs(B, T, C, dtype, *, seed=0, w_scale=None, k_scale=1.0, device="cuda"):
    """Random w, u (float32) and k, v (dtype): w = randn/T·5 as callers pass decay/T by default."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    w = torch.randn(C, generator=g) * (5.0 / T if w_scale is None else w_scale)
    u = torch.randn(C, generator=g) * (5.0 / T)
    k = torch.randn(B, T, C, generator=g) * k_scale
    v = torch.randn(B, T, C, generator=g)
    return (w.to(device), u.to(device), k.to(device, dtype), v.to(device, dtype))


def _lse_reference(w, u, k):
    """logsumexp over i of the logits, in float64 (O(T²) memory: small T only)."""
    w, u, k = w.double(), u.double(), k.double()
    T = k.shape[1]
    pos = torch.arange(T, device=k.device)
    dist = (pos[:, None] - pos[None, :]).abs().double()
    logits = -(dist - 1)[:, :, None] * w + k[:, None, :, :]
    diag = torch.eye(T, dtype=torch.bool, device=k.device)[:, :, None]
    logits = torch.where(diag, (u + k)[:, :, None, :], logits)
    return torch.logsumexp(logits, dim=2)


def _naive_with_grads(w, u, k, v, gy):
    leaves = [x.detach().double().requires_grad_() for x in (w, u, k, v)]
    y = naive_biwkv4(*leaves)
    grads = torch.autograd.grad(y, leaves, gy.double())
    return y.detach(), grads


def _check_against_naive(kernels, w, u, k, v, *, value_tol=None, grad_tol=None, seed=1):
    value_tol = value_tol or VALUE_TOL[k.dtype]
    grad_tol = grad_tol or GRAD_TOL[k.dtype]
    y, lse = kernels.forward(w, u, k, v, True)
    assert y.dtype == k.dtype
    assert y.shape == k.shape
    assert lse.dtype == torch.float32
    assert lse.shape == k.shape
    gy = torch.randn(k.shape, generator=torch.Generator().manual_seed(seed)).to(k)
    y_ref, grads_ref = _naive_with_grads(w, u, k, v, gy)
    assert_close(y, y_ref, value_tol, **L2)
    lse_ref = _lse_reference(w, u, k)
    assert (lse.double() - lse_ref).abs().max().item() < 1e-5 * max(1.0, lse_ref.abs().max().item())
    grads = kernels.backward(w, u, k, v, y, lse, gy)
    for name, out, ref, like in zip("wukv", grads, grads_ref, (w, u, k, v), strict=True):
        assert out.dtype == like.dtype, name
        assert out.shape == like.shape, name
        assert_close(out, ref, grad_tol, names=[f"g{name}"], **L2)


SHAPES = [
    (1, 1, 1),
    (2, 1, 5),
    (1, 2, 3),
    (1, 7, 1),
    (3, 31, 17),
    (2, 32, 33),
    (2, 97, 64),  # prime T, several chunks of both kernels plus a partial one
    (1, 1021, 6),
    (1, 4097, 3),  # T = 2^12 + 1: one position into a fresh chunk
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float32_matches_naive(kernels, shape):
    _check_against_naive(kernels, *_inputs(*shape, torch.float32))


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 97, 64), (1, 1021, 6)], ids=str)
def test_half_precision_matches_naive(kernels, dtype, shape):
    _check_against_naive(kernels, *_inputs(*shape, DTYPES[dtype]))


@pytest.mark.parametrize(
    ("w_scale", "k_scale", "T"),
    [
        (-1.0, 1.0, 64),  # negative w: weights grow by e per step of distance
        (-0.05, 1.0, 3001),  # slow growth over a long range: logits up to ~150
        (10.0, 1.0, 50),  # fast decay: only the neighbours count
        (0.0, 1.0, 77),  # no decay: a plain softmax over the sequence
        (0.5, 50.0, 200),  # |k| up to ~200: exp(k) overflows float32 by far
        (-0.5, 50.0, 200),
    ],
)
def test_extreme_w_and_k(kernels, w_scale, k_scale, T):
    w, u, k, v = _inputs(2, T, 8, torch.float32, w_scale=w_scale, k_scale=k_scale, seed=3)
    if w_scale < 0:
        w = -w.abs()
    # The logits reach |L| ~ 200 here: their float32 rounding alone is ~1e-5 relative per weight.
    _check_against_naive(kernels, w, u, k, v, value_tol=1e-4, grad_tol=5e-4)


def _scan_reference(w, u, k, v, gy):
    y, lse = scan_forward(w.double(), u.double(), k.double(), v.double(), True)
    grads = scan_backward(w.double(), u.double(), k.double(), v.double(), y, lse, gy.double())
    return y, lse, grads


@pytest.mark.parametrize(("B", "T", "C"), [(2, 4097, 64), (1, 32768, 32)])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_long_sequences_match_the_float64_scan(kernels, B, T, C, dtype):
    w, u, k, v = _inputs(B, T, C, DTYPES[dtype], seed=5)
    gy = torch.randn(k.shape, generator=torch.Generator().manual_seed(6)).to(k)
    y, lse = kernels.forward(w, u, k, v, True)
    y_ref, lse_ref, grads_ref = _scan_reference(w, u, k, v, gy)
    assert_close(y, y_ref, VALUE_TOL[k.dtype], **L2)
    assert (lse.double() - lse_ref).abs().max().item() < 1e-4
    grads = kernels.backward(w, u, k, v, y, lse, gy)
    for name, out, ref in zip("wukv", grads, grads_ref, strict=True):
        assert_close(out, ref, GRAD_TOL[k.dtype], names=[f"g{name}"], **L2)


def test_without_stats_gives_the_same_y(kernels):
    w, u, k, v = _inputs(2, 300, 40, torch.float32)
    y, _lse = kernels.forward(w, u, k, v, True)
    y2, empty = kernels.forward(w, u, k, v, False)
    assert torch.equal(y, y2)
    assert empty.shape == (0,)
    assert empty.dtype == torch.float32


def test_non_contiguous_inputs(kernels):
    w, u, k, v = _inputs(2, 65, 24, torch.float32)
    y, lse = kernels.forward(w, u, k, v, True)
    gy = torch.randn_like(y)
    grads = kernels.backward(w, u, k, v, y, lse, gy)
    # Same values behind strided views: a transposed [B, C, T] buffer and every other channel.
    kt = k.transpose(1, 2).contiguous().transpose(1, 2)
    wide = torch.zeros(2, 65, 48, device="cuda")
    wide[:, :, ::2] = v
    vs = wide[:, :, ::2]
    w2 = torch.stack([w, w], dim=1)[:, 0]
    assert not kt.is_contiguous()
    assert not vs.is_contiguous()
    assert not w2.is_contiguous()
    y2, lse2 = kernels.forward(w2, u, kt, vs, True)
    assert torch.equal(y, y2)
    assert torch.equal(lse, lse2)
    grads2 = kernels.backward(
        w2, u, kt, vs, y2.transpose(1, 2).contiguous().transpose(1, 2), lse2, gy
    )
    for a, b in zip(grads, grads2, strict=True):
        assert torch.equal(a, b)


def test_deterministic(kernels):
    w, u, k, v = _inputs(4, 2048, 640, torch.float32, seed=7)
    gy = torch.randn_like(k)
    first = kernels.forward(w, u, k, v, True)
    first_grads = kernels.backward(w, u, k, v, *first, gy)
    for _ in range(2):
        again = kernels.forward(w, u, k, v, True)
        again_grads = kernels.backward(w, u, k, v, *again, gy)
        for a, b in zip((*first, *first_grads), (*again, *again_grads), strict=True):
            assert torch.equal(a, b)


def test_cuda_graph_capture(kernels):
    static = list(_inputs(2, 500, 96, torch.float32, seed=8))
    gy = torch.randn_like(static[2])
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up outside the capture
        y, lse = kernels.forward(*static, True)
        kernels.backward(*static, y, lse, gy)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, lse = kernels.forward(*static, True)
        grads = kernels.backward(*static, y, lse, gy)
    fresh = _inputs(2, 500, 96, torch.float32, seed=9)
    for dst, src in zip(static, fresh, strict=True):
        dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    y_ref, lse_ref = kernels.forward(*fresh, True)
    grads_ref = kernels.backward(*fresh, y_ref, lse_ref, gy)
    assert torch.equal(y, y_ref)
    assert torch.equal(lse, lse_ref)
    for a, b in zip(grads, grads_ref, strict=True):
        assert torch.equal(a, b)


def test_follows_the_current_stream_and_device(kernels):
    w, u, k, v = _inputs(1, 129, 16, torch.float32)
    expected, _ = kernels.forward(w, u, k, v, False)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y, _ = kernels.forward(w, u, k, v, False)
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(y, expected)


def test_bad_inputs_raise_clear_errors(ext):
    w, u, k, v = _inputs(1, 8, 4, torch.float32)
    with pytest.raises(ValueError, match=r"expected w of shape \[C\]=\[4\], got \[3\]"):
        ext.forward(w[:3], u, k, v, False)
    with pytest.raises(ValueError, match=r"expected v of shape \[1, 8, 4\]"):
        ext.forward(w, u, k, v[:, :7], False)
    with pytest.raises(TypeError, match="expected v of dtype Float"):
        ext.forward(w, u, k, v.half(), False)
    with pytest.raises(TypeError, match="expected w of dtype float32"):
        ext.forward(w.double(), u, k, v, False)
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        ext.forward(w, u, k.double(), v.double(), False)
    with pytest.raises(ValueError, match="expected u on a CUDA device"):
        ext.forward(w, u.cpu(), k, v, False)
    y, lse = ext.forward(w, u, k, v, False)
    with pytest.raises(ValueError, match="need_stats=True"):
        ext.backward(w, u, k, v, y, lse, torch.ones_like(y))


def test_empty_batch(kernels):
    w, u, k, v = _inputs(1, 8, 4, torch.float32)
    y, lse = kernels.forward(w, u, k[:0], v[:0], True)
    assert y.shape == (0, 8, 4)
    assert lse.shape == (0, 8, 4)
    gw, gu, gk, gv = kernels.backward(w, u, k[:0], v[:0], y, lse, y)
    assert torch.equal(gw, torch.zeros_like(w))
    assert torch.equal(gu, torch.zeros_like(u))
    assert gk.shape == gv.shape == (0, 8, 4)


def test_status_reports_the_build():
    assert cuda_kernel_available(), cuda_kernel_status()
    assert cuda_kernel_status().startswith("available: built with nvcc")


def test_disable_env_turns_the_kernel_off(monkeypatch):
    monkeypatch.setenv("BIWKV4_DISABLE_CUDA", "1")
    assert not cuda_kernel_available()
    assert "BIWKV4_DISABLE_CUDA" in cuda_kernel_status()


# --- the public op on CUDA tensors -------------------------------------------------------------


@pytest.fixture(params=["cuda", "triton"])
def backend(request, monkeypatch):
    """The op's implementation for CUDA tensors, chosen as a user would: BIWKV4_DISABLE_CUDA=1
    leaves the Triton kernels."""
    if request.param == "cuda":
        monkeypatch.delenv(DISABLE_CUDA_ENV, raising=False)
    else:
        monkeypatch.setenv(DISABLE_CUDA_ENV, "1")
    assert gpu_backend() == request.param
    return request.param


def test_triton_status_reports_the_self_test():
    assert _triton.triton_kernel_available(), _triton.triton_kernel_status()
    assert _triton.triton_kernel_status().startswith("available: triton ")


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_public_op_values_and_gradients(dtype):
    w, u, k, v = _inputs(2, 97, 64, DTYPES[dtype], seed=11)
    leaves = [x.clone().requires_grad_() for x in (w, u, k, v)]
    y = biwkv4(*leaves)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, gy)
    y_ref, grads_ref = _naive_with_grads(w, u, k, v, gy)
    assert y.dtype == k.dtype
    assert_close(y, y_ref, VALUE_TOL[k.dtype], **L2)
    for name, out, ref in zip("wukv", grads, grads_ref, strict=True):
        assert_close(out, ref, GRAD_TOL[k.dtype], names=[f"g{name}"], **L2)


@pytest.mark.usefixtures("backend")
def test_public_op_under_torch_compile():
    w, u, k, v = _inputs(2, 129, 32, torch.float32, seed=12)

    def f(w, u, k, v):
        return biwkv4(w, u, torch.tanh(k), v * 2).square().sum()

    compiled = torch.compile(f, fullgraph=True)
    leaves = [x.clone().requires_grad_() for x in (w, u, k, v)]
    out = compiled(*leaves)
    grads = torch.autograd.grad(out, leaves)
    leaves_ref = [x.clone().requires_grad_() for x in (w, u, k, v)]
    out_ref = f(*leaves_ref)
    grads_ref = torch.autograd.grad(out_ref, leaves_ref)
    assert math.isclose(out.item(), out_ref.item(), rel_tol=1e-5)
    for a, b in zip(grads, grads_ref, strict=True):
        assert_close(a, b, 1e-5, **L2)


@pytest.mark.usefixtures("backend")
def test_public_op_in_a_cuda_graph():
    static = [x.clone().requires_grad_() for x in _inputs(2, 200, 48, torch.float32, seed=13)]
    gy = torch.randn(2, 200, 48, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            torch.autograd.grad(biwkv4(*static), static, gy)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = biwkv4(*static)
        grads = torch.autograd.grad(y, static, gy)
    fresh = _inputs(2, 200, 48, torch.float32, seed=14)
    with torch.no_grad():
        for dst, src in zip(static, fresh, strict=True):
            dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    y_ref, grads_ref = _naive_with_grads(*fresh, gy)
    assert_close(y, y_ref, 1e-5, **L2)
    for out, ref in zip(grads, grads_ref, strict=True):
        assert_close(out, ref, 5e-5, **L2)


# --- a user without nvcc ------------------------------------------------------------------------

_USE_THE_OP = """
import warnings, torch, biwkv4_kernel as b
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(2):
        k = torch.randn(2, 300, 64, device="cuda", requires_grad=True)
        b.biwkv4(torch.full((64,), 0.01, device="cuda"), torch.zeros(64, device="cuda"), k, k)
        b.biwkv4(k[0, 0].detach(), k[0, 1].detach(), k, k).sum().backward()
ours = [str(w.message) for w in caught if str(w.message).startswith("biwkv4")]
print(b.gpu_backend(), len(ours))
print(*ours, sep="\\n")
"""


def _in_fresh_process(tmp_path, **env):
    """Run _USE_THE_OP where the CUDA toolkit named is missing: nvcc cannot be found."""
    env = {
        **os.environ,
        "BIWKV4_CUDA_HOME": str(tmp_path / "no-cuda-toolkit"),
        "BIWKV4_BUILD_DIR": str(tmp_path / "build"),
        **env,
    }
    env.pop(DISABLE_CUDA_ENV, None)
    out = subprocess.run(
        [sys.executable, "-c", _USE_THE_OP], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_without_nvcc_the_op_runs_triton_silently(tmp_path):
    backend, warnings_count, *_ = _in_fresh_process(tmp_path).split()
    assert (backend, warnings_count) == ("triton", "0")


def test_without_nvcc_or_triton_the_op_warns_once_with_the_fix(tmp_path):
    stdout = _in_fresh_process(tmp_path, BIWKV4_DISABLE_TRITON="1")
    first, message = stdout.split("\n", 1)
    assert first == "pytorch 1"
    assert "pip install nvidia-cuda-nvcc" in message
    assert "no-cuda-toolkit" in message  # why the compiled kernel is unavailable
