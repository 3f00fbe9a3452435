// The SM100 (datacenter Blackwell, sm_100a) dense decode split kernel's launch
// (dense_decode_sm100.cu); it takes the SM80 kernel's arguments. The entry point
// (dense_decode.cu) runs it when asked for the SM100 generation, which the backend table does on
// compute capability 10.0 (cuda/backend.cu).
#pragma once

#include "cuda/common/namespace.h"
#include "cuda/decode/dense_decode_sm80.h"

FMLA_CUDA_NS_BEGIN

// Runs every part of the schedule: grid (num_heads_kv * ceil(q_len * hpk / 128), num_parts), 128
// threads, where hpk = num_heads_q / num_heads_kv. Returns false, launching nothing, when the
// cache's layout does not suit the kernel's TMA tensor map (as launch_dense_decode_sm90).
// Throws flashmla::Error for more than 65535 parts or a failed launch.
bool launch_dense_decode_sm100(const DenseDecodeArgs& a, void* stream);

FMLA_CUDA_NS_END
