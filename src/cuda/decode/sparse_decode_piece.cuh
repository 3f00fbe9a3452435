// What both sparse decode kernels (sparse_decode_sm80.cu, sparse_decode_sm90.cu) derive from the
// schedule for one request of a part, as cpu/decode/sparse_decode.cpp does: block k of a request
// is 64 columns of its main index list (the first max(ceil(t/64), 1) blocks) or of its extra
// list; a part covers blocks [blk0, blk1) of its first and last request and all of those
// between. Schedule records, num_splits and topk_length are device data, unchecked: a length is
// clamped to its index list, a piece to its request's blocks; a split slot outside the
// accumulators is flagged (slot_ok) and not written.
#pragma once

#include <cstdint>

#include "cuda/common/portable.h"
#include "cuda/decode/sparse_decode_sm80.h"

FMLA_CUDA_NS_BEGIN

inline constexpr int kSparseBlock = 64;  // columns of a schedule block

__device__ __forceinline__ int64_t pool_length(const SparseKvPoolArgs& pool, int r) {
  if (!pool.topk_length) return pool.topk;
  const int64_t t = pool.topk_length[r];
  return t < 0 ? 0 : (t > pool.topk ? pool.topk : t);
}

__device__ __forceinline__ int64_t main_blocks(const SparseDecodeArgs& a, int r) {
  const int64_t t = pool_length(a.main, r);
  return t > 0 ? (t + kSparseBlock - 1) / kSparseBlock : 1;
}

__device__ __forceinline__ int64_t num_blocks(const SparseDecodeArgs& a, int r) {
  const int64_t extra =
      a.has_extra ? (pool_length(a.extra, r) + kSparseBlock - 1) / kSparseBlock : 0;
  return main_blocks(a, r) + extra;
}

// The CTA's place in the grid: blockIdx.x is (query token, group of `rows` heads), head groups
// fastest so that the CTAs reading the same rows run side by side; blockIdx.y the schedule part.
struct SparseDecodeCta {
  int part, s, h0, nh;  // query token s, heads h0 .. h0 + nh - 1 (nh <= rows)
};
__device__ __forceinline__ SparseDecodeCta sparse_decode_cta(const SparseDecodeArgs& a, int rows) {
  const int groups = (a.num_heads_q + rows - 1) / rows;
  SparseDecodeCta c;
  c.part = static_cast<int>(blockIdx.y);
  c.s = static_cast<int>(blockIdx.x) / groups;
  c.h0 = static_cast<int>(blockIdx.x) % groups * rows;
  c.nh = a.num_heads_q - c.h0 < rows ? a.num_heads_q - c.h0 : rows;
  return c;
}

struct SparseDecodePiece {
  int64_t blk0, blk1, n_main;  // blocks [blk0, blk1) of the request; the first n_main are main
  bool split;                  // a piece of a split request: to the accumulators
  int64_t slot;                // its accumulator slot
  bool slot_ok;                // slot within the accumulators
};

// Request r of the part whose record is `rec` (8 int32, core::SchedRecord).
__device__ __forceinline__ SparseDecodePiece sparse_decode_piece(const SparseDecodeArgs& a,
                                                                 const int32_t* rec, int r) {
  const bool is_begin = r == rec[0], is_end = r == rec[1];
  const int64_t n_blk = num_blocks(a, r);
  SparseDecodePiece p;
  p.blk0 = is_begin ? (rec[2] < 0 ? 0 : (rec[2] > n_blk ? n_blk : rec[2])) : 0;
  p.blk1 = is_end ? (rec[3] < p.blk0 ? p.blk0 : (rec[3] > n_blk ? n_blk : rec[3])) : n_blk;
  p.n_main = main_blocks(a, r);
  p.split = is_begin ? rec[5] != 0 : (is_end && rec[6] != 0);
  p.slot = int64_t{a.num_splits[r]} + (is_begin ? rec[4] : 0);
  p.slot_ok = p.slot >= 0 && p.slot < a.num_accum_slots;
  return p;
}

// The slots of columns [c0, c0 + n) of block `blk` of request r, query token s, into s_slot
// (threads 0..n-1 write; -1 past the block's or the list's end, and for an index outside the
// cache). Returns the pool the block reads.
__device__ __forceinline__ const SparseKvPoolArgs& sparse_block_slots(
    const SparseDecodeArgs& a, const SparseDecodePiece& p, int r, int s, int64_t blk, int64_t c0,
    int n, int32_t* s_slot) {
  const bool in_main = blk < p.n_main;
  const SparseKvPoolArgs& pool = in_main ? a.main : a.extra;
  const int64_t b0 = (in_main ? blk : blk - p.n_main) * kSparseBlock;
  const int64_t len = pool_length(pool, r);
  const int64_t end = b0 + kSparseBlock < len ? b0 + kSparseBlock : len;
  const int tid = static_cast<int>(threadIdx.x);
  if (tid < n) {
    const int32_t* row = pool.indices + r * pool.indices_stride0 + s * pool.indices_stride1;
    const int64_t col = b0 + c0 + tid;
    const int32_t v = col < end ? row[col] : -1;
    s_slot[tid] = v < 0 || v >= pool.num_tokens ? -1 : v;  // outside the cache: invalid
  }
  return pool;
}

FMLA_CUDA_NS_END
