#include "cpu/common/kv_codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/common/fp8.h"
#include "cpu/common/half.h"

namespace flashmla::cpu {

void quantize_kv_token(KvFormat format, const uint16_t* k, KvTokenBytes dst) {
  const KvFormatInfo f = kv_format_info(format);
  for (int g = 0; g < f.num_tiles; ++g) {
    const uint16_t* x = k + g * f.tile;
    float amax = 0.0f;
    for (int c = 0; c < f.tile; ++c) amax = std::max(amax, std::fabs(bf16_to_float(x[c])));
    // Power-of-two scale 2^ceil(log2(s0)) with |x / scale| <= 448; the smallest is 2^-13.
    // frexp gives s0 = m * 2^e with m in [0.5, 1): ceil(log2(s0)) is e, or e - 1 when m == 0.5.
    int e;
    const float m = std::frexp(std::max(amax / 448.0f, 1e-4f), &e);
    if (m == 0.5f) --e;
    const float scale = std::ldexp(1.0f, e);
    for (int c = 0; c < f.tile; ++c) {
      dst.values[g * f.tile + c] = float_to_fp8_e4m3(bf16_to_float(x[c]) / scale);
    }
    if (format == KvFormat::v32) {
      std::memcpy(dst.scales + 4 * g, &scale, 4);
    } else {
      dst.scales[g] = static_cast<uint8_t>(e + 127);
    }
  }
  if (format == KvFormat::model1) dst.scales[f.num_tiles] = 0;  // padding byte
  // RoPE: the bf16 values verbatim, after the quantized values (V32: after the scales).
  uint8_t* rope = format == KvFormat::v32 ? dst.values + 528 : dst.values + f.d_nope;
  std::memcpy(rope, k + f.d_nope, 2 * static_cast<size_t>(f.d_rope));
}

void dequantize_kv_token(KvFormat format, KvTokenBytes src, uint16_t* k) {
  const KvFormatInfo f = kv_format_info(format);
  for (int g = 0; g < f.num_tiles; ++g) {
    float scale;
    if (format == KvFormat::v32) {
      std::memcpy(&scale, src.scales + 4 * g, 4);  // fp32 product, then one bf16 rounding
    } else {
      scale = bf16_to_float(float_to_bf16(ue8m0_to_float(src.scales[g])));  // bf16 multiply
    }
    for (int c = 0; c < f.tile; ++c) {
      // A NaN code stays that NaN whatever the scale (which NaN a product of two NaNs yields
      // depends on the operand order the compiler picks).
      const float x = fp8_e4m3_to_float(src.values[g * f.tile + c]);
      k[g * f.tile + c] = float_to_bf16(std::isnan(x) ? x : x * scale);
    }
  }
  const uint8_t* rope = format == KvFormat::v32 ? src.values + 528 : src.values + f.d_nope;
  std::memcpy(k + f.d_nope, rope, 2 * static_cast<size_t>(f.d_rope));
}

}  // namespace flashmla::cpu
