#pragma once

#include "flashmla/flashmla.h"

namespace flashmla::core {

// The sparse mode of flash_mla_with_kvcache (args.indices given): validates every argument and
// the schedule, then runs the CPU kernel when `run` (can_run passes false).
void sparse_decode_call(const MlaDecodeArgs& args, const Context& ctx, bool run);

}  // namespace flashmla::core
