// OCP FP8 E4M3 "fn" (no infinities, max 448, NaN = S.1111.111) and UE8M0 scale bytes.
// Exhaustively tested in tests/test_fp8.cpp.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

namespace flashmla::cpu {

inline float fp8_e4m3_to_float(uint8_t v) {
  const uint32_t exp = (v >> 3) & 0xfu, man = v & 0x7u;
  float mag;
  if (exp == 0xf && man == 0x7) {
    mag = std::numeric_limits<float>::quiet_NaN();
  } else if (exp == 0) {
    mag = static_cast<float>(man) * 0x1p-9f;  // subnormal: man * 2^-9
  } else {
    mag = std::bit_cast<float>(((exp + 120u) << 23) | (man << 20));
  }
  return (v & 0x80u) ? -mag : mag;
}

// Round to nearest even. Magnitudes above 464 (the midpoint between 448 and the NaN code's
// 480), infinities and NaN become NaN, as a non-saturating cast does.
inline uint8_t float_to_fp8_e4m3(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x43e80000u) return sign | 0x7fu;  // > 464, inf, NaN
  if (a < 0x3c800000u) {                     // below 2^-6: subnormal or zero
    const float v = std::bit_cast<float>(a) * 0x1p9f;  // in units of 2^-9
    const float r = v + 0x1p23f - 0x1p23f;             // round to nearest even integer
    return sign | static_cast<uint8_t>(r);
  }
  uint32_t r = a + 0x7ffffu + ((a >> 20) & 1u);  // round the mantissa to 3 bits
  return sign | static_cast<uint8_t>((r >> 20) - (120u << 3));
}

// UE8M0 scale byte e -> 2^(e - 127); 255 is NaN.
inline float ue8m0_to_float(uint8_t e) {
  if (e == 0xff) return std::numeric_limits<float>::quiet_NaN();
  return std::ldexp(1.0f, static_cast<int>(e) - 127);
}

}  // namespace flashmla::cpu
