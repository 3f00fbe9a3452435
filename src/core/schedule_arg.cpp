#include "core/schedule_arg.h"

#include <string>

#include "flashmla/flashmla.h"

namespace flashmla::core {

bool given_schedule(const Checker& c, const TensorView& meta, const TensorView& splits) {
  const bool has_meta = meta.defined(), has_splits = splits.defined();
  if (has_meta != has_splits) {
    c.fail(ErrorKind::value, has_meta ? "num_splits" : "tile_scheduler_metadata",
           "to be given together with " +
               std::string(has_meta ? "tile_scheduler_metadata" : "num_splits"),
           "null");
  }
  return has_meta;
}

void check_schedule_layout(const Checker& c, const TensorView& meta, const TensorView& splits,
                           int64_t batch) {
  c.present(meta, "tile_scheduler_metadata");
  c.dtype(meta, "tile_scheduler_metadata", {DType::int32});
  c.rank(meta, "tile_scheduler_metadata", 2);
  if (meta.size(0) < 1 || meta.size(0) > kMaxSmParts) {
    c.fail(ErrorKind::value, "tile_scheduler_metadata",
           "shape (num_sm_parts in [1, " + std::to_string(kMaxSmParts) + "], 8)",
           meta.shape_string());
  }
  c.shape(meta, "tile_scheduler_metadata", {meta.size(0), kSchedRecordInts});
  c.contiguous(meta, "tile_scheduler_metadata");
  c.tensor(splits, "num_splits", {DType::int32}, {batch + 1}, true);
}

void resolve_schedule(const Checker& c, const TensorView& meta, const TensorView& splits,
                      std::span<const int32_t> n_tok, int num_threads, const char* what,
                      ResolvedSchedule& out) {
  const int64_t batch = static_cast<int64_t>(n_tok.size());
  if (!given_schedule(c, meta, splits)) {
    out.own_records.resize(num_threads);
    out.own_splits.resize(batch + 1);
    schedule_split_kv(n_tok, kSchedulerBlockSize, kSchedulerFixedOverhead, num_threads,
                      out.own_records.data(), out.own_splits.data());
    out.records = out.own_records.data();
    out.num_parts = num_threads;
    out.num_splits = out.own_splits.data();
    return;
  }
  check_schedule_layout(c, meta, splits, batch);
  std::span<const SchedRecord> records(meta.ptr<const SchedRecord>(), meta.size(0));
  std::span<const int32_t> given_splits(splits.ptr<const int32_t>(), batch + 1);
  if (std::string why = schedule_mismatch(n_tok, kSchedulerBlockSize, kSchedulerFixedOverhead,
                                          records, given_splits);
      !why.empty()) {
    c.fail(ErrorKind::value, "tile_scheduler_metadata",
           std::string("the schedule get_mla_metadata computes for these ") + what + " with " +
               std::to_string(records.size()) + " parts",
           "a different one (" + why + ")");
  }
  out.records = records.data();
  out.num_parts = static_cast<int>(records.size());
  out.num_splits = given_splits.data();
}

void allocate_accumulators(ResolvedSchedule& s, int64_t batch, int64_t q_len,
                           int64_t num_heads_q, int64_t d_v) {
  const int64_t num_slots = s.num_splits[batch];
  if (num_slots <= batch) return;  // nothing split
  const int64_t rows = num_slots * q_len * num_heads_q;
  s.lse_accum.resize(rows);
  s.o_accum.resize(rows * d_v);
}

}  // namespace flashmla::core
