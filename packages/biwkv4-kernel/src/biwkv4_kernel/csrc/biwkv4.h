// Plain C interface of the bidirectional WKV CUDA kernels (biwkv4_cuda.cu).
//
// No torch types cross this boundary: the kernels take raw device pointers, sizes, a dtype tag and
// a stream, so the .cu file compiles against the CUDA headers alone. biwkv4_ext.cpp is the torch
// glue (checks, allocation, current stream) around these functions.
#pragma once

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Element type of k, v, y, gy, gk, gv. w, u, lse, gw, gu are always float32.
typedef enum { BIWKV4_FLOAT32 = 0, BIWKV4_BFLOAT16 = 1, BIWKV4_FLOAT16 = 2 } biwkv4_dtype;

// Bytes of scratch device memory the forward / backward need for these sizes (256-byte aligned).
size_t biwkv4_forward_workspace_bytes(int64_t B, int64_t T, int64_t C);
size_t biwkv4_backward_workspace_bytes(int64_t B, int64_t T, int64_t C);

// y[b,t,c] = softmax-weighted average of v[b,:,c] (see docs/kernel.md). w, u: [C]; k, v, y: [B,T,C]
// contiguous. lse (float32 [B,T,C], natural log of the softmax denominator) is written when not
// NULL. Launches only on `stream`; no host synchronization. Returns the launch status.
cudaError_t biwkv4_forward(const float* w, const float* u, const void* k, const void* v, void* y,
                           float* lse, void* workspace, int64_t B, int64_t T, int64_t C,
                           biwkv4_dtype dtype, cudaStream_t stream);

// Gradients of sum(gy * y) with respect to w, u (float32 [C]) and k, v ([B,T,C], dtype of k),
// given the forward's y and lse. Deterministic: no atomics, fixed-order reductions.
cudaError_t biwkv4_backward(const float* w, const float* u, const void* k, const void* v,
                            const void* y, const float* lse, const void* gy, float* gw, float* gu,
                            void* gk, void* gv, void* workspace, int64_t B, int64_t T, int64_t C,
                            biwkv4_dtype dtype, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
