// Dense MLA decode on the CPU against the double-precision reference, on FlashMLA's dense-decode
// grid (reference §6.2) sized for 2 cores, with NaN in every cache slot that must not be read,
// permuted block tables with garbage past each sequence and FlashMLA's tolerances.
#include <gtest/gtest.h>

#include <cstring>
#include <tuple>
#include <vector>

#include "flashmla/flashmla.h"
#include "flashmla/kv_format.h"
#include "ref/ref.h"
#include "testing/compare.h"
#include "testing/decode_case.h"
#include "testing/test_size.h"

namespace flashmla {
namespace {

using testing::DenseDecodeCase;
using testing::DenseDecodeData;
using testing::HostTensor;

// Runs the kernel (with `ctx` and an optional explicit number of schedule parts) and the
// reference on the same data and compares out and lse with FlashMLA's tolerances.
void check_against_reference(const DenseDecodeCase& cs, const Context& ctx = {},
                             int num_sm_parts = 0, std::optional<float> scale = {}) {
  SCOPED_TRACE(cs.name());
  DenseDecodeData data = testing::make_dense_decode_data(cs);
  MlaDecodeArgs args = data.args(scale);
  std::vector<int32_t> meta, splits;
  if (num_sm_parts > 0) {
    meta.resize(static_cast<size_t>(num_sm_parts) * 8);
    splits.resize(cs.batch + 1);
    args.tile_scheduler_metadata =
        TensorView::contiguous(meta.data(), DType::int32, {num_sm_parts, 8});
    args.num_splits = TensorView::contiguous(splits.data(), DType::int32, {cs.batch + 1});
    get_mla_metadata({.cache_seqlens = args.cache_seqlens, .num_sm_parts = num_sm_parts,
                      .tile_scheduler_metadata = args.tile_scheduler_metadata,
                      .num_splits = args.num_splits});
  }
  flash_mla_with_kvcache(args, ctx);
  for (const auto& r : testing::compare_dense_decode_with_reference(args)) {
    EXPECT_TRUE(r.ok) << r.message;
  }
}

class DenseDecodeGrid : public ::testing::TestWithParam<DenseDecodeCase> {};

TEST_P(DenseDecodeGrid, MatchesReference) { check_against_reference(GetParam()); }

std::string case_name(const ::testing::TestParamInfo<DenseDecodeCase>& info) {
  return info.param.name();
}

// (h_q, h_kv) pairs of FlashMLA's grid: h_q in {1,3,9,63,64,126,128}, h_kv in {1,2,3,8}.
std::vector<std::pair<int64_t, int64_t>> head_pairs() {
  std::vector<std::pair<int64_t, int64_t>> pairs;
  for (int64_t hq : {1, 3, 9, 63, 64, 126, 128}) {
    for (int64_t hkv : {1, 2, 3, 8}) {
      if (hq % hkv == 0) pairs.emplace_back(hq, hkv);
    }
  }
  return pairs;
}

// Every head pair x s_q x short s_k x {varlen, causal} combination; batch, zero-length requests,
// dtype, layout and page size rotate so that each appears across the grid.
std::vector<DenseDecodeCase> short_grid() {
  std::vector<DenseDecodeCase> cases;
  uint64_t n = 0;
  const int64_t batches[] = {1, 2, 6};
  const int64_t pages[] = {64, 64, 1, 16, 100};
  for (auto [hq, hkv] : head_pairs()) {
    for (int64_t sq : {1, 2, 4}) {
      for (int64_t sk : {20, 140}) {
        for (int combo = 0; combo < 4; ++combo, ++n) {
          cases.push_back({.batch = batches[n % 3], .q_len = sq, .kv_len = sk,
                           .num_heads_q = hq, .num_heads_kv = hkv,
                           .page_block_size = pages[n % 5],
                           .varlen = (combo & 1) != 0, .causal = (combo & 2) != 0,
                           .zero_lengths = n % 7 == 3, .non_contiguous = n % 3 == 1,
                           .dtype = n % 4 == 2 ? DType::fp16 : DType::bf16, .seed = n});
        }
      }
    }
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Short, DenseDecodeGrid, ::testing::ValuesIn(short_grid()), case_name);

// b = 64 on short sequences, every head pair. (Under FLASHMLA_TEST_SIZE=small, the sanitizer
// run, b = 16 here and s_k = 1024, b = 32 instead of 4096, 128 in long_grid.)
std::vector<DenseDecodeCase> wide_batch_grid() {
  std::vector<DenseDecodeCase> cases;
  uint64_t n = 1000;
  for (auto [hq, hkv] : head_pairs()) {
    for (int64_t sq : {1, 2}) {
      for (int64_t sk : {20, 140}) {
        cases.push_back({.batch = testing::sized(64, 16), .q_len = sq, .kv_len = sk, .num_heads_q = hq,
                         .num_heads_kv = hkv, .varlen = n % 4 != 1, .causal = n % 2 == 1,
                         .zero_lengths = n % 3 == 0, .non_contiguous = n % 5 == 0,
                         .seed = n});
        ++n;
      }
    }
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(WideBatch, DenseDecodeGrid, ::testing::ValuesIn(wide_batch_grid()),
                         case_name);

// s_k = 4096 on one or two requests, every head pair and s_q; and FlashMLA's corner shape
// b = 128, s_q = 2, s_k = 4096 with zero-length requests, at head counts that keep the double
// reference fast.
std::vector<DenseDecodeCase> long_grid() {
  std::vector<DenseDecodeCase> cases;
  uint64_t n = 2000;
  for (auto [hq, hkv] : head_pairs()) {
    for (int64_t sq : {1, 2, 4}) {
      cases.push_back({.batch = 1 + static_cast<int64_t>(n % 2), .q_len = sq,
                       .kv_len = testing::sized(4096, 1024),
                       .num_heads_q = hq, .num_heads_kv = hkv, .varlen = n % 3 != 0,
                       .causal = n % 2 == 0, .non_contiguous = n % 4 == 0,
                       .dtype = n % 5 == 0 ? DType::fp16 : DType::bf16, .seed = n});
      ++n;
    }
  }
  for (bool causal : {false, true}) {
    cases.push_back({.batch = testing::sized(128, 32), .q_len = 2,
                     .kv_len = testing::sized(4096, 1024), .num_heads_q = 2,
                     .num_heads_kv = 1, .varlen = true, .causal = causal, .zero_lengths = true,
                     .seed = n++});
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Long, DenseDecodeGrid, ::testing::ValuesIn(long_grid()), case_name);

// Any schedule gives the right answer: one part, more parts than requests, many pieces per
// request (beyond FlashMLA's 160-piece combine limit), on 1, 2 and 3 threads.
TEST(DenseDecodeSchedule, AnyNumberOfPartsAndThreads) {
  const DenseDecodeCase cs{.batch = 3, .q_len = 2, .kv_len = 700, .num_heads_q = 16,
                           .num_heads_kv = 2, .varlen = true, .causal = true, .seed = 77};
  for (int parts : {1, 2, 5, 64, 200}) {
    for (int threads : {1, 2, 3}) {
      SCOPED_TRACE("parts " + std::to_string(parts) + ", threads " + std::to_string(threads));
      check_against_reference(cs, {.num_threads = threads}, parts);
    }
  }
}

// A fixed schedule fixes the numerics: results are bitwise identical whatever the number of
// threads and across repeated runs.
TEST(DenseDecodeSchedule, BitwiseDeterministicAcrossThreads) {
  const DenseDecodeCase cs{.batch = 4, .q_len = 1, .kv_len = 900, .num_heads_q = 32,
                           .num_heads_kv = 1, .varlen = true, .seed = 5};
  DenseDecodeData data = testing::make_dense_decode_data(cs);
  const int parts = 7;
  std::vector<int32_t> meta(parts * 8), splits(cs.batch + 1);
  MlaDecodeArgs args = data.args();
  args.tile_scheduler_metadata = TensorView::contiguous(meta.data(), DType::int32, {parts, 8});
  args.num_splits = TensorView::contiguous(splits.data(), DType::int32, {cs.batch + 1});
  get_mla_metadata({.cache_seqlens = args.cache_seqlens, .num_sm_parts = parts,
                    .tile_scheduler_metadata = args.tile_scheduler_metadata,
                    .num_splits = args.num_splits});
  const size_t out_bytes = data.out.numel() * 2, lse_bytes = data.lse.numel() * 4;
  std::vector<char> first_out, first_lse;
  for (int threads : {1, 2, 3, 2, 1}) {
    flash_mla_with_kvcache(args, {.num_threads = threads});
    const char* o = static_cast<const char*>(data.out.view().data);
    const char* l = static_cast<const char*>(data.lse.view().data);
    if (first_out.empty()) {
      first_out.assign(o, o + out_bytes);
      first_lse.assign(l, l + lse_bytes);
    } else {
      EXPECT_EQ(0, std::memcmp(first_out.data(), o, out_bytes)) << "threads " << threads;
      EXPECT_EQ(0, std::memcmp(first_lse.data(), l, lse_bytes)) << "threads " << threads;
    }
  }
}

// The same logical cache in pages of any size gives the same (bitwise) result.
TEST(DenseDecodePages, ResultIndependentOfPageSize) {
  std::vector<std::vector<char>> outs;
  for (int64_t page : {1, 3, 64, 256}) {
    const DenseDecodeCase cs{.batch = 3, .q_len = 2, .kv_len = 300, .num_heads_q = 8,
                             .num_heads_kv = 1, .page_block_size = page, .varlen = true,
                             .causal = true, .seed = 11};
    check_against_reference(cs);
    DenseDecodeData data = testing::make_dense_decode_data(cs);
    flash_mla_with_kvcache(data.args(), {.num_threads = 2});
    const char* o = static_cast<const char*>(data.out.view().data);
    outs.emplace_back(o, o + data.out.numel() * 2);
  }
  for (size_t i = 1; i < outs.size(); ++i) EXPECT_EQ(outs[0], outs[i]) << "page size #" << i;
}

TEST(DenseDecodeScale, ExplicitSoftmaxScale) {
  const DenseDecodeCase cs{.batch = 2, .q_len = 1, .kv_len = 200, .num_heads_q = 16,
                           .num_heads_kv = 1, .seed = 21};
  check_against_reference(cs, {}, 0, 0.1f);
  check_against_reference(cs, {}, 0, -0.02f);
}

// Every request empty: out 0 and lse +inf everywhere, no NaN.
TEST(DenseDecodeEdges, AllRequestsEmpty) {
  DenseDecodeCase cs{.batch = 3, .q_len = 2, .kv_len = 64, .num_heads_q = 4,
                     .num_heads_kv = 1, .seed = 3};
  DenseDecodeData data = testing::make_dense_decode_data(cs);
  for (int64_t i = 0; i < cs.batch; ++i) data.cache_seqlens.i32({i}) = 0;
  flash_mla_with_kvcache(data.args());
  for (int64_t i = 0; i < cs.batch; ++i)
    for (int64_t s = 0; s < cs.q_len; ++s)
      for (int64_t h = 0; h < cs.num_heads_q; ++h) {
        EXPECT_EQ(data.lse.get({i, h, s}), std::numeric_limits<float>::infinity());
        for (int64_t c = 0; c < 512; ++c) ASSERT_EQ(data.out.get({i, s, h, c}), 0.0f);
      }
}

}  // namespace
}  // namespace flashmla

namespace flashmla {
namespace {

// Dense decode (with a block table) over an FP8 V32 cache, beyond FlashMLA: the cache of a
// generated case (NaN in every unused slot) quantized with padding between blocks; the kernel
// against the reference reading the same FP8 cache, and that reference against the reference
// on the dequantised bf16 cache (bitwise: the same values).
TEST(DenseDecodeFp8, V32CacheMatchesReference) {
  uint64_t seed = 3000;
  for (auto [hq, sq, page, causal] : std::vector<std::tuple<int64_t, int64_t, int64_t, bool>>{
           {16, 1, 64, false}, {128, 2, 64, true}, {8, 4, 7, true}, {1, 1, 1, false},
           {8, 2, 16, true}}) {  // the last: 16 rows per KV head, causal
    const DenseDecodeCase cs{.batch = 3, .q_len = sq, .kv_len = 300, .num_heads_q = hq,
                             .num_heads_kv = 1, .page_block_size = page, .varlen = true,
                             .causal = causal, .zero_lengths = seed % 2 == 1, .seed = seed++};
    SCOPED_TRACE(cs.name());
    DenseDecodeData data = testing::make_dense_decode_data(cs);
    const int64_t nb = data.k_cache.size(0), block_bytes = (page + 1) * 656;
    std::vector<uint8_t> bytes(nb * block_bytes, 0xff);
    const TensorView fp8 = TensorView::strided(bytes.data(), DType::uint8, {nb, page, 1, 656},
                                               {block_bytes, 656, 656, 1});
    quantize_kv_cache({.format = KvFormat::v32, .k = data.k_cache.view(), .cache = fp8});
    HostTensor deq = HostTensor::empty(DType::bf16, {nb, page, 1, 576});
    dequantize_kv_cache({.format = KvFormat::v32, .k = deq.view(), .cache = fp8});

    MlaDecodeArgs args = data.args();
    args.k_cache = fp8;
    flash_mla_with_kvcache(args);

    HostTensor ref_out = HostTensor::empty(DType::bf16, {cs.batch, sq, hq, 512});
    HostTensor ref_lse = HostTensor::empty(DType::fp32, {cs.batch, hq, sq});
    HostTensor deq_out = ref_out, deq_lse = ref_lse;
    MlaDecodeArgs ref_args = args;
    ref_args.out = ref_out.view();
    ref_args.lse = ref_lse.view();
    ref::dense_decode(ref_args);
    ref_args.k_cache = deq.view();
    ref_args.out = deq_out.view();
    ref_args.lse = deq_lse.view();
    ref::dense_decode(ref_args);
    EXPECT_EQ(0, std::memcmp(ref_out.view().data, deq_out.view().data, ref_out.numel() * 2));

    const auto out = testing::check_is_allclose("out", data.out.view(), ref_out.view(), 8e-4,
                                                2.01 / 128, 5e-6);
    EXPECT_TRUE(out.ok) << out.message;
    const auto lse = testing::check_is_allclose("lse", data.lse.view(), ref_lse.view(), 1e-6,
                                                8.01 / 65536);
    EXPECT_TRUE(lse.ok) << lse.message;
  }
}

TEST(DenseDecodeFp8, RejectsFp8CacheWithFp16QueryOrSeveralKvHeads) {
  const DenseDecodeCase cs{.batch = 1, .q_len = 1, .kv_len = 10, .num_heads_q = 4,
                           .num_heads_kv = 2, .dtype = DType::fp16};
  DenseDecodeData data = testing::make_dense_decode_data(cs);
  std::vector<uint8_t> bytes(data.k_cache.size(0) * 64 * 2 * 656);
  MlaDecodeArgs args = data.args();
  args.k_cache = TensorView::contiguous(bytes.data(), DType::uint8,
                                        {data.k_cache.size(0), 64, 2, 656});
  try {
    flash_mla_with_kvcache(args);
    ADD_FAILURE() << "fp16 q with an FP8 cache accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.argument(), "k_cache") << e.what();
    EXPECT_EQ(e.kind(), ErrorKind::type) << e.what();
  }
  DenseDecodeCase bf = cs;
  bf.dtype = DType::bf16;
  DenseDecodeData data_bf = testing::make_dense_decode_data(bf);
  args = data_bf.args();
  args.k_cache = TensorView::contiguous(bytes.data(), DType::uint8,
                                        {data_bf.k_cache.size(0), 64, 2, 656});
  try {
    flash_mla_with_kvcache(args);
    ADD_FAILURE() << "FP8 cache with two KV heads accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.argument(), "k_cache") << e.what();
  }
}

}  // namespace
}  // namespace flashmla
