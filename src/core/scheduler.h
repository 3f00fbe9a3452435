// The split-KV decode scheduler (reference §5.2-5.3), shared by every decode kernel.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace flashmla::core {

// One 32-byte record of tile_scheduler_metadata (reference §5.2), in field order.
struct SchedRecord {
  int32_t begin_req_idx;
  int32_t end_req_idx;
  int32_t begin_block_idx;
  int32_t end_block_idx;
  int32_t begin_split_idx;
  int32_t is_first_req_splitted;
  int32_t is_last_req_splitted;
  int32_t padding;
};
static_assert(sizeof(SchedRecord) == 8 * sizeof(int32_t));

inline constexpr int kSchedRecordInts = 8;

// Blocks a request of n_tok tokens occupies in the schedule: at least one, even for 0 tokens.
inline int64_t sched_num_blocks(int64_t n_tok, int64_t block_size) {
  return (n_tok > 0 ? n_tok - 1 : 0) / block_size + 1;
}

// Largest topk / extra_topk the sparse token counts accept (they stay within int32).
inline constexpr int64_t kMaxSparseTopk = int64_t{1} << 29;

// Token counts of §5.3 step 1 in sparse mode: t = topk_length[i] (topk if null), 1 if t == 0;
// with an extra list (extra_topk > 0): roundup(t, 64) + extra_topk_length[i] (extra_topk if
// null). Lengths must be in [0, topk] / [0, extra_topk], topks in [1, kMaxSparseTopk].
std::vector<int32_t> sparse_token_counts(int64_t batch, int64_t topk, const int32_t* topk_length,
                                         int64_t extra_topk, const int32_t* extra_topk_length);

// Blocks of the main list in sparse mode: max(ceil(t / 64), 1) with t the request's length.
inline int64_t sparse_main_blocks(int64_t length, int64_t block_size) {
  return length > 0 ? (length + block_size - 1) / block_size : 1;
}

// Runs the greedy walk of §5.3 over per-request token counts (all >= 0). Writes num_parts
// records to `records` and batch+1 entries to `num_splits`. With no request every part is idle.
void schedule_split_kv(std::span<const int32_t> n_tok, int block_size, int fixed_overhead,
                       int num_parts, SchedRecord* records, int32_t* num_splits);

// Empty if (records, num_splits) is exactly the schedule of n_tok with records.size() parts;
// otherwise says where it differs. Used to accept a caller's precomputed schedule safely.
std::string schedule_mismatch(std::span<const int32_t> n_tok, int block_size, int fixed_overhead,
                              std::span<const SchedRecord> records,
                              std::span<const int32_t> num_splits);

}  // namespace flashmla::core
