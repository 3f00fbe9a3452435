// bf16 / fp16 conversions of src/cpu/common/half.h, exhaustively: every 16-bit pattern decodes to
// the value its fields define, and float -> half rounds to nearest even (checked against the
// neighbouring representable values for every pattern and the midpoints between them).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>

#include "cpu/common/half.h"

namespace flashmla::cpu {
namespace {

// fp16 value from its fields, computed independently with ldexp.
double fp16_value(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  double v;
  if (exp == 0x1f) v = man ? NAN : INFINITY;
  else if (exp == 0) v = std::ldexp(man, -24);
  else v = std::ldexp(1024 + man, exp - 25);
  return sign ? -v : v;
}

TEST(Half, Fp16DecodesEveryPattern) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const double want = fp16_value(static_cast<uint16_t>(h));
    const float got = fp16_to_float(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << std::hex << h;
    } else {
      ASSERT_EQ(static_cast<double>(got), want) << std::hex << h;
      ASSERT_EQ(std::signbit(got), (h >> 15) != 0) << std::hex << h;
    }
  }
}

TEST(Half, Bf16DecodesEveryPattern) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float got = bf16_to_float(static_cast<uint16_t>(h));
    ASSERT_EQ(std::bit_cast<uint32_t>(got), h << 16) << std::hex << h;
  }
}

// Round-trip of every pattern, and of the midpoints between neighbours (ties to even) and points
// just beside them, for both formats.
template <class Decode, class Encode>
void check_rounding(Decode decode, Encode encode) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const uint16_t a = static_cast<uint16_t>(h);
    const float va = decode(a);
    if (std::isnan(va)) {
      ASSERT_TRUE(std::isnan(decode(encode(va)))) << std::hex << h;
      continue;
    }
    ASSERT_EQ(encode(va), a) << std::hex << h;
    // Next pattern away from zero, same sign (skip the top of the finite range).
    const uint16_t b = static_cast<uint16_t>(h + 1);
    const float vb = decode(b);
    if (!std::isfinite(va) || !std::isfinite(vb) || ((a ^ b) & 0x8000)) continue;
    const double mid = 0.5 * (static_cast<double>(va) + static_cast<double>(vb));
    const float fmid = static_cast<float>(mid);
    if (static_cast<double>(fmid) != mid) continue;  // midpoint not a float (never for these)
    const uint16_t even = (a & 1) ? b : a;
    ASSERT_EQ(encode(fmid), even) << std::hex << h << " tie";
    ASSERT_EQ(encode(std::nextafter(fmid, va)), a) << std::hex << h << " below tie";
    ASSERT_EQ(encode(std::nextafter(fmid, vb)), b) << std::hex << h << " above tie";
  }
}

TEST(Half, Fp16RoundsToNearestEven) {
  check_rounding(fp16_to_float, float_to_fp16);
  EXPECT_EQ(float_to_fp16(65519.0f), 0x7bff);  // below the overflow midpoint
  EXPECT_EQ(float_to_fp16(65520.0f), 0x7c00);  // tie rounds to even = inf
  EXPECT_EQ(float_to_fp16(-1e10f), 0xfc00);
  EXPECT_EQ(float_to_fp16(0x1p-26f), 0x0000);  // below half the smallest subnormal
  EXPECT_EQ(float_to_fp16(0x1.8p-25f), 0x0001);
}

TEST(Half, Bf16RoundsToNearestEven) {
  check_rounding(bf16_to_float, float_to_bf16);
  EXPECT_EQ(float_to_bf16(std::bit_cast<float>(0x7f7fffffu)), 0x7f80);  // rounds up to inf
  EXPECT_EQ(float_to_bf16(std::bit_cast<float>(0x7fc00001u)) & 0x7fc0, 0x7fc0);  // NaN stays NaN
}

}  // namespace
}  // namespace flashmla::cpu
