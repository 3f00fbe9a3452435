// Sanity of the reference implementations on hand-computable cases, and of the generated test
// data (layout invariance, NaN never leaking from absent tokens).
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <limits>
#include <optional>
#include <string>

#include "ref/ref.h"
#include "testing/combine_case.h"
#include "testing/compare.h"
#include "testing/decode_case.h"
#include "testing/host_tensor.h"

namespace flashmla::testing {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// ---- dense decode --------------------------------------------------------------------------

// A small hand-made decode problem: bf16 q / k (values chosen exactly representable), fp32 out
// for exact checks, d_qk = 4, d_v = 2. Every cache slot starts as NaN and every block-table entry
// as garbage; the test writes what is valid.
struct Tiny {
  HostTensor q, k_cache, block_table, cache_seqlens, out, lse;

  Tiny(int64_t batch, int64_t q_len, int64_t heads_q, int64_t heads_kv, int64_t page,
       int64_t num_blocks)
      : q(HostTensor::empty(DType::bf16, {batch, q_len, heads_q, 4})),
        k_cache(HostTensor::empty(DType::bf16, {num_blocks, page, heads_kv, 4})),
        block_table(HostTensor::empty(DType::int32, {batch, 2})),
        cache_seqlens(HostTensor::empty(DType::int32, {batch})),
        out(HostTensor::empty(DType::fp32, {batch, q_len, heads_q, 2})),
        lse(HostTensor::empty(DType::fp32, {batch, heads_q, q_len})) {
    for (int64_t i = 0; i < batch; ++i) {
      for (int64_t j = 0; j < 2; ++j) block_table.i32({i, j}) = kGarbageBlockId;
    }
  }

  void set_q(int64_t i, int64_t s, int64_t h, std::array<float, 4> v) {
    for (int64_t c = 0; c < 4; ++c) q.set({i, s, h, c}, v[c]);
  }
  void set_k(int64_t block, int64_t slot, int64_t kv_head, std::array<float, 4> v) {
    for (int64_t c = 0; c < 4; ++c) k_cache.set({block, slot, kv_head, c}, v[c]);
  }
  void run(float scale, bool causal = false) {
    ref::dense_decode({.q = q.view(),
                       .k_cache = k_cache.view(),
                       .block_table = block_table.view(),
                       .cache_seqlens = cache_seqlens.view(),
                       .head_dim_v = 2,
                       .softmax_scale = scale,
                       .causal = causal,
                       .tile_scheduler_metadata = {},
                       .num_splits = {},
                       .out = out.view(),
                       .lse = lse.view()});
  }
};

constexpr std::array<float, 4> kQ = {1.0f, 0.5f, -1.0f, 2.0f};
constexpr std::array<float, 4> kK0 = {0.5f, 2.0f, 1.0f, 0.25f};  // <kQ, kK0> = 1
constexpr std::array<float, 4> kK1 = {2.0f, 0.0f, 0.0f, 0.0f};   // <kQ, kK1> = 2

TEST(RefDenseDecode, SingleKeyGivesItsValue) {
  Tiny t(1, 1, 1, 1, /*page=*/4, /*num_blocks=*/1);
  t.cache_seqlens.i32({0}) = 1;
  t.block_table.i32({0, 0}) = 0;
  t.set_q(0, 0, 0, kQ);
  t.set_k(0, 0, 0, kK0);  // slots 1..3 stay NaN, block-table entry 1 stays garbage
  t.run(0.5f);
  EXPECT_EQ(t.out.get({0, 0, 0, 0}), 0.5f);
  EXPECT_EQ(t.out.get({0, 0, 0, 1}), 2.0f);
  EXPECT_FLOAT_EQ(t.lse.get({0, 0, 0}), 0.5f);
}

TEST(RefDenseDecode, TwoKeysKnownSoftmax) {
  Tiny t(1, 1, 1, 1, /*page=*/1, /*num_blocks=*/3);
  t.cache_seqlens.i32({0}) = 2;
  t.block_table.i32({0, 0}) = 2;  // token 0 in block 2, token 1 in block 0
  t.block_table.i32({0, 1}) = 0;
  t.set_q(0, 0, 0, kQ);
  t.set_k(2, 0, 0, kK0);
  t.set_k(0, 0, 0, kK1);
  t.run(0.5f);  // logits 0.5 and 1
  const double lse = std::log(std::exp(0.5) + std::exp(1.0));
  const double p0 = std::exp(0.5 - lse), p1 = std::exp(1.0 - lse);
  EXPECT_FLOAT_EQ(t.lse.get({0, 0, 0}), float(lse));
  EXPECT_FLOAT_EQ(t.out.get({0, 0, 0, 0}), float(p0 * 0.5 + p1 * 2.0));
  EXPECT_FLOAT_EQ(t.out.get({0, 0, 0, 1}), float(p0 * 2.0));
}

// Causal is bottom-right aligned: with s_q = 3 and 2 keys, token 0 sees nothing, token 1 sees
// key 0, token 2 sees both.
TEST(RefDenseDecode, CausalRowsAndEmptiness) {
  for (bool causal : {false, true}) {
    Tiny t(1, 3, 1, 1, /*page=*/4, /*num_blocks=*/1);
    t.cache_seqlens.i32({0}) = 2;
    t.block_table.i32({0, 0}) = 0;
    for (int64_t s = 0; s < 3; ++s) t.set_q(0, s, 0, kQ);
    t.set_k(0, 0, 0, kK0);
    t.set_k(0, 1, 0, kK1);
    t.run(0.5f, causal);
    const float both = float(std::log(std::exp(0.5) + std::exp(1.0)));
    if (causal) {
      EXPECT_EQ(t.lse.get({0, 0, 0}), kInf);
      EXPECT_EQ(t.out.get({0, 0, 0, 0}), 0.0f);
      EXPECT_EQ(t.out.get({0, 0, 0, 1}), 0.0f);
      EXPECT_FLOAT_EQ(t.lse.get({0, 0, 1}), 0.5f);
      EXPECT_FLOAT_EQ(t.out.get({0, 1, 0, 1}), 2.0f);
    } else {
      EXPECT_FLOAT_EQ(t.lse.get({0, 0, 0}), both);
      EXPECT_FLOAT_EQ(t.lse.get({0, 0, 1}), both);
    }
    EXPECT_FLOAT_EQ(t.lse.get({0, 0, 2}), both);
  }
}

TEST(RefDenseDecode, CausalIgnoredForSingleQueryToken) {
  Tiny t(1, 1, 1, 1, /*page=*/4, /*num_blocks=*/1);
  t.cache_seqlens.i32({0}) = 2;
  t.block_table.i32({0, 0}) = 0;
  t.set_q(0, 0, 0, kQ);
  t.set_k(0, 0, 0, kK0);
  t.set_k(0, 1, 0, kK1);
  t.run(0.5f, /*causal=*/true);
  EXPECT_FLOAT_EQ(t.lse.get({0, 0, 0}), float(std::log(std::exp(0.5) + std::exp(1.0))));
}

TEST(RefDenseDecode, ZeroLengthRequestGivesZeroAndInf) {
  Tiny t(2, 1, 1, 1, /*page=*/4, /*num_blocks=*/1);
  t.cache_seqlens.i32({0}) = 0;  // request 0: only garbage in its block table
  t.cache_seqlens.i32({1}) = 1;
  t.block_table.i32({1, 0}) = 0;
  t.set_q(0, 0, 0, kQ);
  t.set_q(1, 0, 0, kQ);
  t.set_k(0, 0, 0, kK0);
  t.run(0.5f);
  EXPECT_EQ(t.lse.get({0, 0, 0}), kInf);
  EXPECT_EQ(t.out.get({0, 0, 0, 0}), 0.0f);
  EXPECT_FALSE(std::signbit(t.out.get({0, 0, 0, 1})));
  EXPECT_EQ(t.out.get({0, 0, 0, 1}), 0.0f);
  EXPECT_FLOAT_EQ(t.lse.get({1, 0, 0}), 0.5f);
  EXPECT_EQ(t.out.get({1, 0, 0, 1}), 2.0f);
}

// Query head h uses KV head h / (h_q / h_kv): heads 0, 1 -> KV 0; heads 2, 3 -> KV 1.
TEST(RefDenseDecode, GqaHeadMapping) {
  Tiny t(1, 1, 4, 2, /*page=*/4, /*num_blocks=*/1);
  t.cache_seqlens.i32({0}) = 1;
  t.block_table.i32({0, 0}) = 0;
  for (int64_t h = 0; h < 4; ++h) t.set_q(0, 0, h, kQ);
  t.set_k(0, 0, 0, kK0);
  t.set_k(0, 0, 1, kK1);
  t.run(1.0f);
  for (int64_t h = 0; h < 4; ++h) {
    const bool first = h < 2;
    EXPECT_EQ(t.out.get({0, 0, h, 0}), first ? 0.5f : 2.0f) << h;
    EXPECT_EQ(t.out.get({0, 0, h, 1}), first ? 2.0f : 0.0f) << h;
    EXPECT_FLOAT_EQ(t.lse.get({0, h, 0}), first ? 1.0f : 2.0f) << h;
  }
}

// The output is rounded once from double: 1 + 2^-8 + 2^-24 lies just above the bf16 midpoint
// between 1 and 1 + 2^-7, so it must round up (via fp32 it would become the tie and round to 1).
TEST(RefDenseDecode, OutputRoundedOnce) {
  Tiny t(1, 1, 1, 1, /*page=*/4, /*num_blocks=*/1);
  t.k_cache = HostTensor::empty(DType::fp32, {1, 4, 1, 4});  // fp32 cache to hold the extra bits
  t.out = HostTensor::empty(DType::bf16, {1, 1, 1, 2});
  t.cache_seqlens.i32({0}) = 2;
  t.block_table.i32({0, 0}) = 0;
  t.set_q(0, 0, 0, {0.0f, 0.0f, 0.0f, 0.0f});  // equal logits: out = mean of the two values
  t.set_k(0, 0, 0, {1.0f, 0.0f, 0.0f, 0.0f});
  t.set_k(0, 1, 0, {1.0f + 0x1p-7f + 0x1p-23f, 0.0f, 0.0f, 0.0f});
  t.run(1.0f);
  EXPECT_EQ(t.out.get({0, 0, 0, 0}), 1.0f + 0x1p-7f);
}

DenseDecodeData run_ref(const DenseDecodeCase& c, std::optional<float> scale = {}) {
  DenseDecodeData d = make_dense_decode_data(c);
  ref::dense_decode(d.args(scale));
  return d;
}

// Bitwise-identical results (tolerances far below one rounding step).
void expect_same(const DenseDecodeData& a, const DenseDecodeData& b, const std::string& what) {
  const CompareResult out = check_is_allclose(what + " out", a.out.view(), b.out.view(), 1e-30,
                                              1e-30, 1e-15);
  const CompareResult lse = check_is_allclose(what + " lse", a.lse.view(), b.lse.view(), 1e-30,
                                              1e-30, 1e-15);
  EXPECT_TRUE(out.ok) << out.message;
  EXPECT_TRUE(lse.ok) << lse.message;
}

DenseDecodeCase small_case() {
  return {.batch = 3, .q_len = 2, .kv_len = 150, .num_heads_q = 4, .num_heads_kv = 2,
          .varlen = true, .causal = true, .zero_lengths = true, .seed = 7};
}

TEST(RefDenseDecode, DefaultScaleIsOneOverSqrt576) {
  const DenseDecodeCase c = small_case();
  expect_same(run_ref(c), run_ref(c, 1.0f / 24.0f), "default scale");
}

TEST(RefDenseDecode, AnyPageBlockSizeMatchesPage64) {
  const DenseDecodeData base = run_ref(small_case());
  for (int64_t page : {1, 7, 53, 128, 576}) {
    DenseDecodeCase c = small_case();
    c.page_block_size = page;
    expect_same(run_ref(c), base, "page " + std::to_string(page));
  }
}

TEST(RefDenseDecode, NonContiguousMatchesContiguous) {
  DenseDecodeCase c = small_case();
  c.non_contiguous = true;
  const DenseDecodeData strided = run_ref(c);
  EXPECT_FALSE(strided.q.view().is_contiguous());
  EXPECT_FALSE(strided.block_table.view().is_contiguous());
  expect_same(strided, run_ref(small_case()), "non-contiguous");
}

// Absent tokens hold NaN and unused block-table entries garbage; neither may leak.
TEST(RefDenseDecode, GeneratedCaseNeverLeaksNaN) {
  for (DType dtype : {DType::bf16, DType::fp16}) {
    DenseDecodeCase c = small_case();
    c.dtype = dtype;
    c.batch = 6;
    const DenseDecodeData d = run_ref(c);
    EXPECT_EQ(d.block_table.i32({0, d.block_table.size(1) - 1}), kGarbageBlockId);
    int64_t nan_slots = 0;
    for (int64_t b = 0; b < d.k_cache.size(0); ++b) {
      for (int64_t t = 0; t < d.k_cache.size(1); ++t) {
        nan_slots += std::isnan(d.k_cache.get({b, t, 0, 0}));
      }
    }
    EXPECT_GT(nan_slots, 0);
    int zero_requests = 0;
    for (int64_t i = 0; i < c.batch; ++i) {
      zero_requests += d.seqlens[i] == 0;
      for (int64_t s = 0; s < c.q_len; ++s) {
        for (int64_t h = 0; h < c.num_heads_q; ++h) {
          const float lse = d.lse.get({i, h, s});
          const bool empty = d.seqlens[i] - c.q_len + s + 1 <= 0;
          EXPECT_EQ(std::isinf(lse), empty) << i << " " << s << " " << h << " " << lse;
          for (int64_t ch = 0; ch < kDenseHeadDimV; ++ch) {
            const float o = d.out.get({i, s, h, ch});
            ASSERT_TRUE(std::isfinite(o)) << i << " " << s << " " << h << " " << ch;
            if (empty) {
              ASSERT_EQ(o, 0.0f);
            }
          }
        }
      }
    }
    EXPECT_GE(zero_requests, 1);
  }
}

// ---- combine -------------------------------------------------------------------------------

// Split of a hand example: natural logits x = {0.3, -1.2, 2.0} with 2-channel values v; piece 0
// holds keys {0, 1}, piece 1 holds key {2}. Each piece stores its own log2-LSE and normalised
// output, as the decode kernel would.
struct HandSplit {
  static constexpr double x[3] = {0.3, -1.2, 2.0};
  static constexpr double v[3][2] = {{0.5, -1.0}, {0.25, 0.75}, {-0.5, 0.125}};
  CombineData d;

  explicit HandSplit(bool sink, float sink_value = 0) {
    d.num_splits = HostTensor::empty(DType::int32, {2});
    d.num_splits.i32({0}) = 0;
    d.num_splits.i32({1}) = 2;
    d.lse_accum = HostTensor::empty(DType::fp32, {2, 1, 1});
    d.o_accum = HostTensor::empty(DType::fp32, {2, 1, 1, 2});
    write_piece(0, 0, 2);
    write_piece(1, 2, 3);
    if (sink) {
      d.attn_sink = HostTensor::empty(DType::fp32, {1});
      d.attn_sink.set({0}, sink_value);
    }
    d.out = HostTensor::empty(DType::fp32, {1, 1, 1, 2});
    d.lse = HostTensor::empty(DType::fp32, {1, 1, 1});
  }

  void write_piece(int64_t slot, int begin, int end) {
    double sum = 0;
    for (int j = begin; j < end; ++j) sum += std::exp(x[j]);
    d.lse_accum.set({slot, 0, 0}, float(std::log2(sum)));
    for (int64_t c = 0; c < 2; ++c) {
      double o = 0;
      for (int j = begin; j < end; ++j) o += std::exp(x[j]) / sum * v[j][c];
      d.o_accum.set({slot, 0, 0, c}, float(o));
    }
  }

  // The unsplit softmax: natural LSE and output channel c.
  static double lse() { return std::log(std::exp(x[0]) + std::exp(x[1]) + std::exp(x[2])); }
  static double out(int c) {
    double o = 0;
    for (int j = 0; j < 3; ++j) o += std::exp(x[j] - lse()) * v[j][c];
    return o;
  }
};

TEST(RefCombine, TwoPiecesEqualUnsplitSoftmax) {
  HandSplit h(false);
  ref::combine(h.d.args());
  EXPECT_NEAR(h.d.lse.get({0, 0, 0}), HandSplit::lse(), 1e-6);
  EXPECT_NEAR(h.d.out.get({0, 0, 0, 0}), HandSplit::out(0), 1e-6);
  EXPECT_NEAR(h.d.out.get({0, 0, 0, 1}), HandSplit::out(1), 1e-6);
}

TEST(RefCombine, SinkScalesOutputButNotLse) {
  for (float sigma : {-kInf, -1.0f, 0.5f, 3.0f}) {
    HandSplit h(true, sigma);
    ref::combine(h.d.args());
    const double factor = 1.0 / (1.0 + std::exp(double(sigma) - HandSplit::lse()));
    EXPECT_NEAR(h.d.lse.get({0, 0, 0}), HandSplit::lse(), 1e-6) << sigma;
    EXPECT_NEAR(h.d.out.get({0, 0, 0, 0}), HandSplit::out(0) * factor, 1e-6) << sigma;
    EXPECT_NEAR(h.d.out.get({0, 0, 0, 1}), HandSplit::out(1) * factor, 1e-6) << sigma;
  }
}

TEST(RefCombine, InfiniteSinkGivesZeroOutput) {
  HandSplit h(true, kInf);
  ref::combine(h.d.args());
  EXPECT_NEAR(h.d.lse.get({0, 0, 0}), HandSplit::lse(), 1e-6);
  EXPECT_EQ(h.d.out.get({0, 0, 0, 0}), 0.0f);
  EXPECT_EQ(h.d.out.get({0, 0, 0, 1}), 0.0f);
}

TEST(RefCombine, AllPiecesEmptyGiveInfLseAndZeroOutput) {
  for (float sigma : {-kInf, 0.5f, kInf}) {
    for (bool sink : {false, true}) {
      HandSplit h(sink, sigma);
      h.d.lse_accum.set({0, 0, 0}, -kInf);
      h.d.lse_accum.set({1, 0, 0}, -kInf);
      ref::combine(h.d.args());
      EXPECT_EQ(h.d.lse.get({0, 0, 0}), kInf);
      EXPECT_EQ(h.d.out.get({0, 0, 0, 0}), 0.0f);
      EXPECT_EQ(h.d.out.get({0, 0, 0, 1}), 0.0f);
    }
  }
}

TEST(RefCombine, SinglePieceRowsUntouched) {
  HandSplit h(false);
  h.d.num_splits.i32({1}) = 1;  // one piece: the decode kernel wrote the row
  ref::combine(h.d.args());
  EXPECT_TRUE(std::isnan(h.d.lse.get({0, 0, 0})));
  EXPECT_TRUE(std::isnan(h.d.out.get({0, 0, 0, 0})));
}

// Generated inputs: untouched rows stay NaN, empty requests give +inf / 0, the rest is finite.
TEST(RefCombine, GeneratedCaseProperties) {
  const CombineCase c{.q_len = 2, .num_heads_q = 8, .head_dim_v = 64,
                      .pieces = {1, 3, 0, 2, 5, 4}, .sink = true, .seed = 3};
  CombineData d = make_combine_data(c);
  ref::combine(d.args());
  for (int64_t i = 0; i < c.batch(); ++i) {
    for (int64_t s = 0; s < c.q_len; ++s) {
      for (int64_t h = 0; h < c.num_heads_q; ++h) {
        const float lse = d.lse.get({i, h, s});
        const float o = d.out.get({i, s, h, 0});
        if (c.pieces[i] <= 1) {
          EXPECT_TRUE(std::isnan(lse) && std::isnan(o)) << i;
          continue;
        }
        EXPECT_FALSE(std::isnan(lse) || std::isnan(o)) << i << " " << s << " " << h;
        if (std::isinf(lse)) {
          EXPECT_EQ(o, 0.0f);
        }
      }
    }
  }
  // The last combined request is entirely empty.
  EXPECT_EQ(d.lse.get({5, 0, 0}), kInf);
  EXPECT_EQ(d.out.get({5, 1, 7, 63}), 0.0f);
}

}  // namespace
}  // namespace flashmla::testing
