// Sparse MLA prefill on the GPU (flash_mla_sparse_fwd, reference §3.4): the CUDA twin of
// cpu/prefill/sparse_prefill.h.
#pragma once

#include "core/sparse_prefill_params.h"
#include "cuda/common/namespace.h"

FMLA_CUDA_NS_BEGIN

// The kernel generations: sm80 runs on every GPU from SM80 (mma.sync); sm90 on compute
// capability 9.0 only, from a build with sm_90a code (wgmma; the backend table picks it there).
enum class SparsePrefillKernel { sm80, sm90 };

// Same contract as cpu::prefill::run_sparse_prefill (p.num_threads is ignored): writes out,
// max_logits and lse of every (query token, head). Every pointer of p (q, kv, indices,
// topk_length, attn_sink, out, max_logits, lse) is a device pointer; `stream` is a cudaStream_t
// (null = default stream). Asynchronous on the GPU, synchronous in the harness.
void run_sparse_prefill(const core::SparsePrefillParams& p, void* stream,
                        SparsePrefillKernel kernel = SparsePrefillKernel::sm80);

FMLA_CUDA_NS_END
