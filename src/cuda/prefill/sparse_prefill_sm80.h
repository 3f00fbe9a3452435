// The SM80+ sparse prefill kernel's arguments and launch (sparse_prefill_sm80.cu); the entry
// point (sparse_prefill.cu) fills them from core::SparsePrefillParams.
#pragma once

#include <cstdint>

#include "cuda/common/namespace.h"

FMLA_CUDA_NS_BEGIN

struct SparsePrefillKernelArgs {
  int64_t q_len, kv_len, num_heads_q, topk;
  int d_qk;                      // 512 or 576; d_v is 512
  float scale_log2;
  const uint16_t* q;
  int64_t q_stride[2];
  const uint16_t* kv;
  int64_t kv_stride;
  const int32_t* indices;
  int64_t indices_stride;
  const int32_t* topk_length;    // (q_len,) or null (= topk)
  const float* attn_sink;        // (num_heads_q,) or null
  uint16_t* out;
  int64_t out_stride[2];
  float* max_logits;
  int64_t max_logits_stride[2];
  float* lse;
  int64_t lse_stride[2];
  // The tensor's pointer and strides are multiples of 16 bytes: 16-byte cp.async / stores,
  // otherwise element-wise copies.
  bool q_aligned, kv_aligned, out_aligned;
};

// One CTA of 128 threads per (query token, group of 16 heads).
void launch_sparse_prefill_sm80(const SparsePrefillKernelArgs& a, void* stream);

FMLA_CUDA_NS_END
