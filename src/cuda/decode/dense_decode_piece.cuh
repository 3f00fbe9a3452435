// What both dense decode kernels (dense_decode_sm80.cu, dense_decode_sm90.cu) derive from the grid
// and the schedule, as cpu/decode/dense_decode.cpp does: the CTA's KV head and row tile, the
// query row a kernel row stands for, and for each request of a part its tokens, split and
// accumulator slot. Lengths, schedule records and num_splits are device data that no host check
// has seen: each is clamped to what the tensors hold (a length to the block table's reach, a
// piece to its request, a split slot to the accumulators), so a corrupt value never leads
// outside them.
#pragma once

#include <cstdint>

#include "cuda/common/portable.h"
#include "cuda/decode/dense_decode_sm80.h"

FMLA_CUDA_NS_BEGIN

inline constexpr int kDenseSchedBlock = 64;  // tokens per block of the split-KV schedule

__device__ __forceinline__ int64_t clamp64(int64_t x, int64_t lo, int64_t hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

// blockIdx.x: (KV head g, tile of `rows` kernel rows from row0), row tiles fastest so that the
// CTAs reading the same KV tiles run side by side; blockIdx.y: the schedule part (record rec).
// Row i of a KV head is query token i / hpk, head g * hpk + i % hpk.
struct DenseDecodeCta {
  int hpk, rows_per_kv, g, row0;
  const int32_t* rec;
};
__device__ __forceinline__ DenseDecodeCta dense_decode_cta(const DenseDecodeArgs& a, int rows) {
  DenseDecodeCta c;
  c.hpk = a.num_heads_q / a.num_heads_kv;
  c.rows_per_kv = a.q_len * c.hpk;
  const int row_tiles = (c.rows_per_kv + rows - 1) / rows;
  c.g = static_cast<int>(blockIdx.x) / row_tiles;
  c.row0 = (static_cast<int>(blockIdx.x) % row_tiles) * rows;
  c.rec = a.sched + 8 * static_cast<int>(blockIdx.y);
  return c;
}

// Channel 8 c of row i of KV head g of request r in q (i < rows_per_kv; hpk query heads per KV
// head, computed once by the caller).
__device__ __forceinline__ const uint16_t* q_row_chunk(const DenseDecodeArgs& a, int hpk, int r,
                                                       int g, int i, int c) {
  return a.q + r * a.q_stride[0] + (i / hpk) * a.q_stride[1] + (g * hpk + i % hpk) * a.q_stride[2] +
         8 * c;
}

struct DenseDecodePiece {
  int seqlen;          // the request's length, clamped to the block table's reach
  int tok0, tok1;      // the piece's tokens [tok0, tok1)
  bool split;          // a piece of a split request: to the accumulators
  int64_t slot;        // its accumulator slot
  bool slot_ok;        // slot within the accumulators
};

// Request r of the part whose record is `rec` (8 int32, core::SchedRecord).
__device__ __forceinline__ DenseDecodePiece dense_decode_piece(const DenseDecodeArgs& a,
                                                               const int32_t* rec, int r) {
  const int64_t reach = int64_t{a.max_blocks_per_seq} * a.page_block_size;
  DenseDecodePiece p;
  p.seqlen = static_cast<int>(clamp64(a.cache_seqlens[r], 0, reach));
  const bool is_begin = r == rec[0], is_end = r == rec[1];
  const int64_t blk0 = is_begin ? rec[2] : 0;
  const int64_t blk1 =
      is_end ? rec[3] : (p.seqlen > 0 ? (p.seqlen - 1) / kDenseSchedBlock : 0) + 1;
  p.split = is_begin ? rec[5] != 0 : (is_end && rec[6] != 0);
  p.slot = int64_t{a.num_splits[r]} + (is_begin ? rec[4] : 0);
  p.slot_ok = p.slot >= 0 && p.slot < a.num_accum_slots;
  p.tok0 = static_cast<int>(clamp64(blk0 * kDenseSchedBlock, 0, p.seqlen));
  p.tok1 = static_cast<int>(clamp64(blk1 * kDenseSchedBlock, p.tok0, p.seqlen));
  return p;
}

// The cache block of token t of request r, or -1 if the token is not read: t >= t_end (the
// piece's end, within the block table's reach) or a block id outside the cache (the table is
// device data, unchecked here; such a token is invalid like one past the length).
__device__ __forceinline__ int64_t token_block(const DenseDecodeArgs& a, int r, int t, int t_end) {
  if (t >= t_end) return -1;
  const int64_t blk = a.block_table[r * a.block_table_stride + t / a.page_block_size];
  return blk >= 0 && blk < a.num_blocks ? blk : -1;
}

FMLA_CUDA_NS_END
