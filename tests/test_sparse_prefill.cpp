// Sparse MLA prefill (flash_mla_sparse_fwd) on the CPU against the double-precision reference,
// on FlashMLA's sparse-prefill grid (reference §6.4) sized for 2 cores, with NaN in every kv row
// that must not be read and FlashMLA's tolerances; plus corners, determinism and bad inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#include "flashmla/flashmla.h"
#include "testing/bad_input.h"
#include "testing/compare.h"
#include "testing/prefill_case.h"

namespace flashmla {
namespace {

using testing::HostTensor;
using testing::SparsePrefillCase;
using testing::SparsePrefillData;

// Runs the kernel (with `ctx`) and the reference on the same data and compares out, max_logits
// and lse with FlashMLA's tolerances; the kernel's outputs must be finite except for the
// empty-row values (max_logits -inf, lse +inf), which the comparison pins to the reference's.
void check_against_reference(const SparsePrefillCase& cs, const Context& ctx = {}) {
  SCOPED_TRACE(cs.name());
  SparsePrefillData data = testing::make_sparse_prefill_data(cs);
  const SparsePrefillArgs args = data.args();
  flash_mla_sparse_fwd(args, ctx);

  EXPECT_TRUE(testing::bad_input::all_finite(data.out)) << "out has inf / NaN";
  for (const auto& r : testing::compare_sparse_prefill_with_reference(args)) {
    EXPECT_TRUE(r.ok) << r.message;
  }
}

class SparsePrefillGrid : public ::testing::TestWithParam<SparsePrefillCase> {};

TEST_P(SparsePrefillGrid, MatchesReference) { check_against_reference(GetParam()); }

std::string case_name(const ::testing::TestParamInfo<SparsePrefillCase>& info) {
  return info.param.name();
}

// FlashMLA's h_q in {128, 64} and, beyond it, {1, 8, 16, 3}; FlashMLA's (s_kv, topk) pairs
// without the largest ones, and beyond it topk not a multiple of 64; s_q in {1, 62}. d_qk and
// the features (sink, lengths, layout, all-invalid rows) rotate across the cases so that every
// head count meets each of them with both d_qk.
std::vector<SparsePrefillCase> main_grid() {
  const std::pair<int64_t, int64_t> pairs[] = {{128, 128}, {256, 256}, {592, 128},
                                               {1840, 256}, {95, 128}, {153, 256},
                                               {114, 384}, {100, 37}, {20, 1}};
  const int64_t heads[] = {128, 64, 1, 8, 16, 3};
  std::vector<SparsePrefillCase> cases;
  uint64_t n = 0;
  for (size_t p = 0; p < std::size(pairs); ++p) {
    for (int64_t sq : {1, 62}) {
      for (size_t k = 0; k < std::size(heads); ++k, ++n) {
        cases.push_back({.q_len = sq, .kv_len = pairs[p].first, .num_heads_q = heads[k],
                         .d_qk = (p + k + (sq > 1)) % 2 ? 576 : 512, .topk = pairs[p].second,
                         .sink = n % 7 % 2 == 1, .topk_length = n % 5 % 2 == 1,
                         .all_invalid_rows = n % 4 == 1, .non_contiguous = n % 3 == 0,
                         .seed = n});
      }
    }
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Main, SparsePrefillGrid, ::testing::ValuesIn(main_grid()), case_name);

// FlashMLA's corners: a single token whose list is all invalid, with sink and lengths; and
// topk far above s_kv (most entries invalid, whole blocks of the list without a valid index).
std::vector<SparsePrefillCase> corner_grid() {
  std::vector<SparsePrefillCase> cases;
  uint64_t n = 500;
  for (auto [s_kv, topk] : {std::pair<int64_t, int64_t>{128, 128}, {256, 256}}) {
    for (int64_t d : {512, 576}) {
      for (int64_t h : {128, 64}) {
        cases.push_back({.q_len = 1, .kv_len = s_kv, .num_heads_q = h, .d_qk = d,
                         .topk = topk, .sink = true, .topk_length = true,
                         .all_invalid_rows = true, .seed = n++});
      }
    }
  }
  for (int64_t sq : {1, 16}) {
    for (int64_t d : {512, 576}) {
      cases.push_back({.q_len = sq, .kv_len = 32, .num_heads_q = d == 576 ? 128 : 64, .d_qk = d,
                       .topk = 2048, .sink = true, .topk_length = sq > 1,
                       .non_contiguous = d == 576, .seed = n++});
    }
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Corners, SparsePrefillGrid, ::testing::ValuesIn(corner_grid()),
                         case_name);

// Results are right and bitwise identical whatever the number of threads, and across runs.
TEST(SparsePrefillThreads, BitwiseDeterministicAcrossThreads) {
  const SparsePrefillCase cs{.q_len = 37, .kv_len = 600, .num_heads_q = 16, .d_qk = 576,
                             .topk = 256, .sink = true, .topk_length = true,
                             .all_invalid_rows = true, .seed = 77};
  for (int threads : {1, 2, 3}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    check_against_reference(cs, {.num_threads = threads});
  }
  SparsePrefillData data = testing::make_sparse_prefill_data(cs);
  const HostTensor* outputs[] = {&data.out, &data.max_logits, &data.lse};
  std::vector<std::vector<std::byte>> first;
  for (int threads : {1, 2, 3, 2, 1}) {
    flash_mla_sparse_fwd(data.args(), {.num_threads = threads});
    for (size_t i = 0; i < std::size(outputs); ++i) {
      std::vector<std::byte> bytes = testing::bad_input::bytes_of(*outputs[i]);
      if (first.size() <= i) {
        first.push_back(std::move(bytes));
      } else {
        EXPECT_TRUE(bytes == first[i]) << "output #" << i << ", threads " << threads;
      }
    }
  }
}

// ---- bad inputs: each mutation of a valid call throws flashmla::Error naming the argument,
// and leaves the outputs untouched ----

using testing::bad_input::Expected;
using testing::bad_input::type;
using testing::bad_input::value;

struct BadInputCase {
  const char* what;
  Expected want;
  std::function<void(SparsePrefillArgs&, std::deque<HostTensor>&)> mutate;
};

const SparsePrefillCase kBadCase{.q_len = 2, .kv_len = 64, .num_heads_q = 8, .d_qk = 576,
                                 .topk = 64, .sink = true, .topk_length = true};

HostTensor& alloc(std::deque<HostTensor>& owned, DType dtype, std::vector<int64_t> shape) {
  owned.push_back(HostTensor::empty(dtype, std::move(shape)));
  return owned.back();
}

// A topk_length tensor holding `bad` for token 1 (token 0 stays valid).
HostTensor& lengths_with(std::deque<HostTensor>& owned, int32_t bad) {
  HostTensor& t = alloc(owned, DType::int32, {kBadCase.q_len});
  t.i32({0}) = 1;
  t.i32({1}) = bad;
  return t;
}

std::vector<BadInputCase> bad_input_cases() {
  const int64_t s_q = kBadCase.q_len, s_kv = kBadCase.kv_len, h_q = kBadCase.num_heads_q,
                d = kBadCase.d_qk, topk = kBadCase.topk;
  using Owned = std::deque<HostTensor>;
  return {
      {"q fp16", type("q"),
       [=](SparsePrefillArgs& a, Owned& o) { a.q = alloc(o, DType::fp16, {s_q, h_q, d}).view(); }},
      {"d_qk 128", value("q"),
       [=](SparsePrefillArgs& a, Owned& o) {
         a.q = alloc(o, DType::bf16, {s_q, h_q, 128}).view();
         a.kv = alloc(o, DType::bf16, {s_kv, 1, 128}).view();
       }},
      {"h_kv 2", value("kv"),
       [=](SparsePrefillArgs& a, Owned& o) { a.kv = alloc(o, DType::bf16, {s_kv, 2, d}).view(); }},
      {"indices (s_q, 1, topk, 1)", value("indices"),
       [=](SparsePrefillArgs& a, Owned& o) {
         a.indices = alloc(o, DType::int32, {s_q, 1, topk, 1}).view();
       }},
      {"indices (s_q + 1, 1, topk)", value("indices"),
       [=](SparsePrefillArgs& a, Owned& o) {
         a.indices = alloc(o, DType::int32, {s_q + 1, 1, topk}).view();
       }},
      {"d_v 256", value("d_v"), [](SparsePrefillArgs& a, Owned&) { a.d_v = 256; }},
      {"sm_scale NaN", value("sm_scale"),
       [](SparsePrefillArgs& a, Owned&) { a.sm_scale = testing::bad_input::kNaN; }},
      {"topk_length topk + 1", value("topk_length"),
       [=](SparsePrefillArgs& a, Owned& o) {
         a.topk_length = lengths_with(o, static_cast<int32_t>(topk + 1)).view();
       }},
      {"topk_length -1", value("topk_length"),
       [](SparsePrefillArgs& a, Owned& o) { a.topk_length = lengths_with(o, -1).view(); }},
      {"attn_sink (h_q + 1)", value("attn_sink"),
       [=](SparsePrefillArgs& a, Owned& o) {
         a.attn_sink = alloc(o, DType::fp32, {h_q + 1}).view();
       }},
      {"out fp32", type("out"),
       [=](SparsePrefillArgs& a, Owned& o) {
         a.out = alloc(o, DType::fp32, {s_q, h_q, 512}).view();
       }},
  };
}

TEST(SparsePrefillBadInput, RejectsWithArgumentName) {
  for (const BadInputCase& bad : bad_input_cases()) {
    SCOPED_TRACE(bad.what);
    SparsePrefillData data = testing::make_sparse_prefill_data(kBadCase);
    SparsePrefillArgs args = data.args();
    std::deque<HostTensor> owned;
    bad.mutate(args, owned);
    testing::bad_input::expect_error([&] { flash_mla_sparse_fwd(args); },
                                     "flash_mla_sparse_fwd", bad.want);
    EXPECT_TRUE(testing::bad_input::all_nan(data.out));
    EXPECT_TRUE(testing::bad_input::all_nan(data.max_logits));
    EXPECT_TRUE(testing::bad_input::all_nan(data.lse));
  }
}

TEST(SparsePrefillBadInput, CaseCount) {
  testing::bad_input::report_case_count("flash_mla_sparse_fwd", bad_input_cases());
  EXPECT_GE(bad_input_cases().size(), 11u);  // the table may only grow
}

// The unmutated call of the table runs.
TEST(SparsePrefillBadInput, BaseCallIsAccepted) { check_against_reference(kBadCase); }

}  // namespace
}  // namespace flashmla
