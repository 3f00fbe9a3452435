// The schedule argument of the decode calls on the GPU: the caller's schedule (layout checked;
// its values live on the device, where the kernels keep every access in bounds), or one computed
// by the device scheduler into stream-ordered buffers; plus the split accumulators, sized for any
// schedule of that many parts (batch + num_parts slots, as FlashMLA allocates).
#pragma once

#include <cstdint>

#include "core/check.h"
#include "core/cuda_backend.h"

namespace flashmla::core {

// What the scheduler counts (reference §5.3 step 1), device pointers: dense mode the cache
// lengths; sparse mode (topk > 0) topk / topk_length and the extra list's.
struct DeviceTokenCounts {
  const int32_t* cache_seqlens = nullptr;
  int64_t topk = 0;
  const int32_t* topk_length = nullptr;
  int64_t extra_topk = 0;
  const int32_t* extra_topk_length = nullptr;
};

struct DeviceSchedule {
  DeviceBuffer own_records, own_splits, lse_buffer, o_buffer;
  const SchedRecord* records = nullptr;
  int num_parts = 0;
  const int32_t* num_splits = nullptr;
  float* lse_accum = nullptr;
  float* o_accum = nullptr;
  int64_t num_slots = 0;
};

struct DecodeSizes {
  int64_t batch = 0, q_len = 0, num_heads_q = 0, num_heads_kv = 1, d_v = 0;
};

// Checks the given schedule's layout (meta / splits, both or neither). With `run`, also fills
// `out`: the caller's schedule or the device scheduler's (parts: cuda_num_sm_parts), and the
// accumulators, all on `stream`.
void resolve_device_schedule(const Checker& c, const CudaBackend& backend, const TensorView& meta,
                             const TensorView& splits, const DeviceTokenCounts& counts,
                             const DecodeSizes& sizes, void* stream, bool run,
                             DeviceSchedule& out);

// Points a decode call's params (Dense/SparseDecodeParams) at the schedule and accumulators.
template <class Params>
void attach_device_schedule(const DeviceSchedule& s, Params& p) {
  p.sched = s.records;
  p.num_parts = s.num_parts;
  p.num_splits = s.num_splits;
  p.lse_accum = s.lse_accum;
  p.o_accum = s.o_accum;
  p.num_accum_slots = s.num_slots;
}

}  // namespace flashmla::core
