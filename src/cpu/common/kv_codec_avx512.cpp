// AVX-512 dequantisation of one FP8 KV-cache token (V32 or MODEL1) into bf16, bit-identical to
// the scalar dequantize_kv_token (the reference numerics of §4.3): e4m3 widened to fp32 exactly
// (normal codes by re-biasing the exponent field, subnormal codes as man * 2^-9, NaN codes as
// NaN, kept as they are), one fp32 multiply by the tile's scale, round to nearest even to bf16 (NaN kept quiet).
// 16 values per step. Compiled for AVX-512F/BW through a target pragma; called only where the
// run-time choice (isa.cpp) allows it.
#include <immintrin.h>

#include <cstring>

#include "cpu/common/fp8.h"
#include "cpu/common/half.h"
#include "cpu/common/kv_codec.h"
#include "cpu/common/target.h"

FLASHMLA_TARGET_BEGIN("avx512f,avx512bw,avx512vl,avx512dq")

namespace flashmla::cpu {
namespace {

// 16 e4m3 codes -> fp32 (exact; independent of the MXCSR denormal modes).
inline __m512 e4m3_to_ps(__m128i codes) {
  const __m512i v = _mm512_cvtepu8_epi32(codes);
  const __m512i mag = _mm512_and_si512(v, _mm512_set1_epi32(0x7f));
  const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(v, _mm512_set1_epi32(0x80)), 24);
  // Normal: exponent e (bias 7) -> e + 120 (bias 127), mantissa bits moved to the top.
  __m512 f = _mm512_castsi512_ps(
      _mm512_add_epi32(_mm512_slli_epi32(mag, 20), _mm512_set1_epi32(120 << 23)));
  const __mmask16 sub = _mm512_cmplt_epi32_mask(mag, _mm512_set1_epi32(8));  // exponent 0
  f = _mm512_mask_mul_ps(f, sub, _mm512_cvtepi32_ps(mag), _mm512_set1_ps(0x1p-9f));
  const __mmask16 nan = _mm512_cmpeq_epi32_mask(mag, _mm512_set1_epi32(0x7f));
  f = _mm512_mask_mov_ps(f, nan, _mm512_set1_ps(__builtin_nanf("")));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(f), sign));
}

// fp32 -> bf16, round to nearest even; NaN -> (bits >> 16) | 0x40 as float_to_bf16 does.
inline __m256i ps_to_bf16(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  r = _mm512_mask_mov_epi32(
      r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
  return _mm512_cvtepi32_epi16(r);
}

}  // namespace

void dequantize_kv_token_avx512(KvFormat format, KvTokenBytes src, uint16_t* k) {
  const KvFormatInfo f = kv_format_info(format);
  for (int g = 0; g < f.num_tiles; ++g) {
    float scale;
    if (format == KvFormat::v32) {
      std::memcpy(&scale, src.scales + 4 * g, 4);
    } else {
      scale = bf16_to_float(float_to_bf16(ue8m0_to_float(src.scales[g])));
    }
    const __m512 s = _mm512_set1_ps(scale);
    const uint8_t* in = src.values + g * f.tile;
    uint16_t* out = k + g * f.tile;
    for (int c = 0; c < f.tile; c += 16) {
      const __m128i codes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + c));
      const __m512 x = e4m3_to_ps(codes);
      const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);  // kept whatever the scale
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c),
                          ps_to_bf16(_mm512_mask_mul_ps(x, ~nan, x, s)));
    }
  }
  const uint8_t* rope = format == KvFormat::v32 ? src.values + 528 : src.values + f.d_nope;
  std::memcpy(k + f.d_nope, rope, 2 * static_cast<size_t>(f.d_rope));
}

}  // namespace flashmla::cpu

FLASHMLA_TARGET_END
