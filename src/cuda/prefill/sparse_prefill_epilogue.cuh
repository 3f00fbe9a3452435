// What the sparse prefill kernels (SM80 and SM90 generations) share: the end of a row (1/l, the
// attention sink, max_logits and lse as cpu/prefill/sparse_prefill.cpp gives them), the copy of
// the staged bf16 rows to out, and the launch in chunks that fit gridDim.x.
#pragma once

#include <cmath>
#include <cstdint>

#include "cuda/common/mma_tile.cuh"
#include "cuda/common/portable.h"
#include "cuda/prefill/sparse_prefill_sm80.h"

FMLA_CUDA_NS_BEGIN

namespace sparse_prefill {

constexpr int kDv = 512;

// Row hr of the CTA's rows (head h0 + hr of query token tok; rows >= nh are padding) with
// running maximum m (log2 units) and sum l: returns the factor its output is scaled by (0 for an
// empty row, whose out is 0). The row's `writer` thread stores max_logits (natural units, -inf
// when empty) and lse (+inf when empty).
__device__ __forceinline__ float finish_row(const SparsePrefillKernelArgs& a, int64_t tok,
                                            int64_t h0, int hr, int nh, float m, float l,
                                            bool writer) {
  constexpr float kLn2 = 0.693147180559945309f;
  float factor = 0.0f, max_logit = -INFINITY, lse = INFINITY;
  if (l > 0.0f) {
    max_logit = m * kLn2;
    lse = (m + log2f(l)) * kLn2;
    factor = 1.0f / l;
    if (a.attn_sink && hr < nh) {  // an extra logit with a zero value vector
      factor /= 1.0f + expf(a.attn_sink[h0 + hr] - lse);  // sink +inf: 0; -inf: unchanged
    }
  }
  if (writer && hr < nh) {
    const int64_t head = h0 + hr;
    a.max_logits[tok * a.max_logits_stride[0] + head * a.max_logits_stride[1]] = max_logit;
    a.lse[tok * a.lse_stride[0] + head * a.lse_stride[1]] = lse;
  }
  return factor;
}

// Copies the nh real rows staged in shared memory (row r: 512 bf16 at so + r * ld) to out,
// 16 bytes per thread and step, all kThreads threads of the CTA taking part.
template <int kThreads>
__device__ __forceinline__ void store_rows(const SparsePrefillKernelArgs& a, const uint16_t* so,
                                           int ld, int64_t tok, int64_t h0, int nh) {
  constexpr int kOutChunks = kDv / 8;
  for (int it = static_cast<int>(threadIdx.x); it < nh * kOutChunks; it += kThreads) {
    const int row = it / kOutChunks, c = it % kOutChunks;
    const uint16_t* src = so + row * ld + 8 * c;
    uint16_t* dst = a.out + tok * a.out_stride[0] + (h0 + row) * a.out_stride[1] + 8 * c;
    if (a.out_aligned) {
      *reinterpret_cast<Bytes16*>(dst) = *reinterpret_cast<const Bytes16*>(src);
    } else {
      FMLA_UNROLL
      for (int e = 0; e < 8; ++e) dst[e] = src[e];
    }
  }
}

// launch(grid, block0) over the q_len x ceil(num_heads_q / rows) CTAs, in grids of at most
// 2^30 blocks (gridDim.x's limit is 2^31 - 1); block0 is the chunk's first CTA.
template <class Launch>
inline void launch_in_chunks(const SparsePrefillKernelArgs& a, int rows, Launch&& launch) {
  const int64_t blocks = a.q_len * ((a.num_heads_q + rows - 1) / rows);
  constexpr int64_t kMaxGrid = int64_t{1} << 30;
  for (int64_t b0 = 0; b0 < blocks; b0 += kMaxGrid) {
    launch(dim3(static_cast<unsigned>(blocks - b0 < kMaxGrid ? blocks - b0 : kMaxGrid)), b0);
  }
}

}  // namespace sparse_prefill

FMLA_CUDA_NS_END
