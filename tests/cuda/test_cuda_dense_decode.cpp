// The CUDA dense decode kernels (src/cuda/decode/dense_decode*.cu: the SM80 mma.sync one, the
// SM90 wgmma one and the SM100 tcgen05 one, each on every case) run on the CPU harness, against the double-precision
// reference with FlashMLA's tolerances, on the params the library builds
// (core::prepare_dense_decode): small shapes around the 32- and 64-token KV tiles and the 16- and
// 64-row Q tiles,
// MQA / GQA, causal q_len 2, varlen, zero-length requests, page sizes 64 and small odd ones,
// non-contiguous q / block table, bf16 and fp16, and schedules of several parts so requests are
// split and go through the combine. NaN fills every cache slot that must not be read. The SM90
// and SM100 kernels read the cache by TMA where the layout allows (pages of 8, 16, 32, 48, 64, 128
// tokens here) and the SM80 kernel runs otherwise: each case checks which one ran.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "core/decode_prepare.h"
#include "core/schedule_arg.h"
#include "cuda/decode/dense_decode.h"
#include "cuda/decode/dense_decode_sm80.h"
#include "cuda/decode/dense_decode_sm90.h"
#include "cuda/decode/dense_decode_sm100.h"
#include "flashmla/flashmla.h"
#include "testing/bad_input.h"
#include "testing/compare.h"
#include "testing/decode_case.h"

namespace flashmla {
namespace {

using testing::DenseDecodeCase;
using testing::DenseDecodeData;
using testing::HostTensor;
using cuda::KernelGeneration;
constexpr KernelGeneration kGenerations[] = {KernelGeneration::sm80, KernelGeneration::sm90,
                                             KernelGeneration::sm100};

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct CudaCase {
  DenseDecodeCase c;
  int num_sm_parts = 1;  // parts of the schedule
  bool split = false;    // the schedule splits some request (checked, so the case keeps testing it)
  bool unaligned = false;  // q, k_cache and out copied to layouts with odd strides
  bool rising = false;     // scores that step up along the sequence (grow_scores)
};

void PrintTo(const CudaCase& cs, std::ostream* os) {
  *os << cs.c.name() << "_parts" << cs.num_sm_parts;
}

// A copy of `t` in a layout with `pad` extra elements per dimension (NaN slots stay NaN).
HostTensor relayout(const HostTensor& t, testing::Padding pad) {
  std::vector<int64_t> shape(t.view().shape, t.view().shape + t.rank());
  HostTensor r = HostTensor::empty(t.dtype(), shape, pad);
  testing::for_each_element(t.view(), [&](const int64_t* index, int64_t offset) {
    int64_t dst = 0;
    for (int d = 0; d < t.rank(); ++d) dst += index[d] * r.view().strides[d];
    testing::store_float(r.view(), dst, testing::load_float(t.view(), offset));
  });
  return r;
}

// Scores that step up by about 10 (log2 units) every 32 tokens: channel 575 (a RoPE channel,
// not part of V) of every query is 4 and of the key at position t 42 floor(t / 32), so each
// tile's maximum passes the running one by more than 2^8 and every kernel rescales O (the SM100
// one only then), while the scores within a tile keep their spread. NaN slots stay NaN.
void grow_scores(DenseDecodeData& d) {
  const TensorView q = d.q.view(), k = d.k_cache.view();
  testing::for_each_element(q, [&](const int64_t* index, int64_t offset) {
    if (index[3] == 575) testing::store_float(q, offset, 4.0f);
  });
  const int64_t page = k.shape[1], blocks = k.shape[0];
  std::vector<float> step(static_cast<size_t>(blocks * page), 0.0f);
  for (int64_t r = 0; r < d.block_table.view().shape[0]; ++r) {
    for (int64_t p = 0; p < d.block_table.view().shape[1]; ++p) {
      const int64_t blk = d.block_table.i32({r, p});
      if (blk < 0 || blk >= blocks) continue;
      for (int64_t s = 0; s < page; ++s) {
        step[static_cast<size_t>(blk * page + s)] = 42.0f * static_cast<float>((p * page + s) / 32);
      }
    }
  }
  testing::for_each_element(k, [&](const int64_t* index, int64_t offset) {
    if (index[3] != 575 || std::isnan(testing::load_float(k, offset))) return;
    testing::store_float(k, offset, step[static_cast<size_t>(index[0] * page + index[1])]);
  });
}

// Runs the CUDA kernel on the library's params (accumulators NaN-filled, so a slot the kernel
// forgets to write shows) and compares out and lse with the reference.
void check_against_reference(const CudaCase& cs, KernelGeneration gen) {
  SCOPED_TRACE(cs.c.name() + "_parts" + std::to_string(cs.num_sm_parts) + "_" +
               cuda::generation_name(gen));
  DenseDecodeData data = testing::make_dense_decode_data(cs.c);
  if (cs.rising) grow_scores(data);
  std::string lens = "cache_seqlens";
  for (int32_t len : data.seqlens) lens += " " + std::to_string(len);
  SCOPED_TRACE(lens);
  MlaDecodeArgs args = data.args();
  const int parts = cs.num_sm_parts;
  std::vector<int32_t> meta(static_cast<size_t>(parts) * 8), splits(cs.c.batch + 1);
  args.tile_scheduler_metadata = TensorView::contiguous(meta.data(), DType::int32, {parts, 8});
  args.num_splits = TensorView::contiguous(splits.data(), DType::int32, {cs.c.batch + 1});
  get_mla_metadata({.cache_seqlens = args.cache_seqlens, .num_sm_parts = parts,
                    .tile_scheduler_metadata = args.tile_scheduler_metadata,
                    .num_splits = args.num_splits});

  HostTensor q_odd, k_odd, out_odd;
  if (cs.unaligned) {
    q_odd = relayout(data.q, {.last = 1});
    k_odd = relayout(data.k_cache, {.last = 1, .other = 1});
    out_odd = relayout(data.out, {.last = 1});
    args.q = q_odd.view();
    args.k_cache = k_odd.view();
    args.out = out_odd.view();
  }

  core::ResolvedSchedule sched;
  core::DenseDecodeParams p = core::prepare_dense_decode(args, {}, sched);
  core::attach_accumulators(sched, p);
  EXPECT_EQ(!sched.lse_accum.empty(), cs.split) << "the case no longer tests what it says";
  std::fill(sched.lse_accum.begin(), sched.lse_accum.end(), kNaN);
  std::fill(sched.o_accum.begin(), sched.o_accum.end(), kNaN);
  const KernelGeneration ran = cuda::run_dense_decode(p, nullptr, gen);
  // The SM90 and SM100 kernels read the cache by TMA: pages of a multiple of 8 tokens, 16-byte
  // strides.
  const bool tma_layout = cs.c.page_block_size % 8 == 0 && !cs.unaligned;
  EXPECT_EQ(cuda::generation_name(ran),
            cuda::generation_name(tma_layout ? gen : KernelGeneration::sm80))
      << "the kernel that ran";
  for (const auto& r : testing::compare_dense_decode_with_reference(args)) {
    EXPECT_TRUE(r.ok) << r.message;
  }
}

using Param = std::tuple<CudaCase, KernelGeneration>;
class CudaDenseDecode : public ::testing::TestWithParam<Param> {};

TEST_P(CudaDenseDecode, MatchesReference) {
  check_against_reference(std::get<0>(GetParam()), std::get<1>(GetParam()));
}

std::string case_name(const ::testing::TestParamInfo<Param>& info) {
  const CudaCase& cs = std::get<0>(info.param);
  return cs.c.name() + "_parts" + std::to_string(cs.num_sm_parts) +
         (cs.unaligned ? "_odd_strides" : "") + (cs.rising ? "_rising" : "") + "_" +
         cuda::generation_name(std::get<1>(info.param));
}

// One request, MQA with 16 heads (one full row tile), s_k just below / at / above the 32-token
// KV tile and the 64-token schedule block; dtype and page size rotate.
std::vector<CudaCase> tile_edges() {
  std::vector<CudaCase> cases;
  uint64_t n = 0;
  for (int64_t sk : {1, 31, 32, 33, 64, 65, 140, 300}) {
    cases.push_back({{.batch = 1, .q_len = 1, .kv_len = sk, .num_heads_q = 16,
                      .num_heads_kv = 1, .page_block_size = n % 3 == 1 ? 7 : 64,
                      .dtype = n % 2 == 1 ? DType::fp16 : DType::bf16, .seed = n},
                     1});
    ++n;
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(TileEdges, CudaDenseDecode,
                         ::testing::Combine(::testing::ValuesIn(tile_edges()),
                                            ::testing::ValuesIn(kGenerations)),
                         case_name);

// Batches, GQA, causal q_len 2 (two row tiles for 32 rows), varlen, zero lengths, odd pages,
// non-contiguous layouts, and schedules with more parts than requests (split requests).
std::vector<CudaCase> mixed() {
  return {
      {{.batch = 2, .q_len = 2, .kv_len = 140, .num_heads_q = 16, .num_heads_kv = 1,
        .causal = true, .seed = 10}, 5},
      {{.batch = 3, .q_len = 1, .kv_len = 140, .num_heads_q = 32, .num_heads_kv = 1,
        .page_block_size = 17, .varlen = true, .non_contiguous = true, .dtype = DType::fp16,
        .seed = 11}, 4},
      {{.batch = 4, .q_len = 1, .kv_len = 65, .num_heads_q = 8, .num_heads_kv = 2,
        .varlen = true, .zero_lengths = true, .seed = 20}, 3},
      {{.batch = 2, .q_len = 2, .kv_len = 65, .num_heads_q = 32, .num_heads_kv = 1,
        .page_block_size = 1, .varlen = true, .causal = true, .seed = 22}, 3},
      {{.batch = 1, .q_len = 1, .kv_len = 33, .num_heads_q = 128, .num_heads_kv = 1,
        .dtype = DType::fp16, .seed = 23}, 2},
      {{.batch = 4, .q_len = 2, .kv_len = 33, .num_heads_q = 16, .num_heads_kv = 1,
        .page_block_size = 3, .causal = true, .zero_lengths = true, .non_contiguous = true,
        .seed = 14}, 2},
      {{.batch = 2, .q_len = 2, .kv_len = 1, .num_heads_q = 16, .num_heads_kv = 1,
        .causal = true, .dtype = DType::fp16, .seed = 16}, 1},
      // Empty requests right after non-empty ones in the same part: a warp that finishes a
      // request may not touch the row sums before every warp has read them.
      {{.batch = 8, .q_len = 2, .kv_len = 40, .num_heads_q = 64, .num_heads_kv = 2,
        .varlen = true, .zero_lengths = true, .seed = 30}, 1},
      // Around the SM90 kernel's 64-row tile: 128 rows (two tiles), 65 rows per KV head (a
      // partial second tile), causal with 2 x 64 rows.
      {{.batch = 1, .q_len = 1, .kv_len = 300, .num_heads_q = 128, .num_heads_kv = 1,
        .seed = 31}, 4, true},
      {{.batch = 1, .q_len = 1, .kv_len = 100, .num_heads_q = 130, .num_heads_kv = 2,
        .page_block_size = 13, .dtype = DType::fp16, .seed = 32}, 1},
      {{.batch = 2, .q_len = 2, .kv_len = 130, .num_heads_q = 64, .num_heads_kv = 1,
        .causal = true, .seed = 33}, 2},
      // Split requests.
      {{.batch = 2, .q_len = 2, .kv_len = 300, .num_heads_q = 8, .num_heads_kv = 2,
        .page_block_size = 5, .varlen = true, .causal = true, .dtype = DType::fp16,
        .seed = 12}, 7, true},
      {{.batch = 3, .q_len = 2, .kv_len = 200, .num_heads_q = 3, .num_heads_kv = 1,
        .varlen = true, .causal = true, .seed = 24}, 11, true},
      {{.batch = 1, .q_len = 2, .kv_len = 300, .num_heads_q = 9, .num_heads_kv = 3,
        .causal = true, .non_contiguous = true, .seed = 15}, 6, true},
      {{.batch = 2, .q_len = 1, .kv_len = 300, .num_heads_q = 16, .num_heads_kv = 1,
        .seed = 25}, 8, true},
      {{.batch = 4, .q_len = 1, .kv_len = 300, .num_heads_q = 16, .num_heads_kv = 1,
        .page_block_size = 64, .varlen = true, .zero_lengths = true, .dtype = DType::fp16,
        .seed = 26}, 12, true},
      // Pages for the SM90 kernel's tensor map other than 64: tiles of 4 runs of 16 rows
      // (GQA, causal), 8 runs of 8 rows, the second half of a 128-token page, runs of 16 rows
      // in 48-token pages, 2 runs of 32 rows.
      {{.batch = 2, .q_len = 2, .kv_len = 200, .num_heads_q = 16, .num_heads_kv = 2,
        .page_block_size = 16, .varlen = true, .causal = true, .seed = 40}, 5, true},
      {{.batch = 1, .q_len = 1, .kv_len = 300, .num_heads_q = 16, .num_heads_kv = 1,
        .page_block_size = 8, .seed = 42}, 8, true},
      {{.batch = 2, .q_len = 1, .kv_len = 300, .num_heads_q = 64, .num_heads_kv = 1,
        .page_block_size = 128, .varlen = true, .dtype = DType::fp16, .seed = 41}, 9, true},
      {{.batch = 2, .q_len = 2, .kv_len = 300, .num_heads_q = 8, .num_heads_kv = 1,
        .page_block_size = 48, .causal = true, .seed = 43}, 8, true},
      {{.batch = 3, .q_len = 1, .kv_len = 200, .num_heads_q = 32, .num_heads_kv = 1,
        .page_block_size = 32, .varlen = true, .zero_lengths = true, .dtype = DType::fp16,
        .seed = 44}, 7, true},
      // Rising scores (grow_scores): the running max is passed again and again.
      {{.batch = 2, .q_len = 2, .kv_len = 300, .num_heads_q = 128, .num_heads_kv = 1,
        .varlen = true, .causal = true, .seed = 50}, 8, true, false, true},
      {{.batch = 1, .q_len = 1, .kv_len = 200, .num_heads_q = 16, .num_heads_kv = 1,
        .page_block_size = 16, .dtype = DType::fp16, .seed = 51}, 1, false, false, true},
      // Odd strides: element-wise loads and stores instead of cp.async / 4-byte stores.
      {{.batch = 2, .q_len = 2, .kv_len = 300, .num_heads_q = 16, .num_heads_kv = 2,
        .page_block_size = 7, .causal = true, .seed = 27}, 8, true, true},
      {{.batch = 1, .q_len = 1, .kv_len = 65, .num_heads_q = 16, .num_heads_kv = 1,
        .dtype = DType::fp16, .seed = 28}, 1, false, true},
  };
}
INSTANTIATE_TEST_SUITE_P(Mixed, CudaDenseDecode,
                         ::testing::Combine(::testing::ValuesIn(mixed()),
                                            ::testing::ValuesIn(kGenerations)),
                         case_name);

// Every request empty: out exactly 0 and lse +inf, no NaN from the cache.
TEST(CudaDenseDecodeEdges, AllRequestsEmpty) {
  DenseDecodeCase cs{.batch = 3, .q_len = 2, .kv_len = 64, .num_heads_q = 4, .num_heads_kv = 1,
                     .causal = true, .seed = 3};
  DenseDecodeData data = testing::make_dense_decode_data(cs);
  for (int64_t i = 0; i < cs.batch; ++i) data.cache_seqlens.i32({i}) = 0;
  core::ResolvedSchedule sched;
  core::DenseDecodeParams p = core::prepare_dense_decode(data.args(), {.num_threads = 2}, sched);
  core::attach_accumulators(sched, p);
  for (KernelGeneration gen : kGenerations) {
    SCOPED_TRACE(cuda::generation_name(gen));
    data.out.fill(kNaN);
    data.lse.fill(kNaN);
    cuda::run_dense_decode(p, nullptr, gen);
    for (int64_t i = 0; i < cs.batch; ++i)
      for (int64_t s = 0; s < cs.q_len; ++s)
        for (int64_t h = 0; h < cs.num_heads_q; ++h) {
          EXPECT_EQ(data.lse.get({i, h, s}), std::numeric_limits<float>::infinity());
          for (int64_t c = 0; c < 512; ++c) ASSERT_EQ(data.out.get({i, s, h, c}), 0.0f);
        }
  }
}

// More schedule parts than a grid's y dimension holds: an error naming the schedule, no launch
// (on a GPU the launch would fail with an opaque "invalid configuration").
TEST(CudaDenseDecodeEdges, TooManyPartsIsAnError) {
  cuda::DenseDecodeArgs a{};
  a.batch = a.q_len = a.num_heads_q = a.num_heads_kv = 1;
  a.num_parts = 65536;
  const std::function<void()> launches[] = {[&] { cuda::launch_dense_decode_sm80(a, nullptr); },
                                             [&] { cuda::launch_dense_decode_sm90(a, nullptr); },
                                             [&] { cuda::launch_dense_decode_sm100(a, nullptr); }};
  for (const auto& launch : launches) {
    const auto what = testing::bad_input::expect_error(
        launch, "flash_mla_with_kvcache",
        testing::bad_input::unsupported("tile_scheduler_metadata"));
    if (what) {
      EXPECT_NE(what->find("65535"), std::string::npos) << *what;
    }
  }
}

// The FP8 V32 cache is not read by this kernel yet: a clear unsupported error, nothing run.
TEST(CudaDenseDecodeEdges, Fp8CacheUnsupported) {
  DenseDecodeCase cs{.batch = 1, .q_len = 1, .kv_len = 8, .num_heads_q = 16, .num_heads_kv = 1};
  DenseDecodeData data = testing::make_dense_decode_data(cs);
  core::ResolvedSchedule sched;
  core::DenseDecodeParams p = core::prepare_dense_decode(data.args(), {}, sched);
  p.kv_fp8_v32 = true;
  try {
    cuda::run_dense_decode(p, nullptr);
    FAIL() << "expected flashmla::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::unsupported);
  }
}

}  // namespace
}  // namespace flashmla
