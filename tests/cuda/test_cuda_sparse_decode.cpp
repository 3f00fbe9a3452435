// The CUDA sparse decode (src/cuda/decode/sparse_decode*.cu: the SM80 mma.sync split kernel and the
// SM90 wgmma one, each on every case) run by the CPU harness on the params the library builds
// (core::prepare_sparse_decode), against the double-precision reference with FlashMLA's tolerances,
// as tests/test_sparse_decode.cpp checks the CPU kernel: both FP8 formats and the bf16 cache, topk
// around the 64-column block and the 32-token tile, head counts below / at / above the 16- and
// 64-head groups, lengths, extra pool, sink with +-inf entries, all-invalid and zero-length
// requests, varlen, non-contiguous inputs and schedules that split requests over several parts; and
// the tile gather's FP8 dequantisation bit for bit against the codec.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "core/sparse_decode_prepare.h"
#include "cuda/common/portable.h"
#include "cuda/decode/sparse_decode.h"
#include "cuda/decode/sparse_decode_sm80.h"
#include "cuda/decode/sparse_decode_sm90.h"
#include "cuda/decode/sparse_kv_tile.cuh"
#include "flashmla/flashmla.h"
#include "flashmla/kv_format.h"
#include "testing/bad_input.h"
#include "testing/compare.h"
#include "testing/sparse_decode_case.h"

namespace flashmla {
namespace {

using testing::HostTensor;
using testing::SparseDecodeCase;
using testing::SparseDecodeData;

using Schedule = testing::SparseDecodeSchedule;
using cuda::KernelGeneration;

struct Case {
  SparseDecodeCase c;
  int parts;  // explicit schedule of this many parts; 0: the library's own
};

void PrintTo(const Case& k, std::ostream* os) { *os << k.c.name() << "_parts" << k.parts; }

// Runs the CUDA kernel on the library's params and the reference on the same data; compares
// out and lse as the CPU test does, and reports whether some request was split.
bool check_against_reference(const Case& k, KernelGeneration gen) {
  const SparseDecodeCase& cs = k.c;
  SparseDecodeData data = testing::make_sparse_decode_data(cs);
  MlaDecodeArgs args = data.args();
  Schedule schedule;
  if (k.parts > 0) schedule.attach(data, k.parts, args);
  core::PreparedSparseDecode prep;
  core::prepare_sparse_decode(args, Context{.num_threads = 1}, /*allocate=*/true, prep);
  cuda::run_sparse_decode(prep.params, nullptr, gen);

  EXPECT_TRUE(testing::bad_input::all_finite(data.out)) << "out has inf / NaN";
  for (const auto& r : testing::compare_sparse_decode_with_reference(args)) {
    EXPECT_TRUE(r.ok) << r.message;
  }
  return prep.params.o_accum != nullptr;
}

class CudaSparseDecode : public ::testing::TestWithParam<std::tuple<Case, KernelGeneration>> {};

TEST_P(CudaSparseDecode, MatchesReference) {
  check_against_reference(std::get<0>(GetParam()), std::get<1>(GetParam()));
}

std::vector<Case> cases() {
  std::vector<Case> v;
  uint64_t n = 0;
  // Both FP8 formats at, below and above the 64-column block and the 32-token tile; 16 and 64
  // heads and a group that is not full (20, 1); lengths, sink, extra pool with its own lengths
  // and page size.
  for (int64_t d : {576, 512}) {
    v.push_back({{.batch = 2, .num_heads_q = 16, .d_qk = d, .kv_len = 200, .topk = 64,
                  .page_block_size = 64, .seed = n++}, 1});
    v.push_back({{.batch = 2, .num_heads_q = 16, .d_qk = d, .kv_len = 200, .topk = 63,
                  .page_block_size = 61, .sink = true, .seed = n++}, 2});
    v.push_back({{.batch = 2, .num_heads_q = 16, .d_qk = d, .kv_len = 100, .topk = 33,
                  .page_block_size = 7, .topk_length = true, .seed = n++}, 1});
    v.push_back({{.batch = 1, .num_heads_q = 64, .d_qk = d, .kv_len = 300, .topk = 128,
                  .page_block_size = 53, .topk_length = true, .seed = n++}, 3});
    v.push_back({{.batch = 3, .num_heads_q = 20, .d_qk = d, .kv_len = 200, .topk = 65,
                  .page_block_size = 2, .topk_length = true, .extra = true,
                  .extra_topk_length = true, .sink = true, .extra_topk = 37,
                  .extra_page_block_size = 3, .seed = n++}, 4});
    v.push_back({{.batch = 2, .q_len = 2, .num_heads_q = 1, .d_qk = d, .kv_len = 300,
                  .topk = 129, .page_block_size = 64, .extra = true, .extra_topk = 64,
                  .seed = n++}, 5});
    // Above the SM90 kernel's 64-head group: two full groups, a partial second one.
    v.push_back({{.batch = 2, .num_heads_q = 128, .d_qk = d, .kv_len = 300, .topk = 128,
                  .page_block_size = 64, .topk_length = true, .sink = true, .seed = n++}, 3});
    v.push_back({{.batch = 2, .num_heads_q = 100, .d_qk = d, .kv_len = 200, .topk = 70,
                  .page_block_size = 32, .extra = true, .extra_topk = 40, .seed = n++}, 2});
    // All-invalid and zero-length requests (with and without the sink), varlen.
    v.push_back({{.batch = 3, .q_len = 2, .num_heads_q = 16, .d_qk = d, .kv_len = 150,
                  .topk = 64, .page_block_size = 61, .sink = true, .all_invalid = true,
                  .varlen = true, .seed = n++}, 2});
    v.push_back({{.batch = 3, .num_heads_q = 16, .d_qk = d, .kv_len = 150, .topk = 100,
                  .page_block_size = 16, .topk_length = true, .extra = true,
                  .extra_topk_length = true, .sink = true, .zero_lengths = true,
                  .extra_topk = 64, .seed = n++}, 4});
    // The bf16 cache, non-contiguous q / indices / cache rows (the kernel's unaligned path).
    v.push_back({{.batch = 2, .num_heads_q = 16, .d_qk = d, .kv_len = 200, .topk = 96,
                  .page_block_size = 64, .fp8 = false, .topk_length = true, .sink = true,
                  .non_contiguous = true, .seed = n++}, 3});
    // Non-contiguous with FP8 and the extra pool; more parts than blocks; the own schedule.
    v.push_back({{.batch = 2, .num_heads_q = 16, .d_qk = d, .kv_len = 150, .topk = 64,
                  .page_block_size = 64, .extra = true, .non_contiguous = true,
                  .extra_topk = 31, .seed = n++}, 9});
    v.push_back({{.batch = 1, .num_heads_q = 16, .d_qk = d, .kv_len = 150, .topk = 64,
                  .page_block_size = 64, .fp8 = false, .seed = n++}, 0});
    // Long lists over several parts: requests split, pieces merged by the combine (with the
    // sink; all-invalid requests leave -inf pieces).
    v.push_back({{.batch = 1, .num_heads_q = 16, .d_qk = d, .kv_len = 600, .topk = 512,
                  .page_block_size = 64, .sink = true, .seed = n++}, 4});
    v.push_back({{.batch = 2, .num_heads_q = 20, .d_qk = d, .kv_len = 400, .topk = 320,
                  .page_block_size = 37, .extra = true, .sink = true, .extra_topk = 64,
                  .seed = n++}, 6});
    v.push_back({{.batch = 3, .q_len = 2, .num_heads_q = 16, .d_qk = d, .kv_len = 400,
                  .topk = 320, .page_block_size = 64, .sink = true, .all_invalid = true,
                  .seed = n++}, 8});
  }
  return v;
}

std::string case_name(const ::testing::TestParamInfo<std::tuple<Case, KernelGeneration>>& info) {
  const Case& k = std::get<0>(info.param);
  return k.c.name() + "_parts" + std::to_string(k.parts) + "_" +
         cuda::generation_name(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Grid, CudaSparseDecode,
                         ::testing::Combine(::testing::ValuesIn(cases()),
                                            ::testing::Values(KernelGeneration::sm80,
                                                              KernelGeneration::sm90)),
                         case_name);

// The grid really splits requests (else the accumulator path would go untested).
TEST(CudaSparseDecodeSchedule, GridSplitsRequests) {
  int split = 0;
  for (const Case& k : cases()) {
    if (k.c.topk >= 320) split += check_against_reference(k, KernelGeneration::sm80) ? 1 : 0;
  }
  EXPECT_EQ(split, 6);
}

// More schedule parts than a grid's y dimension holds: an error naming the schedule, no launch.
TEST(CudaSparseDecodeSchedule, TooManyPartsIsAnError) {
  cuda::SparseDecodeArgs a{};
  a.batch = a.q_len = a.num_heads_q = 1;
  a.num_parts = 65536;
  for (auto launch : {cuda::launch_sparse_decode_sm80, cuda::launch_sparse_decode_sm90}) {
    const auto what = testing::bad_input::expect_error(
        [&] { launch(a, nullptr); }, "flash_mla_with_kvcache",
        testing::bad_input::unsupported("tile_scheduler_metadata"));
    if (what) {
      EXPECT_NE(what->find("65535"), std::string::npos) << *what;
    }
  }
}

// ---- the tile gather's FP8 dequantisation, bit for bit against the library's codec ----

// Gathers the 64 slots of tile blockIdx.x into shared memory and copies the rows out.
__global__ void gather_tiles(cuda::SparseKvPoolArgs pool, int kind, int aligned, int d_qk,
                             const int32_t* slots, uint16_t* rows) {
  const int ldk = d_qk + 8;
  auto* sk = reinterpret_cast<uint16_t*>(cuda::dynamic_smem());
  auto* s_slot = reinterpret_cast<int32_t*>(sk + 64 * ldk);
  if (threadIdx.x < 64) s_slot[threadIdx.x] = slots[blockIdx.x * 64 + threadIdx.x];
  __syncthreads();
  cuda::gather_kv_tile(pool, kind, aligned != 0, s_slot, 64, sk, ldk, d_qk);
  __syncthreads();
  for (int i = static_cast<int>(threadIdx.x); i < 64 * d_qk; i += static_cast<int>(blockDim.x)) {
    rows[(blockIdx.x * 64 + i / d_qk) * d_qk + i % d_qk] = sk[(i / d_qk) * ldk + i % d_qk];
  }
}

// The same through the staging copy the SM90 kernel uses for aligned pools: cp.async of the raw
// token bytes into shared memory, then the dequantisation from there.
__global__ void stage_tiles(cuda::SparseKvPoolArgs pool, int kind, int d_qk, const int32_t* slots,
                            uint16_t* rows) {
  const int ldk = d_qk + 8;
  auto* sk = reinterpret_cast<uint16_t*>(cuda::dynamic_smem());
  auto* s_slot = reinterpret_cast<int32_t*>(sk + 64 * ldk);
  auto* stage = reinterpret_cast<uint8_t*>(s_slot + 64);
  if (threadIdx.x < 64) s_slot[threadIdx.x] = slots[blockIdx.x * 64 + threadIdx.x];
  __syncthreads();
  cuda::stage_kv_tile(pool, kind, s_slot, 64, stage, d_qk);
  cuda::cp_async_commit();
  cuda::cp_async_wait<0>();
  __syncthreads();
  cuda::dequant_kv_tile(cuda::StagedTokens{stage, cuda::stage_stride(kind, d_qk)}, kind, true,
                        s_slot, 64, [=](int t, int c8) { return sk + t * ldk + 8 * c8; }, d_qk);
  __syncthreads();
  for (int i = static_cast<int>(threadIdx.x); i < 64 * d_qk; i += static_cast<int>(blockDim.x)) {
    rows[(blockIdx.x * 64 + i / d_qk) * d_qk + i % d_qk] = sk[(i / d_qk) * ldk + i % d_qk];
  }
}

// Random bytes in every field (every e4m3 code, NaN codes, any fp32 / UE8M0 scale including
// 0 and 255, any RoPE bits), each token gathered once in a shuffled order with -1 slots mixed
// in: the rows equal dequantize_kv_cache's bit for bit (NaN payloads included), -1 rows are 0.
// Gathered from the pool with 16-byte loads (aligned), bytewise, and through the staging copy.
TEST(CudaSparseKvTile, DequantisesLikeTheCodec) {
  for (KvFormat format : {KvFormat::v32, KvFormat::model1}) {
    for (int aligned : {1, 0, 2}) {  // 2: staged
      SCOPED_TRACE(std::string(kv_format_name(format)) +
                   (aligned == 2 ? " staged" : aligned ? " aligned" : " bytewise"));
      const KvFormatInfo f = kv_format_info(format);
      const int64_t num_blocks = 3, page = 44, d_qk = f.d_qk, bpt = f.bytes_per_token;
      const int64_t tokens = num_blocks * page, tiles = 3;
      std::mt19937 rng(static_cast<uint32_t>(7 + aligned + 2 * static_cast<int>(format)));
      std::vector<uint8_t> cache(static_cast<size_t>(num_blocks * page * bpt));
      for (auto& byte : cache) byte = static_cast<uint8_t>(rng());
      std::vector<uint16_t> want(static_cast<size_t>(tokens * d_qk));
      dequantize_kv_cache(
          {.format = format,
           .k = TensorView::contiguous(want.data(), DType::bf16, {num_blocks, page, 1, d_qk}),
           .cache = TensorView::contiguous(cache.data(), DType::uint8,
                                           {num_blocks, page, 1, bpt})});

      std::vector<int32_t> slots(static_cast<size_t>(tiles * 64), -1);
      for (int64_t t = 0; t < tokens; ++t) slots[static_cast<size_t>(t)] = static_cast<int32_t>(t);
      std::shuffle(slots.begin(), slots.end(), rng);
      const cuda::SparseKvPoolArgs pool{.data = cache.data(),
                                        .block_stride_bytes = page * bpt,
                                        .token_stride_bytes = bpt,
                                        .page_block_size = page,
                                        .num_tokens = tokens};
      const int kind = format == KvFormat::v32 ? cuda::kSparseKvV32 : cuda::kSparseKvModel1;
      std::vector<uint16_t> rows(static_cast<size_t>(tiles * 64 * d_qk), 0xAAAA);
      const int smem = static_cast<int>(64 * (d_qk + 8) * 2 + 64 * 4);
      if (aligned == 2) {
        const int staged_smem = smem + 64 * cuda::stage_stride(kind, static_cast<int>(d_qk));
        FMLA_LAUNCH(stage_tiles, dim3(static_cast<unsigned>(tiles)), dim3(128), staged_smem,
                    nullptr, pool, kind, static_cast<int>(d_qk), slots.data(), rows.data());
      } else {
        FMLA_LAUNCH(gather_tiles, dim3(static_cast<unsigned>(tiles)), dim3(128), smem, nullptr,
                    pool, kind, aligned, static_cast<int>(d_qk), slots.data(), rows.data());
      }
      int64_t bad = 0;
      for (size_t i = 0; i < slots.size(); ++i) {
        for (int64_t c = 0; c < d_qk; ++c) {
          const uint16_t got = rows[i * d_qk + c];
          const uint16_t exp = slots[i] < 0 ? 0 : want[slots[i] * d_qk + c];
          if (got != exp && bad++ < 5) {
            ADD_FAILURE() << "slot " << slots[i] << " channel " << c << ": " << got << " != "
                          << exp;
          }
        }
      }
      EXPECT_EQ(bad, 0);
    }
  }
}

}  // namespace
}  // namespace flashmla
