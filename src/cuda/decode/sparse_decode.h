// Sparse MLA decode on the GPU (reference §5.3-5.5): the CUDA twin of cpu/decode/sparse_decode.h.
#pragma once

#include "core/sparse_decode_params.h"
#include "cuda/common/generation.h"
#include "cuda/common/namespace.h"

FMLA_CUDA_NS_BEGIN

// Same contract as cpu::decode::run_sparse_decode (p.num_threads is ignored): runs every part of
// the sparse-mode schedule, then combines split requests (applying the attention sink there).
// Every pointer of p (q, pools, index lists, lengths, sink, out, lse, schedule, accumulators) is
// a device pointer; `stream` is a cudaStream_t (null = default stream). Asynchronous on the GPU,
// synchronous in the harness. `gen`: the split kernel's generation (common/generation.h).
void run_sparse_decode(const core::SparseDecodeParams& p, void* stream,
                       KernelGeneration gen = KernelGeneration::sm80);

FMLA_CUDA_NS_END
