// The SM80+ sparse decode split kernel's arguments and launch (sparse_decode_sm80.cu); the entry
// point (sparse_decode.cu) fills them from core::SparseDecodeParams.
#pragma once

#include <cstdint>

#include "cuda/common/namespace.h"
#include "cuda/decode/sparse_kv_tile.cuh"

FMLA_CUDA_NS_BEGIN

struct SparseDecodeArgs {
  int batch, q_len, num_heads_q, d_qk;  // d_v is 512
  float scale_log2;
  const uint16_t* q;
  int64_t q_stride[3];
  bool q_aligned;              // q and its strides are multiples of 16 bytes
  int kv_kind;                 // SparseKvKind, the same for both pools
  bool kv_aligned;             // both pools' data and strides are multiples of 16 bytes
  SparseKvPoolArgs main, extra;
  bool has_extra;
  const float* attn_sink;      // (num_heads_q,) or null
  uint16_t* out;
  int64_t out_stride[3];
  float* lse;
  int64_t lse_stride[3];
  const int32_t* sched;        // num_parts records of 8 int32 (core::SchedRecord)
  int num_parts;
  const int32_t* num_splits;
  float* lse_accum;
  float* o_accum;
  int64_t num_accum_slots;
};

// Runs every part of the schedule: grid (q_len * ceil(num_heads_q / 16), num_parts), 128
// threads. Throws flashmla::Error for more than 65535 parts or a failed launch.
void launch_sparse_decode_sm80(const SparseDecodeArgs& a, void* stream);

FMLA_CUDA_NS_END
