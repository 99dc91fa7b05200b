// Torch glue for the bidirectional WKV CUDA kernels: checks, allocation, device guard, stream.
//
// The kernels themselves (biwkv4_cuda.cu) see raw pointers only. This module is what
// biwkv4_kernel/_ext.py JIT-builds and what the torch.library op in ops.py calls:
//   forward(w, u, k, v, need_stats) -> (y, lse)
//   backward(w, u, k, v, y, lse, gy) -> (gw, gu, gk, gv)
// Everything is launched on the current stream of k's device with no host synchronization, so
// both are safe inside CUDA-graph capture.
//
// Headers: the per-operator ATen headers and torch's pybind11 casters, not <torch/extension.h>,
// which pulls in the whole C++ frontend and triples this file's compile time.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/utils/pybind.h>

#include <string>
#include <tuple>

#include "biwkv4.h"

namespace {

// Error messages are assembled from strings only. Streaming an integer into the message (c10::str)
// instantiates libstdc++'s number formatting in this module, which crashed on a machine whose
// libstdc++ at run time was not the one the module was compiled against; std::to_string does not.
std::string shape_of(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

std::string dtype_of(const at::Tensor& t) { return c10::toString(t.scalar_type()); }

biwkv4_dtype dtype_tag(const at::Tensor& k) {
  switch (k.scalar_type()) {
    case at::kFloat:
      return BIWKV4_FLOAT32;
    case at::kBFloat16:
      return BIWKV4_BFLOAT16;
    case at::kHalf:
      return BIWKV4_FLOAT16;
    default:
      TORCH_CHECK_TYPE(false,
                       "biwkv4 CUDA kernel: expected k of dtype float32, bfloat16 or float16, got ",
                       dtype_of(k));
  }
}

void check_cuda(const at::Tensor& t, const char* name, const at::Tensor& k) {
  TORCH_CHECK_VALUE(t.is_cuda(), "biwkv4 CUDA kernel: expected ", name, " on a CUDA device, got ",
                    t.device().str());
  TORCH_CHECK_VALUE(t.device() == k.device(), "biwkv4 CUDA kernel: expected ", name, " on ",
                    k.device().str(), " (the device of k), got ", t.device().str());
}

void check_params(const at::Tensor& w, const at::Tensor& u, const at::Tensor& k) {
  TORCH_CHECK_VALUE(k.dim() == 3, "biwkv4 CUDA kernel: expected k of shape [B, T, C], got ",
                    shape_of(k));
  const int64_t C = k.size(2);
  auto check_param = [&](const at::Tensor& t, const char* name) {
    check_cuda(t, name, k);
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == C, "biwkv4 CUDA kernel: expected ", name,
                      " of shape [C]=[", std::to_string(C), "], got ", shape_of(t));
    TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, "biwkv4 CUDA kernel: expected ", name,
                     " of dtype float32, got ", dtype_of(t));
  };
  check_param(w, "w");
  check_param(u, "u");
}

void check_like_k(const at::Tensor& t, const char* name, const at::Tensor& k) {
  check_cuda(t, name, k);
  TORCH_CHECK_VALUE(t.sizes() == k.sizes(), "biwkv4 CUDA kernel: expected ", name, " of shape ",
                    shape_of(k), " (the shape of k), got ", shape_of(t));
  TORCH_CHECK_TYPE(t.scalar_type() == k.scalar_type(), "biwkv4 CUDA kernel: expected ", name,
                   " of dtype ", dtype_of(k), " (the dtype of k), got ", dtype_of(t));
}

void check_status(cudaError_t status, const char* what) {
  TORCH_CHECK(status == cudaSuccess, "biwkv4 CUDA kernel: ", what, " failed: ",
              cudaGetErrorString(status));
}

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& w, const at::Tensor& u,
                                           const at::Tensor& k, const at::Tensor& v,
                                           bool need_stats) {
  check_params(w, u, k);
  check_like_k(v, "v", k);
  const biwkv4_dtype dtype = dtype_tag(k);
  const c10::cuda::CUDAGuard guard(k.device());

  const at::Tensor wc = w.contiguous(), uc = u.contiguous();
  const at::Tensor kc = k.contiguous(), vc = v.contiguous();
  const int64_t B = k.size(0), T = k.size(1), C = k.size(2);
  at::Tensor y = at::empty_like(kc);
  at::Tensor lse = at::empty(need_stats ? at::IntArrayRef{B, T, C} : at::IntArrayRef{0},
                             k.options().dtype(at::kFloat));
  if (y.numel() == 0) return {y, lse};

  at::Tensor workspace = at::empty({static_cast<int64_t>(biwkv4_forward_workspace_bytes(B, T, C))},
                                   k.options().dtype(at::kByte));
  check_status(biwkv4_forward(wc.data_ptr<float>(), uc.data_ptr<float>(), kc.data_ptr(),
                              vc.data_ptr(), y.data_ptr(),
                              need_stats ? lse.data_ptr<float>() : nullptr, workspace.data_ptr(),
                              B, T, C, dtype, c10::cuda::getCurrentCUDAStream().stream()),
               "forward launch");
  return {y, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& w, const at::Tensor& u, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& y, const at::Tensor& lse, const at::Tensor& gy) {
  check_params(w, u, k);
  check_like_k(v, "v", k);
  check_like_k(y, "y", k);
  check_like_k(gy, "gy", k);
  check_cuda(lse, "lse", k);
  TORCH_CHECK_VALUE(lse.sizes() == k.sizes(), "biwkv4 CUDA kernel: expected lse of shape ",
                    shape_of(k), " (the shape of k; run forward with need_stats=True), got ",
                    shape_of(lse));
  TORCH_CHECK_TYPE(lse.scalar_type() == at::kFloat,
                   "biwkv4 CUDA kernel: expected lse of dtype float32, got ", dtype_of(lse));
  const biwkv4_dtype dtype = dtype_tag(k);
  const c10::cuda::CUDAGuard guard(k.device());

  const at::Tensor wc = w.contiguous(), uc = u.contiguous();
  const at::Tensor kc = k.contiguous(), vc = v.contiguous(), yc = y.contiguous();
  const at::Tensor lc = lse.contiguous(), gc = gy.contiguous();
  const int64_t B = k.size(0), T = k.size(1), C = k.size(2);
  at::Tensor gk = at::empty_like(kc), gv = at::empty_like(kc);
  if (gk.numel() == 0) return {at::zeros_like(wc), at::zeros_like(uc), gk, gv};
  at::Tensor gw = at::empty_like(wc), gu = at::empty_like(uc);

  at::Tensor workspace = at::empty({static_cast<int64_t>(biwkv4_backward_workspace_bytes(B, T, C))},
                                   k.options().dtype(at::kByte));
  check_status(biwkv4_backward(wc.data_ptr<float>(), uc.data_ptr<float>(), kc.data_ptr(),
                               vc.data_ptr(), yc.data_ptr(), lc.data_ptr<float>(), gc.data_ptr(),
                               gw.data_ptr<float>(), gu.data_ptr<float>(), gk.data_ptr(),
                               gv.data_ptr(), workspace.data_ptr(), B, T, C, dtype,
                               c10::cuda::getCurrentCUDAStream().stream()),
               "backward launch");
  return {gw, gu, gk, gv};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Bidirectional WKV (Bi-WKV4) CUDA kernels; use biwkv4_kernel.biwkv4, not this module.";
  m.def("forward", &forward, "y, lse = forward(w, u, k, v, need_stats)", pybind11::arg("w"),
        pybind11::arg("u"), pybind11::arg("k"), pybind11::arg("v"), pybind11::arg("need_stats"));
  m.def("backward", &backward, "gw, gu, gk, gv = backward(w, u, k, v, y, lse, gy)",
        pybind11::arg("w"), pybind11::arg("u"), pybind11::arg("k"), pybind11::arg("v"),
        pybind11::arg("y"), pybind11::arg("lse"), pybind11::arg("gy"));
}
