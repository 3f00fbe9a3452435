// Sparse MLA prefill kernel, SM90 (Hopper: wgmma.mma_async bf16 -> fp32 from shared memory).
// One CTA of 256 threads = two warpgroups per (query token, group of 64 heads): the 64 heads are
// the M = 64 rows of every wgmma, so a token's selected KV rows are gathered once per 64 heads
// (the SM80 kernel: once per 16). The token's index list is walked in tiles of 64 columns,
// double-buffered: the rows of tile j+1 are gathered by index with cp.async (invalid or
// past-the-length columns zero-filled, never read, masked to -inf) while tile j is computed.
// Per tile: S = Q K^T, online softmax, O += P V as common/wgmma_attention.cuh.
// Epilogue as the SM80 kernel and cpu/prefill/sparse_prefill.cpp: max_logits and lse in natural
// units, out scaled by 1/l and the sink; empty rows give out 0, max_logits -inf, lse +inf.
// Not yet: TMA (the rows are gathered by index, which Hopper's TMA cannot do per row), producer
// warps with setmaxnreg, overlap of softmax with the next tile's wgmma.
#include <cmath>

#include "cuda/common/mma_tile.cuh"
#include "cuda/common/portable.h"
#include "cuda/common/wgmma.cuh"
#include "cuda/common/wgmma_attention.cuh"
#include "cuda/prefill/sparse_prefill_epilogue.cuh"
#include "cuda/prefill/sparse_prefill_sm90.h"

FMLA_CUDA_NS_BEGIN

namespace {

using namespace wgmma_attention;
constexpr int kStages = 2;

__host__ __device__ constexpr int slabs(int d_qk) { return d_qk / 64; }

// Shared memory from a 1024-byte aligned base: Q (64 heads), two KV stages (64 tokens each; both
// also stage the output), P (64 x 64), the two warpgroups' row maxima and sums, the stages'
// column validity; plus 1 KiB to align the base.
__host__ __device__ constexpr int kv_offset(int d, int stage) {
  return (1 + stage) * slabs(d) * kSlab;  // Q at 0
}
__host__ __device__ constexpr int p_offset(int d) { return kv_offset(d, kStages); }
__host__ __device__ constexpr int stats_offset(int d) { return p_offset(d) + kSlab; }
__host__ __device__ constexpr int smem_bytes(int d) {
  return stats_offset(d) + (2 * 2 * kRows + kStages * kTile) * 4 + 1024;
}
static_assert(smem_bytes(576) <= 227 * 1024, "fits the 227 KiB per block of sm_90");

#if defined(FMLA_SM90_BODY)
constexpr int kLdo = kDv + 8;  // row stride (bf16) of the staged output
constexpr float kInf = INFINITY;
static_assert(kRows * kLdo * 2 <= kStages * slabs(512) * kSlab, "output staging fits");

template <int kD>
__device__ __forceinline__ void load_q(const SparsePrefillKernelArgs& a, int64_t tok,
                                       int64_t h0, int nh, unsigned char* sq) {
  constexpr int kChunks = kD / 8;
  for (int it = static_cast<int>(threadIdx.x); it < kRows * kChunks; it += kThreads) {
    const int row = it / kChunks, c = it % kChunks;
    const bool valid = row < nh;
    const uint16_t* src =
        valid ? a.q + tok * a.q_stride[0] + (h0 + row) * a.q_stride[1] + 8 * c : a.q;
    copy16(slab_chunk(sq, row, c), src, valid, a.q_aligned);
  }
}

template <int kD>
__device__ __forceinline__ void load_tile(const SparsePrefillKernelArgs& a, const int32_t* idx,
                                          int64_t c0, int64_t len, unsigned char* sk,
                                          int* valid) {
  constexpr int kChunks = kD / 8;
  for (int it = static_cast<int>(threadIdx.x); it < kTile * kChunks; it += kThreads) {
    const int t = it / kChunks, c = it % kChunks;
    const int64_t col = c0 + t;
    const int32_t v = col < len ? idx[col] : -1;
    const bool ok = v >= 0 && v < a.kv_len;
    const uint16_t* src = ok ? a.kv + v * a.kv_stride + 8 * c : a.kv;
    copy16(slab_chunk(sk, t, c), src, ok, a.kv_aligned);
    if (c == 0) valid[t] = ok ? 1 : 0;
  }
}
#endif  // FMLA_SM90_BODY

}  // namespace

template <int kD>
__global__ void __launch_bounds__(kThreads, 1)
    sparse_prefill_sm90(const SparsePrefillKernelArgs a, int64_t block0) {
#if defined(FMLA_SM90_BODY)
  unsigned char* smem = aligned_smem();
  unsigned char* sq = smem;
  unsigned char* sp = smem + p_offset(kD);
  float* s_max = reinterpret_cast<float*>(smem + stats_offset(kD));  // [warpgroup][row]
  float* s_sum = s_max + 2 * kRows;
  int* s_valid = reinterpret_cast<int*>(s_sum + 2 * kRows);  // stage s at s * kTile
  const uint32_t q_addr = smem_address(sq);

  const int lane = lane_id();
  const Place pl = place();
  const int64_t groups = (a.num_heads_q + kRows - 1) / kRows;
  const int64_t block = block0 + static_cast<int64_t>(blockIdx.x);
  const int64_t tok = block / groups, h0 = (block % groups) * kRows;
  const int nh = a.num_heads_q - h0 < kRows ? static_cast<int>(a.num_heads_q - h0) : kRows;

  const int32_t* idx = a.indices + tok * a.indices_stride;
  // topk_length is device data, unchecked: clamped to the index list.
  const int64_t len_given = a.topk_length ? a.topk_length[tok] : a.topk;
  const int64_t len = len_given < 0 ? 0 : (len_given > a.topk ? a.topk : len_given);
  const int64_t n_tiles = (len + kTile - 1) / kTile;

  float m[2] = {-kInf, -kInf}, l[2] = {0.0f, 0.0f};  // rows[0], rows[1]; m in log2 units
  float o[128];  // O rows x channels 256 wg.., wgmma m64n256 accumulator layout
  FMLA_UNROLL
  for (auto& t : o) t = 0.0f;

  if (n_tiles > 0) {
    load_q<kD>(a, tok, h0, nh, sq);
    load_tile<kD>(a, idx, 0, len, smem + kv_offset(kD, 0), s_valid);
    cp_async_commit();
  }
  for (int64_t j = 0; j < n_tiles; ++j) {
    const int st = static_cast<int>(j & 1);
    cp_async_wait<0>();   // tile j (and Q) landed
    fence_proxy_async();  // ... and is visible to wgmma (the async proxy)
    // Tile j is visible to all, and every thread is done with tile j - 1 (its stage, P, the row
    // statistics; its wgmma waited for): the next gather overlaps this tile's compute.
    __syncthreads();
    if (j + 1 < n_tiles) {
      load_tile<kD>(a, idx, (j + 1) * kTile, len, smem + kv_offset(kD, st ^ 1),
                    s_valid + (st ^ 1) * kTile);
      cp_async_commit();
    }
    const uint32_t kv_addr = smem_address(smem + kv_offset(kD, st));
    const int* valid = s_valid + st * kTile;
    // Tiles without a valid column change nothing: skipped (the same answer in every warp).
    if (!__any_sync(kFullMask, valid[lane] | valid[lane + 32])) continue;

    float s[16];
    scores<kD>(s, q_addr, kv_addr, pl);
    FMLA_UNROLL
    for (int i = 0; i < 16; ++i) s[i] = valid[s_column(pl, i)] ? s[i] * a.scale_log2 : -kInf;
    softmax_pv(s, m, l, o, sp, kv_addr, s_max, s_sum, pl);
  }
  __syncthreads();  // every read of the last tile's stage is done

  // Epilogue: this thread's rows, staged as bf16 over the two KV stages.
  uint16_t* so = reinterpret_cast<uint16_t*>(smem + kv_offset(kD, 0));
  FMLA_UNROLL
  for (int h = 0; h < 2; ++h) {
    const int hr = pl.rows[h];
    const float factor =
        sparse_prefill::finish_row(a, tok, h0, hr, nh, m[h], l[h], pl.wg == 0 && pl.q4 == 0);
    FMLA_UNROLL
    for (int nt = 0; nt < 32; ++nt) {
      *reinterpret_cast<uint32_t*>(so + hr * kLdo + 256 * pl.wg + 8 * nt + 2 * pl.q4) =
          pack_bf16x2(o[4 * nt + 2 * h] * factor, o[4 * nt + 2 * h + 1] * factor);
    }
  }
  __syncthreads();
  sparse_prefill::store_rows<kThreads>(a, so, kLdo, tok, h0, nh);
#else
  (void)a, (void)block0;  // not an sm_90a target: never launched there (see wgmma.cuh)
#endif
}

void launch_sparse_prefill_sm90(const SparsePrefillKernelArgs& a, void* stream) {
  sparse_prefill::launch_in_chunks(a, kRows, [&](dim3 grid, int64_t b0) {
    if (a.d_qk == 576) {
      FMLA_LAUNCH(sparse_prefill_sm90<576>, grid, dim3(kThreads), smem_bytes(576), stream, a, b0);
    } else {
      FMLA_LAUNCH(sparse_prefill_sm90<512>, grid, dim3(kThreads), smem_bytes(512), stream, a, b0);
    }
  });
}

FMLA_CUDA_NS_END
