// Validated, flattened arguments of sparse MLA prefill, as the kernels consume them.
#pragma once

#include <cstdint>
#include <string>

namespace flashmla::core {

struct SparsePrefillParams {
  int64_t q_len = 0, kv_len = 0, num_heads_q = 0, d_qk = 0, d_v = 0, topk = 0;
  float scale_log2 = 0;                 // sm_scale * log2(e)

  const uint16_t* q = nullptr;          // (q_len, num_heads_q, d_qk) bf16
  int64_t q_stride[2] = {};             //   token, head
  const uint16_t* kv = nullptr;         // (kv_len, 1, d_qk) bf16
  int64_t kv_stride = 0;                //   token
  const int32_t* indices = nullptr;     // (q_len, 1, topk)
  int64_t indices_stride = 0;           //   token
  const int32_t* topk_length = nullptr; // (q_len,) contiguous; may be null (= topk)
  const float* attn_sink = nullptr;     // (num_heads_q,) contiguous; may be null

  uint16_t* out = nullptr;              // (q_len, num_heads_q, d_v) bf16
  int64_t out_stride[2] = {};           //   token, head
  float* max_logits = nullptr;          // (q_len, num_heads_q)
  int64_t max_logits_stride[2] = {};
  float* lse = nullptr;                 // (q_len, num_heads_q)
  int64_t lse_stride[2] = {};

  int num_threads = 1;

  std::string to_string() const;
};

}  // namespace flashmla::core
