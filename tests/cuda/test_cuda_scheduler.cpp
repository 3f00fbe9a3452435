// get_mla_metadata on the GPU (src/cuda/decode/scheduler.cu) run by the CPU harness: records and
// num_splits bit for bit against core::schedule_split_kv (every int of every record, padding
// included, and entries the walk leaves unwritten), dense and sparse token counts, random
// lengths with zeros and huge skew, batch 0..300 plus one beyond the shared-memory cache,
// num_parts 1..132 plus far more parts than requests.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/scheduler.h"
#include "cuda/decode/scheduler.h"
#include "flashmla/flashmla.h"

namespace flashmla {
namespace {

constexpr int32_t kSentinel = 0x5a5a5a5a;  // in every output int before the call

struct Schedule {
  std::vector<core::SchedRecord> records;
  std::vector<int32_t> num_splits;
};

Schedule sentinel_schedule(int64_t batch, int parts) {
  Schedule s;
  s.records.resize(parts);
  std::memset(s.records.data(), 0x5a, parts * sizeof(core::SchedRecord));
  s.num_splits.assign(batch + 1, kSentinel);
  return s;
}

Schedule cpu_schedule(const std::vector<int32_t>& n_tok, int bs, int F, int parts) {
  Schedule s = sentinel_schedule(static_cast<int64_t>(n_tok.size()), parts);
  core::schedule_split_kv(n_tok, bs, F, parts, s.records.data(), s.num_splits.data());
  return s;
}

void expect_same(const Schedule& got, const Schedule& want, const std::string& what) {
  ASSERT_EQ(got.records.size(), want.records.size()) << what;
  for (size_t p = 0; p < want.records.size(); ++p) {
    const int32_t* a = &got.records[p].begin_req_idx;
    const int32_t* b = &want.records[p].begin_req_idx;
    for (int f = 0; f < core::kSchedRecordInts; ++f)
      ASSERT_EQ(a[f], b[f]) << what << ": record " << p << " field " << f;
  }
  ASSERT_EQ(got.num_splits, want.num_splits) << what;
}

// Lengths: zeros, short, around the 64-token block, and rare huge outliers (skew).
std::vector<int32_t> random_lengths(std::mt19937_64& rng, int64_t batch) {
  std::vector<int32_t> len(batch);
  std::uniform_int_distribution<int> kind(0, 9);
  for (auto& l : len) {
    switch (kind(rng)) {
      case 0: case 1: l = 0; break;
      case 2: l = std::uniform_int_distribution<int>(62, 66)(rng); break;
      case 3: l = std::uniform_int_distribution<int>(1, 1 << 20)(rng); break;  // skew
      case 4: l = std::uniform_int_distribution<int>(100000, 4000000)(rng); break;
      default: l = std::uniform_int_distribution<int>(1, 2000)(rng);
    }
  }
  return len;
}

void check_dense(const std::vector<int32_t>& len, int bs, int F, int parts,
                 const std::string& what) {
  const int64_t batch = static_cast<int64_t>(len.size());
  Schedule got = sentinel_schedule(batch, parts);
  cuda::run_get_mla_metadata(len.data(), batch, bs, F, parts, got.records.data(),
                             got.num_splits.data(), nullptr);
  expect_same(got, cpu_schedule(len, bs, F, parts), what);
}

TEST(CudaScheduler, WorkedExampleOfTheReference) {
  // §5.3: seqlens [100, 1000, 0], P = 4, F = 5, BS = 64.
  const std::vector<int32_t> len = {100, 1000, 0};
  Schedule got = sentinel_schedule(3, 4);
  cuda::run_get_mla_metadata(len.data(), 3, 64, 5, 4, got.records.data(), got.num_splits.data(),
                             nullptr);
  const int32_t want[4][7] = {{0, 1, 0, 2, 0, 0, 1}, {1, 1, 2, 11, 1, 1, 1},
                              {1, 1, 11, 16, 2, 1, 1}, {2, 2, 0, 0, 0, 0, 0}};
  for (int p = 0; p < 4; ++p)
    for (int f = 0; f < 7; ++f) EXPECT_EQ((&got.records[p].begin_req_idx)[f], want[p][f]);
  EXPECT_EQ(got.num_splits, (std::vector<int32_t>{0, 1, 4, 5}));
}

TEST(CudaScheduler, RandomDenseMatchesCoreBitwise) {
  std::mt19937_64 rng(2024);
  std::uniform_int_distribution<int> parts_of(1, 132);
  for (int trial = 0; trial < 120; ++trial) {
    const int64_t batch = trial < 10 ? trial + 1 : std::uniform_int_distribution<int>(1, 300)(rng);
    const int parts = trial % 7 == 0 ? 132 : parts_of(rng);
    const std::vector<int32_t> len = random_lengths(rng, batch);
    check_dense(len, kSchedulerBlockSize, kSchedulerFixedOverhead, parts,
                "trial " + std::to_string(trial));
  }
}

TEST(CudaScheduler, EdgeShapes) {
  std::mt19937_64 rng(7);
  check_dense({}, 64, 5, 3, "batch 0");
  check_dense({0}, 64, 5, 1, "one empty request");
  check_dense({0, 0, 0, 0}, 64, 5, 132, "all empty");
  check_dense({1 << 30}, 64, 5, 132, "one huge request");
  check_dense({64, 65, 128, 129, 63, 1}, 64, 5, 2, "tile edges");
  check_dense(random_lengths(rng, 50), 64, 3, 77, "F = 3");
  check_dense(random_lengths(rng, 50), 32, 0, 9, "BS = 32, F = 0");
  check_dense(random_lengths(rng, 5), 64, 5, 3000, "far more parts than requests");
  // Beyond the shared-memory cache of token counts (8192 requests): read from global.
  check_dense(random_lengths(rng, 9000), 64, 5, 132, "batch 9000 uncached");
  check_dense(random_lengths(rng, 8192), 64, 5, 100, "batch 8192 cached");
}

TEST(CudaScheduler, RandomSparseMatchesCoreBitwise) {
  std::mt19937_64 rng(99);
  for (int trial = 0; trial < 60; ++trial) {
    const int64_t batch = std::uniform_int_distribution<int>(1, 300)(rng);
    const int parts = std::uniform_int_distribution<int>(1, 132)(rng);
    const int64_t topk = trial % 5 == 0 ? 1 : std::uniform_int_distribution<int>(1, 4096)(rng);
    const int64_t extra_topk = trial % 3 == 0 ? 0 : std::uniform_int_distribution<int>(1, 1024)(rng);
    const bool with_len = trial % 2 == 0, with_extra_len = trial % 4 < 2 && extra_topk > 0;
    std::vector<int32_t> len(batch), extra(batch);
    for (auto& l : len) l = rng() % 4 == 0 ? 0 : static_cast<int32_t>(rng() % (topk + 1));
    for (auto& l : extra) l = static_cast<int32_t>(rng() % (extra_topk + 1));
    const int32_t* len_p = with_len ? len.data() : nullptr;
    const int32_t* extra_p = with_extra_len ? extra.data() : nullptr;

    Schedule got = sentinel_schedule(batch, parts);
    cuda::run_get_mla_metadata_sparse(batch, topk, len_p, extra_topk, extra_p,
                                      kSchedulerBlockSize, kSchedulerFixedOverhead, parts,
                                      got.records.data(), got.num_splits.data(), nullptr);
    const std::vector<int32_t> n_tok =
        core::sparse_token_counts(batch, topk, len_p, extra_topk, extra_p);
    expect_same(got, cpu_schedule(n_tok, kSchedulerBlockSize, kSchedulerFixedOverhead, parts),
                "sparse trial " + std::to_string(trial));
  }
  // Largest topks.
  const std::vector<int32_t> big = {0, 1 << 29, 12345};
  const int32_t extra[3] = {1 << 29, 0, 7};
  Schedule got = sentinel_schedule(3, 5);
  cuda::run_get_mla_metadata_sparse(3, core::kMaxSparseTopk, big.data(), core::kMaxSparseTopk,
                                    extra, 64, 5, 5, got.records.data(), got.num_splits.data(),
                                    nullptr);
  expect_same(got,
              cpu_schedule(core::sparse_token_counts(3, core::kMaxSparseTopk, big.data(),
                                                     core::kMaxSparseTopk, extra),
                           64, 5, 5),
              "max topk");
}

}  // namespace
}  // namespace flashmla
