"""The Triton kernels against the O(T²) reference, on CPU tensors through Triton's interpreter, and
the op's choice between the compiled kernel, Triton and the PyTorch scan.

The interpreter is slow (~0.1 s per program), so these shapes are small: most runs use chunks of 2
positions and blocks of 2 chunks, with which 17 positions already cross every level of the kernels
(9 chunks, 5 blocks, several tiles of blocks, a partial chunk and a partial block). The same checks
run on a GPU with the production tiles in tests/kernel/test_cuda.py.
"""

from __future__ import annotations

import os
import sys
import warnings

import pytest
import torch
from numerics import assert_close

from biwkv4_kernel import _ext, _triton, gpu_backend, naive_biwkv4
from biwkv4_kernel import ops as ops_module

# ‖out - ref‖ / ‖ref‖ allowed: as for the CUDA kernel (tests/kernel/test_cuda.py).
VALUE_TOL = {torch.float32: 1e-5, torch.bfloat16: 6e-3, torch.float16: 1.5e-3}
GRAD_TOL = {torch.float32: 5e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}
SMALL_TILES = {"chunk": 2, "group": 2}
L2 = {"norm": "l2", "floor": 1e-3}  # ‖out - ref‖ / ‖ref‖, as for the CUDA kernel


@pytest.fixture(scope="module")
def kernels():
    if not torch.cuda.is_available():
        assert os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py sets it without a GPU"
    try:
        return _triton.load_kernels()
    except _triton.TritonUnavailable as exc:
        if torch.version.cuda is None:  # CPU-only torch builds do not depend on triton
            pytest.skip(f"torch {torch.__version__} has no CUDA build, hence no triton: {exc}")
        raise


def _inputs(B, T, C, dtype=torch.float32, *, w_scale=None, k_scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(C, generator=g) * (5.0 / T if w_scale is None else w_scale)
    u = torch.randn(C, generator=g) * (5.0 / T)
    k = torch.randn(B, T, C, generator=g) * k_scale
    v = torch.randn(B, T, C, generator=g)
    gy = torch.randn(B, T, C, generator=g)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return (x.to(device) for x in (w, u, k.to(dtype), v.to(dtype), gy.to(dtype)))


def _check(kernels, w, u, k, v, gy, *, value_tol=None, grad_tol=None, **tiles) -> None:
    """y, lse and the four gradients of the Triton kernels against the float64 reference."""
    value_tol = value_tol or VALUE_TOL[k.dtype]
    grad_tol = grad_tol or GRAD_TOL[k.dtype]
    y, lse = kernels.forward(w, u, k, v, True, **tiles)
    grads = kernels.backward(w, u, k, v, y, lse, gy, **tiles)
    leaves = [x.detach().double().requires_grad_() for x in (w, u, k, v)]
    y_ref = naive_biwkv4(*leaves)
    grads_ref = torch.autograd.grad(y_ref, leaves, gy.double())
    assert (y.dtype, y.shape, lse.dtype, lse.shape) == (k.dtype, k.shape, torch.float32, k.shape)
    assert_close(y, y_ref, value_tol, **L2)
    # lse against the same definition: the log of the softmax denominator of each position.
    T = k.shape[1]
    pos = torch.arange(T, device=k.device)
    gap = ((pos[:, None] - pos[None, :]).abs() - 1).double()
    scores = k.double()[:, None] - gap[:, :, None] * w.double()
    diag = torch.eye(T, dtype=torch.bool, device=k.device)[:, :, None]
    scores = torch.where(diag, (u.double() + k.double())[:, :, None], scores)
    assert (lse.double() - torch.logsumexp(scores, dim=2)).abs().max() < 1e-5 * (
        1 + scores.abs().max()
    )
    for name, out, ref, like in zip("wukv", grads, grads_ref, (w, u, k, v), strict=True):
        assert (out.dtype, out.shape) == (like.dtype, like.shape), name
        assert_close(out, ref, grad_tol, names=[f"g{name}"], **L2)


@pytest.mark.parametrize(("B", "T", "C"), [(1, 1, 1), (2, 17, 3), (1, 8, 18)])
def test_every_level_matches_naive(kernels, B, T, C) -> None:
    # (1, 8, 18): two channel blocks (16 per program), T a whole number of chunks and blocks.
    _check(kernels, *_inputs(B, T, C), **SMALL_TILES)


@pytest.mark.parametrize(
    ("w_scale", "k_scale"),
    [(-0.3, 1.0), (2.0, 30.0)],  # weights growing with distance; |k| far beyond exp's range
)
def test_extreme_w_and_k(kernels, w_scale, k_scale) -> None:
    w, u, k, v, gy = _inputs(1, 17, 2, w_scale=w_scale, k_scale=k_scale, seed=3)
    if w_scale < 0:
        w = -w.abs()
    _check(kernels, w, u, k, v, gy, value_tol=1e-4, grad_tol=5e-4, **SMALL_TILES)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(kernels, dtype) -> None:
    _check(kernels, *_inputs(1, 9, 3, dtype, seed=4), **SMALL_TILES)


def test_production_tiles(kernels) -> None:
    """The default chunk and block sizes (16 x 16), on a sequence that ends inside a chunk."""
    _check(kernels, *_inputs(1, 21, 2, seed=5))


def test_no_stats_and_empty_inputs(kernels) -> None:
    w, u, k, v, _ = _inputs(1, 5, 2, seed=6)
    y, _ = kernels.forward(w, u, k, v, True, **SMALL_TILES)
    y2, empty = kernels.forward(w, u, k, v, False, **SMALL_TILES)
    assert torch.equal(y, y2)
    assert (empty.shape, empty.dtype) == ((0,), torch.float32)
    y0, lse0 = kernels.forward(w, u, k[:0], v[:0], True)
    assert y0.shape == lse0.shape == (0, 5, 2)
    gw, gu, gk, gv = kernels.backward(w, u, k[:0], v[:0], y0, lse0, y0)
    assert torch.equal(gw, torch.zeros_like(w))
    assert torch.equal(gu, torch.zeros_like(u))
    assert gk.shape == gv.shape == (0, 5, 2)


# --- the op's choice of implementation on CUDA tensors -----------------------------------------


@pytest.fixture
def fresh_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the once-per-process warning, and neither env variable set."""
    monkeypatch.setattr(ops_module, "_WARNED", [])
    monkeypatch.delenv(ops_module.DISABLE_CUDA_ENV, raising=False)
    monkeypatch.delenv(ops_module.DISABLE_TRITON_ENV, raising=False)


def _paths(monkeypatch: pytest.MonkeyPatch, cuda: bool, triton: bool) -> None:
    monkeypatch.setattr(_ext, "cuda_kernel_available", lambda: cuda)
    monkeypatch.setattr(_triton, "triton_kernel_available", lambda: triton)
    monkeypatch.setattr(_ext, "cuda_kernel_status", lambda: "unavailable: no nvcc (test)")
    monkeypatch.setattr(_triton, "triton_kernel_status", lambda: "unavailable: no triton (test)")


@pytest.mark.usefixtures("fresh_dispatch")
def test_order_is_cuda_then_triton_then_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    k32, k64 = torch.zeros(1, 1, 1), torch.zeros(1, 1, 1, dtype=torch.float64)
    _paths(monkeypatch, cuda=True, triton=True)
    assert ops_module._cuda_path(k32) == "cuda"
    assert ops_module._cuda_path(k64) == "pytorch"  # neither kernel has a float64 path
    monkeypatch.setenv(ops_module.DISABLE_CUDA_ENV, "1")  # read on every call
    assert ops_module._cuda_path(k32) == "triton"
    _paths(monkeypatch, cuda=False, triton=True)
    monkeypatch.delenv(ops_module.DISABLE_CUDA_ENV)
    assert ops_module._cuda_path(k32) == "triton"


@pytest.mark.usefixtures("fresh_dispatch")
def test_scan_on_a_gpu_warns_once_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    _paths(monkeypatch, cuda=False, triton=False)
    k = torch.zeros(1, 1, 1)
    with pytest.warns(RuntimeWarning) as record:
        paths = [ops_module._cuda_path(k) for _ in range(3)]
    assert paths == ["pytorch"] * 3
    assert len(record) == 1
    message = str(record[0].message)
    assert "hundreds of times slower" in message
    assert "pip install nvidia-cuda-nvcc" in message  # how to get the compiled kernel
    assert "Triton: unavailable: no triton (test)" in message  # and why neither is usable
    assert "CUDA kernel: unavailable: no nvcc (test)" in message


@pytest.mark.usefixtures("fresh_dispatch")
def test_no_warning_when_both_kernels_are_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    _paths(monkeypatch, cuda=False, triton=False)
    monkeypatch.setenv(ops_module.DISABLE_CUDA_ENV, "1")
    monkeypatch.setenv(ops_module.DISABLE_TRITON_ENV, "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ops_module._cuda_path(torch.zeros(1, 1, 1)) == "pytorch"


def test_status_without_a_gpu_or_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ops_module.DISABLE_TRITON_ENV, "1")
    assert not _triton.triton_kernel_available()
    assert _triton.triton_kernel_status() == "disabled by BIWKV4_DISABLE_TRITON=1"
    if not torch.cuda.is_available():
        monkeypatch.setenv(ops_module.DISABLE_TRITON_ENV, "0")
        assert _triton.triton_kernel_status() == "no CUDA GPU is visible to torch"
        assert gpu_backend() == "none"


def test_missing_triton_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_triton, "_MODULE", [])
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` fails
    with pytest.raises(_triton.TritonUnavailable, match=r"triton cannot be imported"):
        _triton.load_kernels()
