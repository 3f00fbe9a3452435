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

// Whether the caller gave a schedule: tile_scheduler_metadata and num_splits both, or neither
// (an Error otherwise).
bool given_schedule(const Checker& c, const TensorView& meta, const TensorView& splits);

// The layout of a given schedule: meta (num_sm_parts in [1, kMaxSmParts], 8) int32 contiguous,
// splits (batch + 1,) int32 contiguous.
void check_schedule_layout(const Checker& c, const TensorView& meta, const TensorView& splits,
                           int64_t batch);

// n_tok: the scheduler's token count per request (§5.3 step 1). `what` names the inputs the
// schedule must match in error messages ("cache_seqlens", "topk_length and topk").
void resolve_schedule(const Checker& c, const TensorView& meta, const TensorView& splits,
                      std::span<const int32_t> n_tok, int num_threads, const char* what,
                      ResolvedSchedule& out);

// Allocates (slots, q_len, num_heads_q[, d_v]) accumulators when some request is split.
void allocate_accumulators(ResolvedSchedule& s, int64_t batch, int64_t q_len,
                           int64_t num_heads_q, int64_t d_v);

// allocate_accumulators for the params' sizes, then points p.lse_accum / p.o_accum at them and
// sets p.num_accum_slots (0 and null when nothing is split). Params: Dense/SparseDecodeParams.
template <class Params>
void attach_accumulators(ResolvedSchedule& s, Params& p) {
  allocate_accumulators(s, p.batch, p.q_len, p.num_heads_q, p.d_v);
  const bool any = !s.lse_accum.empty();
  p.lse_accum = any ? s.lse_accum.data() : nullptr;
  p.o_accum = any ? s.o_accum.data() : nullptr;
  p.num_accum_slots = any ? s.num_splits[p.batch] : 0;
}

}  // namespace flashmla::core
