// The sparse prefill reference (ref::sparse_prefill) on hand-computable cases, and sanity checks
// of the generated test data (tests/testing/prefill_case.h).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "ref/ref.h"
#include "testing/host_tensor.h"
#include "testing/prefill_case.h"

namespace flashmla {
namespace {

using testing::HostTensor;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kD = 512;  // d_qk of the hand-made cases (= d_v)

// One query token, `h_q` heads with q = 1/16 everywhere, and s_kv kv rows that are NaN unless
// set with key(); sm_scale 0.5, so a key row of constant value x has logit x * 16.
struct Small {
  HostTensor q, kv, indices, sink, length, out, max_logits, lse;
  int64_t h_q;

  Small(int64_t s_kv, const std::vector<int32_t>& idx, int64_t heads = 1) : h_q(heads) {
    q = HostTensor::empty(DType::bf16, {1, h_q, kD});
    q.fill(1.0f / 16);
    kv = HostTensor::empty(DType::bf16, {s_kv, 1, kD});
    const int64_t topk = static_cast<int64_t>(idx.size());
    indices = HostTensor::empty(DType::int32, {1, 1, topk});
    for (int64_t j = 0; j < topk; ++j) indices.i32({0, 0, j}) = idx[j];
    out = HostTensor::empty(DType::bf16, {1, h_q, kD});
    max_logits = HostTensor::empty(DType::fp32, {1, h_q});
    lse = HostTensor::empty(DType::fp32, {1, h_q});
  }
  // Row t: constant `x` on even channels, `x + dx` on odd ones (logit (2x + dx) * 8).
  void key(int64_t t, float x, float dx = 0) {
    for (int64_t c = 0; c < kD; ++c) kv.set({t, 0, c}, c % 2 ? x + dx : x);
  }
  void set_sink(std::vector<float> values) {
    sink = HostTensor::empty(DType::fp32, {h_q});
    for (int64_t h = 0; h < h_q; ++h) sink.set({h}, values[h]);
  }
  void set_length(int32_t len) {
    length = HostTensor::empty(DType::int32, {1});
    length.i32({0}) = len;
  }
  void run() {
    ref::sparse_prefill({.q = q.view(), .kv = kv.view(), .indices = indices.view(),
                         .sm_scale = 0.5f, .d_v = static_cast<int>(kD),
                         .attn_sink = sink.view(), .topk_length = length.view(),
                         .out = out.view(), .max_logits = max_logits.view(),
                         .lse = lse.view()});
  }
  void expect_empty(int64_t h = 0) const {
    EXPECT_EQ(max_logits.get({0, h}), -kInf);
    EXPECT_EQ(lse.get({0, h}), kInf);
    for (int64_t c = 0; c < kD; ++c) ASSERT_EQ(out.get({0, h, c}), 0.0f) << "channel " << c;
  }
  // out[h] == w0 * row value x0 (even) / x0+dx0 (odd) + w1 * (x1, x1+dx1), within bf16 rounding.
  void expect_out(int64_t h, double w0, float x0, float dx0, double w1 = 0, float x1 = 0,
                  float dx1 = 0) const {
    for (int64_t c = 0; c < kD; ++c) {
      const double want = w0 * (c % 2 ? x0 + dx0 : x0) + w1 * (c % 2 ? x1 + dx1 : x1);
      ASSERT_NEAR(out.get({0, h, c}), want, std::fabs(want) / 256 + 1e-30) << "channel " << c;
    }
  }
};

TEST(RefSparsePrefill, OneValidKeyGivesItsValue) {
  Small t(4, {-1, 2, 4, 2147483647});
  t.key(2, 0.25f, 0.5f);  // logit (0.5 + 0.5) * 8 = 8
  t.run();
  EXPECT_EQ(t.max_logits.get({0, 0}), 8.0f);
  EXPECT_EQ(t.lse.get({0, 0}), 8.0f);
  for (int64_t c = 0; c < kD; ++c) ASSERT_EQ(t.out.get({0, 0, c}), c % 2 ? 0.75f : 0.25f);
}

TEST(RefSparsePrefill, TwoKeysSoftmax) {
  Small t(3, {0, 2});
  t.key(0, 0.125f);   // logit 2
  t.key(2, -0.125f);  // logit -2
  t.run();
  const double lse = std::log(std::exp(2.0) + std::exp(-2.0));
  EXPECT_EQ(t.max_logits.get({0, 0}), 2.0f);
  EXPECT_FLOAT_EQ(t.lse.get({0, 0}), static_cast<float>(lse));
  t.expect_out(0, std::exp(2.0 - lse), 0.125f, 0, std::exp(-2.0 - lse), -0.125f, 0);
}

TEST(RefSparsePrefill, DuplicateIndexCountsTwice) {
  Small t(2, {0, 1, 0});
  t.key(0, 0.125f);  // logit 2, counted twice
  t.key(1, 0.0f);    // logit 0
  t.run();
  const double lse = std::log(2 * std::exp(2.0) + 1);
  EXPECT_FLOAT_EQ(t.lse.get({0, 0}), static_cast<float>(lse));
  EXPECT_EQ(t.max_logits.get({0, 0}), 2.0f);
  t.expect_out(0, 2 * std::exp(2.0 - lse), 0.125f, 0);
}

// kv is NaN everywhere: an all-invalid list reads nothing and gives the empty-row values.
TEST(RefSparsePrefill, AllInvalidIsEmpty) {
  const int32_t s_kv = 5;
  Small t(s_kv, {std::numeric_limits<int32_t>::min(), -123456, -1, s_kv, 114514, 1919810,
                 2147480000, std::numeric_limits<int32_t>::max()}, 2);
  t.set_sink({kInf, -1.0f});
  t.run();
  t.expect_empty(0);
  t.expect_empty(1);
}

// Only row 3 holds numbers; every invalid marker (including s_kv) would hit NaN if read
// through a clamp or wrap-around.
TEST(RefSparsePrefill, InvalidEntriesNeverRead) {
  const int32_t s_kv = 4;
  Small t(s_kv, {s_kv, -1, 3, std::numeric_limits<int32_t>::min(), 2147480000, -123456,
                 s_kv + 1, std::numeric_limits<int32_t>::max()});
  t.key(3, 0.5f);  // logit 8
  t.run();
  EXPECT_EQ(t.lse.get({0, 0}), 8.0f);
  t.expect_out(0, 1.0, 0.5f, 0);
}

// Heads: sink +inf (out 0), -inf (no effect), finite (out / (1 + exp(sigma - lse))); lse and
// max_logits never include the sink.
TEST(RefSparsePrefill, SinkScalesOutputOnly) {
  Small t(1, {0}, 3);
  t.key(0, 0.25f);  // logit 4
  t.set_sink({kInf, -kInf, 3.0f});
  t.run();
  for (int64_t h = 0; h < 3; ++h) {
    EXPECT_EQ(t.lse.get({0, h}), 4.0f) << "head " << h;
    EXPECT_EQ(t.max_logits.get({0, h}), 4.0f) << "head " << h;
  }
  for (int64_t c = 0; c < kD; ++c) ASSERT_EQ(t.out.get({0, 0, c}), 0.0f);
  t.expect_out(1, 1.0, 0.25f, 0);
  t.expect_out(2, 1.0 / (1.0 + std::exp(3.0 - 4.0)), 0.25f, 0);
}

// topk_length 0 empties the row even with valid indices; length 1 ignores entry 1, which points
// at a NaN row.
TEST(RefSparsePrefill, TopkLengthLimitsEntries) {
  Small empty(2, {0, 1});
  empty.key(0, 0.25f);
  empty.key(1, 0.25f);
  empty.set_length(0);
  empty.run();
  empty.expect_empty();

  Small one(2, {0, 1});
  one.key(0, 0.25f, -0.5f);  // logit (0.5 - 0.5) * 8 = 0; row 1 stays NaN
  one.set_length(1);
  one.run();
  EXPECT_EQ(one.lse.get({0, 0}), 0.0f);
  EXPECT_EQ(one.max_logits.get({0, 0}), 0.0f);
  one.expect_out(0, 1.0, 0.25f, -0.5f);
}

// ---- generated data ----

testing::SparsePrefillCase feature_case(bool non_contiguous) {
  return {.q_len = 40, .kv_len = 300, .num_heads_q = 4, .d_qk = 576, .topk = 128,
          .sink = true, .topk_length = true, .all_invalid_rows = true,
          .non_contiguous = non_contiguous, .seed = 9};
}

std::vector<char> raw(const HostTensor& t) {
  const char* p = static_cast<const char*>(t.view().data);
  return std::vector<char>(p, p + t.numel() * static_cast<int64_t>(dtype_size(t.dtype())));
}

// The logical content does not depend on the layout, and the reference reads through strides:
// padded and contiguous inputs give bitwise identical results.
TEST(RefSparsePrefillData, LayoutDoesNotChangeResults) {
  testing::SparsePrefillData a = testing::make_sparse_prefill_data(feature_case(false));
  testing::SparsePrefillData b = testing::make_sparse_prefill_data(feature_case(true));
  EXPECT_NE(b.q.view().strides[1], a.q.view().strides[1]);
  ref::sparse_prefill(a.args());
  ref::sparse_prefill(b.args());
  EXPECT_EQ(raw(a.out), raw(b.out));
  EXPECT_EQ(raw(a.max_logits), raw(b.max_logits));
  EXPECT_EQ(raw(a.lse), raw(b.lse));
}

// The generator produces what the kernel tests rely on: empty rows (all-invalid lists and zero
// lengths), duplicated valid entries, entries past the length that point at NaN rows, and
// finite reference outputs wherever a row is non-empty.
TEST(RefSparsePrefillData, FeaturesArePresent) {
  const testing::SparsePrefillCase c = feature_case(false);
  testing::SparsePrefillData d = testing::make_sparse_prefill_data(c);
  int empty_rows = 0, duplicates = 0, nan_past_length = 0;
  for (int64_t s = 0; s < c.q_len; ++s) {
    const int32_t len = d.topk_length.i32({s});
    std::vector<int> seen(static_cast<size_t>(c.kv_len));
    bool any = false;
    for (int64_t j = 0; j < c.topk; ++j) {
      const int32_t t = d.indices.i32({s, 0, j});
      if (t < 0 || t >= c.kv_len) continue;
      if (j < len) {
        any = true;
        duplicates += seen[t]++ > 0;
        EXPECT_FALSE(std::isnan(d.kv.get({t, 0, 0}))) << "referenced row " << t;
      } else {
        nan_past_length += std::isnan(d.kv.get({t, 0, 0}));
      }
    }
    empty_rows += !any;
  }
  EXPECT_GT(empty_rows, 0);
  EXPECT_GT(duplicates, 0);
  EXPECT_GT(nan_past_length, 0);

  ref::sparse_prefill(d.args());
  for (int64_t s = 0; s < c.q_len; ++s) {
    for (int64_t h = 0; h < c.num_heads_q; ++h) {
      const bool empty = d.lse.get({s, h}) == kInf;
      EXPECT_EQ(empty, d.max_logits.get({s, h}) == -kInf);
      if (!empty) {
        EXPECT_TRUE(std::isfinite(d.max_logits.get({s, h})));
      }
      for (int64_t ch = 0; ch < kD; ++ch) {
        ASSERT_TRUE(std::isfinite(d.out.get({s, h, ch}))) << s << ", " << h << ", " << ch;
      }
    }
  }
}

}  // namespace
}  // namespace flashmla
