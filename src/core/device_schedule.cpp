#include "core/device_schedule.h"

#include "core/schedule_arg.h"
#include "flashmla/flashmla.h"

namespace flashmla::core {

void resolve_device_schedule(const Checker& c, const CudaBackend& backend, const TensorView& meta,
                             const TensorView& splits, const DeviceTokenCounts& counts,
                             const DecodeSizes& n, void* stream, bool run, DeviceSchedule& out) {
  const bool given = given_schedule(c, meta, splits);
  if (given) check_schedule_layout(c, meta, splits, n.batch);
  if (!run) return;
  if (given) {
    out.records = meta.ptr<const SchedRecord>();
    out.num_parts = static_cast<int>(meta.size(0));
    out.num_splits = splits.ptr<const int32_t>();
  } else {
    const int parts =
        cuda_num_sm_parts(backend.sm_count(stream), n.q_len, n.num_heads_q, n.num_heads_kv);
    out.own_records.allocate(backend, sizeof(SchedRecord) * parts, stream);
    out.own_splits.allocate(backend, sizeof(int32_t) * (n.batch + 1), stream);
    auto* records = out.own_records.as<SchedRecord>();
    auto* num_splits = out.own_splits.as<int32_t>();
    if (counts.topk > 0) {
      backend.get_mla_metadata_sparse(n.batch, counts.topk, counts.topk_length, counts.extra_topk,
                                      counts.extra_topk_length, kSchedulerBlockSize,
                                      kSchedulerFixedOverhead, parts, records, num_splits, stream);
    } else {
      backend.get_mla_metadata(counts.cache_seqlens, n.batch, kSchedulerBlockSize,
                               kSchedulerFixedOverhead, parts, records, num_splits, stream);
    }
    out.records = records;
    out.num_parts = parts;
    out.num_splits = num_splits;
  }
  // Every schedule of num_parts parts has at most batch + num_parts - 1 pieces: each part
  // boundary splits at most one request.
  out.num_slots = n.batch + out.num_parts;
  const int64_t rows = out.num_slots * n.q_len * n.num_heads_q;
  out.lse_buffer.allocate(backend, sizeof(float) * rows, stream);
  out.o_buffer.allocate(backend, sizeof(float) * rows * n.d_v, stream);
  out.lse_accum = out.lse_buffer.as<float>();
  out.o_accum = out.o_buffer.as<float>();
}

}  // namespace flashmla::core
