// get_mla_metadata and mla_num_sm_parts: argument checks around the scheduler of core/scheduler,
// or for CUDA tensors the CUDA backend's scheduler kernel.
#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "core/check.h"
#include "core/cuda_backend.h"
#include "core/scheduler.h"
#include "flashmla/flashmla.h"

namespace flashmla {
namespace {

void check_outputs(const core::Checker& c, const MlaMetadataArgs& args, int64_t batch) {
  c.tensor(args.tile_scheduler_metadata, "tile_scheduler_metadata", {DType::int32},
           {args.num_sm_parts, core::kSchedRecordInts}, true);
  c.contiguous(args.tile_scheduler_metadata, "tile_scheduler_metadata");
  c.tensor(args.num_splits, "num_splits", {DType::int32}, {batch + 1}, true);
}

}  // namespace

int mla_num_sm_parts(const MlaDecodeShape& shape, const Context& ctx, Device device) {
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
  const int threads = core::checked_num_threads(c, ctx);  // <= kMaxThreads < kMaxSmParts
  if (device == Device::cpu) return threads;
  const core::CudaBackend& cuda = core::required_cuda_backend(c, "device");
  return core::cuda_num_sm_parts(cuda.sm_count(ctx.cuda_stream), shape.q_len, shape.num_heads_q,
                                 shape.num_heads_kv);
}

void get_mla_metadata(const MlaMetadataArgs& args, const Context& ctx) {
  core::Checker c("get_mla_metadata");
  const core::CudaBackend* cuda =
      c.use_device_of(args.tile_scheduler_metadata, "tile_scheduler_metadata");
  if (args.num_sm_parts < 1 || args.num_sm_parts > kMaxSmParts) {
    c.fail(ErrorKind::value, "num_sm_parts", "a value in [1, " + std::to_string(kMaxSmParts) + "]",
           std::to_string(args.num_sm_parts));
  }
  std::vector<int32_t> n_tok;  // the scheduler's tokens per request (§5.3 step 1)
  if (args.topk > 0) {         // sparse mode
    const int64_t batch = args.topk_length.defined() ? args.topk_length.size(0) : args.batch;
    if (batch < 1 || batch >= INT32_MAX) {  // num_splits holds int32 piece counts
      c.fail(ErrorKind::value, "batch", "in [1, 2^31 - 1) (or a topk_length tensor)",
             std::to_string(batch));
    }
    if (args.topk > core::kMaxSparseTopk) {
      c.fail(ErrorKind::value, "topk", "<= " + std::to_string(core::kMaxSparseTopk),
             std::to_string(args.topk));
    }
    if (args.extra_topk < 0 || args.extra_topk > core::kMaxSparseTopk) {
      c.fail(ErrorKind::value, "extra_topk", "in [0, " + std::to_string(core::kMaxSparseTopk) + "]",
             std::to_string(args.extra_topk));
    }
    if (args.extra_topk == 0 && args.extra_topk_length.defined()) {
      c.fail(ErrorKind::value, "extra_topk_length", "null without an extra list (extra_topk 0)",
             "a tensor of shape " + args.extra_topk_length.shape_string());
    }
    // num_splits (b + 1,) is a real tensor of this batch before anything of its size is
    // allocated (found by fuzz/fuzz_scheduler: a batch of 2^62 with no tensor behind it).
    c.tensor(args.num_splits, "num_splits", {DType::int32}, {batch + 1}, true);
    const int32_t* len = core::checked_lengths(c, args.topk_length, "topk_length", batch, args.topk);
    const int32_t* extra_len = core::checked_lengths(c, args.extra_topk_length, "extra_topk_length",
                                                     batch, args.extra_topk);
    if (cuda != nullptr) {
      check_outputs(c, args, batch);
      return cuda->get_mla_metadata_sparse(
          batch, args.topk, len, args.extra_topk, extra_len, kSchedulerBlockSize,
          kSchedulerFixedOverhead, args.num_sm_parts,
          args.tile_scheduler_metadata.ptr<core::SchedRecord>(), args.num_splits.ptr<int32_t>(),
          ctx.cuda_stream);
    }
    n_tok = core::sparse_token_counts(batch, args.topk, len, args.extra_topk, extra_len);
  } else {
    if (args.topk < 0) c.fail(ErrorKind::value, "topk", ">= 0 (0 = dense)", std::to_string(args.topk));
    c.present(args.cache_seqlens, "cache_seqlens");
    c.dtype(args.cache_seqlens, "cache_seqlens", {DType::int32});
    c.rank(args.cache_seqlens, "cache_seqlens", 1);
    c.contiguous(args.cache_seqlens, "cache_seqlens");
    const int64_t batch = args.cache_seqlens.size(0);
    if (batch < 1) c.fail(ErrorKind::value, "cache_seqlens", "at least one request", "shape (0,)");
    const auto* seqlens = args.cache_seqlens.ptr<const int32_t>();
    if (cuda != nullptr) {  // lengths on the device: not read here
      check_outputs(c, args, batch);
      return cuda->get_mla_metadata(seqlens, batch, kSchedulerBlockSize, kSchedulerFixedOverhead,
                                    args.num_sm_parts,
                                    args.tile_scheduler_metadata.ptr<core::SchedRecord>(),
                                    args.num_splits.ptr<int32_t>(), ctx.cuda_stream);
    }
    for (int64_t i = 0; i < batch; ++i) {
      if (seqlens[i] < 0) {
        c.fail(ErrorKind::value, "cache_seqlens", "non-negative lengths",
               "cache_seqlens[" + std::to_string(i) + "] = " + std::to_string(seqlens[i]));
      }
    }
    n_tok.assign(seqlens, seqlens + batch);
  }
  check_outputs(c, args, static_cast<int64_t>(n_tok.size()));
  core::schedule_split_kv(n_tok, kSchedulerBlockSize, kSchedulerFixedOverhead, args.num_sm_parts,
                          args.tile_scheduler_metadata.ptr<core::SchedRecord>(),
                          args.num_splits.ptr<int32_t>());
}

}  // namespace flashmla
