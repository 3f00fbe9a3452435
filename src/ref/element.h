// Element access of the reference implementations: widening loads and once-rounded stores.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

#include "cpu/common/half.h"
#include "flashmla/tensor.h"

namespace flashmla::ref {

// bf16 | fp16 | fp32 element at `offset` (in elements), widened to double.
inline double load(const TensorView& t, int64_t offset) {
  switch (t.dtype) {
    case DType::bf16: return cpu::bf16_to_float(t.ptr<const uint16_t>()[offset]);
    case DType::fp16: return cpu::fp16_to_float(t.ptr<const uint16_t>()[offset]);
    default: return t.ptr<const float>()[offset];
  }
}

// double -> float rounding to odd: when inexact, take the float toward zero and set its lowest
// bit. A following round-to-nearest-even to bf16 / fp16 then equals rounding `v` directly.
inline float to_float_round_odd(double v) {
  float f = static_cast<float>(v);
  if (!std::isfinite(f) || static_cast<double>(f) == v) return f;
  if (std::fabs(static_cast<double>(f)) > std::fabs(v)) f = std::nextafter(f, 0.0f);
  return std::bit_cast<float>(std::bit_cast<uint32_t>(f) | 1u);
}

// `value` rounded once (to nearest even) to the view's dtype (bf16 | fp16 | fp32).
inline void store(const TensorView& t, int64_t offset, double value) {
  switch (t.dtype) {
    case DType::bf16:
      t.ptr<uint16_t>()[offset] = cpu::float_to_bf16(to_float_round_odd(value));
      break;
    case DType::fp16:
      t.ptr<uint16_t>()[offset] = cpu::float_to_fp16(to_float_round_odd(value));
      break;
    default: t.ptr<float>()[offset] = static_cast<float>(value); break;
  }
}

}  // namespace flashmla::ref
