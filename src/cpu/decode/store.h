// Writing fp32 rows into output tensors of any float dtype.
#pragma once

#include <cstdint>

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

}  // namespace flashmla::cpu::decode
