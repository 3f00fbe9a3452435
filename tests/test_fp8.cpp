// FP8 e4m3fn and UE8M0 conversions (src/cpu/common/fp8.h) over all 256 codes, in both directions.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>

#include "cpu/common/fp8.h"

namespace flashmla::cpu {
namespace {

// The value a code's fields define, computed independently with ldexp.
double e4m3_value(uint8_t v) {
  const int sign = v >> 7, exp = (v >> 3) & 0xf, man = v & 0x7;
  double mag;
  if (exp == 0xf && man == 0x7) mag = NAN;
  else if (exp == 0) mag = std::ldexp(man, -9);
  else mag = std::ldexp(8 + man, exp - 10);
  return sign ? -mag : mag;
}

TEST(Fp8E4m3, DecodesEveryCode) {
  int nans = 0;
  for (int v = 0; v < 256; ++v) {
    const double want = e4m3_value(static_cast<uint8_t>(v));
    const float got = fp8_e4m3_to_float(static_cast<uint8_t>(v));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << v;
      ++nans;
    } else {
      EXPECT_EQ(static_cast<double>(got), want) << v;
      EXPECT_EQ(std::signbit(got), v >= 128) << v;
    }
  }
  EXPECT_EQ(nans, 2);  // 0x7f and 0xff
  EXPECT_EQ(fp8_e4m3_to_float(0x7e), 448.0f);
  EXPECT_EQ(fp8_e4m3_to_float(0x01), 0x1p-9f);
}

TEST(Fp8E4m3, EncodesEveryCodeAndRoundsToNearestEven) {
  for (int v = 0; v < 256; ++v) {
    const uint8_t a = static_cast<uint8_t>(v);
    const float va = fp8_e4m3_to_float(a);
    if (std::isnan(va)) {
      EXPECT_EQ(float_to_fp8_e4m3(va) & 0x7f, 0x7f) << v;
      continue;
    }
    EXPECT_EQ(float_to_fp8_e4m3(va), a) << v;  // every value encodes to its own code
    if ((v & 0x7f) >= 0x7e) continue;  // 448 has no finite neighbour above
    const uint8_t b = static_cast<uint8_t>(v + 1);  // next code away from zero
    const float vb = fp8_e4m3_to_float(b);
    const float mid = 0.5f * (va + vb);  // exact in fp32
    EXPECT_EQ(float_to_fp8_e4m3(mid), (a & 1) ? b : a) << v << " tie to even";
    EXPECT_EQ(float_to_fp8_e4m3(std::nextafter(mid, va)), a) << v;
    EXPECT_EQ(float_to_fp8_e4m3(std::nextafter(mid, vb)), b) << v;
  }
}

TEST(Fp8E4m3, OutOfRangeBecomesNan) {
  EXPECT_EQ(float_to_fp8_e4m3(460.0f), 0x7e);    // rounds down to 448
  EXPECT_EQ(float_to_fp8_e4m3(464.0f), 0x7e);    // tie: 448 is the even neighbour
  EXPECT_EQ(float_to_fp8_e4m3(464.5f), 0x7f);    // would round to 480: no such value
  EXPECT_EQ(float_to_fp8_e4m3(-1e6f), 0xff);
  EXPECT_EQ(float_to_fp8_e4m3(INFINITY), 0x7f);
  EXPECT_EQ(float_to_fp8_e4m3(NAN) & 0x7f, 0x7f);
  EXPECT_EQ(float_to_fp8_e4m3(0x1p-11f), 0x00);  // below half the smallest subnormal
  EXPECT_EQ(float_to_fp8_e4m3(-0.0f), 0x80);
}

TEST(Ue8m0, DecodesEveryByte) {
  for (int e = 0; e < 255; ++e) {
    EXPECT_EQ(ue8m0_to_float(static_cast<uint8_t>(e)), std::ldexp(1.0f, e - 127)) << e;
  }
  EXPECT_TRUE(std::isnan(ue8m0_to_float(255)));
}

}  // namespace
}  // namespace flashmla::cpu
