// FP8 KV-cache formats (reference §4): exact byte layout of V32 and MODEL1, the reference
// quantizer's power-of-two scales, dequantization numerics, padding between blocks, bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/common/fp8.h"
#include "cpu/common/half.h"
#include "flashmla/error.h"
#include "flashmla/kv_format.h"

namespace flashmla {
namespace {

using cpu::bf16_to_float;
using cpu::float_to_bf16;

struct Caches {
  std::vector<uint16_t> k;      // (blocks, B, 1, d_qk) bf16
  std::vector<uint8_t> bytes;   // (blocks, block_stride) bytes
  int64_t blocks, page, block_stride;
  KvFormat format;

  Caches(KvFormat f, int64_t nb, int64_t B, int64_t pad_bytes = 0)
      : k(nb * B * kv_format_info(f).d_qk), blocks(nb), page(B), format(f) {
    block_stride = B * kv_format_info(f).bytes_per_token + pad_bytes;
    bytes.assign(nb * block_stride, 0xAB);
  }
  KvQuantizeArgs args() {
    const KvFormatInfo f = kv_format_info(format);
    return {.format = format,
            .k = TensorView::contiguous(k.data(), DType::bf16, {blocks, page, 1, f.d_qk}),
            .cache = TensorView::strided(bytes.data(), DType::uint8,
                                         {blocks, page, 1, f.bytes_per_token},
                                         {block_stride, f.bytes_per_token, f.bytes_per_token, 1})};
  }
};

TEST(KvFormat, Info) {
  EXPECT_EQ(kv_format_info(KvFormat::v32).bytes_per_token, 512 + 16 + 128);
  EXPECT_EQ(kv_format_info(KvFormat::model1).bytes_per_token, 448 + 128 + 7 + 1);
}

TEST(KvFormat, V32ByteLayout) {
  Caches c(KvFormat::v32, 1, 1);
  for (int i = 0; i < 128; ++i) c.k[i] = float_to_bf16(1.0f);
  c.k[5] = float_to_bf16(896.0f);                                   // tile 0: amax 896 -> scale 2
  for (int i = 128; i < 256; ++i) c.k[i] = 0;                       // tile 1: zeros -> 2^-13
  for (int i = 256; i < 512; ++i) c.k[i] = float_to_bf16(-0.25f);  // tiles 2, 3: scale 2^-10
  for (int i = 512; i < 576; ++i) c.k[i] = static_cast<uint16_t>(0x3f00 + i);  // RoPE
  quantize_kv_cache(c.args());
  EXPECT_EQ(c.bytes[0], 0x30);  // 1.0 / 2 = 0.5
  EXPECT_EQ(c.bytes[5], 0x7e);  // 896 / 2 = 448
  EXPECT_EQ(c.bytes[200], 0x00);
  EXPECT_EQ(c.bytes[300], 0xf8);  // -0.25 / 2^-10 = -256 = -1.0 * 2^8
  const float want_scales[4] = {2.0f, 0x1p-13f, 0x1p-10f, 0x1p-10f};
  EXPECT_EQ(0, std::memcmp(c.bytes.data() + 512, want_scales, 16));
  EXPECT_EQ(0, std::memcmp(c.bytes.data() + 528, c.k.data() + 512, 128));

  std::vector<uint16_t> original = c.k;
  dequantize_kv_cache(c.args());
  EXPECT_EQ(original, c.k);  // every value here is exactly representable
}

TEST(KvFormat, Model1BlockStructuredLayout) {
  const int64_t B = 3;
  Caches c(KvFormat::model1, 2, B);
  for (int64_t t = 0; t < 2 * B; ++t) {
    uint16_t* k = c.k.data() + t * 512;
    for (int g = 0; g < 7; ++g) {  // tile g of token t: 2^(t-g+4) -> scale 2^(t-g-4), above 1e-4
      for (int i = 0; i < 64; ++i) k[g * 64 + i] = float_to_bf16(std::ldexp(1.0f, int(t) - g + 4));
    }
    for (int i = 448; i < 512; ++i) k[i] = static_cast<uint16_t>(t * 1000 + i);
  }
  quantize_kv_cache(c.args());
  for (int64_t t = 0; t < 2 * B; ++t) {
    const uint8_t* block = c.bytes.data() + (t / B) * c.block_stride;
    const int64_t r = t % B;
    for (int g = 0; g < 7; ++g) {
      EXPECT_EQ(block[576 * r + 64 * g], 0x78) << t << " " << g;  // 256 = 2^8
      EXPECT_EQ(block[576 * B + 8 * r + g], 127 + t - g - 4) << t << " " << g;
    }
    EXPECT_EQ(block[576 * B + 8 * r + 7], 0) << "padding byte";
    EXPECT_EQ(0, std::memcmp(block + 576 * r + 448, c.k.data() + t * 512 + 448, 128)) << t;
  }
  std::vector<uint16_t> original = c.k;
  dequantize_kv_cache(c.args());
  EXPECT_EQ(original, c.k);
}

// Random data: dequantize(quantize(x)) is within e4m3's rounding of x, RoPE is exact, scales
// are powers of two with amax / scale in (224, 448], and padding bytes are never written.
TEST(KvFormat, RoundTripOnRandomData) {
  for (KvFormat fmt : {KvFormat::v32, KvFormat::model1}) {
    const KvFormatInfo f = kv_format_info(fmt);
    Caches c(fmt, 3, 5, /*pad_bytes=*/fmt == KvFormat::v32 ? 656 : 432);
    std::mt19937_64 rng(7);
    std::normal_distribution<float> n(0.0f, 1.0f);
    for (size_t i = 0; i < c.k.size(); ++i) c.k[i] = float_to_bf16(n(rng) * (i % 3 ? 0.1f : 3.0f));
    const std::vector<uint16_t> x = c.k;
    quantize_kv_cache(c.args());
    for (int64_t blk = 0; blk < c.blocks; ++blk) {
      const int64_t used = c.page * f.bytes_per_token;
      for (int64_t b = used; b < c.block_stride; ++b) {
        ASSERT_EQ(c.bytes[blk * c.block_stride + b], 0xAB) << "padding written";
      }
    }
    dequantize_kv_cache(c.args());
    for (size_t t = 0; t < x.size() / f.d_qk; ++t) {
      for (int g = 0; g < f.num_tiles; ++g) {
        float amax = 0;
        for (int i = 0; i < f.tile; ++i) amax = std::max(amax, std::fabs(bf16_to_float(x[t * f.d_qk + g * f.tile + i])));
        for (int i = 0; i < f.tile; ++i) {
          const size_t idx = t * f.d_qk + g * f.tile + i;
          const float xi = bf16_to_float(x[idx]), yi = bf16_to_float(c.k[idx]);
          // e4m3 keeps 3 mantissa bits (relative error <= 2^-4) down to its subnormals, whose
          // step is scale * 2^-9 with scale < amax / 224; plus one bf16 rounding.
          const float tol = std::fabs(xi) * (0x1p-4f + 0x1p-8f) + amax / 224 * 0x1p-10f;
          ASSERT_LE(std::fabs(yi - xi), tol) << kv_format_name(fmt) << " " << idx;
        }
      }
      for (int i = f.d_nope; i < f.d_qk; ++i) ASSERT_EQ(c.k[t * f.d_qk + i], x[t * f.d_qk + i]);
    }
  }
}

TEST(KvFormat, BadInput) {
  Caches c(KvFormat::v32, 2, 4);
  auto expect_error = [](const KvQuantizeArgs& a, const char* arg) {
    try {
      quantize_kv_cache(a);
      ADD_FAILURE() << "accepted, expected an error on " << arg;
    } catch (const Error& e) {
      EXPECT_EQ(e.argument(), arg) << e.what();
      EXPECT_EQ(e.function(), "quantize_kv_cache");
    }
  };
  KvQuantizeArgs a = c.args();
  a.format = KvFormat::model1;  // 576-channel k and 656-byte cache given to MODEL1
  expect_error(a, "k");
  a = c.args();
  a.cache.shape[3] = 584;
  expect_error(a, "cache");
  a = c.args();
  a.cache.strides[1] = 700;
  expect_error(a, "cache");
  a = c.args();
  a.cache.strides[0] = 656;  // blocks overlap
  expect_error(a, "cache");
  a = c.args();
  a.cache.dtype = DType::int32;
  expect_error(a, "cache");
  a = c.args();
  a.k.dtype = DType::fp16;
  expect_error(a, "k");
  a = c.args();
  a.k.shape[2] = 2;
  expect_error(a, "k");
  a = c.args();
  a.cache.data = nullptr;
  expect_error(a, "cache");
  a = c.args();
  a.format = static_cast<KvFormat>(9);
  expect_error(a, "format");
  // Found by fuzz/fuzz_kv_codec: an empty view (a size of 0) with a size of 2^62 overflowed the
  // overlap check of the dequantizer's output; sizes are bounded even for empty views.
  a = c.args();
  a.k.shape[0] = int64_t{1} << 62;
  a.k.shape[1] = 0;
  try {
    dequantize_kv_cache(a);
    ADD_FAILURE() << "accepted an empty k with a size of 2^62";
  } catch (const Error& e) {
    EXPECT_EQ(e.argument(), "k") << e.what();
  }
  a = c.args();
  a.cache.shape[0] = int64_t{1} << 40;  // 2^40 blocks of 4 x 656 bytes: beyond 2^47
  expect_error(a, "cache");
}

}  // namespace
}  // namespace flashmla
