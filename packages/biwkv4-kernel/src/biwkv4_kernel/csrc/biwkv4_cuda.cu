// Bidirectional WKV (Bi-WKV4, Vision-RWKV eq. 4): exact chunked-scan CUDA kernels.
//
// For one (b, c) the op is a softmax over i of the logits
//     L[t,i] = -(|t-i|-1)·w + k_i   (i != t),     L[t,t] = u + k_t,
// applied to v. Split at t, the two halves are linear recurrences with the constant decay e^{-w}:
//     S_{t+1} = e^{-w} S_t + e^{k_t} (v_t, 1)         (left, i < t;  mirrored for the right half)
// A constant-decay recurrence composes across chunks in closed form (decay^L), so the work splits
// into three launches, all parallel over B, C and chunks of L positions of T:
//   1. summary:  each chunk's own contribution, as seen from its boundary, in both directions;
//   2. scan:     exclusive prefix / suffix of the chunk summaries along each (b, c): per-thread
//                segments of chunks, combined by a Kogge-Stone scan in shared memory;
//   3. output:   each chunk re-scans its positions from its incoming states and writes y (and lse).
// Short forward sequences (at most kFuseChunks chunks) fold the summaries in kernel 3 and skip 2.
// The backward is the same pattern on the transposed sums (see docs/kernel.md for the derivation)
// plus a fixed-order reduction of the per-chunk dw, du partials: no atomics, hence deterministic.
//
// Stability. All weights are powers of two of log2-domain scores (ex2 is one instruction), taken
// relative to a maximum, so no exponential ever overflows, for any sign of w and any size of k:
// - a summary is one sum per direction: its scores are taken relative to their own maximum (two
//   passes over registers), which is exact for any inputs;
// - the outputs need a sum at every position. Where the chunk's scores span less than kFastRange
//   (the usual case: |k| of a few units, w = decay/T), one maximum per chunk and direction serves
//   every position, since no weight relative to it can underflow ("fast path"); otherwise the
//   chunk runs a scan that rescales its state whenever the running maximum changes (ChunkState).
// Scores are formed from integers times w and never accumulated step by step (which would add one
// rounding per position): inside a chunk from the chunk-relative anchors, across chunks from
// (alpha, anchor chunk) pairs (BoundaryState).
//
// Only CUDA headers here (no torch): this file is the slow one to compile, and the torch glue
// lives in biwkv4_ext.cpp. Threads are laid out with the channel index fastest, so every load and
// store of a warp covers consecutive channels of one row: coalesced, bf16/fp16 read natively.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "biwkv4.h"

namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
// Exponent of an empty state. 2^kEmpty is 0, and unlike -inf, kEmpty - kEmpty is 0, not NaN.
constexpr float kEmpty = -1e30f;

// Positions per thread of the chunk kernels (each holds ~5 floats per position in registers in the
// forward, ~8 in the backward), and chunk summaries the backward's scan loads per round.
// Overridable at build time for tuning; the defaults measured best on an H200 (docs/kernel.md).
#ifndef BIWKV4_FWD_CHUNK
#define BIWKV4_FWD_CHUNK 32
#endif
#ifndef BIWKV4_BWD_CHUNK
#define BIWKV4_BWD_CHUNK 16
#endif
#ifndef BIWKV4_SCAN_ROUND_DERIV
#define BIWKV4_SCAN_ROUND_DERIV 3
#endif
constexpr int kFwdChunk = BIWKV4_FWD_CHUNK;
constexpr int kBwdChunk = BIWKV4_BWD_CHUNK;
constexpr int kThreads = 128;          // threads per block of the chunk kernels (channels)
constexpr int kScanLanes = 8;          // (b, c) per block of the chunk scan: a 32-byte sector
constexpr int kScanMaxSegments = 128;  // segments (thread rows) per block of the chunk scan
constexpr int kReduceRows = 128;       // thread rows of the dw, du reduction (a power of two)
// Forward sequences of at most this many chunks skip the scan launch: each output thread folds the
// summaries before and after its chunk itself (O(NC^2) merges in all, cheaper than a launch here).
constexpr int kFuseChunks = 16;
// Chunk summaries the chunk scan loads ahead of their merges (fewer with derivative sums: the
// kernel runs 1024 threads per block, so 64 registers each, and more would spill).
constexpr int kScanRound = 8;
constexpr int kScanRoundDeriv = BIWKV4_SCAN_ROUND_DERIV;

// The fast path takes one maximum per chunk and direction; every weight relative to it lies in
// [2^-kFastRange, 1], and the diagonal factor 2^(u2-w2) in [2^-kFastBonus, 2^kFastBonus], so the
// products it forms stay above 2^-120: normal floats, no underflow (natural-log spans: 33 and 16).
constexpr float kFastRange = 48.f;
constexpr float kFastBonus = 24.f;

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float lg2(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}

// Rescale factors for merging a state of exponent `mine` with one of exponent `other` at a common
// position: the larger exponent becomes the new one, so one factor is 1 and the other 2^-|diff|.
struct Rescale {
  float mine, other;
  bool other_wins;
};

__device__ __forceinline__ Rescale rescale(float mine, float other) {
  const bool other_wins = other > mine;
  const float e = ex2(fminf(mine, other) - fmaxf(mine, other));
  return {other_wins ? e : 1.f, other_wins ? 1.f : e, other_wins};
}

// A decayed log-space accumulator inside one chunk. Its value before step j is
//     2^(mu - j·w2) · s[q]            (and, with DERIV, the w-derivative sums 2^(...) · d[q])
// where d[q] = sum over the included elements of (distance - 1) · weight · value: the sums that
// -d/dw of s[q] needs. push() includes the element at step j, of log2-weight x, with values val.
template <int NV, bool DERIV>
struct ChunkState {
  float mu;
  float s[NV];
  float d[NV];

  __device__ __forceinline__ float exponent(int j, float w2) const {
    return fmaf(-static_cast<float>(j), w2, mu);
  }

  __device__ __forceinline__ void push(int j, float w2, float x, const float (&val)[NV]) {
    const Rescale r = rescale(exponent(j + 1, w2), x);
#pragma unroll
    for (int q = 0; q < NV; ++q) {
      if (DERIV) d[q] = r.mine * (d[q] + s[q]);
      s[q] = fmaf(s[q], r.mine, r.other * val[q]);
    }
    if (r.other_wins) mu = fmaf(static_cast<float>(j + 1), w2, x);
  }
};

// A state carried across chunk boundaries n = 0, 1, ... (each L positions apart). Its exponent at
// boundary n is alpha - (n - anchor)·L·w2: one rounding however far it has travelled.
template <int NV, bool DERIV>
struct BoundaryState {
  float alpha;
  int anchor;
  int at;  // the boundary the derivative sums d refer to
  float s[NV];
  float d[NV];

  __device__ __forceinline__ void clear() {
    alpha = kEmpty;
    anchor = 0;
    at = 0;
#pragma unroll
    for (int q = 0; q < NV; ++q) s[q] = d[q] = 0.f;
  }

  __device__ __forceinline__ float exponent(int n, float Lw2) const {
    return fmaf(-static_cast<float>(n - anchor), Lw2, alpha);
  }

  // Decay this state to boundary n (>= at), then add a state of exponent m at boundary n.
  __device__ __forceinline__ void advance_merge(int n, float L, float Lw2, float m,
                                                const float (&s2)[NV], const float (&d2)[NV]) {
    if (DERIV) {
      const float dist = static_cast<float>(n - at) * L;
#pragma unroll
      for (int q = 0; q < NV; ++q) d[q] = fmaf(dist, s[q], d[q]);
    }
    at = n;
    const Rescale r = rescale(exponent(n, Lw2), m);
#pragma unroll
    for (int q = 0; q < NV; ++q) {
      s[q] = fmaf(s[q], r.mine, r.other * s2[q]);
      if (DERIV) d[q] = fmaf(d[q], r.mine, r.other * d2[q]);
    }
    if (r.other_wins) {
      alpha = m;
      anchor = n;
    }
  }
};

// Components of a stored state: exponent, NV sums, NV derivative sums (DERIV only).
template <int NV, bool DERIV>
__host__ __device__ constexpr int num_components() {
  return 1 + NV * (DERIV ? 2 : 1);
}

// Position of a thread of a chunk kernel. Grid: x = (b, chunk) rows, y = blocks of channels.
struct ChunkCoord {
  int b, n, c, len;
  long long row;   // b * NC + n: this chunk's row in the [B*NC, C] state buffers
  long long base;  // offset of element (b, n*L, c) in a [B, T, C] tensor
  bool valid;
};

template <int L>
__device__ __forceinline__ ChunkCoord chunk_coord(int T, int C, int NC) {
  ChunkCoord p;
  p.row = blockIdx.x;
  p.c = blockIdx.y * blockDim.x + threadIdx.x;
  p.valid = p.c < C;
  p.n = static_cast<int>(blockIdx.x % NC);
  p.b = static_cast<int>(blockIdx.x / NC);
  const int t0 = p.n * L;
  p.len = min(L, T - t0);
  p.base = (static_cast<long long>(p.b) * T + t0) * C + p.c;
  return p;
}

// x[j] = src[base + j*C] · scale for the chunk's positions, `fill` past its end (j >= len). Full
// chunks, all but the last of a sequence, load without predicates.
template <int L, typename T>
__device__ __forceinline__ void load_rows(const T* __restrict__ src, const ChunkCoord& p, int C,
                                          float scale, float fill, float (&x)[L]) {
  const T* at = src + p.base;
  if (p.len == L) {
#pragma unroll
    for (int j = 0; j < L; ++j) x[j] = to_float(at[j * C]) * scale;
  } else {
#pragma unroll
    for (int j = 0; j < L; ++j) x[j] = j < p.len ? to_float(at[j * C]) * scale : fill;
  }
}

// The one-sum-per-direction summary of a chunk, exact for any scores x (log2) and values val:
//   left:  the state at the position after the chunk, sum_j 2^(x_j - (L-1-j)·w2) · val_j,
//   right: the state at the position before it,       sum_j 2^(x_j - j·w2)       · val_j,
// each as (exponent, sums relative to it) and, with DERIV, the distance-weighted sums
// sum_j dist_j · 2^(...) · val_j (dist = L-1-j, resp. j). Positions past the end have x = kEmpty.
template <int L, int NV, bool DERIV>
__device__ __forceinline__ void chunk_summaries(const float (&x)[L], const float (&val)[NV][L],
                                                float w2, float* __restrict__ out,
                                                long long stride, long long at) {
  float mxl = kEmpty, mxr = kEmpty;
#pragma unroll
  for (int j = 0; j < L; ++j) {
    mxl = fmaxf(mxl, fmaf(static_cast<float>(j), w2, x[j]));
    mxr = fmaxf(mxr, fmaf(-static_cast<float>(j), w2, x[j]));
  }
  float sl[NV] = {}, sr[NV] = {}, dl[NV] = {}, dr[NV] = {};
#pragma unroll
  for (int j = 0; j < L; ++j) {
    const float el = ex2(fmaf(static_cast<float>(j), w2, x[j]) - mxl);
    const float er = ex2(fmaf(-static_cast<float>(j), w2, x[j]) - mxr);
#pragma unroll
    for (int q = 0; q < NV; ++q) {
      sl[q] = fmaf(el, val[q][j], sl[q]);
      sr[q] = fmaf(er, val[q][j], sr[q]);
      if (DERIV) {
        dl[q] = fmaf(el * static_cast<float>(L - 1 - j), val[q][j], dl[q]);
        dr[q] = fmaf(er * static_cast<float>(j), val[q][j], dr[q]);
      }
    }
  }
  constexpr int NQ = num_components<NV, DERIV>();
  out[at] = fmaf(-static_cast<float>(L - 1), w2, mxl);
  out[NQ * stride + at] = mxr;
#pragma unroll
  for (int q = 0; q < NV; ++q) {
    out[(1 + q) * stride + at] = sl[q];
    out[(NQ + 1 + q) * stride + at] = sr[q];
    if (DERIV) {
      out[(1 + NV + q) * stride + at] = dl[q];
      out[(NQ + 1 + NV + q) * stride + at] = dr[q];
    }
  }
}

// Largest and smallest anchored score of a full chunk, in the left frame (x_j + j·w2) and the
// right frame (x_j - j·w2), with a non-empty incoming state's anchored score included.
struct Frames {
  float mu_l, mu_r;  // the maxima
  bool fast;         // every anchored score within kFastRange of its maximum
};

template <int L>
__device__ __forceinline__ Frames chunk_frames(const float (&x)[L], float w2, float in_l,
                                               float in_r) {
  float mxl = kEmpty, mnl = -kEmpty, mxr = kEmpty, mnr = -kEmpty;
#pragma unroll
  for (int j = 0; j < L; ++j) {
    const float al = fmaf(static_cast<float>(j), w2, x[j]);
    const float ar = fmaf(-static_cast<float>(j), w2, x[j]);
    mxl = fmaxf(mxl, al);
    mnl = fminf(mnl, al);
    mxr = fmaxf(mxr, ar);
    mnr = fminf(mnr, ar);
  }
  // An empty incoming state (exponent ~kEmpty) contributes exact zeros: leave it out.
  const bool has_l = in_l > 0.5f * kEmpty, has_r = in_r > 0.5f * kEmpty;
  if (has_l) {
    mxl = fmaxf(mxl, in_l);
    mnl = fminf(mnl, in_l);
  }
  if (has_r) {
    mxr = fmaxf(mxr, in_r);
    mnr = fminf(mnr, in_r);
  }
  return {mxl, mxr, mxl - mnl <= kFastRange && mxr - mnr <= kFastRange};
}

template <int NV, bool DERIV>
__device__ __forceinline__ void load_state(const float* __restrict__ src, long long stride,
                                           long long at, float& m, float (&s)[NV],
                                           float (&d)[NV]) {
  m = src[at];
#pragma unroll
  for (int q = 0; q < NV; ++q) {
    s[q] = src[(1 + q) * stride + at];
    d[q] = DERIV ? src[(1 + NV + q) * stride + at] : 0.f;
  }
}

template <int NV, bool DERIV>
__device__ __forceinline__ void store_state(float* __restrict__ dst, long long stride, long long at,
                                            const BoundaryState<NV, DERIV>& st, int n, float Lw2) {
  dst[at] = st.exponent(n, Lw2);
#pragma unroll
  for (int q = 0; q < NV; ++q) {
    dst[(1 + q) * stride + at] = st.s[q];
    if (DERIV) dst[(1 + NV + q) * stride + at] = st.d[q];
  }
}

// Folds the summaries of `count` consecutive chunks into st, in scan order: ascending chunks from
// `first` for the left direction, descending for the right (on mirrored boundaries). With STORE,
// first writes each chunk's incoming state. Loads are issued kScanRound chunks at a time, ahead of
// the merges that need them: the chain of merges is short, the latency of the loads is not.
template <int NV, bool DERIV, bool STORE, bool RIGHT>
__device__ __forceinline__ void fold_chunks(BoundaryState<NV, DERIV>& st,
                                            const float* __restrict__ summ,
                                            float* __restrict__ inc, long long total,
                                            long long row0, int C, int first, int count, int NC,
                                            float Lf, float Lw2) {
  constexpr int R = DERIV ? kScanRoundDeriv : kScanRound;
  for (int i0 = 0; i0 < count; i0 += R) {
    float m[R], s[R][NV], d[R][NV];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int n = RIGHT ? first - (i0 + r) : first + i0 + r;
      if (i0 + r < count) {
        load_state<NV, DERIV>(summ, total, row0 + static_cast<long long>(n) * C, m[r], s[r], d[r]);
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (i0 + r < count) {
        const int n = RIGHT ? first - (i0 + r) : first + i0 + r;
        const int before = RIGHT ? NC - 1 - n : n;
        if (STORE) {
          store_state<NV, DERIV>(inc, total, row0 + static_cast<long long>(n) * C, st, before, Lw2);
        }
        st.advance_merge(before + 1, Lf, Lw2, m[r], s[r], d[r]);
      }
    }
  }
}

// The incoming states of chunk n folded straight from the chunk summaries (the sequential scan of
// kernel 2, for one chunk): out = [left exponent, sums..., right exponent, sums...].
template <int L, int NV, bool DERIV>
__device__ __forceinline__ void fold_incoming(const float* __restrict__ summ, long long total,
                                              long long row0, int C, int n, int NC, float w2,
                                              float (&out)[2 * num_components<NV, DERIV>()]) {
  constexpr int NQ = num_components<NV, DERIV>();
  const float Lf = static_cast<float>(L);
  const float Lw2 = Lf * w2;
  BoundaryState<NV, DERIV> left, right;
  left.clear();
  right.clear();
  fold_chunks<NV, DERIV, false, false>(left, summ, nullptr, total, row0, C, 0, n, NC, Lf, Lw2);
  fold_chunks<NV, DERIV, false, true>(right, summ + NQ * total, nullptr, total, row0, C, NC - 1,
                                      NC - 1 - n, NC, Lf, Lw2);
  out[0] = left.exponent(n, Lw2);
  out[NQ] = right.exponent(NC - 1 - n, Lw2);
#pragma unroll
  for (int q = 0; q < NV; ++q) {
    out[1 + q] = left.s[q];
    out[NQ + 1 + q] = right.s[q];
    if (DERIV) {
      out[1 + NV + q] = left.d[q];
      out[NQ + 1 + NV + q] = right.d[q];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------

// Kernel 1: each chunk's summaries. summ: [2 directions][3 components][B*NC][C].
template <typename T, int L>
__global__ void __launch_bounds__(kThreads)
    fwd_summary_kernel(const float* __restrict__ w, const T* __restrict__ k,
                       const T* __restrict__ v, float* __restrict__ summ, int Tn, int C, int NC) {
  const ChunkCoord p = chunk_coord<L>(Tn, C, NC);
  if (!p.valid) return;
  const long long stride = static_cast<long long>(gridDim.x) * C;
  float x[L], val[2][L];
  load_rows<L>(k, p, C, kLog2e, kEmpty, x);
  load_rows<L>(v, p, C, 1.f, 0.f, val[0]);
#pragma unroll
  for (int j = 0; j < L; ++j) val[1][j] = 1.f;
  chunk_summaries<L, 2, false>(x, val, w[p.c] * kLog2e, summ, stride, p.row * C + p.c);
}

// Incoming states of a chunk, by value (they cross a call).
template <int N>
struct States {
  float q[N];
};

// Kernel 3, exact for any scores: rescaling scans, for partial chunks and wide score ranges. It
// reloads its inputs (from L2), so the fast path's arrays are dead by the time it runs.
template <typename T, int L, bool STATS>
__device__ __forceinline__ void fwd_output_scan(const T* __restrict__ k, const T* __restrict__ v,
                                             const States<6> st, float w2, float u2,
                                             const ChunkCoord p, int C, T* __restrict__ y,
                                             float* __restrict__ lse) {
  float xk[L], xv[L];
  load_rows<L>(k, p, C, kLog2e, 0.f, xk);
  load_rows<L>(v, p, C, 1.f, 0.f, xv);
  const float(&in)[6] = st.q;
  // Right half first: remember the state (of elements after j) at every position j.
  float rm[L], ra[L], rb[L];
  ChunkState<2, false> right{in[3], {in[4], in[5]}, {}};
#pragma unroll
  for (int r = 0; r < L; ++r) {
    const int j = L - 1 - r;
    if (j < p.len) {
      rm[j] = right.exponent(r, w2);
      ra[j] = right.s[0];
      rb[j] = right.s[1];
      right.push(r, w2, xk[j], {xv[j], 1.f});
    }
  }
  ChunkState<2, false> left{in[0], {in[1], in[2]}, {}};
#pragma unroll
  for (int j = 0; j < L; ++j) {
    if (j < p.len) {
      const float ml = left.exponent(j, w2);
      const float md = u2 + xk[j];
      const float m = fmaxf(fmaxf(ml, rm[j]), md);
      const float el = ex2(ml - m), er = ex2(rm[j] - m), ed = ex2(md - m);
      // The term holding the maximum contributes >= 1 (a non-empty state's sum of weights is >= 1
      // at its own exponent), so den is in [1, T] and the division is safe.
      const float den = fmaf(left.s[1], el, fmaf(rb[j], er, ed));
      const float num = fmaf(left.s[0], el, fmaf(ra[j], er, ed * xv[j]));
      y[p.base + j * C] = from_float<T>(__fdividef(num, den));
      if (STATS) lse[p.base + j * C] = (m + lg2(den)) * kLn2;
      left.push(j, w2, xk[j], {xv[j], 1.f});
    }
  }
}

// Kernel 3 on a full chunk whose scores span < kFastRange: one frame per direction.
// With a_j = 2^(x_j + j·w2 - mu_l) and b_j = 2^(x_j - j·w2 - mu_r) (both in [2^-kFastRange, 1]),
// the left and right sums at t are 2^(mu_l - (t-1)·w2)·SL_t and 2^(mu_r + (t+1)·w2)·SR_t, and
// dividing numerator and denominator by the diagonal weight 2^(u2 + x_t) and scaling by
// a_t·b_t·2^(u2-w2) leaves no exponential per position:
//   y_t = (SL_t·b_t + SR_t·a_t + v_t·a_t·b_t·H) / (ZL_t·b_t + ZR_t·a_t + a_t·b_t·H),  H = 2^(u2-w2)
//   log2 den_t = log2(ZL_t·b_t + ZR_t·a_t + a_t·b_t·H) + w2 + mu_l + mu_r - x_t.
template <typename T, int L, bool STATS>
__device__ __forceinline__ void fwd_output_fast(const float (&xk)[L], const float (&xv)[L],
                                                const float (&in)[6], const Frames& f, float w2,
                                                float u2, const ChunkCoord& p, int C,
                                                T* __restrict__ y, float* __restrict__ lse) {
  const float H = ex2(u2 - w2);
  // Right sums after each position, from the incoming state (anchored at -L·w2 in this frame).
  float b[L], sr[L], zr[L];
  const float bin = ex2(fmaf(-static_cast<float>(L), w2, in[3]) - f.mu_r);
  float s = bin * in[4], z = bin * in[5];
#pragma unroll
  for (int j = L - 1; j >= 0; --j) {
    sr[j] = s;
    zr[j] = z;
    b[j] = ex2(fmaf(-static_cast<float>(j), w2, xk[j]) - f.mu_r);
    s = fmaf(b[j], xv[j], s);
    z += b[j];
  }
  const float ain = ex2(in[0] - w2 - f.mu_l);
  s = ain * in[1];
  z = ain * in[2];
  const float base2 = w2 + f.mu_l + f.mu_r;
#pragma unroll
  for (int j = 0; j < L; ++j) {
    const float a = ex2(fmaf(static_cast<float>(j), w2, xk[j]) - f.mu_l);
    const float ab = a * b[j] * H;
    const float num = fmaf(s, b[j], fmaf(sr[j], a, ab * xv[j]));
    const float den = fmaf(z, b[j], fmaf(zr[j], a, ab));
    y[p.base + j * C] = from_float<T>(__fdividef(num, den));
    if (STATS) lse[p.base + j * C] = (lg2(den) + base2 - xk[j]) * kLn2;
    s = fmaf(a, xv[j], s);
    z += a;
  }
}

// Kernel 3: re-scan the chunk from its incoming states and write y, lse. The states come from inc
// (laid out like summ), or, with `fused`, are folded here from the chunk summaries in summ.
template <typename T, int L, bool STATS>
__global__ void __launch_bounds__(kThreads)
    fwd_output_kernel(const float* __restrict__ w, const float* __restrict__ u,
                      const T* __restrict__ k, const T* __restrict__ v,
                      const float* __restrict__ inc, bool fused, T* __restrict__ y,
                      float* __restrict__ lse, int Tn, int C, int NC) {
  const ChunkCoord p = chunk_coord<L>(Tn, C, NC);
  if (!p.valid) return;
  const long long stride = static_cast<long long>(gridDim.x) * C;
  const long long at = p.row * C + p.c;
  const float w2 = w[p.c] * kLog2e;
  const float u2 = u[p.c] * kLog2e;
  States<6> st;
  if (fused) {
    fold_incoming<L, 2, false>(inc, stride, static_cast<long long>(p.b) * NC * C + p.c, C, p.n,
                               NC, w2, st.q);
  } else {
#pragma unroll
    for (int q = 0; q < 6; ++q) st.q[q] = inc[q * stride + at];
  }
  if (p.len == L) {
    float xk[L], xv[L];
    load_rows<L>(k, p, C, kLog2e, 0.f, xk);
    const Frames f =
        chunk_frames<L>(xk, w2, st.q[0] - w2, fmaf(-static_cast<float>(L), w2, st.q[3]));
    if (f.fast && fabsf(u2 - w2) <= kFastBonus) {
      load_rows<L>(v, p, C, 1.f, 0.f, xv);
      fwd_output_fast<T, L, STATS>(xk, xv, st.q, f, w2, u2, p, C, y, lse);
      return;
    }
  }
  fwd_output_scan<T, L, STATS>(k, v, st, w2, u2, p, C, y, lse);
}

// ---------------------------------------------------------------------------------------------
// Kernel 2 (forward and backward): exclusive scan of the chunk summaries along the chunks of each
// (b, c), in both directions. Block: kScanLanes consecutive (b, c) x up to kScanMaxSegments
// segments of consecutive chunks, one per thread row:
//   (a) each thread folds its segment's summaries into one aggregate;
//   (b) the aggregates are scanned across the segments in shared memory (Kogge-Stone: log2 steps);
//   (c) each thread re-folds its segment from the state entering it, writing every chunk's
//       incoming state.
// The right direction runs on mirrored boundary indices (NC-1-n is chunk n's incoming boundary), so
// both directions use the same code. Narrow blocks spread even B*C = 640 sequences over 80 SMs,
// and their shared memory is sized to the segments they have, so small ones pack densely.
// ---------------------------------------------------------------------------------------------

// The aggregate of segments ending at boundary `end` (from shared memory) as a BoundaryState.
template <int NV, bool DERIV>
__device__ __forceinline__ BoundaryState<NV, DERIV> read_aggregate(const float* a, int stride,
                                                                   int end) {
  BoundaryState<NV, DERIV> st;
  st.alpha = a[0];
  st.anchor = st.at = end;
#pragma unroll
  for (int q = 0; q < NV; ++q) {
    st.s[q] = a[(1 + q) * stride];
    st.d[q] = DERIV ? a[(1 + NV + q) * stride] : 0.f;
  }
  return st;
}

template <int NV, bool DERIV>
__device__ __forceinline__ void write_aggregate(float* a, int stride,
                                                const BoundaryState<NV, DERIV>& st, int end,
                                                float Lw2) {
  a[0] = st.exponent(end, Lw2);
#pragma unroll
  for (int q = 0; q < NV; ++q) {
    a[(1 + q) * stride] = st.s[q];
    if (DERIV) a[(1 + NV + q) * stride] = st.d[q];
  }
}

template <int NV, bool DERIV>
__global__ void __launch_bounds__(kScanLanes* kScanMaxSegments)
    scan_chunks_kernel(const float* __restrict__ w, const float* __restrict__ summ,
                       float* __restrict__ inc, int B, int C, int NC, int L) {
  constexpr int NQ = num_components<NV, DERIV>();
  // Aggregates: [2 directions][NQ components][nseg segments][kScanLanes], dynamically sized.
  extern __shared__ float agg[];
  const int lane = threadIdx.x, sid = threadIdx.y, nseg = blockDim.y;
  const int kStride = nseg * kScanLanes;  // between components
  auto slot = [&](int dir, int i) { return agg + (dir * NQ * nseg + i) * kScanLanes + lane; };

  const int bc = blockIdx.x * kScanLanes + lane;
  const bool active = bc < B * C;
  const int b = active ? bc / C : 0;
  const int c = active ? bc % C : 0;
  const float Lf = static_cast<float>(L);
  const float Lw2 = Lf * (w[c] * kLog2e);  // exactly L times the w2 of the chunk kernels
  const long long total = static_cast<long long>(B) * NC * C;
  const long long row0 = static_cast<long long>(b) * NC * C + c;
  const float* summL = summ;
  const float* summR = summ + NQ * total;

  const int seg = (NC + nseg - 1) / nseg;
  auto start = [&](int i) { return min(NC, i * seg); };  // first chunk of segment i
  const int n0 = start(sid), n1 = start(sid + 1);

  // (a) this segment's aggregates, at its end boundary (mirrored for the right direction).
  BoundaryState<NV, DERIV> left, right;
  left.clear();
  right.clear();
  left.at = left.anchor = n0;
  right.at = right.anchor = NC - n1;
  if (active) {
    fold_chunks<NV, DERIV, false, false>(left, summL, nullptr, total, row0, C, n0, n1 - n0, NC,
                                         Lf, Lw2);
    fold_chunks<NV, DERIV, false, true>(right, summR, nullptr, total, row0, C, n1 - 1, n1 - n0,
                                        NC, Lf, Lw2);
  }
  float* mine_l = slot(0, sid);
  float* mine_r = slot(1, sid);
  write_aggregate<NV, DERIV>(mine_l, kStride, left, n1, Lw2);
  write_aggregate<NV, DERIV>(mine_r, kStride, right, NC - n0, Lw2);
  __syncthreads();

  // (b) inclusive scans: left over segments 0..sid, right over sid..nseg-1. The partner's states
  // end where this thread's range begins; decay them across it and merge this range's in.
  for (int off = 1; off < nseg; off <<= 1) {
    const bool has_l = sid >= off, has_r = sid + off < nseg;
    BoundaryState<NV, DERIV> pl, pr, ol, orr;
    if (has_l) {
      pl = read_aggregate<NV, DERIV>(slot(0, sid - off), kStride, start(sid - off + 1));
      ol = read_aggregate<NV, DERIV>(mine_l, kStride, n1);
    }
    if (has_r) {
      pr = read_aggregate<NV, DERIV>(slot(1, sid + off), kStride, NC - start(sid + off));
      orr = read_aggregate<NV, DERIV>(mine_r, kStride, NC - n0);
    }
    __syncthreads();
    if (has_l) {
      pl.advance_merge(n1, Lf, Lw2, ol.alpha, ol.s, ol.d);
      write_aggregate<NV, DERIV>(mine_l, kStride, pl, n1, Lw2);
    }
    if (has_r) {
      pr.advance_merge(NC - n0, Lf, Lw2, orr.alpha, orr.s, orr.d);
      write_aggregate<NV, DERIV>(mine_r, kStride, pr, NC - n0, Lw2);
    }
    __syncthreads();
  }
  if (!active || n0 == n1) return;

  // (c) re-fold the segment from the states entering it (the neighbours' inclusive scans).
  if (sid > 0) {
    left = read_aggregate<NV, DERIV>(slot(0, sid - 1), kStride, n0);
  } else {
    left.clear();
  }
  if (sid + 1 < nseg) {
    right = read_aggregate<NV, DERIV>(slot(1, sid + 1), kStride, NC - n1);
  } else {
    right.clear();
    right.at = right.anchor = NC - n1;
  }
  fold_chunks<NV, DERIV, true, false>(left, summL, inc, total, row0, C, n0, n1 - n0, NC, Lf, Lw2);
  fold_chunks<NV, DERIV, true, true>(right, summR, inc + NQ * total, total, row0, C, n1 - 1,
                                     n1 - n0, NC, Lf, Lw2);
}

// ---------------------------------------------------------------------------------------------
// Backward. With P[t,i] = exp(L[t,i] - lse_t), g_t = gy_t and h_t = gy_t·y_t:
//   gv_i = e^{k_i} G_i + e^{u+k_i-lse_i} g_i,
//   gk_i = e^{k_i} (v_i G_i - H_i) + e^{u+k_i-lse_i} (g_i v_i - h_i),
//   gu   = sum_{b,i} e^{u+k_i-lse_i} (g_i v_i - h_i),
//   gw   = sum_{b,i} e^{k_i} (H'_i - v_i G'_i),
// where G_i = sum_{t != i} e^{-(|t-i|-1) w - lse_t} g_t (H_i likewise with h) and G', H' weight
// each term by (|t-i|-1). These are the forward's decayed sums again, with scores -lse_t and values
// (g_t, h_t), plus the distance-weighted sums: the same three-kernel scheme applies.
// ---------------------------------------------------------------------------------------------

template <typename T, int L>
__global__ void __launch_bounds__(kThreads)
    bwd_summary_kernel(const float* __restrict__ w, const T* __restrict__ y,
                       const float* __restrict__ lse, const T* __restrict__ gy,
                       float* __restrict__ summ, int Tn, int C, int NC) {
  const ChunkCoord p = chunk_coord<L>(Tn, C, NC);
  if (!p.valid) return;
  const long long stride = static_cast<long long>(gridDim.x) * C;
  float x[L], val[2][L];
  load_rows<L>(lse, p, C, -kLog2e, kEmpty, x);  // scores -lse (log2)
  load_rows<L>(gy, p, C, 1.f, 0.f, val[0]);
  load_rows<L>(y, p, C, 1.f, 0.f, val[1]);
#pragma unroll
  for (int j = 0; j < L; ++j) val[1][j] *= val[0][j];
  chunk_summaries<L, 2, true>(x, val, w[p.c] * kLog2e, summ, stride, p.row * C + p.c);
}

struct BwdAcc {
  float gw = 0.f, gu = 0.f;
};

// Loads the backward's inputs of a chunk: log2 keys, values, scores -lse (log2), g = gy, h = gy·y.
template <typename T, int L>
__device__ __forceinline__ void load_backward(const T* __restrict__ k, const T* __restrict__ v,
                                              const T* __restrict__ y,
                                              const float* __restrict__ lse,
                                              const T* __restrict__ gy, const ChunkCoord& p, int C,
                                              float (&xk)[L], float (&xv)[L], float (&xx)[L],
                                              float (&xg)[L], float (&xh)[L]) {
  load_rows<L>(k, p, C, kLog2e, 0.f, xk);
  load_rows<L>(v, p, C, 1.f, 0.f, xv);
  load_rows<L>(lse, p, C, -kLog2e, 0.f, xx);
  load_rows<L>(gy, p, C, 1.f, 0.f, xg);
  load_rows<L>(y, p, C, 1.f, 0.f, xh);
#pragma unroll
  for (int j = 0; j < L; ++j) xh[j] *= xg[j];
}

// Kernel 3 of the backward, exact for any scores (rescaling scans); reloads its inputs, like the
// forward's.
template <typename T, int L>
__device__ __forceinline__ BwdAcc bwd_output_scan(const T* __restrict__ k, const T* __restrict__ v,
                                               const T* __restrict__ y,
                                               const float* __restrict__ lse,
                                               const T* __restrict__ gy, const States<10> st,
                                               float w2, float u2, const ChunkCoord p, int C,
                                               T* __restrict__ gk, T* __restrict__ gv) {
  float xk[L], xv[L], xx[L], xg[L], xh[L];
  load_backward<T, L>(k, v, y, lse, gy, p, C, xk, xv, xx, xg, xh);
  const float(&in)[10] = st.q;
  BwdAcc acc;
  // Right half: its contribution to gk, gv at every position, and to gw.
  float rk[L], rv[L];
  ChunkState<2, true> right{in[5], {in[6], in[7]}, {in[8], in[9]}};
#pragma unroll
  for (int r = 0; r < L; ++r) {
    const int j = L - 1 - r;
    if (j < p.len) {
      const float e = ex2(xk[j] + right.exponent(r, w2));  // = max_t P[t, j] <= 1
      rv[j] = e * right.s[0];
      rk[j] = e * fmaf(xv[j], right.s[0], -right.s[1]);
      acc.gw = fmaf(e, fmaf(-xv[j], right.d[0], right.d[1]), acc.gw);
      right.push(r, w2, xx[j], {xg[j], xh[j]});
    }
  }
  ChunkState<2, true> left{in[0], {in[1], in[2]}, {in[3], in[4]}};
#pragma unroll
  for (int j = 0; j < L; ++j) {
    if (j < p.len) {
      const float e = ex2(xk[j] + left.exponent(j, w2));
      const float ed = ex2(u2 + xk[j] + xx[j]);  // P[j, j]
      const float q = fmaf(xg[j], xv[j], -xh[j]);
      const long long o = p.base + j * C;
      gv[o] = from_float<T>(fmaf(e, left.s[0], fmaf(ed, xg[j], rv[j])));
      gk[o] = from_float<T>(fmaf(e, fmaf(xv[j], left.s[0], -left.s[1]), fmaf(ed, q, rk[j])));
      acc.gu = fmaf(ed, q, acc.gu);
      acc.gw = fmaf(e, fmaf(-xv[j], left.d[0], left.d[1]), acc.gw);
      left.push(j, w2, xx[j], {xg[j], xh[j]});
    }
  }
  return acc;
}

// Kernel 3 of the backward on a full chunk whose scores -lse span < kFastRange: one frame per
// direction, so the sums need no rescaling. In the left frame the state at i is
// 2^(mu_l - (i-1)·w2)·(G, H) with per-element weights 2^(xx_t + t·w2 - mu_l) <= 1, and its
// contribution to i carries e_l = 2^(x_i + mu_l - (i-1)·w2) <= 2^kFastRange; mirrored on the right.
template <typename T, int L>
__device__ __forceinline__ void bwd_output_fast(const float (&xk)[L], const float (&xv)[L],
                                                const float (&xx)[L], const float (&xg)[L],
                                                const float (&xh)[L], const float (&in)[10],
                                                const Frames& f, float w2, float u2,
                                                const ChunkCoord& p, int C, T* __restrict__ gk,
                                                T* __restrict__ gv, BwdAcc& acc) {
  // An empty incoming state has zero sums, but its e_l could overflow: cap the exponent.
  constexpr float kCap = 2.f * kFastRange;
  float rk[L], rv[L];
  const float bin = ex2(fmaf(-static_cast<float>(L), w2, in[5]) - f.mu_r);
  float sg = bin * in[6], sh = bin * in[7], dg = bin * in[8], dh = bin * in[9];
#pragma unroll
  for (int j = L - 1; j >= 0; --j) {
    const float e = ex2(fminf(xk[j] + fmaf(static_cast<float>(j + 1), w2, f.mu_r), kCap));
    rv[j] = e * sg;
    rk[j] = e * fmaf(xv[j], sg, -sh);
    acc.gw = fmaf(e, fmaf(-xv[j], dg, dh), acc.gw);
    const float b = ex2(fmaf(-static_cast<float>(j), w2, xx[j]) - f.mu_r);
    dg += sg;
    dh += sh;
    sg = fmaf(b, xg[j], sg);
    sh = fmaf(b, xh[j], sh);
  }
  const float ain = ex2(in[0] - w2 - f.mu_l);
  sg = ain * in[1];
  sh = ain * in[2];
  dg = ain * in[3];
  dh = ain * in[4];
#pragma unroll
  for (int j = 0; j < L; ++j) {
    const float e = ex2(fminf(xk[j] + fmaf(-static_cast<float>(j - 1), w2, f.mu_l), kCap));
    const float ed = ex2(u2 + xk[j] + xx[j]);  // P[j, j]
    const float q = fmaf(xg[j], xv[j], -xh[j]);
    const long long o = p.base + j * C;
    gv[o] = from_float<T>(fmaf(e, sg, fmaf(ed, xg[j], rv[j])));
    gk[o] = from_float<T>(fmaf(e, fmaf(xv[j], sg, -sh), fmaf(ed, q, rk[j])));
    acc.gu = fmaf(ed, q, acc.gu);
    acc.gw = fmaf(e, fmaf(-xv[j], dg, dh), acc.gw);
    const float a = ex2(fmaf(static_cast<float>(j), w2, xx[j]) - f.mu_l);
    dg += sg;
    dh += sh;
    sg = fmaf(a, xg[j], sg);
    sh = fmaf(a, xh[j], sh);
  }
}

template <typename T, int L>
__global__ void __launch_bounds__(kThreads)
    bwd_output_kernel(const float* __restrict__ w, const float* __restrict__ u,
                      const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ y,
                      const float* __restrict__ lse, const T* __restrict__ gy,
                      const float* __restrict__ inc, T* __restrict__ gk, T* __restrict__ gv,
                      float* __restrict__ part, int Tn, int C, int NC) {
  const ChunkCoord p = chunk_coord<L>(Tn, C, NC);
  if (!p.valid) return;
  const long long stride = static_cast<long long>(gridDim.x) * C;
  const long long at = p.row * C + p.c;
  const float w2 = w[p.c] * kLog2e;
  const float u2 = u[p.c] * kLog2e;
  States<10> st;
#pragma unroll
  for (int q = 0; q < 10; ++q) st.q[q] = inc[q * stride + at];
  BwdAcc acc;
  bool done = false;
  if (p.len == L) {
    float xk[L], xv[L], xx[L], xg[L], xh[L];
    load_backward<T, L>(k, v, y, lse, gy, p, C, xk, xv, xx, xg, xh);
    const Frames f =
        chunk_frames<L>(xx, w2, st.q[0] - w2, fmaf(-static_cast<float>(L), w2, st.q[5]));
    if (f.fast) {
      bwd_output_fast<T, L>(xk, xv, xx, xg, xh, st.q, f, w2, u2, p, C, gk, gv, acc);
      done = true;
    }
  }
  if (!done) acc = bwd_output_scan<T, L>(k, v, y, lse, gy, st, w2, u2, p, C, gk, gv);
  part[at] = acc.gw;
  part[stride + at] = acc.gu;
}

// gw[c], gu[c] = sums of the per-chunk partials over all (b, chunk) rows, in a fixed order: thread
// row y adds rows y, y + kReduceRows, ... and a tree over the thread rows adds those.
__global__ void __launch_bounds__(kScanLanes* kReduceRows)
    reduce_rows_kernel(const float* __restrict__ part, float* __restrict__ gw,
                       float* __restrict__ gu, long long rows, int C) {
  __shared__ float red[2][kReduceRows][kScanLanes];
  const int lane = threadIdx.x, ty = threadIdx.y;
  const int c = blockIdx.x * kScanLanes + lane;
  float a = 0.f, b = 0.f;
  if (c < C) {
    const long long total = rows * C;
#pragma unroll 8
    for (long long r = ty; r < rows; r += kReduceRows) {
      a += part[r * C + c];
      b += part[total + r * C + c];
    }
  }
  red[0][ty][lane] = a;
  red[1][ty][lane] = b;
  __syncthreads();
  for (int half = kReduceRows / 2; half > 0; half >>= 1) {
    if (ty < half) {
      red[0][ty][lane] += red[0][ty + half][lane];
      red[1][ty][lane] += red[1][ty + half][lane];
    }
    __syncthreads();
  }
  if (ty == 0 && c < C) {
    gw[c] = red[0][0][lane];
    gu[c] = red[1][0][lane];
  }
}

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------

long long ceil_div(long long a, long long b) { return (a + b - 1) / b; }

size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

template <int NV, bool DERIV>
void launch_scan(const float* w, const float* summ, float* inc, int B, int C, int NC, int L,
                 cudaStream_t stream) {
  // One segment per chunk up to kScanMaxSegments; longer sequences share the segments out.
  const int segments = NC < kScanMaxSegments ? NC : kScanMaxSegments;
  const dim3 block(kScanLanes, segments);
  const dim3 grid(static_cast<unsigned>(ceil_div(static_cast<long long>(B) * C, kScanLanes)));
  const size_t smem = sizeof(float) * 2 * num_components<NV, DERIV>() * segments * kScanLanes;
  scan_chunks_kernel<NV, DERIV><<<grid, block, smem, stream>>>(w, summ, inc, B, C, NC, L);
}

// Grid of the chunk kernels: one block row per (b, chunk), blocks of up to kThreads channels.
struct ChunkGrid {
  dim3 grid, block;
};

ChunkGrid chunk_grid(int B, int NC, int C) {
  const int threads = static_cast<int>(ceil_div(C < kThreads ? C : kThreads, 32) * 32);
  return {dim3(static_cast<unsigned>(B) * NC, static_cast<unsigned>(ceil_div(C, threads))),
          dim3(threads)};
}

template <typename T>
void forward_impl(const float* w, const float* u, const void* k, const void* v, void* y,
                  float* lse, void* workspace, int B, int Tn, int C, cudaStream_t stream) {
  constexpr int L = kFwdChunk;
  const int NC = static_cast<int>(ceil_div(Tn, L));
  const long long total = static_cast<long long>(B) * NC * C;
  float* summ = static_cast<float*>(workspace);
  float* inc = summ + 6 * total;
  const ChunkGrid g = chunk_grid(B, NC, C);
  const T* kt = static_cast<const T*>(k);
  const T* vt = static_cast<const T*>(v);
  fwd_summary_kernel<T, L><<<g.grid, g.block, 0, stream>>>(w, kt, vt, summ, Tn, C, NC);
  const bool fused = NC <= kFuseChunks;
  if (!fused) launch_scan<2, false>(w, summ, inc, B, C, NC, L, stream);
  const float* states = fused ? summ : inc;
  if (lse != nullptr) {
    fwd_output_kernel<T, L, true><<<g.grid, g.block, 0, stream>>>(
        w, u, kt, vt, states, fused, static_cast<T*>(y), lse, Tn, C, NC);
  } else {
    fwd_output_kernel<T, L, false><<<g.grid, g.block, 0, stream>>>(
        w, u, kt, vt, states, fused, static_cast<T*>(y), nullptr, Tn, C, NC);
  }
}

template <typename T>
void backward_impl(const float* w, const float* u, const void* k, const void* v, const void* y,
                   const float* lse, const void* gy, float* gw, float* gu, void* gk, void* gv,
                   void* workspace, int B, int Tn, int C, cudaStream_t stream) {
  constexpr int L = kBwdChunk;
  const int NC = static_cast<int>(ceil_div(Tn, L));
  const long long total = static_cast<long long>(B) * NC * C;
  float* summ = static_cast<float*>(workspace);
  float* inc = summ + 10 * total;
  float* part = inc + 10 * total;
  const ChunkGrid g = chunk_grid(B, NC, C);
  const T* yt = static_cast<const T*>(y);
  const T* gyt = static_cast<const T*>(gy);
  bwd_summary_kernel<T, L><<<g.grid, g.block, 0, stream>>>(w, yt, lse, gyt, summ, Tn, C, NC);
  launch_scan<2, true>(w, summ, inc, B, C, NC, L, stream);
  bwd_output_kernel<T, L><<<g.grid, g.block, 0, stream>>>(
      w, u, static_cast<const T*>(k), static_cast<const T*>(v), yt, lse, gyt, inc,
      static_cast<T*>(gk), static_cast<T*>(gv), part, Tn, C, NC);
  const dim3 rgrid(static_cast<unsigned>(ceil_div(C, kScanLanes)));
  reduce_rows_kernel<<<rgrid, dim3(kScanLanes, kReduceRows), 0, stream>>>(
      part, gw, gu, static_cast<long long>(B) * NC, C);
}

bool sizes_ok(int64_t B, int64_t T, int64_t C) {
  // Block rows (B * chunks) and 32-bit offsets within a chunk (kFwdChunk * C) must fit the grid
  // and int; B * C is indexed as int by the chunk scan. Offsets of elements are 64-bit.
  constexpr int64_t kIntMax = 2147483647;
  const int64_t chunk = kFwdChunk < kBwdChunk ? kFwdChunk : kBwdChunk;
  const int64_t longest = kFwdChunk > kBwdChunk ? kFwdChunk : kBwdChunk;
  return B >= 1 && T >= 1 && C >= 1 && T <= kIntMax && B * C <= kIntMax &&
         B * ceil_div(T, chunk) <= kIntMax && C * longest <= kIntMax;
}

}  // namespace

extern "C" {

size_t biwkv4_forward_workspace_bytes(int64_t B, int64_t T, int64_t C) {
  return align256(sizeof(float) * 12 * static_cast<size_t>(B * ceil_div(T, kFwdChunk) * C));
}

size_t biwkv4_backward_workspace_bytes(int64_t B, int64_t T, int64_t C) {
  return align256(sizeof(float) * 22 * static_cast<size_t>(B * ceil_div(T, kBwdChunk) * C));
}

cudaError_t biwkv4_forward(const float* w, const float* u, const void* k, const void* v, void* y,
                           float* lse, void* workspace, int64_t B, int64_t T, int64_t C,
                           biwkv4_dtype dtype, cudaStream_t stream) {
  if (!sizes_ok(B, T, C)) return cudaErrorInvalidValue;
  const int b = static_cast<int>(B), t = static_cast<int>(T), c = static_cast<int>(C);
  switch (dtype) {
    case BIWKV4_FLOAT32:
      forward_impl<float>(w, u, k, v, y, lse, workspace, b, t, c, stream);
      break;
    case BIWKV4_BFLOAT16:
      forward_impl<__nv_bfloat16>(w, u, k, v, y, lse, workspace, b, t, c, stream);
      break;
    case BIWKV4_FLOAT16:
      forward_impl<__half>(w, u, k, v, y, lse, workspace, b, t, c, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t biwkv4_backward(const float* w, const float* u, const void* k, const void* v,
                            const void* y, const float* lse, const void* gy, float* gw, float* gu,
                            void* gk, void* gv, void* workspace, int64_t B, int64_t T, int64_t C,
                            biwkv4_dtype dtype, cudaStream_t stream) {
  if (!sizes_ok(B, T, C)) return cudaErrorInvalidValue;
  const int b = static_cast<int>(B), t = static_cast<int>(T), c = static_cast<int>(C);
  switch (dtype) {
    case BIWKV4_FLOAT32:
      backward_impl<float>(w, u, k, v, y, lse, gy, gw, gu, gk, gv, workspace, b, t, c, stream);
      break;
    case BIWKV4_BFLOAT16:
      backward_impl<__nv_bfloat16>(w, u, k, v, y, lse, gy, gw, gu, gk, gv, workspace, b, t, c,
                                   stream);
      break;
    case BIWKV4_FLOAT16:
      backward_impl<__half>(w, u, k, v, y, lse, gy, gw, gu, gk, gv, workspace, b, t, c, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // extern "C"
