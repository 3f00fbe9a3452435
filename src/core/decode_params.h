// Validated, flattened arguments of dense MLA decode, as the kernels consume them.
#pragma once

#include <cstdint>
#include <string>

#include "core/scheduler.h"
#include "flashmla/tensor.h"

namespace flashmla::core {

struct DenseDecodeParams {
  // Sizes (vocabulary of docs/conventions.md).
  int64_t batch = 0, q_len = 0, num_heads_q = 0, num_heads_kv = 0;
  int64_t d_qk = 0, d_v = 0;
  int64_t page_block_size = 0, num_blocks = 0;
  DType dtype = DType::bf16;    // of q and out (and k_cache unless kv_fp8_v32)
  bool kv_fp8_v32 = false;      // k_cache holds FP8 V32 tokens (656 bytes; k_stride in bytes)
  float scale_log2 = 0;         // softmax_scale * log2(e): logits are kept in log2 units
  bool causal = false;          // already false when q_len == 1

  // Inputs; strides in elements.
  const void* q = nullptr;              // (batch, q_len, num_heads_q, d_qk)
  int64_t q_stride[3] = {};             //   batch, token, head
  const void* k_cache = nullptr;        // (num_blocks, page_block_size, num_heads_kv, d_qk)
  int64_t k_stride[3] = {};             //   block, token, head
  const int32_t* block_table = nullptr; // (batch, max_blocks_per_seq)
  int64_t block_table_stride = 0;       //   batch
  int64_t max_blocks_per_seq = 0;       // block_table's columns
  const int32_t* cache_seqlens = nullptr;  // (batch,), contiguous

  // Outputs.
  void* out = nullptr;                  // (batch, q_len, num_heads_q, d_v), dtype
  int64_t out_stride[3] = {};           //   batch, token, head
  float* lse = nullptr;                 // (batch, num_heads_q, q_len)
  int64_t lse_stride[3] = {};           //   batch, head, token

  // Schedule (never null) and split accumulators (null when no request is split).
  const SchedRecord* sched = nullptr;   // (num_parts,)
  int num_parts = 0;
  const int32_t* num_splits = nullptr;  // (batch + 1,)
  float* lse_accum = nullptr;           // (num_slots, q_len, num_heads_q), log2 units
  float* o_accum = nullptr;             // (num_slots, q_len, num_heads_q, d_v)
  int64_t num_accum_slots = 0;          // num_slots (0 when nothing is split)

  int num_threads = 1;

  std::string to_string() const;
};

}  // namespace flashmla::core
