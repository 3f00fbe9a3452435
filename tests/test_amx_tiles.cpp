// The software model of the AMX tile instructions (src/cpu/common/amx_tiles.h) against the
// SDM's rules: which configurations and operand shapes fault, what TILELOADD / TILESTORED touch
// (rows x colsb bytes at the stride, nothing else), and TDPBF16PS's arithmetic against double
// precision, including denormals-as-zero, flush-to-zero and NaN. The model is what lets the amx
// microkernel run in the test suites on CPUs without AMX (test_microkernel, FLASHMLA_ISA=
// amx-emulated), so it must be right in its own terms first.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "cpu/common/amx_tiles.h"

namespace flashmla::cpu::amx {
namespace {

namespace emu = emulated;

float bf16_value(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

// A tile of 16 rows x 16 bf16 pairs (or fp32), as uint32 words.
using Words = std::vector<uint32_t>;

struct Fixture : ::testing::Test {
  void TearDown() override { emu::release(); }
};

using EmulatedConfig = Fixture;
using EmulatedLoadStore = Fixture;
using EmulatedDot = Fixture;

TEST_F(EmulatedConfig, RejectsWhatLdtilecfgFaultsOn) {
  TileConfig ok = full_tile_config();
  EXPECT_NO_THROW(emu::load_config(ok));
  EXPECT_TRUE(emu::configured());

  TileConfig c = ok;
  c.palette = 2;
  EXPECT_THROW(emu::load_config(c), std::logic_error);
  c = ok;
  c.reserved[3] = 1;
  EXPECT_THROW(emu::load_config(c), std::logic_error);
  c = ok;
  c.rows[2] = 17;
  EXPECT_THROW(emu::load_config(c), std::logic_error);
  c = ok;
  c.colsb[5] = 68;
  EXPECT_THROW(emu::load_config(c), std::logic_error);
  c = ok;
  c.rows[9] = 1;  // palette 1 has tiles 0-7 only
  c.colsb[9] = 4;
  EXPECT_THROW(emu::load_config(c), std::logic_error);
  c = ok;
  c.colsb[1] = 0;  // rows without bytes
  EXPECT_THROW(emu::load_config(c), std::logic_error);

  TileConfig init;  // palette 0: back to the init state
  EXPECT_NO_THROW(emu::load_config(init));
  EXPECT_FALSE(emu::configured());
}

TEST_F(EmulatedConfig, InstructionsNeedConfiguredTiles) {
  unsigned char buf[1024] = {};
  EXPECT_THROW(emu::load(0, buf, 64), std::logic_error);
  EXPECT_THROW(emu::zero(0), std::logic_error);
  emu::load_config(full_tile_config(4));  // tiles 0-3 only
  EXPECT_NO_THROW(emu::load(3, buf, 64));
  EXPECT_THROW(emu::load(4, buf, 64), std::logic_error);
  EXPECT_THROW(emu::store(8, buf, 64), std::logic_error);
  emu::release();
  EXPECT_THROW(emu::store(0, buf, 64), std::logic_error);
}

// Loads and stores touch rows x colsb bytes at the stride; the rest of a loaded tile is zero;
// LDTILECFG zeroes the tiles.
TEST_F(EmulatedLoadStore, TouchesRowsTimesColsbAtTheStride) {
  TileConfig c = full_tile_config();
  c.rows[1] = 5;
  c.colsb[1] = 12;
  emu::load_config(c);
  constexpr size_t kStride = 40;
  std::vector<unsigned char> src(kStride * 16 + 64, 0);  // full 64-byte rows fit too
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<unsigned char>(i * 7 + 1);
  emu::load(1, src.data(), kStride);

  std::vector<unsigned char> dst(kStride * 16, 0xee);
  emu::store(1, dst.data(), kStride);
  for (size_t r = 0; r < 16; ++r) {
    for (size_t b = 0; b < kStride; ++b) {
      const bool inside = r < 5 && b < 12;
      ASSERT_EQ(dst[r * kStride + b], inside ? src[r * kStride + b] : 0xee) << r << " " << b;
    }
  }
  // Through a full-shape tile: the 5 x 12 bytes loaded and zeros elsewhere.
  emu::load(0, src.data(), kStride);
  std::vector<unsigned char> full(64 * 16, 0xee);
  emu::store(0, full.data(), 64);
  for (size_t r = 0; r < 16; ++r) {
    for (size_t b = 0; b < 64; ++b) ASSERT_EQ(full[r * 64 + b], src[r * kStride + b]);
  }
  emu::load_config(c);  // zeroes every tile
  std::vector<unsigned char> z(64 * 16, 0xee);
  emu::store(0, z.data(), 64);
  for (unsigned char b : z) ASSERT_EQ(b, 0);
}

TEST_F(EmulatedDot, RejectsMismatchedShapes) {
  TileConfig c = full_tile_config();
  emu::load_config(c);
  EXPECT_NO_THROW(emu::dpbf16ps(0, 4, 6));
  EXPECT_THROW(emu::dpbf16ps(4, 4, 6), std::logic_error);  // the three tiles must differ
  EXPECT_THROW(emu::dpbf16ps(0, 6, 6), std::logic_error);
  c.rows[6] = 8;  // B rows != A pairs per row
  emu::load_config(c);
  EXPECT_THROW(emu::dpbf16ps(0, 4, 6), std::logic_error);
  c = full_tile_config();
  c.rows[4] = 8;  // A rows != C rows
  emu::load_config(c);
  EXPECT_THROW(emu::dpbf16ps(0, 4, 6), std::logic_error);
  c = full_tile_config();
  c.colsb[6] = 32;  // B columns != C columns
  emu::load_config(c);
  EXPECT_THROW(emu::dpbf16ps(0, 4, 6), std::logic_error);
}

// C (rows x n fp32) += A (rows x k pairs) . B (k pair rows x n pairs), on a smaller configured
// shape too, against double: the bf16 products are exact in fp32 and the sum carries fp32
// rounding only.
TEST_F(EmulatedDot, MatchesDoubleOnRandomTiles) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> uni(-2.0f, 2.0f);
  auto bf16 = [&] { return static_cast<uint16_t>(std::bit_cast<uint32_t>(uni(rng)) >> 16); };
  for (const auto& [rows, kp, n] : {std::tuple{16, 16, 16}, std::tuple{5, 3, 7}}) {
    TileConfig c = full_tile_config();
    c.rows[0] = rows, c.colsb[0] = 4 * n;   // C
    c.rows[4] = rows, c.colsb[4] = 4 * kp;  // A
    c.rows[6] = kp, c.colsb[6] = 4 * n;     // B
    emu::load_config(c);
    Words a(16 * 16), b(16 * 16), acc(16 * 16);
    for (auto& w : a) w = bf16() | static_cast<uint32_t>(bf16()) << 16;
    for (auto& w : b) w = bf16() | static_cast<uint32_t>(bf16()) << 16;
    for (auto& w : acc) w = std::bit_cast<uint32_t>(uni(rng));
    emu::load(0, acc.data(), 64);
    emu::load(4, a.data(), 64);
    emu::load(6, b.data(), 64);
    emu::dpbf16ps(0, 4, 6);
    Words out(16 * 16, 0);
    emu::store(0, out.data(), 64);
    for (int i = 0; i < rows; ++i) {
      for (int j = 0; j < n; ++j) {
        double ref = std::bit_cast<float>(acc[i * 16 + j]), mag = std::fabs(ref);
        for (int k = 0; k < kp; ++k) {
          for (int e = 0; e < 2; ++e) {
            const double t = static_cast<double>(bf16_value(a[i * 16 + k] >> (16 * e))) *
                             bf16_value(b[k * 16 + j] >> (16 * e));
            ref += t;
            mag += std::fabs(t);
          }
        }
        const float got = std::bit_cast<float>(out[i * 16 + j]);
        EXPECT_NEAR(got, ref, (2 * kp + 4) * 0x1p-24 * mag) << rows << "x" << kp << "x" << n;
      }
    }
  }
}

// Denormal bf16 inputs count as zero, denormal results are flushed, NaN propagates.
TEST_F(EmulatedDot, DenormalsAreZeroAndNaNPropagates) {
  TileConfig c = full_tile_config();
  c.rows[0] = 1, c.colsb[0] = 4;
  c.rows[4] = 1, c.colsb[4] = 4;
  c.rows[6] = 1, c.colsb[6] = 4;
  auto dot = [&](uint16_t a0, uint16_t a1, uint16_t b0, uint16_t b1, float acc) {
    emu::load_config(c);
    const uint32_t a = a0 | static_cast<uint32_t>(a1) << 16;
    const uint32_t b = b0 | static_cast<uint32_t>(b1) << 16;
    emu::load(0, &acc, 4);
    emu::load(4, &a, 4);
    emu::load(6, &b, 4);
    emu::dpbf16ps(0, 4, 6);
    float out;
    emu::store(0, &out, 4);
    return out;
  };
  const uint16_t one = 0x3f80, two = 0x4000, denormal = 0x0040, tiny = 0x0100;  // 2^-125
  EXPECT_EQ(dot(one, two, two, one, 1.0f), 5.0f);         // 1 + 1*2 + 2*1
  EXPECT_EQ(dot(denormal, 0, 0x7f00, 0, 0.0f), 0.0f);     // denormal input times 2^127: 0
  EXPECT_EQ(dot(tiny, 0, 0x3e80, 0, 0.0f), 0.0f);         // 2^-125 * 2^-2: denormal result, 0
  EXPECT_EQ(dot(0, 0, 0, 0, 1e-40f), 0.0f);               // denormal accumulator read as 0
  EXPECT_TRUE(std::isnan(dot(0x7fc0, 0, one, 0, 1.0f)));  // NaN operand
  EXPECT_TRUE(std::isnan(dot(0x7f80, 0, 0, 0, 1.0f)));    // inf * 0
  EXPECT_EQ(dot(0x7f80, 0, one, 0, 1.0f), std::numeric_limits<float>::infinity());
}

}  // namespace
}  // namespace flashmla::cpu::amx
