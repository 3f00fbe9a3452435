// The sparse mode of flash_mla_with_kvcache up to the kernel call: validated params, the
// resolved schedule and the split accumulators, exactly as the library hands them to a kernel.
// Used by the call itself (sparse_decode_api.cpp) and by the CUDA backend's tests, which run
// their kernel on the same params as the CPU one.
#pragma once

#include "core/schedule_arg.h"
#include "core/sparse_decode_params.h"
#include "flashmla/flashmla.h"

namespace flashmla::core {

struct PreparedSparseDecode {
  SparseDecodeParams params;   // points into `schedule` (records, num_splits, accumulators)
  ResolvedSchedule schedule;   // owns the schedule (unless the caller gave one) and accumulators
};

// Validates `args` (throws flashmla::Error as flash_mla_with_kvcache does) and resolves the
// schedule. With `allocate`, also allocates the accumulators and fills params' schedule fields
// (sched, num_parts, num_splits, lse_accum, o_accum); without it those stay unset. `out` must
// not be moved or copied afterwards (params point into it). For CUDA tensors only the
// validation is done (values on the device are not read; there is no host schedule).
void prepare_sparse_decode(const MlaDecodeArgs& args, const Context& ctx, bool allocate,
                           PreparedSparseDecode& out);

}  // namespace flashmla::core
