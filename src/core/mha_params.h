// Validated, flattened arguments of dense MHA varlen prefill (forward and backward), as the
// kernels consume them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace flashmla::core {

struct MhaParams {
  int64_t batch = 0, num_heads_q = 0, num_heads_kv = 0, d_qk = 0, d_v = 0;
  // Sequence i has queries [q_start[i], q_start[i + 1]) and keys [kv_start[i], kv_start[i + 1]).
  std::vector<int64_t> q_start, kv_start;  // (batch + 1,)
  float scale = 0;       // softmax scale (natural units)
  float scale_log2 = 0;  // scale * log2(e)
  bool causal = false;   // bottom-right aligned

  const uint16_t* q = nullptr;  // (total_q, num_heads_q, d_qk) bf16
  int64_t q_stride[2] = {};     //   token, head
  const uint16_t* k = nullptr;  // (total_kv, num_heads_kv, d_qk) bf16
  int64_t k_stride[2] = {};
  const uint16_t* v = nullptr;  // (total_kv, num_heads_kv, d_v) bf16
  int64_t v_stride[2] = {};
  uint16_t* out = nullptr;      // (total_q, num_heads_q, d_v) bf16: forward writes, backward reads
  int64_t out_stride[2] = {};
  float* lse = nullptr;         // (total_q, num_heads_q) fp32: forward writes, backward reads
  int64_t lse_stride[2] = {};

  // Backward only.
  const uint16_t* dout = nullptr;  // like out
  int64_t dout_stride[2] = {};
  uint16_t* dq = nullptr;          // like q; written
  int64_t dq_stride[2] = {};
  uint16_t* dk = nullptr;          // like k; written
  int64_t dk_stride[2] = {};
  uint16_t* dv = nullptr;          // like v; written
  int64_t dv_stride[2] = {};

  int num_threads = 1;

  int64_t q_len(int64_t i) const { return q_start[i + 1] - q_start[i]; }
  int64_t kv_len(int64_t i) const { return kv_start[i + 1] - kv_start[i]; }
  int64_t group() const { return num_heads_q / num_heads_kv; }  // query heads per KV head

  std::string to_string() const;
};

}  // namespace flashmla::core
