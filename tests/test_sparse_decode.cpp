// Sparse MLA decode (flash_mla_with_kvcache with indices) on the CPU against the
// double-precision reference, on FlashMLA's sparse-decode grid (reference §6.3) sized for 2
// cores, with NaN in every cache token that must not be read, garbage past each length and
// FlashMLA's tolerances; plus corners, explicit schedules, determinism and bad inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#include "flashmla/flashmla.h"
#include "testing/bad_input.h"
#include "testing/compare.h"
#include "testing/sparse_decode_case.h"

namespace flashmla {
namespace {

using testing::HostTensor;
using testing::SparseDecodeCase;
using testing::SparseDecodeData;

using Schedule = testing::SparseDecodeSchedule;

// Runs the kernel (with `ctx` and an optional explicit schedule of `parts` parts) and the
// reference on the same data and compares out and lse with FlashMLA's tolerances; out must be
// finite everywhere (empty rows are 0); lse's +inf of empty rows is pinned to the reference's.
void check_against_reference(const SparseDecodeCase& cs, const Context& ctx = {}, int parts = 0) {
  SCOPED_TRACE(cs.name());
  SparseDecodeData data = testing::make_sparse_decode_data(cs);
  MlaDecodeArgs args = data.args();
  Schedule schedule;
  if (parts > 0) schedule.attach(data, parts, args);
  flash_mla_with_kvcache(args, ctx);

  EXPECT_TRUE(testing::bad_input::all_finite(data.out)) << "out has inf / NaN";
  for (const auto& r : testing::compare_sparse_decode_with_reference(args)) {
    EXPECT_TRUE(r.ok) << r.message;
  }
}

class SparseDecodeGrid : public ::testing::TestWithParam<SparseDecodeCase> {};

TEST_P(SparseDecodeGrid, MatchesReference) { check_against_reference(GetParam()); }

std::string case_name(const ::testing::TestParamInfo<SparseDecodeCase>& info) {
  return info.param.name();
}

// Every d_qk x (s_k, topk, block) x h_q combination (FlashMLA's h_q {64, 128} and, beyond it,
// {1, 8, 16}); batch, s_q and the features rotate so that each meets both formats: lengths,
// extra pool (own block size, optional lengths, topk not a multiple of 64), sink, all-invalid
// and zero-length requests, varlen, non-contiguous q / indices and the bf16 cache.
std::vector<SparseDecodeCase> main_grid() {
  struct Shape { int64_t kv_len, topk, page; };
  const Shape shapes[] = {{512, 64, 2}, {512, 64, 64}, {512, 64, 69}, {1024, 576, 61},
                          {300, 37, 53}, {700, 128, 256}};
  const int64_t heads[] = {64, 128, 1, 8, 16};
  const int64_t batches[] = {1, 4, 9};
  const int64_t extra_topks[] = {64, 37, 128, 1};
  const int64_t extra_pages[] = {3, 64, 53, 256};
  std::vector<SparseDecodeCase> cases;
  uint64_t n = 0;
  for (int64_t d : {576, 512}) {
    for (const Shape& sh : shapes) {
      for (int64_t h : heads) {
        // Keep b * s_q * h_q * topk (the reference's cost) moderate.
        int64_t b = batches[n % 3];
        const int64_t sq = (n / 3) % 2 ? 3 : 1;
        while (b > 1 && b * sq * h * sh.topk > 600000) b = b == 9 ? 4 : 1;
        const bool extra = n % 4 >= 2;
        cases.push_back({.batch = b, .q_len = sq, .num_heads_q = h, .d_qk = d,
                         .kv_len = sh.kv_len, .topk = sh.topk, .page_block_size = sh.page,
                         .fp8 = n % 5 != 4, .topk_length = n % 3 == 1, .extra = extra,
                         .extra_topk_length = extra && n % 5 < 3, .sink = n % 2 == 0,
                         .all_invalid = n % 6 == 5, .zero_lengths = n % 7 == 3,
                         .varlen = n % 5 == 1, .non_contiguous = n % 3 == 0,
                         .extra_topk = extra ? extra_topks[(n / 4) % 4] : 0,
                         .extra_page_block_size = extra ? extra_pages[(n / 3) % 4] : 0,
                         .seed = n});
        ++n;
      }
    }
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Main, SparseDecodeGrid, ::testing::ValuesIn(main_grid()), case_name);

// FlashMLA's corners: (s_k, topk, block) in {(512, 64, 61), (650, 576, 53)}, s_q = 3, every
// combination of {all-invalid, zero-length, sink} with at least one on; and topk 2048 over
// s_k 2046 (lists padded with -1) at small b / h, with an extra pool; topk 1.
std::vector<SparseDecodeCase> corner_grid() {
  std::vector<SparseDecodeCase> cases;
  uint64_t n = 1000;
  for (int64_t d : {576, 512}) {
    for (int combo = 1; combo < 8; ++combo, ++n) {
      const bool big = combo % 2 == 0;
      cases.push_back({.batch = 4, .q_len = 3, .num_heads_q = big ? 8 : 16, .d_qk = d,
                       .kv_len = big ? 650 : 512, .topk = big ? 576 : 64,
                       .page_block_size = big ? 53 : 61, .topk_length = combo == 5,
                       .extra = combo == 3, .sink = (combo & 4) != 0,
                       .all_invalid = (combo & 1) != 0, .zero_lengths = (combo & 2) != 0,
                       .varlen = true, .extra_topk = combo == 3 ? 64 : 0, .seed = n});
    }
    cases.push_back({.batch = 2, .q_len = 1, .num_heads_q = 8, .d_qk = d, .kv_len = 2046,
                     .topk = 2048, .page_block_size = 64, .topk_length = true, .extra = true,
                     .extra_topk_length = true, .sink = true, .extra_topk = 100,
                     .extra_page_block_size = 2, .seed = n++});
    cases.push_back({.batch = 1, .q_len = 3, .num_heads_q = 1, .d_qk = d, .kv_len = 2046,
                     .topk = 2048, .page_block_size = 64, .fp8 = d == 512,
                     .non_contiguous = true, .seed = n++});
    cases.push_back({.batch = 9, .q_len = 1, .num_heads_q = 16, .d_qk = d, .kv_len = 20,
                     .topk = 1, .page_block_size = 1, .extra = true, .sink = true,
                     .extra_topk = 1, .extra_page_block_size = 5, .seed = n++});
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Corners, SparseDecodeGrid, ::testing::ValuesIn(corner_grid()),
                         case_name);

SparseDecodeCase schedule_case(int64_t d) {
  return {.batch = 5, .q_len = 2, .num_heads_q = 16, .d_qk = d, .kv_len = 600, .topk = 200,
          .page_block_size = 61, .topk_length = true, .extra = true, .extra_topk_length = true,
          .sink = true, .zero_lengths = true, .varlen = true, .extra_topk = 100,
          .extra_page_block_size = 7, .seed = static_cast<uint64_t>(d)};
}

// Any explicit schedule (one part, a few, more parts than blocks) gives the right answer on
// 1, 2 and 3 threads.
TEST(SparseDecodeSchedule, AnyNumberOfPartsAndThreads) {
  for (int64_t d : {576, 512}) {
    for (int parts : {1, 3, 50}) {
      for (int threads : {1, 2, 3}) {
        SCOPED_TRACE("parts " + std::to_string(parts) + ", threads " + std::to_string(threads));
        check_against_reference(schedule_case(d), {.num_threads = threads}, parts);
      }
    }
  }
}

// A fixed schedule fixes the numerics: bitwise identical results whatever the number of threads
// and across repeated runs.
TEST(SparseDecodeSchedule, BitwiseDeterministicAcrossThreads) {
  for (int64_t d : {576, 512}) {
    SparseDecodeData data = testing::make_sparse_decode_data(schedule_case(d));
    MlaDecodeArgs args = data.args();
    Schedule schedule;
    schedule.attach(data, 7, args);
    std::vector<std::byte> first_out, first_lse;
    for (int threads : {1, 2, 3, 2, 1}) {
      flash_mla_with_kvcache(args, {.num_threads = threads});
      std::vector<std::byte> o = testing::bad_input::bytes_of(data.out);
      std::vector<std::byte> l = testing::bad_input::bytes_of(data.lse);
      if (first_out.empty()) {
        first_out = std::move(o);
        first_lse = std::move(l);
      } else {
        EXPECT_TRUE(o == first_out) << "d " << d << ", threads " << threads;
        EXPECT_TRUE(l == first_lse) << "d " << d << ", threads " << threads;
      }
    }
  }
}

// ---- bad inputs: each mutation of a valid call throws flashmla::Error naming the argument,
// and leaves the outputs untouched ----

using testing::bad_input::Expected;
using testing::bad_input::kAccept;
using testing::bad_input::type;
using testing::bad_input::value;
using Owned = std::deque<HostTensor>;

struct BadInputCase {
  const char* what;
  Expected want;
  std::function<void(MlaDecodeArgs&, SparseDecodeData&, Owned&)> mutate;
  const char* message_part = nullptr;  // must occur in the error message
};

// b = 2, s_q = 1, V32, 4 blocks of 16 tokens (64 slots) in each pool, no lengths.
const SparseDecodeCase kBadCase{.batch = 2, .q_len = 1, .num_heads_q = 8, .d_qk = 576,
                                .kv_len = 32, .topk = 16, .page_block_size = 16, .extra = true,
                                .sink = true, .extra_topk = 8, .extra_page_block_size = 16};

HostTensor& alloc(Owned& owned, DType dtype, std::vector<int64_t> shape) {
  owned.push_back(HostTensor::empty(dtype, std::move(shape)));
  return owned.back();
}

// A (b,) int32 length tensor: request 0 keeps its whole list, request 1 gets `len1`.
TensorView lengths(Owned& o, int32_t len0, int32_t len1) {
  HostTensor& t = alloc(o, DType::int32, {kBadCase.batch});
  t.i32({0}) = len0;
  t.i32({1}) = len1;
  return t.view();
}

std::vector<BadInputCase> bad_input_cases() {
  const int64_t b = kBadCase.batch, s_q = kBadCase.q_len, h_q = kBadCase.num_heads_q;
  const int64_t page = kBadCase.page_block_size, topk = kBadCase.topk;
  using D = SparseDecodeData;
  return {
      {"in-length index = num_slots", value("indices"),
       [](MlaDecodeArgs& a, D& d, Owned&) {
         d.indices.i32({1, 0, 5}) = static_cast<int32_t>(a.k_cache.size(0) * page);
       }, "indices[1][0][5]"},
      {"in-length index -2", value("indices"),
       [](MlaDecodeArgs&, D& d, Owned&) { d.indices.i32({0, 0, 3}) = -2; }, "indices[0][0][3]"},
      {"in-length extra index INT_MAX", value("extra_indices_in_kvcache"),
       [](MlaDecodeArgs&, D& d, Owned&) {
         d.extra_indices.i32({1, 0, 2}) = testing::bad_input::kI32Max;
       }, "extra_indices_in_kvcache[1][0][2]"},
      {"garbage past topk_length / extra_topk_length", kAccept,
       [=](MlaDecodeArgs& a, D& d, Owned& o) {
         a.topk_length = lengths(o, static_cast<int32_t>(topk), 5);
         a.extra_topk_length = lengths(o, 0, 2);
         d.indices.i32({1, 0, 5}) = testing::bad_input::kI32Max;
         d.indices.i32({1, 0, 9}) = -7;
         d.extra_indices.i32({0, 0, 0}) = testing::bad_input::kI32Min;
         d.extra_indices.i32({1, 0, 2}) = 1 << 30;
       }},
      {"causal", value("causal"), [](MlaDecodeArgs& a, D&, Owned&) { a.causal = true; }},
      {"q fp16", type("q"),
       [=](MlaDecodeArgs& a, D&, Owned& o) {
         a.q = alloc(o, DType::fp16, {b, s_q, h_q, 576}).view();
       }},
      {"q d_qk 128", value("q"),
       [=](MlaDecodeArgs& a, D&, Owned& o) {
         a.q = alloc(o, DType::bf16, {b, s_q, h_q, 128}).view();
       }},
      {"k_cache 600 bytes per token", value("k_cache"),
       [](MlaDecodeArgs& a, D&, Owned& o) {
         a.k_cache = alloc(o, DType::uint8, {a.k_cache.size(0), page, 1, 600}).view();
       }},
      {"k_cache h_kv 2", value("k_cache"),
       [](MlaDecodeArgs& a, D&, Owned& o) {
         a.k_cache = alloc(o, DType::uint8, {a.k_cache.size(0), page, 2, 656}).view();
       }},
      {"k_cache stride(1) 672", value("k_cache"),
       [](MlaDecodeArgs& a, D&, Owned& o) {
         const int64_t nb = a.k_cache.size(0);
         HostTensor& t = alloc(o, DType::uint8, {nb, page, 1, 672});
         a.k_cache = TensorView::strided(t.view().data, DType::uint8, {nb, page, 1, 656},
                                         {page * 672, 672, 672, 1});
       }},
      {"extra_k_cache bf16 with an FP8 k_cache", type("extra_k_cache"),
       [](MlaDecodeArgs& a, D&, Owned& o) {
         a.extra_k_cache = alloc(o, DType::bf16, {a.extra_k_cache.size(0), page, 1, 576}).view();
       }},
      {"topk_length topk + 1", value("topk_length"),
       [=](MlaDecodeArgs& a, D&, Owned& o) {
         a.topk_length = lengths(o, 1, static_cast<int32_t>(topk + 1));
       }},
      {"topk_length -1", value("topk_length"),
       [](MlaDecodeArgs& a, D&, Owned& o) { a.topk_length = lengths(o, -1, 1); }},
      {"extra_topk_length extra_topk + 1", value("extra_topk_length"),
       [=](MlaDecodeArgs& a, D&, Owned& o) {
         a.extra_topk_length = lengths(o, 0, static_cast<int32_t>(kBadCase.extra_topk + 1));
       }},
      {"extra_topk_length without extra_k_cache", value("extra_topk_length"),
       [](MlaDecodeArgs& a, D&, Owned& o) {
         a.extra_k_cache = {};
         a.extra_indices_in_kvcache = {};
         a.extra_topk_length = lengths(o, 1, 1);
       }},
      {"attn_sink (h_q + 1)", value("attn_sink"),
       [=](MlaDecodeArgs& a, D&, Owned& o) {
         a.attn_sink = alloc(o, DType::fp32, {h_q + 1}).view();
       }},
      {"attn_sink bf16", type("attn_sink"),
       [=](MlaDecodeArgs& a, D&, Owned& o) { a.attn_sink = alloc(o, DType::bf16, {h_q}).view(); }},
      {"lse (b, s_q, h_q + 1)", value("lse"),
       [=](MlaDecodeArgs& a, D&, Owned& o) {
         a.lse = alloc(o, DType::fp32, {b, h_q + 1, s_q}).view();
       }},
      {"out fp32", type("out"),
       [=](MlaDecodeArgs& a, D&, Owned& o) {
         a.out = alloc(o, DType::fp32, {b, s_q, h_q, 512}).view();
       }},
  };
}

TEST(SparseDecodeBadInput, RejectsWithArgumentName) {
  for (const BadInputCase& bad : bad_input_cases()) {
    SCOPED_TRACE(bad.what);
    SparseDecodeData data = testing::make_sparse_decode_data(kBadCase);
    MlaDecodeArgs args = data.args();
    Owned owned;
    bad.mutate(args, data, owned);
    if (bad.want.argument.empty()) {
      EXPECT_NO_THROW(flash_mla_with_kvcache(args));
      EXPECT_TRUE(testing::bad_input::all_finite(data.out));
      continue;
    }
    const auto message = testing::bad_input::expect_error(
        [&] { flash_mla_with_kvcache(args); }, "flash_mla_with_kvcache", bad.want);
    if (bad.message_part && message) {
      EXPECT_NE(message->find(bad.message_part), std::string::npos) << *message;
    }
    EXPECT_TRUE(testing::bad_input::all_nan(data.out));
    EXPECT_TRUE(testing::bad_input::all_nan(data.lse));
  }
}

TEST(SparseDecodeBadInput, CaseCount) {
  testing::bad_input::report_case_count("flash_mla_with_kvcache (sparse mode)", bad_input_cases());
  EXPECT_GE(bad_input_cases().size(), 19u);  // the table may only grow
}

// extra_indices_in_kvcache without extra_k_cache (and the reverse): either argument may be
// named, the call is rejected before any work.
TEST(SparseDecodeBadInput, ExtraPoolNeedsBothTensors) {
  for (bool drop_cache : {true, false}) {
    SparseDecodeData data = testing::make_sparse_decode_data(kBadCase);
    MlaDecodeArgs args = data.args();
    (drop_cache ? args.extra_k_cache : args.extra_indices_in_kvcache) = {};
    try {
      flash_mla_with_kvcache(args);
      ADD_FAILURE() << "accepted an extra pool with only one of its tensors";
    } catch (const Error& e) {
      EXPECT_TRUE(e.argument() == "extra_indices_in_kvcache" || e.argument() == "extra_k_cache")
          << e.what();
      EXPECT_EQ(e.kind(), ErrorKind::value) << e.what();
    }
    EXPECT_TRUE(testing::bad_input::all_nan(data.out));
  }
}

// The unmutated call of the table runs.
TEST(SparseDecodeBadInput, BaseCallIsAccepted) { check_against_reference(kBadCase); }

}  // namespace
}  // namespace flashmla
