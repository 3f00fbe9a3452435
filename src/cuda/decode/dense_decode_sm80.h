// The SM80+ dense decode split kernel's arguments and launch (dense_decode_sm80.cu); the entry
// point (dense_decode.cu) fills them from core::DenseDecodeParams.
#pragma once

#include <cstdint>

#include "cuda/common/namespace.h"

FMLA_CUDA_NS_BEGIN

struct DenseDecodeArgs {
  int batch, q_len, num_heads_q, num_heads_kv;  // d_qk 576, d_v 512
  int page_block_size;
  bool fp16;                    // q, k_cache and out are fp16 (else bf16)
  float scale_log2;
  bool causal;
  const uint16_t* q;
  int64_t q_stride[3];          // elements: batch, token, head
  bool q_aligned;               // q and its strides are multiples of 16 bytes
  const uint16_t* k_cache;
  int64_t k_stride[3];          // elements: block, token, head
  bool k_aligned;               // k_cache and its strides are multiples of 16 bytes
  int64_t num_blocks;           // k_cache's blocks
  const int32_t* block_table;
  int64_t block_table_stride;
  int64_t max_blocks_per_seq;   // block_table's columns
  const int32_t* cache_seqlens;
  uint16_t* out;
  int64_t out_stride[3];
  bool out_aligned;             // out and its strides are multiples of 4 bytes
  float* lse;
  int64_t lse_stride[3];
  const int32_t* sched;         // num_parts records of 8 int32 (core::SchedRecord)
  int num_parts;
  const int32_t* num_splits;    // (batch + 1,)
  float* lse_accum;             // (slots, q_len, num_heads_q), log2 units
  float* o_accum;               // (slots, q_len, num_heads_q, 512)
  int64_t num_accum_slots;
};

// Runs every part of the schedule: grid (num_heads_kv * ceil(q_len * hpk / 16), num_parts),
// 128 threads, where hpk = num_heads_q / num_heads_kv. Throws flashmla::Error for more than
// 65535 parts or a failed launch.
void launch_dense_decode_sm80(const DenseDecodeArgs& a, void* stream);

FMLA_CUDA_NS_END
