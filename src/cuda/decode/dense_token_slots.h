// Dense decode over an FP8 V32 cache on the GPU goes through the sparse decode kernel (which
// gathers and dequantises V32 tokens): this writes the index lists that make a sparse call
// compute exactly the dense one.
#pragma once

#include <cstdint>

#include "cuda/common/namespace.h"

FMLA_CUDA_NS_BEGIN

// indices (device, (batch, q_len, topk) contiguous, topk = max_blocks_per_seq * page_block_size):
// for request i and query token s, column j holds the cache slot of token j,
// block_table[i][j / page] * page + j % page, when j < L = clamp(cache_seqlens[i], 0, topk) and,
// with `causal`, j <= L - q_len + s (bottom-right aligned); otherwise -1. A block id outside
// [0, num_blocks) also gives -1. Needs num_blocks * page_block_size <= INT32_MAX and
// batch * q_len <= INT32_MAX (Error otherwise). Asynchronous on `stream`; synchronous in the
// harness.
void run_dense_token_slots(const int32_t* block_table, int64_t block_table_stride,
                           int64_t max_blocks_per_seq, const int32_t* cache_seqlens,
                           int64_t page_block_size, int64_t num_blocks, int64_t batch,
                           int64_t q_len, bool causal, int32_t* indices, void* stream);

FMLA_CUDA_NS_END
