// The sparse decode reference (ref::sparse_decode) on hand-computable cases, in both FP8 formats
// and with a bf16 cache, and sanity checks of the generated test data
// (tests/testing/sparse_decode_case.h).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <limits>
#include <vector>

#include "flashmla/kv_format.h"
#include "ref/ref.h"
#include "testing/host_tensor.h"
#include "testing/sparse_decode_case.h"

namespace flashmla {
namespace {

using testing::HostTensor;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int32_t kIntMax = std::numeric_limits<int32_t>::max();
constexpr int64_t kPage = 3, kBlocks = 4;  // every pool: 4 blocks of 3 tokens (slots 0..11)

// One KV pool of a hand-made case: a bf16 cache that is NaN unless set with key(), quantized
// into an FP8 cache (block stride with one spare token, bytes 0xFF) when asked for.
struct HandPool {
  HostTensor k, fp8, indices, length;
  void init(int64_t d_qk, const std::vector<int32_t>& idx) {
    k = HostTensor::empty(DType::bf16, {kBlocks, kPage, 1, d_qk});
    indices = HostTensor::empty(DType::int32, {1, 1, static_cast<int64_t>(idx.size())});
    for (size_t j = 0; j < idx.size(); ++j) indices.i32({0, 0, int64_t(j)}) = idx[j];
  }
  // Token `slot`: channel 0 holds `first` (sets the logit), every other channel `x` (the
  // RoPE channels too); both in {0, +-1/8, +-1/4, +-3/8, +-1/2}: exact in every format.
  void key(int64_t slot, float first, float x) {
    const int64_t d_qk = k.size(3);
    for (int64_t c = 0; c < d_qk; ++c) k.set({slot / kPage, slot % kPage, 0, c}, c ? x : first);
  }
  void set_length(int32_t len) {
    length = HostTensor::empty(DType::int32, {1});
    length.i32({0}) = len;
  }
  TensorView cache(bool use_fp8) {
    if (!use_fp8) return k.view();
    const int64_t d_qk = k.size(3), bpt = d_qk == 576 ? 656 : 584;
    const int64_t stride = (kPage + 1) * bpt;  // padded blocks, as FlashMLA's allocators do
    fp8 = HostTensor::empty(DType::uint8, {kBlocks * stride});
    std::memset(fp8.view().data, 0xFF, static_cast<size_t>(fp8.numel()));
    const TensorView v = TensorView::strided(fp8.view().data, DType::uint8,
                                             {kBlocks, kPage, 1, bpt}, {stride, bpt, bpt, 1});
    quantize_kv_cache({.format = d_qk == 576 ? KvFormat::v32 : KvFormat::model1,
                       .k = k.view(), .cache = v});
    return v;
  }
};

// One request, one query token, `h_q` heads; q = 1 on channel 0 and 0 elsewhere, scale 1, so a
// token's logit is its channel-0 value.
struct Hand {
  int64_t d_qk, h_q;
  bool fp8;
  HostTensor q, sink, out, lse;
  HandPool main, extra;
  bool with_extra = false;

  Hand(int64_t d, bool use_fp8, const std::vector<int32_t>& idx, int64_t heads = 1)
      : d_qk(d), h_q(heads), fp8(use_fp8) {
    q = HostTensor::empty(DType::bf16, {1, 1, h_q, d_qk});
    q.fill(0.0f);
    for (int64_t h = 0; h < h_q; ++h) q.set({0, 0, h, 0}, 1.0f);
    main.init(d_qk, idx);
    out = HostTensor::empty(DType::bf16, {1, 1, h_q, 512});
    lse = HostTensor::empty(DType::fp32, {1, h_q, 1});
  }
  void add_extra(const std::vector<int32_t>& idx) {
    extra.init(d_qk, idx);
    with_extra = true;
  }
  void set_sink(const std::vector<float>& values) {
    sink = HostTensor::empty(DType::fp32, {h_q});
    for (int64_t h = 0; h < h_q; ++h) sink.set({h}, values[h]);
  }
  void run() {
    ref::sparse_decode({.q = q.view(), .k_cache = main.cache(fp8), .softmax_scale = 1.0f,
                        .out = out.view(), .lse = lse.view(), .indices = main.indices.view(),
                        .topk_length = main.length.view(), .attn_sink = sink.view(),
                        .extra_k_cache = with_extra ? extra.cache(fp8) : TensorView{},
                        .extra_indices_in_kvcache = extra.indices.view(),
                        .extra_topk_length = extra.length.view()});
  }
  float lse_of(int64_t h = 0) const { return lse.get({0, h, 0}); }
  // out[h] == (w_first, w_rest, w_rest, ...) within bf16 rounding.
  void expect_value(int64_t h, double w_first, double w_rest) const {
    for (int64_t c = 0; c < 512; ++c) {
      const double want = c ? w_rest : w_first;
      ASSERT_NEAR(out.get({0, 0, h, c}), want, std::fabs(want) / 256 + 1e-30) << "channel " << c;
    }
  }
  void expect_empty(int64_t h = 0) const {
    EXPECT_EQ(lse_of(h), kInf);
    for (int64_t c = 0; c < 512; ++c) ASSERT_EQ(out.get({0, 0, h, c}), 0.0f) << "channel " << c;
  }
};

// Every format: V32 (576) and MODEL1 (512), FP8 and bf16 caches.
class RefSparseDecode : public ::testing::TestWithParam<std::pair<int64_t, bool>> {
 protected:
  int64_t d() const { return GetParam().first; }
  bool fp8() const { return GetParam().second; }
};

TEST_P(RefSparseDecode, SingleValidTokenGivesItsValue) {
  Hand t(d(), fp8(), {-1, 7, -1, -1});
  t.main.key(7, 0.5f, -0.375f);
  t.run();
  EXPECT_EQ(t.lse_of(), 0.5f);
  for (int64_t c = 0; c < 512; ++c) ASSERT_EQ(t.out.get({0, 0, 0, c}), c ? -0.375f : 0.5f);
}

TEST_P(RefSparseDecode, TwoTokensSoftmax) {
  Hand t(d(), fp8(), {4, 9});
  t.main.key(4, 0.5f, 0.25f);    // logit 0.5
  t.main.key(9, -0.5f, -0.125f);  // logit -0.5
  t.run();
  const double lse = std::log(std::exp(0.5) + std::exp(-0.5));
  const double w0 = std::exp(0.5 - lse), w1 = std::exp(-0.5 - lse);
  EXPECT_FLOAT_EQ(t.lse_of(), static_cast<float>(lse));
  t.expect_value(0, w0 * 0.5 - w1 * 0.5, w0 * 0.25 - w1 * 0.125);
}

// Entries that are -1 or past topk_length point at NaN tokens or hold garbage; none is read.
TEST_P(RefSparseDecode, InvalidAndPastLengthEntriesNeverRead) {
  Hand t(d(), fp8(), {-1, 2, 5, -1, 11, kIntMax, -2});
  t.main.key(2, 0.25f, 0.5f);
  t.main.key(5, 0.25f, -0.25f);
  t.main.set_length(4);  // columns 4.. (slot 11 is NaN, INT_MAX, -2) are ignored
  t.run();
  EXPECT_FLOAT_EQ(t.lse_of(), static_cast<float>(0.25 + std::log(2.0)));
  t.expect_value(0, 0.25, 0.125);

  Hand zero(d(), fp8(), {2, 5});  // length 0: nothing is read
  zero.main.set_length(0);
  zero.run();
  zero.expect_empty();
}

TEST_P(RefSparseDecode, DuplicatesCountEachTime) {
  Hand t(d(), fp8(), {3, 3, 8});
  t.main.key(3, 0.5f, 0.5f);
  t.main.key(8, 0.0f, 0.0f);
  t.run();
  const double lse = std::log(2 * std::exp(0.5) + 1);
  EXPECT_FLOAT_EQ(t.lse_of(), static_cast<float>(lse));
  t.expect_value(0, 2 * std::exp(0.5 - lse) * 0.5, 2 * std::exp(0.5 - lse) * 0.5);
}

// Heads: sink +inf (out 0), -inf (no effect), finite (out / (1 + exp(sigma - lse))); lse never
// includes the sink. An empty row stays out 0, lse +inf whatever the sink.
TEST_P(RefSparseDecode, SinkScalesOutputOnly) {
  Hand t(d(), fp8(), {1}, 3);
  t.main.key(1, 0.5f, 0.25f);
  t.set_sink({kInf, -kInf, 1.5f});
  t.run();
  for (int64_t h = 0; h < 3; ++h) EXPECT_EQ(t.lse_of(h), 0.5f) << "head " << h;
  t.expect_value(0, 0.0, 0.0);
  t.expect_value(1, 0.5, 0.25);
  const double f = 1.0 / (1.0 + std::exp(1.5 - 0.5));
  t.expect_value(2, f * 0.5, f * 0.25);

  Hand empty(d(), fp8(), {-1, -1}, 2);
  empty.set_sink({-kInf, 0.0f});
  empty.run();
  empty.expect_empty(0);
  empty.expect_empty(1);
}

// Valid extra tokens join the softmax of the main ones; lengths limit each list separately.
TEST_P(RefSparseDecode, ExtraPoolJoinsTheSoftmax) {
  Hand t(d(), fp8(), {0, -1});
  t.main.key(0, 0.25f, 0.5f);
  t.add_extra({-1, 6, 10, kIntMax});
  t.extra.key(6, 0.25f, -0.5f);  // same logit as main token 0
  t.extra.set_length(2);          // slot 10 (NaN) and INT_MAX are past the length
  t.run();
  EXPECT_FLOAT_EQ(t.lse_of(), static_cast<float>(0.25 + std::log(2.0)));
  t.expect_value(0, 0.25, 0.0);

  Hand none(d(), fp8(), {-1});  // main empty, extra length 0: empty row
  none.add_extra({6});
  none.extra.key(6, 0.25f, 0.5f);
  none.extra.set_length(0);
  none.run();
  none.expect_empty();

  Hand only(d(), fp8(), {-1});  // main empty, extra non-empty
  only.add_extra({6, 6});
  only.extra.key(6, -0.5f, 0.125f);
  only.run();
  EXPECT_FLOAT_EQ(only.lse_of(), static_cast<float>(-0.5 + std::log(2.0)));
  only.expect_value(0, -0.5, 0.125);
}

INSTANTIATE_TEST_SUITE_P(Formats, RefSparseDecode,
                         ::testing::Values(std::pair<int64_t, bool>{576, true},
                                           std::pair<int64_t, bool>{512, true},
                                           std::pair<int64_t, bool>{576, false},
                                           std::pair<int64_t, bool>{512, false}),
                         [](const auto& info) {
                           return std::string(info.param.first == 576 ? "V32" : "MODEL1") +
                                  (info.param.second ? "_fp8" : "_bf16");
                         });

// With values exact in every format (per-tile scales are powers of two and every value has at
// most 3 mantissa bits), the FP8 cache dequantizes to the bf16 cache: the results are bitwise
// equal. Random q, several heads, a sink, and an extra pool.
TEST(RefSparseDecodeFormats, Fp8AndBf16CachesAgreeOnExactValues) {
  const float values[] = {0.0f, 0.125f, -0.125f, 0.25f, -0.25f, 0.375f, -0.375f, 0.5f, -0.5f};
  for (int64_t d : {576, 512}) {
    SCOPED_TRACE("d_qk " + std::to_string(d));
    std::mt19937_64 rng(d);
    const std::vector<int32_t> idx = {0, 3, -1, 7, 11, 3, 5};
    Hand a(d, false, idx, 4), b(d, true, idx, 4);
    a.add_extra({2, -1, 9});
    b.add_extra({2, -1, 9});
    std::uniform_int_distribution<size_t> pick(0, std::size(values) - 1);
    for (HandPool* p : {&a.main, &a.extra}) {
      for (int32_t slot : {0, 2, 3, 5, 7, 9, 11}) {
        for (int64_t c = 0; c < d; ++c) {
          p->k.set({slot / kPage, slot % kPage, 0, c}, values[pick(rng)]);
        }
      }
    }
    b.main.k = a.main.k;
    b.extra.k = a.extra.k;
    a.q.fill_randn(rng, 1.0f, 1.0f);
    b.q = a.q;
    a.set_sink({kInf, -kInf, 0.5f, -1.0f});
    b.sink = a.sink;
    a.run();
    b.run();
    EXPECT_EQ(0, std::memcmp(a.out.view().data, b.out.view().data, a.out.numel() * 2));
    EXPECT_EQ(0, std::memcmp(a.lse.view().data, b.lse.view().data, a.lse.numel() * 4));
    EXPECT_TRUE(std::isfinite(a.lse_of(3)));
  }
}

// ---- generated data ----

std::vector<char> raw(const HostTensor& t) {
  const char* p = static_cast<const char*>(t.view().data);
  return std::vector<char>(p, p + t.numel() * static_cast<int64_t>(dtype_size(t.dtype())));
}

testing::SparseDecodeCase feature_case(int64_t d, bool fp8, bool nc) {
  return {.batch = 5, .q_len = 2, .num_heads_q = 3, .d_qk = d, .kv_len = 100, .topk = 64,
          .page_block_size = 7, .fp8 = fp8, .topk_length = true, .extra = true,
          .extra_topk_length = true, .sink = true, .all_invalid = true, .zero_lengths = true,
          .varlen = true, .non_contiguous = nc, .extra_topk = 20, .extra_page_block_size = 5,
          .seed = 3};
}

// Deterministic in the seed; the layout (padding) does not change the reference's results;
// rows are empty exactly when no valid in-length index exists (lse +inf, out 0), and finite
// otherwise; the lse argument is the (b, h_q, s_q) view of a (b, s_q, h_q) buffer.
TEST(RefSparseDecodeData, GeneratedDataIsConsistent) {
  for (int64_t d : {576, 512}) {
    for (bool fp8 : {true, false}) {
      SCOPED_TRACE(feature_case(d, fp8, false).name());
      testing::SparseDecodeData a = testing::make_sparse_decode_data(feature_case(d, fp8, false));
      testing::SparseDecodeData again =
          testing::make_sparse_decode_data(feature_case(d, fp8, false));
      testing::SparseDecodeData b = testing::make_sparse_decode_data(feature_case(d, fp8, true));
      EXPECT_EQ(raw(a.k_cache), raw(again.k_cache));
      EXPECT_EQ(raw(a.indices), raw(again.indices));
      EXPECT_NE(a.q.view().strides[2], b.q.view().strides[2]);
      EXPECT_EQ(a.lse_view().strides[1], 1);
      ref::sparse_decode(a.args());
      ref::sparse_decode(b.args());
      EXPECT_EQ(raw(a.out), raw(b.out));
      EXPECT_EQ(raw(a.lse), raw(b.lse));

      const testing::SparseDecodeCase c = feature_case(d, fp8, false);
      int empty = 0, full = 0;
      for (int64_t i = 0; i < c.batch; ++i) {
        for (int64_t s = 0; s < c.q_len; ++s) {
          int valid = 0;
          for (int64_t j = 0; j < a.topk_length.i32({i}); ++j) {
            valid += a.indices.i32({i, s, j}) != -1;
          }
          for (int64_t j = 0; j < a.extra_topk_length.i32({i}); ++j) {
            valid += a.extra_indices.i32({i, s, j}) != -1;
          }
          (valid ? full : empty) += 1;
          for (int64_t h = 0; h < c.num_heads_q; ++h) {
            const float lse = a.lse.get({i, s, h});
            EXPECT_EQ(lse == kInf, valid == 0) << i << "," << s << "," << h;
            EXPECT_TRUE(valid == 0 || std::isfinite(lse));
            for (int64_t ch = 0; ch < 512; ++ch) {
              ASSERT_TRUE(std::isfinite(a.out.get({i, s, h, ch})));
            }
          }
        }
      }
      EXPECT_GT(empty, 0);
      EXPECT_GT(full, 0);
    }
  }
}

}  // namespace
}  // namespace flashmla
