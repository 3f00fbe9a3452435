// get_mla_metadata and mla_num_sm_parts: argument checks around the scheduler of core/scheduler.
#include <algorithm>
#include <span>

#include "core/check.h"
#include "core/scheduler.h"
#include "flashmla/flashmla.h"

namespace flashmla {

int mla_num_sm_parts(const MlaDecodeShape& shape, const Context& ctx) {
  core::Checker c("mla_num_sm_parts");
  auto positive = [&](int64_t v, const char* arg) {
    if (v < 1) c.fail(ErrorKind::value, arg, ">= 1", std::to_string(v));
  };
  positive(shape.batch, "shape.batch");
  positive(shape.q_len, "shape.q_len");
  positive(shape.num_heads_q, "shape.num_heads_q");
  positive(shape.num_heads_kv, "shape.num_heads_kv");
  if (shape.num_heads_q % shape.num_heads_kv != 0) {
    c.fail(ErrorKind::value, "shape.num_heads_kv",
           "a divisor of num_heads_q = " + std::to_string(shape.num_heads_q),
           std::to_string(shape.num_heads_kv));
  }
  return core::checked_num_threads(c, ctx);  // <= kMaxThreads < kMaxSmParts
}

void get_mla_metadata(const MlaMetadataArgs& args) {
  core::Checker c("get_mla_metadata");
  c.present(args.cache_seqlens, "cache_seqlens");
  c.dtype(args.cache_seqlens, "cache_seqlens", {DType::int32});
  c.rank(args.cache_seqlens, "cache_seqlens", 1);
  c.contiguous(args.cache_seqlens, "cache_seqlens");
  const int64_t batch = args.cache_seqlens.size(0);
  if (batch < 1) c.fail(ErrorKind::value, "cache_seqlens", "at least one request", "shape (0,)");
  if (args.num_sm_parts < 1 || args.num_sm_parts > kMaxSmParts) {
    c.fail(ErrorKind::value, "num_sm_parts", "a value in [1, " + std::to_string(kMaxSmParts) + "]",
           std::to_string(args.num_sm_parts));
  }
  c.tensor(args.tile_scheduler_metadata, "tile_scheduler_metadata", {DType::int32},
           {args.num_sm_parts, core::kSchedRecordInts}, true);
  c.contiguous(args.tile_scheduler_metadata, "tile_scheduler_metadata");
  c.tensor(args.num_splits, "num_splits", {DType::int32}, {batch + 1}, true);

  std::span<const int32_t> seqlens(args.cache_seqlens.ptr<const int32_t>(), batch);
  for (int64_t i = 0; i < batch; ++i) {
    if (seqlens[i] < 0) {
      c.fail(ErrorKind::value, "cache_seqlens", "non-negative lengths",
             "cache_seqlens[" + std::to_string(i) + "] = " + std::to_string(seqlens[i]));
    }
  }
  core::schedule_split_kv(seqlens, kSchedulerBlockSize, kSchedulerFixedOverhead, args.num_sm_parts,
                          args.tile_scheduler_metadata.ptr<core::SchedRecord>(),
                          args.num_splits.ptr<int32_t>());
}

}  // namespace flashmla
