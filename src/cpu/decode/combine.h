#pragma once

#include "core/combine_params.h"

namespace flashmla::cpu::decode {

// Merges the pieces of every request with two or more pieces (reference §5.6); rows of requests
// with one piece are not touched. The order of the pieces is fixed, so the result does not
// depend on the number of threads.
void run_combine(const core::CombineParams& p);

// Combines the decode drivers' own accumulators, laid out (slot, q_len, num_heads_q[, d_v])
// contiguously, into out / lse (strides: batch, token, head / batch, head, token). Does nothing
// when no request was split.
void combine_decode_accumulators(int64_t batch, int64_t q_len, int64_t num_heads_q, int64_t d_v,
                                 const float* lse_accum, const float* o_accum,
                                 const int32_t* num_splits, const float* attn_sink,
                                 DType out_dtype, void* out, const int64_t out_stride[3],
                                 float* lse, const int64_t lse_stride[3], int num_threads);

}  // namespace flashmla::cpu::decode
