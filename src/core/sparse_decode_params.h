// Validated, flattened arguments of sparse MLA decode, as the kernels consume them.
#pragma once

#include <cstdint>
#include <string>

#include "core/scheduler.h"

namespace flashmla::core {

enum class KvCacheKind : uint8_t { bf16, fp8_v32, fp8_model1 };

// One KV pool (the main cache or the extra cache) with its index list.
struct SparseKvPool {
  KvCacheKind kind = KvCacheKind::bf16;
  const uint8_t* data = nullptr;      // the cache's bytes
  int64_t block_stride_bytes = 0;     // bytes between page blocks
  int64_t token_stride_bytes = 0;     // bf16 cache: bytes between tokens of a block
  int64_t page_block_size = 0;
  int64_t num_tokens = 0;             // slots in the cache: num_blocks * page_block_size
  const int32_t* indices = nullptr;   // (batch, q_len, topk) slots; null for an absent pool
  int64_t indices_stride[2] = {};     //   batch, token (elements)
  int64_t topk = 0;
  const int32_t* topk_length = nullptr;  // (batch,) contiguous; null = topk
};

struct SparseDecodeParams {
  int64_t batch = 0, q_len = 0, num_heads_q = 0, d_qk = 0, d_v = 512;
  float scale_log2 = 0;                 // softmax_scale * log2(e)
  const uint16_t* q = nullptr;          // (batch, q_len, num_heads_q, d_qk) bf16
  int64_t q_stride[3] = {};
  SparseKvPool main, extra;             // extra.indices null when there is no extra pool
  const float* attn_sink = nullptr;     // (num_heads_q,) or null
  uint16_t* out = nullptr;              // (batch, q_len, num_heads_q, d_v) bf16
  int64_t out_stride[3] = {};
  float* lse = nullptr;                 // (batch, num_heads_q, q_len)
  int64_t lse_stride[3] = {};

  const SchedRecord* sched = nullptr;
  int num_parts = 0;
  const int32_t* num_splits = nullptr;
  float* lse_accum = nullptr;           // (slots, q_len, num_heads_q), log2 units
  float* o_accum = nullptr;             // (slots, q_len, num_heads_q, d_v)
  int64_t num_accum_slots = 0;          // slots (0 when nothing is split)
  int num_threads = 1;

  std::string to_string() const;
};

}  // namespace flashmla::core
