// The split-KV decode scheduler on the GPU (reference §5.2-5.3): get_mla_metadata computed by
// one CUDA block from device lengths, so it can be captured in a CUDA graph. The output is
// bit-identical to core::schedule_split_kv over the same token counts.
#pragma once

#include <cstdint>

#include "core/scheduler.h"
#include "cuda/common/namespace.h"

FMLA_CUDA_NS_BEGIN

// Dense mode: n_tok[i] = seqlens_k[i] (device, (batch,), every entry >= 0). Writes num_parts
// records (device, (num_parts,)) and num_splits (device, (batch + 1,)) exactly as
// core::schedule_split_kv(n_tok, block_size, fixed_overhead, num_parts, ...) does (entries the
// walk does not reach are left as they were, as there). batch may be 0; num_parts >= 1.
// `stream` is a cudaStream_t (null = default stream); synchronous in the harness.
void run_get_mla_metadata(const int32_t* seqlens_k, int64_t batch, int block_size,
                          int fixed_overhead, int num_parts, core::SchedRecord* records,
                          int32_t* num_splits, void* stream);

// Sparse mode: n_tok = core::sparse_token_counts(batch, topk, topk_length, extra_topk,
// extra_topk_length) computed on the device (topk_length / extra_topk_length: device (batch,)
// or null; same preconditions as there: topk in [1, kMaxSparseTopk], extra_topk in
// [0, kMaxSparseTopk], lengths within [0, topk] / [0, extra_topk]), then the same walk.
void run_get_mla_metadata_sparse(int64_t batch, int64_t topk, const int32_t* topk_length,
                                 int64_t extra_topk, const int32_t* extra_topk_length,
                                 int block_size, int fixed_overhead, int num_parts,
                                 core::SchedRecord* records, int32_t* num_splits, void* stream);

FMLA_CUDA_NS_END
