// The CPU split-KV combine against the double reference (reference §5.6): pieces with -inf LSE,
// whole empty requests, sinks with ±inf entries, many pieces (beyond FlashMLA's 160), and rows of
// single-piece requests left untouched.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "flashmla/flashmla.h"
#include "testing/combine_case.h"
#include "testing/compare.h"

namespace flashmla {
namespace {

using testing::CombineCase;
using testing::CombineData;

class CombineGrid : public ::testing::TestWithParam<CombineCase> {};

TEST_P(CombineGrid, MatchesReference) {
  const CombineCase& cs = GetParam();
  CombineData data = testing::make_combine_data(cs);
  mla_combine(data.args(), {.num_threads = 2});
  for (const auto& r : testing::compare_combine_with_reference(data)) {
    EXPECT_TRUE(r.ok) << r.message;
  }

  // Requests with at most one piece are not touched: still NaN.
  for (int64_t i = 0; i < cs.batch(); ++i) {
    if (cs.pieces[i] >= 2) continue;
    for (int64_t s = 0; s < cs.q_len; ++s)
      for (int64_t h = 0; h < cs.num_heads_q; ++h) {
        EXPECT_TRUE(std::isnan(data.lse.get({i, h, s})));
        EXPECT_TRUE(std::isnan(data.out.get({i, s, h, 0})));
      }
  }
}

std::vector<CombineCase> combine_cases() {
  std::vector<CombineCase> cases;
  uint64_t seed = 0;
  for (bool sink : {false, true}) {
    for (DType dt : {DType::bf16, DType::fp16, DType::fp32}) {
      cases.push_back({.q_len = 1, .num_heads_q = 128, .pieces = {2, 1, 3, 0, 2}, .sink = sink,
                       .out_dtype = dt, .seed = seed++});
      cases.push_back({.q_len = 3, .num_heads_q = 9, .head_dim_v = 64, .pieces = {4, 2, 2, 7},
                       .sink = sink, .out_dtype = dt, .seed = seed++});
    }
    cases.push_back({.q_len = 2, .num_heads_q = 3, .head_dim_v = 16, .pieces = {300, 1, 161},
                     .sink = sink, .seed = seed++});
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Cases, CombineGrid, ::testing::ValuesIn(combine_cases()),
                         [](const auto& info) { return info.param.name(); });

TEST(Combine, BitwiseIdenticalForAnyThreadCount) {
  const CombineCase cs{.q_len = 2, .num_heads_q = 16, .pieces = {3, 5, 2, 9, 1, 4},
                       .sink = true, .seed = 99};
  CombineData first = testing::make_combine_data(cs);
  mla_combine(first.args(), {.num_threads = 1});
  for (int threads : {2, 3}) {
    CombineData again = testing::make_combine_data(cs);
    mla_combine(again.args(), {.num_threads = threads});
    EXPECT_EQ(0, std::memcmp(first.out.view().data, again.out.view().data,
                             first.out.numel() * 2)) << threads;
    EXPECT_EQ(0, std::memcmp(first.lse.view().data, again.lse.view().data,
                             first.lse.numel() * 4)) << threads;
  }
}

}  // namespace
}  // namespace flashmla
