// The AVX-512 FP8 token dequantizer against the scalar one (the reference numerics, §4.3):
// bitwise equal outputs for every e4m3 code in every lane position, both formats, and scales
// that are powers of two, arbitrary fp32 (V32), tiny (subnormal products), huge (overflow to
// inf), zero, inf and NaN; and the run-time choice follows FLASHMLA_ISA.
#include <gtest/gtest.h>

#include <bit>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cpu/common/isa.h"
#include "cpu/common/kv_codec.h"

namespace flashmla::cpu {
namespace {

bool has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

// One page block of `tokens` tokens of `format`: random bytes, then every scale slot set from
// `scales` (V32: fp32 values; MODEL1: UE8M0 bytes).
std::vector<uint8_t> make_block(KvFormat format, int tokens, std::mt19937& rng) {
  const size_t bytes = format == KvFormat::v32 ? 656u * tokens : (576u + 8u) * tokens;
  std::vector<uint8_t> block(bytes);
  for (uint8_t& b : block) b = static_cast<uint8_t>(rng());
  return block;
}

void expect_same_as_scalar(KvFormat format, std::vector<uint8_t>& block, int tokens) {
  const KvFormatInfo f = kv_format_info(format);
  std::vector<uint16_t> want(f.d_qk), got(f.d_qk);
  for (int t = 0; t < tokens; ++t) {
    const KvTokenBytes src = kv_token_bytes(format, block.data(), tokens, t);
    dequantize_kv_token(format, src, want.data());
    dequantize_kv_token_avx512(format, src, got.data());
    for (int c = 0; c < f.d_qk; ++c) {
      ASSERT_EQ(got[c], want[c]) << "token " << t << " channel " << c << " code 0x" << std::hex
                                 << int(src.values[c < f.d_nope ? c : 0]);
    }
  }
}

TEST(KvCodecAvx512, EveryCodeEveryLaneBothFormats) {
  if (!has_avx512()) GTEST_SKIP() << "no AVX-512F/BW/VL/DQ on this CPU";
  std::mt19937 rng(7);
  for (KvFormat format : {KvFormat::v32, KvFormat::model1}) {
    SCOPED_TRACE(format == KvFormat::v32 ? "v32" : "model1");
    const KvFormatInfo f = kv_format_info(format);
    constexpr int kTokens = 64;
    std::vector<uint8_t> block = make_block(format, kTokens, rng);
    // Code (t * 16 + c) mod 256 at channel c of token t: 16 tokens put every code in every lane.
    for (int t = 0; t < kTokens; ++t) {
      KvTokenBytes tb = kv_token_bytes(format, block.data(), kTokens, t);
      for (int c = 0; c < f.d_nope; ++c) tb.values[c] = static_cast<uint8_t>(t * 16 + c * 17);
      for (int g = 0; g < f.num_tiles; ++g) {
        if (format == KvFormat::v32) {
          const float choices[] = {1.0f, 0x1p-13f, 0x1p10f, 0.3712f, 1e-40f, 0x1p-140f,
                                   3e38f, 0.0f, -2.5f, std::numeric_limits<float>::infinity(),
                                   std::numeric_limits<float>::quiet_NaN()};
          const float s = choices[(t + g) % (sizeof choices / sizeof choices[0])];
          std::memcpy(tb.scales + 4 * g, &s, 4);
        } else {
          const uint8_t choices[] = {127, 114, 137, 0, 1, 254, 255, 100};
          tb.scales[g] = choices[(t + g) % sizeof choices];
        }
      }
    }
    expect_same_as_scalar(format, block, kTokens);
    // Random tokens (random codes and scale bits) as well.
    std::vector<uint8_t> random = make_block(format, kTokens, rng);
    expect_same_as_scalar(format, random, kTokens);
  }
}

TEST(KvCodec, ActiveDequantizerFollowsTheIsaChoice) {
  const DequantizeKvTokenFn want =
      active_isa() >= Isa::avx512 ? &dequantize_kv_token_avx512 : &dequantize_kv_token;
  EXPECT_EQ(active_kv_dequantizer(), want);
  const char* env = std::getenv("FLASHMLA_ISA");
  if (env != nullptr && std::string(env) == "portable") {
    EXPECT_EQ(active_kv_dequantizer(), &dequantize_kv_token);
  }
}

}  // namespace
}  // namespace flashmla::cpu
