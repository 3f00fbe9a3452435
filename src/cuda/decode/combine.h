// Split-KV combine on the GPU (reference §5.6): the CUDA twin of cpu/decode/combine.h.
#pragma once

#include "core/combine_params.h"
#include "cuda/common/namespace.h"

FMLA_CUDA_NS_BEGIN

// Same contract as cpu::decode::run_combine (p.num_threads is ignored); every pointer of p is a
// device pointer; `stream` is a cudaStream_t (null = default stream). Asynchronous on the GPU,
// synchronous in the harness. num_splits is read on the device only: a request whose pieces lie
// outside [0, p.num_slots) is left untouched rather than read out of bounds.
void run_combine(const core::CombineParams& p, void* stream);

// Same contract as cpu::decode::combine_decode_accumulators: merges the decode kernels' own
// accumulators, num_slots slots laid out (slot, q_len, num_heads_q[, d_v]) contiguously, into
// out / lse. Requests whose pieces num_splits places outside the slots are left untouched.
void combine_decode_accumulators(int64_t batch, int64_t q_len, int64_t num_heads_q, int64_t d_v,
                                 const float* lse_accum, const float* o_accum,
                                 int64_t num_slots, const int32_t* num_splits,
                                 const float* attn_sink,
                                 DType out_dtype, void* out, const int64_t out_stride[3],
                                 float* lse, const int64_t lse_stride[3], void* stream);

FMLA_CUDA_NS_END
