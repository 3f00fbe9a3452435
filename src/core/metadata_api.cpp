// get_mla_metadata and mla_num_sm_parts: argument checks around the scheduler of core/scheduler.
#include <span>

#include "core/check.h"
#include "core/scheduler.h"
#include "flashmla/flashmla.h"

namespace flashmla {

int mla_num_sm_parts(const MlaDecodeShape& shape, const Context& ctx) {
  core::Checker c("mla_num_sm_parts");
  if (shape.batch < 1) c.fail(ErrorKind::value, "shape.batch", ">= 1", std::to_string(shape.batch));
  if (ctx.num_threads < 0) {
    c.fail(ErrorKind::value, "ctx.num_threads", ">= 0 (0 = default)",
           std::to_string(ctx.num_threads));
  }
  return resolved_num_threads(ctx);
}

void get_mla_metadata(const MlaMetadataArgs& args) {
  core::Checker c("get_mla_metadata");
  c.present(args.cache_seqlens, "cache_seqlens");
  c.dtype(args.cache_seqlens, "cache_seqlens", {DType::int32});
  c.rank(args.cache_seqlens, "cache_seqlens", 1);
  c.contiguous(args.cache_seqlens, "cache_seqlens");
  const int64_t batch = args.cache_seqlens.size(0);
  if (batch < 1) c.fail(ErrorKind::value, "cache_seqlens", "at least one request", "shape (0,)");
  if (args.num_sm_parts < 1) {
    c.fail(ErrorKind::value, "num_sm_parts", ">= 1", std::to_string(args.num_sm_parts));
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
