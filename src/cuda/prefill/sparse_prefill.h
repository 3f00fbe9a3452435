// Sparse MLA prefill on the GPU (flash_mla_sparse_fwd, reference §3.4): the CUDA twin of
// cpu/prefill/sparse_prefill.h.
#pragma once

#include "core/sparse_prefill_params.h"
#include "cuda/common/generation.h"
#include "cuda/common/namespace.h"

FMLA_CUDA_NS_BEGIN

// Same contract as cpu::prefill::run_sparse_prefill (p.num_threads is ignored): writes out,
// max_logits and lse of every (query token, head). Every pointer of p (q, kv, indices,
// topk_length, attn_sink, out, max_logits, lse) is a device pointer; `stream` is a cudaStream_t
// (null = default stream). Asynchronous on the GPU, synchronous in the harness.
void run_sparse_prefill(const core::SparsePrefillParams& p, void* stream,
                        KernelGeneration gen = KernelGeneration::sm80);

FMLA_CUDA_NS_END
