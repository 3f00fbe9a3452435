// The SM90 (Hopper, sm_90a) dense decode split kernel's launch (dense_decode_sm90.cu); it takes
// the SM80 kernel's arguments. The entry point (dense_decode.cu) runs it when asked for the SM90
// generation, which the backend table does on compute capability 9.0 (cuda/backend.cu).
#pragma once

#include "cuda/common/namespace.h"
#include "cuda/decode/dense_decode_sm80.h"

FMLA_CUDA_NS_BEGIN

// Runs every part of the schedule: grid (num_heads_kv * ceil(q_len * hpk / 64), num_parts), 256
// threads, where hpk = num_heads_q / num_heads_kv. Returns false, launching nothing, when the
// cache's layout does not suit the kernel's TMA tensor map (page_block_size not a multiple of 8,
// k_cache or its strides not 16-byte aligned, no blocks or more than 2^31 - 1, or a map the
// driver refuses). Throws flashmla::Error for more than 65535 parts or a failed launch.
bool launch_dense_decode_sm90(const DenseDecodeArgs& a, void* stream);

FMLA_CUDA_NS_END
