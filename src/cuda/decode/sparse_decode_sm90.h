// The SM90 (Hopper, sm_90a) sparse decode split kernel's launch (sparse_decode_sm90.cu); it takes
// the SM80 kernel's arguments. The entry point (sparse_decode.cu) runs it when asked for the SM90
// kernel, which the backend table does on compute capability 9.0 (cuda/backend.cu).
#pragma once

#include "cuda/common/namespace.h"
#include "cuda/decode/sparse_decode_sm80.h"

FMLA_CUDA_NS_BEGIN

// Runs every part of the schedule: grid (q_len * ceil(num_heads_q / 64), num_parts), 256
// threads. Throws flashmla::Error for more than 65535 parts or a failed launch.
void launch_sparse_decode_sm90(const SparseDecodeArgs& a, void* stream);

FMLA_CUDA_NS_END
