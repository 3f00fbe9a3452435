// Writing fp32 rows into output tensors of any float dtype.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "cpu/common/half.h"
#include "flashmla/tensor.h"

namespace flashmla::cpu::decode {

// dst[c] = src[c] * factor rounded once to `dtype` (bf16, fp16 or fp32), for c < n.
inline void store_row(const float* src, float factor, int64_t n, DType dtype, void* dst) {
  switch (dtype) {
    case DType::bf16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (int64_t c = 0; c < n; ++c) d[c] = float_to_bf16(src[c] * factor);
      break;
    }
    case DType::fp16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (int64_t c = 0; c < n; ++c) d[c] = float_to_fp16(src[c] * factor);
      break;
    }
    default: {
      auto* d = static_cast<float*>(dst);
      for (int64_t c = 0; c < n; ++c) d[c] = src[c] * factor;
    }
  }
}

// One row of a split piece into the accumulators: the normalised output O / l (0 when the piece
// saw no key) and its LSE in log2 units, m + log2(l) (-inf when empty).
inline void store_split_piece(const float* o, float m, float l, int64_t d_v, float* o_accum_row,
                              float* lse_accum) {
  store_row(o, l > 0.0f ? 1.0f / l : 0.0f, d_v, DType::fp32, o_accum_row);
  *lse_accum = l > 0.0f ? m + std::log2(l) : -std::numeric_limits<float>::infinity();
}

}  // namespace flashmla::cpu::decode
