// The dense mode of flash_mla_with_kvcache up to the kernel call: validated params and the
// resolved schedule, exactly as the library hands them to a kernel. Used by the call itself
// (decode_api.cpp) and by the CUDA backend's tests, which run their kernel on the same params as
// the CPU one.
#pragma once

#include "core/decode_params.h"
#include "core/schedule_arg.h"
#include "flashmla/flashmla.h"

namespace flashmla::core {

// Checks everything (throws flashmla::Error as flash_mla_with_kvcache does) and fills params
// except the schedule and the accumulators.
DenseDecodeParams validate_dense_decode(const MlaDecodeArgs& a, const Context& ctx);

// Validation and the schedule of a dense call: params' sched, num_parts and num_splits point
// into `sched`; the accumulators are left to the caller (allocate_accumulators).
DenseDecodeParams prepare_dense_decode(const MlaDecodeArgs& args, const Context& ctx,
                                       ResolvedSchedule& sched);

}  // namespace flashmla::core
