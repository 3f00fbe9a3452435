// What the dense decode kernels that read the paged cache by TMA (dense_decode_sm90.cu,
// dense_decode_sm100.cu) share: the cache's tensor map, and bringing a tile of kTile tokens of one
// KV head into a stage of shared memory as 128-byte-swizzled slabs of kTile rows x 64 channels.
#pragma once

#include <cstdint>

#include "cuda/common/portable.h"
#include "cuda/common/tma.cuh"
#include "cuda/common/tma_map.h"
#include "cuda/common/wgmma.cuh"
#include "cuda/decode/dense_decode_piece.cuh"

FMLA_CUDA_NS_BEGIN

namespace dense_kv_tma {

inline constexpr int kDqk = 576, kSlabs = kDqk / 64, kChunks = kDqk / 8;

// The KV cache as the tensor map sees it: (channel, KV head, token in page, block), 576 x
// num_heads_kv x page_block_size x num_blocks, and a box of 64 channels x 1 head x R tokens x 1
// block with R = gcd(page_block_size, kTile): one box per slab and run of R tokens of a tile,
// which never crosses a page (tiles start on multiples of kTile, which divides the schedule
// block) and lands on a 1024-byte boundary (R a multiple of 8).
template <int kTile>
int rows_per_box(int page_block_size) {
  static_assert(kDenseSchedBlock % kTile == 0, "tiles start on multiples of the tile");
  int r = kTile;
  while (page_block_size % r != 0) r /= 2;
  return r;
}

// Encodes the map for boxes of `rows` tokens; false if the layout does not suit it (the caller
// then runs the SM80 kernel): page_block_size not a multiple of 8, k_cache or its strides not
// 16-byte aligned, no blocks or more than 2^31 - 1, or a map the driver refuses.
inline bool encode_kv_map(const DenseDecodeArgs& a, int rows, TmaMap* map) {
  const int page = a.page_block_size;
  if (page <= 0 || page % 8 != 0 || !a.k_aligned || a.num_blocks <= 0 ||
      a.num_blocks > INT32_MAX || a.num_heads_kv <= 0) {
    return false;
  }
  // (channel, KV head, token, block); a single head's stride is any valid one.
  const uint64_t dims[4] = {static_cast<uint64_t>(kDqk), static_cast<uint64_t>(a.num_heads_kv),
                            static_cast<uint64_t>(page), static_cast<uint64_t>(a.num_blocks)};
  const uint64_t strides[3] = {
      a.num_heads_kv == 1 ? uint64_t{2 * kDqk} : static_cast<uint64_t>(a.k_stride[2]) * 2,
      static_cast<uint64_t>(a.k_stride[1]) * 2, static_cast<uint64_t>(a.k_stride[0]) * 2};
  const uint32_t box[4] = {64, 1, static_cast<uint32_t>(rows), 1};
  return encode_tma_map_16bit(map, 4, a.k_cache, dims, strides, box).empty();
}

// Whether token t of request r is read (dense_decode_piece.cuh's token_block).
__device__ __forceinline__ bool token_valid(const DenseDecodeArgs& a, int r, int t, int t_end) {
  return token_block(a, r, t, t_end) >= 0;
}

// One warp: tokens t0..t0+kTile-1 of KV head g of request r into the stage at sk (kSlabs slabs
// of kTile x 128 bytes) by bulk tensor copies on bar: lane q copies run q (R = rows tokens, at
// most kTile / 8 runs) if it is read, i.e. starts before t_end in a block inside the cache; lane
// 0 arms bar with the bytes of the runs copied (none: the phase completes at its arrival). The
// rows of runs not copied keep what the stage held and are cleared after the wait
// (clear_row_unless: every token of such a run is invalid).
template <int kTile>
__device__ __forceinline__ void issue_kv_tile(const DenseDecodeArgs& a, const TmaMap& map,
                                              int rows, int r, int g, int t0, int t_end,
                                              unsigned char* sk, uint64_t* bar) {
  const int lane = lane_id(), t = t0 + lane * rows;
  const int blk = lane < kTile / rows ? static_cast<int>(token_block(a, r, t, t_end)) : -1;
  const unsigned copied = __ballot_sync(kFullMask, blk >= 0);
  if (lane == 0) {
    mbarrier_arrive_expect_tx(bar, static_cast<unsigned>(__popc(copied)) * kSlabs * rows * 128u);
  }
  __syncwarp();
  if (blk >= 0) {
    for (int s = 0; s < kSlabs; ++s) {
      tma_load_4d(sk + s * kTile * 128 + lane * rows * 128, &map, 64 * s, g,
                  t % a.page_block_size, blk, bar);
    }
  }
}

// After the tile's copies landed: threads of a CTA of kThreads = 4 kTile, four per token
// (threadIdx.x / 4), zero the token's row if it is not read (valid: token_valid, computed when
// the tile was issued), so that its P = 0 never meets a NaN of V.
template <int kTile>
__device__ __forceinline__ void clear_row_unless(bool valid, unsigned char* sk) {
  if (valid) return;
  const int j = static_cast<int>(threadIdx.x) / 4, quarter = static_cast<int>(threadIdx.x) % 4;
  for (int c = quarter; c < kChunks; c += 4) {
    *reinterpret_cast<uint4*>(sk + (c / 8) * kTile * 128 + swizzle128_offset(j, c % 8)) =
        uint4{0u, 0u, 0u, 0u};
  }
}

}  // namespace dense_kv_tma

FMLA_CUDA_NS_END
