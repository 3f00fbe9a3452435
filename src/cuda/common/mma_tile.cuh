// The warp-level pieces the SM80 attention kernels share (dense decode, sparse decode, sparse
// prefill): a CTA of 4 warps holds 16 query rows (one m16 tile, rows g and g + 8 of lane
// 4g + q4) and walks the keys in tiles; in S = Q K^T warp w owns keys 8w..8w+7 of a tile, in
// O = P V channels 128w..128w+127 (16 n8 accumulators o[16][4]).
#pragma once

#include <cmath>
#include <cstdint>

#include "cuda/common/portable.h"

FMLA_CUDA_NS_BEGIN

struct alignas(16) Bytes16 {
  uint32_t w[4];
};

// d += a b with m16n8k16, fp16 or bf16 operands, fp32 accumulation.
template <bool kFp16>
__device__ __forceinline__ void mma_acc(float (&d)[4], const uint32_t (&a)[4],
                                        const uint32_t (&b)[2]) {
  if constexpr (kFp16) {
    mma_m16n8k16_f16(d, a, b, d);
  } else {
    mma_m16n8k16_bf16(d, a, b, d);
  }
}

// Two floats rounded to the element type and packed (lo in the low half).
template <bool kFp16>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (kFp16) {
    return pack_f16x2(lo, hi);
  } else {
    return pack_bf16x2(lo, hi);
  }
}

// Max / sum over the 4 lanes of a quad (the lanes holding one accumulator row).
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(kFullMask, x, 1));
  return fmaxf(x, __shfl_xor_sync(kFullMask, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(kFullMask, x, 1);
  return x + __shfl_xor_sync(kFullMask, x, 2);
}

// 16 bytes global -> shared: cp.async when `aligned` (not `valid`: zero-fill, nothing read),
// otherwise element by element (zeros when !valid); either is visible after the next
// cp_async_wait + __syncthreads.
__device__ __forceinline__ void copy16(uint16_t* dst, const uint16_t* src, bool valid,
                                      bool aligned) {
  if (aligned) {
    cp_async_16(dst, src, valid ? 16 : 0);
    return;
  }
  Bytes16 v = {{0u, 0u, 0u, 0u}};
  if (valid) {
    FMLA_UNROLL
    for (int i = 0; i < 4; ++i) {
      v.w[i] = src[2 * i] | (static_cast<uint32_t>(src[2 * i + 1]) << 16);
    }
  }
  *reinterpret_cast<Bytes16*>(dst) = v;
}

// O += P V for this warp's 128 channels: P (16 x kKeys, row stride ldp) and V (kKeys rows of
// row stride ldv; channel 0 at sv) in shared memory.
template <bool kFp16, int kKeys>
__device__ __forceinline__ void pv_accumulate(float (&o)[16][4], const uint16_t* sp, int ldp,
                                              const uint16_t* sv, int ldv, int warp, int lane) {
  const uint16_t* p_row = sp + (lane % 16) * ldp + (lane / 16) * 8;
  const uint16_t* v_row = sv + (lane % 16) * ldv + 128 * warp + (lane / 16) * 8;
  FMLA_UNROLL
  for (int ks = 0; ks < kKeys / 16; ++ks) {
    uint32_t pa[4];
    ldmatrix<4, false>(pa, p_row + 16 * ks);
    FMLA_UNROLL
    for (int np = 0; np < 8; ++np) {
      uint32_t vb[4];
      ldmatrix<4, true>(vb, v_row + 16 * ks * ldv + 16 * np);
      const uint32_t b0[2] = {vb[0], vb[1]}, b1[2] = {vb[2], vb[3]};
      mma_acc<kFp16>(o[2 * np], pa, b0);
      mma_acc<kFp16>(o[2 * np + 1], pa, b1);
    }
  }
}

// One online-softmax step of the 4-warp CTA over a tile (log2 units), for rows g and g + 8:
// s = this lane's scores (keys 8 warp + 2 q4 + {0, 1}; -inf where masked), m / l the rows'
// running max and sum (identical in every lane of the CTA), o rescaled. P goes to sp (row
// stride ldp) rounded to bf16; s_max / s_sum hold 4 x 16 floats. Contains two __syncthreads
// (every thread of the CTA must call it); a row with no finite score yet keeps m = -inf, p 0.
__device__ __forceinline__ void online_softmax_bf16(const float (&s)[4], float (&m)[2],
                                                    float (&l)[2], float (&o)[16][4],
                                                    uint16_t* sp, int ldp, float* s_max,
                                                    float* s_sum, int warp, int lane) {
  constexpr int kWarps = 4, kRows = 16;
  constexpr float kInf = INFINITY;
  const int g = lane / 4, q4 = lane % 4;
  float row_max[2] = {fmaxf(s[0], s[1]), fmaxf(s[2], s[3])};
  FMLA_UNROLL
  for (int i = 0; i < 2; ++i) {
    row_max[i] = quad_max(row_max[i]);
    if (q4 == 0) s_max[warp * kRows + g + 8 * i] = row_max[i];
  }
  __syncthreads();
  float alpha[2];
  FMLA_UNROLL
  for (int i = 0; i < 2; ++i) {
    float t = m[i];
    FMLA_UNROLL
    for (int w = 0; w < kWarps; ++w) t = fmaxf(t, s_max[w * kRows + g + 8 * i]);
    const float m_use = t == -kInf ? 0.0f : t;
    alpha[i] = exp2f(m[i] - m_use);
    m[i] = t;
    const float p0 = exp2f(s[2 * i] - m_use), p1 = exp2f(s[2 * i + 1] - m_use);
    *reinterpret_cast<uint32_t*>(sp + (g + 8 * i) * ldp + 8 * warp + 2 * q4) =
        pack_bf16x2(p0, p1);
    const float row_sum = quad_sum(p0 + p1);
    if (q4 == 0) s_sum[warp * kRows + g + 8 * i] = row_sum;
  }
  __syncthreads();
  FMLA_UNROLL
  for (int i = 0; i < 2; ++i) {
    float t = 0.0f;
    FMLA_UNROLL
    for (int w = 0; w < kWarps; ++w) t += s_sum[w * kRows + g + 8 * i];
    l[i] = l[i] * alpha[i] + t;
  }
  FMLA_UNROLL
  for (auto& t : o) {
    t[0] *= alpha[0], t[1] *= alpha[0], t[2] *= alpha[1], t[3] *= alpha[1];
  }
}

FMLA_CUDA_NS_END
