// Validated, flattened arguments of the split-KV combine (reference §5.6).
#pragma once

#include <cstdint>
#include <string>

#include "flashmla/tensor.h"

namespace flashmla::core {

struct CombineParams {
  int64_t batch = 0, q_len = 0, num_heads_q = 0, d_v = 0;
  const float* lse_accum = nullptr;  // (num_slots, q_len, num_heads_q), log2 units
  int64_t lse_accum_stride[3] = {};  //   slot, token, head
  const float* o_accum = nullptr;    // (num_slots, q_len, num_heads_q, d_v), last dim contiguous
  int64_t o_accum_stride[3] = {};    //   slot, token, head
  int64_t num_slots = 0;
  const int32_t* num_splits = nullptr;  // (batch + 1,)
  const float* attn_sink = nullptr;     // (num_heads_q,) natural units; may be null
  DType out_dtype = DType::bf16;
  void* out = nullptr;                  // (batch, q_len, num_heads_q, d_v)
  int64_t out_stride[3] = {};           //   batch, token, head
  float* lse = nullptr;                 // (batch, num_heads_q, q_len), natural log
  int64_t lse_stride[3] = {};           //   batch, head, token
  int num_threads = 1;

  std::string to_string() const;
};

}  // namespace flashmla::core
