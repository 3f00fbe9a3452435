// The attention step the SM90 (wgmma) kernels share (sparse prefill, sparse decode). A CTA of two
// warpgroups (256 threads) holds 64 query rows — the M = 64 of every wgmma — and walks the keys
// in tiles of 64, stored like Q as 128-byte-swizzled slabs of 64 rows x 64 channels (wgmma.cuh):
//   S = Q K^T   warpgroup g: the tile's keys 32g..32g+31, all d_qk channels (m64n32k16);
//   softmax     online, in log2 units; the two halves' row maxima and sums meet in shared
//               memory; P is rounded to bf16 into a 64 x 64 swizzled slab;
//   O += P V    warpgroup g: channels 256g..256g+255 (m64n256k16; V = the first 512 channels of
//               the K slabs, read MN-major, so each key row is stored once for both products).
// Accumulator layout (wgmma m64nN): register i of a thread holds row rows[(i % 4) / 2] and, for
// S, key 32 g + 8 (i / 4) + 2 q4 + i % 2; for O, channel 256 g + 8 (i / 4) + 2 q4 + i % 2.
#pragma once

#include <cmath>
#include <cstdint>

#include "cuda/common/mma_tile.cuh"
#include "cuda/common/portable.h"
#include "cuda/common/wgmma.cuh"

FMLA_CUDA_NS_BEGIN

namespace wgmma_attention {

inline constexpr int kThreads = 256, kRows = 64, kTile = 64, kHalf = kTile / 2, kDv = 512;
inline constexpr int kSlab = 64 * 128;  // bytes of a 64-row slab

// This thread's place: warpgroup, lane within its quad, its two accumulator rows.
struct Place {
  int wg, q4, rows[2];
};
__device__ __forceinline__ Place place() {
  const int tid = static_cast<int>(threadIdx.x), lane = tid % 32, wq = (tid / 32) % 4;
  return {tid / 128, lane % 4, {16 * wq + lane / 4, 16 * wq + lane / 4 + 8}};
}

// Key (S) or channel offset (O, within the warpgroup's 256) of accumulator register i.
__device__ __forceinline__ int s_column(const Place& p, int i) {
  return kHalf * p.wg + 8 * (i / 4) + 2 * p.q4 + i % 2;
}

// Where channels 8c..8c+7 of row `row` go in 64-row slabs starting at `base`.
__device__ __forceinline__ uint16_t* slab_chunk(unsigned char* base, int row, int c) {
  return reinterpret_cast<uint16_t*>(base + (c / 8) * kSlab + swizzle128_offset(row, c % 8));
}

// The dynamic shared memory rounded up to the 1024-byte alignment of the swizzle pattern (the
// kernels allocate 1 KiB more than they use).
__device__ __forceinline__ unsigned char* aligned_smem() {
  unsigned char* raw = dynamic_smem();
  return raw + ((1024u - smem_address(raw) % 1024u) % 1024u);
}

// S = Q K^T for this warpgroup's 32 keys: Q and the key tile as kD-channel slabs of bf16 (kFp16:
// fp16).
template <int kD, bool kFp16 = false>
__device__ __forceinline__ void scores(float (&s)[16], uint32_t q_addr, uint32_t kv_addr,
                                       const Place& p) {
  FMLA_UNROLL
  for (auto& t : s) t = 0.0f;
  wgmma_fence_operands(s);  // the zeros are written before the fence, not sunk past it
  wgmma_fence();
  FMLA_UNROLL
  for (int ks = 0; ks < kD / 16; ++ks) {
    wgmma_m64n32k16<kFp16, false>(s, wgmma_desc_k_major(q_addr, kRows, 0, ks),
                                wgmma_desc_k_major(kv_addr, kTile, kHalf * p.wg, ks), ks > 0);
  }
  wgmma_commit();
  wgmma_wait<0>();
  wgmma_fence_operands(s);
}

// One online-softmax step over the tile and O += P V. s: this thread's scores in log2 units, -inf
// where masked; m / l the rows' running max and sum (rows[0], rows[1]); o rescaled and
// accumulated. sp: the P slab, P rounded to the element type (kFp16: fp16, else bf16); s_max /
// s_sum: 2 x 64 floats each. Contains two __syncthreads (every thread of the CTA calls it); a
// row with no finite score yet keeps m = -inf and p = 0.
template <bool kFp16 = false>
__device__ __forceinline__ void softmax_pv(const float (&s)[16], float (&m)[2], float (&l)[2],
                                           float (&o)[128], unsigned char* sp, uint32_t kv_addr,
                                           float* s_max, float* s_sum, const Place& p) {
  constexpr float kInf = INFINITY;
  float row_max[2] = {-kInf, -kInf};
  FMLA_UNROLL
  for (int i = 0; i < 16; ++i) row_max[(i % 4) / 2] = fmaxf(row_max[(i % 4) / 2], s[i]);
  FMLA_UNROLL
  for (int h = 0; h < 2; ++h) {
    row_max[h] = quad_max(row_max[h]);
    if (p.q4 == 0) s_max[p.wg * kRows + p.rows[h]] = row_max[h];
  }
  __syncthreads();
  float alpha[2], m_use[2], row_sum[2] = {0.0f, 0.0f};
  FMLA_UNROLL
  for (int h = 0; h < 2; ++h) {
    const float t = fmaxf(m[h], fmaxf(s_max[p.rows[h]], s_max[kRows + p.rows[h]]));
    m_use[h] = t == -kInf ? 0.0f : t;
    alpha[h] = exp2f(m[h] - m_use[h]);
    m[h] = t;
  }
  FMLA_UNROLL
  for (int i = 0; i < 16; i += 2) {
    const int h = (i % 4) / 2, col = s_column(p, i);
    const float p0 = exp2f(s[i] - m_use[h]), p1 = exp2f(s[i + 1] - m_use[h]);
    row_sum[h] += p0 + p1;
    *reinterpret_cast<uint32_t*>(sp + swizzle128_offset(p.rows[h], col / 8) + (col % 8) * 2) =
        pack2<kFp16>(p0, p1);
  }
  FMLA_UNROLL
  for (int h = 0; h < 2; ++h) {
    row_sum[h] = quad_sum(row_sum[h]);
    if (p.q4 == 0) s_sum[p.wg * kRows + p.rows[h]] = row_sum[h];
  }
  fence_proxy_async();  // P, for the wgmma below
  __syncthreads();
  FMLA_UNROLL
  for (int h = 0; h < 2; ++h) {
    l[h] = l[h] * alpha[h] + (s_sum[p.rows[h]] + s_sum[kRows + p.rows[h]]);
  }
  FMLA_UNROLL
  for (int i = 0; i < 128; ++i) o[i] *= alpha[(i % 4) / 2];

  // O += P V for this warpgroup's 256 channels.
  const uint32_t p_addr = smem_address(sp);
  wgmma_fence_operands(o);
  wgmma_fence();
  FMLA_UNROLL
  for (int ks = 0; ks < kTile / 16; ++ks) {
    wgmma_m64n256k16<kFp16, true>(o, wgmma_desc_k_major(p_addr, kRows, 0, ks),
                                wgmma_desc_mn_major(kv_addr, kTile, 256 * p.wg, ks), true);
  }
  wgmma_commit();
  wgmma_wait<0>();
  wgmma_fence_operands(o);
}

}  // namespace wgmma_attention

FMLA_CUDA_NS_END
