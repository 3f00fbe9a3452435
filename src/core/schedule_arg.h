// The schedule argument of the decode calls: the caller's precomputed schedule, verified against
// the per-request token counts, or a fresh one; plus the split accumulators it needs.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/check.h"
#include "core/scheduler.h"

namespace flashmla::core {

struct ResolvedSchedule {
  std::vector<SchedRecord> own_records;  // used when the caller gave no schedule
  std::vector<int32_t> own_splits;
  const SchedRecord* records = nullptr;
  int num_parts = 0;
  const int32_t* num_splits = nullptr;  // (batch + 1,)
  std::vector<float> lse_accum, o_accum;  // split accumulators, empty when nothing is split
};

// n_tok: the scheduler's token count per request (§5.3 step 1). `what` names the inputs the
// schedule must match in error messages ("cache_seqlens", "topk_length and topk").
void resolve_schedule(const Checker& c, const TensorView& meta, const TensorView& splits,
                      std::span<const int32_t> n_tok, int num_threads, const char* what,
                      ResolvedSchedule& out);

// Allocates (slots, q_len, num_heads_q[, d_v]) accumulators when some request is split.
void allocate_accumulators(ResolvedSchedule& s, int64_t batch, int64_t q_len,
                           int64_t num_heads_q, int64_t d_v);

}  // namespace flashmla::core
