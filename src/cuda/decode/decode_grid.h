// The grid of a decode split kernel: x the kernel's tiles of one part (query tokens x head groups,
// or KV heads x row tiles), y the schedule parts. CUDA caps y at 65535 and x at 2^31 - 1; a
// launch past either would fail on the GPU with an opaque error, so the launchers check first.
#pragma once

#include <cstdint>
#include <string>

#include "cuda/common/namespace.h"
#include "flashmla/error.h"

FMLA_CUDA_NS_BEGIN

// Throws flashmla::Error (unsupported) naming `what` (e.g. "(KV head, 64-row tile) pairs") when
// num_parts or tiles do not fit a grid.
inline void check_decode_grid(int num_parts, int64_t tiles, const char* what) {
  if (num_parts > 65535 || tiles > 0x7fffffff) {
    throw Error(ErrorKind::unsupported, "flash_mla_with_kvcache", "tile_scheduler_metadata",
                std::string("at most 65535 schedule parts and 2^31 - 1 ") + what,
                std::to_string(num_parts) + " parts, " + std::to_string(tiles) + " tiles");
  }
}

FMLA_CUDA_NS_END
