// Sparse MLA prefill kernel, SM80+ (mma.sync m16n8k16 bf16, fp32 accumulate). One CTA of 128
// threads (4 warps) per (query token, group of 16 heads) walks the token's index list in tiles
// of 32 columns, double-buffered: the KV rows of tile j+1 are gathered by index with cp.async
// (invalid or past-the-length columns zero-filled, never read, and masked to -inf) while tile j
// is computed. Per tile: S = Q K^T (warp w: tokens 8w..8w+7, all 16 heads, all d_qk channels),
// online softmax in log2 units across warps, P rounded to bf16, O += P V (warp w: channels
// 128w..128w+127). Epilogue as cpu/prefill/sparse_prefill.cpp: max_logits and lse in natural
// units, out scaled by 1/l and the sink; empty rows give out 0, max_logits -inf, lse +inf.
#include <cmath>

#include "cuda/common/mma_tile.cuh"
#include "cuda/common/portable.h"
#include "cuda/prefill/sparse_prefill_epilogue.cuh"
#include "cuda/prefill/sparse_prefill_sm80.h"

FMLA_CUDA_NS_BEGIN

namespace {

constexpr int kThreads = 128, kWarps = 4, kHeads = 16, kTile = 32, kStages = 2, kDv = 512;
constexpr int kPad = 8;              // bf16 per row of padding: conflict-free ldmatrix
constexpr int kLdp = kTile + kPad;   // row stride of P
constexpr int kLdo = kDv + kPad;     // row stride of the staged output
constexpr float kInf = INFINITY;

__host__ __device__ constexpr int row_stride(int d_qk) { return d_qk + kPad; }

// Shared memory: Q (16 rows), two KV stages (32 rows each; the first also stages the output),
// P (16 x 32 bf16), per-warp row maxima and sums, the stages' column validity.
__host__ __device__ constexpr int smem_bytes(int d_qk) {
  return (kHeads + kStages * kTile) * row_stride(d_qk) * 2 + kHeads * kLdp * 2 +
         2 * kWarps * kHeads * 4 + kStages * kTile * 4;
}
static_assert(smem_bytes(576) <= 99 * 1024, "fits the 99 KiB of sm_86 / sm_89 / sm_120");
static_assert(kHeads * kLdo <= kStages * kTile * row_stride(512), "output staging fits");

// Q rows h0.. of token `tok` into sq (rows past nh are zeros).
template <int kD>
__device__ __forceinline__ void load_q(const SparsePrefillKernelArgs& a, int64_t tok,
                                       int64_t h0, int nh, uint16_t* sq) {
  constexpr int kChunks = kD / 8, kLd = row_stride(kD);
  for (int it = static_cast<int>(threadIdx.x); it < kHeads * kChunks; it += kThreads) {
    const int row = it / kChunks, c = it % kChunks;
    const bool valid = row < nh;
    const uint16_t* src =
        valid ? a.q + tok * a.q_stride[0] + (h0 + row) * a.q_stride[1] + 8 * c : a.q;
    copy16(sq + row * kLd + 8 * c, src, valid, a.q_aligned);
  }
}

// The KV rows of columns [c0, c0 + 32) of index list `idx` (length `len`) into stage `sk`, and
// their validity into `valid`.
template <int kD>
__device__ __forceinline__ void load_tile(const SparsePrefillKernelArgs& a, const int32_t* idx,
                                          int64_t c0, int64_t len, uint16_t* sk, int* valid) {
  constexpr int kChunks = kD / 8, kLd = row_stride(kD);
  for (int it = static_cast<int>(threadIdx.x); it < kTile * kChunks; it += kThreads) {
    const int t = it / kChunks, c = it % kChunks;
    const int64_t col = c0 + t;
    const int32_t v = col < len ? idx[col] : -1;
    const bool ok = v >= 0 && v < a.kv_len;
    const uint16_t* src = ok ? a.kv + v * a.kv_stride + 8 * c : a.kv;
    copy16(sk + t * kLd + 8 * c, src, ok, a.kv_aligned);
    if (c == 0) valid[t] = ok ? 1 : 0;
  }
}

}  // namespace

template <int kD>
__global__ void __launch_bounds__(kThreads, 1)
    sparse_prefill_sm80(const SparsePrefillKernelArgs a, int64_t block0) {
  constexpr int kLd = row_stride(kD);
  unsigned char* smem = dynamic_smem();
  uint16_t* sq = reinterpret_cast<uint16_t*>(smem);
  uint16_t* skv = sq + kHeads * kLd;  // stage s at skv + s * kTile * kLd
  uint16_t* sp = skv + kStages * kTile * kLd;
  float* s_max = reinterpret_cast<float*>(sp + kHeads * kLdp);
  float* s_sum = s_max + kWarps * kHeads;
  int* s_valid = reinterpret_cast<int*>(s_sum + kWarps * kHeads);  // stage s at s * kTile

  const int warp = warp_id(), lane = lane_id();
  const int g = lane / 4, q4 = lane % 4;
  const int64_t groups = (a.num_heads_q + kHeads - 1) / kHeads;
  const int64_t block = block0 + static_cast<int64_t>(blockIdx.x);
  const int64_t tok = block / groups, h0 = (block % groups) * kHeads;
  const int nh = a.num_heads_q - h0 < kHeads ? static_cast<int>(a.num_heads_q - h0) : kHeads;

  const int32_t* idx = a.indices + tok * a.indices_stride;
  // topk_length is device data, unchecked: clamped to the index list.
  const int64_t len_given = a.topk_length ? a.topk_length[tok] : a.topk;
  const int64_t len = len_given < 0 ? 0 : (len_given > a.topk ? a.topk : len_given);
  const int64_t n_tiles = (len + kTile - 1) / kTile;

  float m[2] = {-kInf, -kInf}, l[2] = {0.0f, 0.0f};  // per row g, g + 8; m in log2 units
  float o[16][4];
  FMLA_UNROLL
  for (auto& t : o) t[0] = t[1] = t[2] = t[3] = 0.0f;

  if (n_tiles > 0) {
    load_q<kD>(a, tok, h0, nh, sq);
    load_tile<kD>(a, idx, 0, len, skv, s_valid);
    cp_async_commit();
  }
  for (int64_t j = 0; j < n_tiles; ++j) {
    const int st = static_cast<int>(j & 1);
    cp_async_wait<0>();  // tile j (and Q) landed
    // Tile j is visible to all, and every thread is done with tile j - 1 (its stage, P, the row
    // statistics): the next tile's gather into that stage overlaps this tile's compute.
    __syncthreads();
    if (j + 1 < n_tiles) {
      load_tile<kD>(a, idx, (j + 1) * kTile, len, skv + (st ^ 1) * kTile * kLd,
                    s_valid + (st ^ 1) * kTile);
      cp_async_commit();
    }
    const uint16_t* sk = skv + st * kTile * kLd;
    const int* valid = s_valid + st * kTile;
    // Tiles without a valid column change nothing: skipped (the same answer in every warp).
    if (__any_sync(kFullMask, valid[lane] != 0)) {
      // S = Q K^T for this warp's 8 tokens; two accumulators (even / odd 16-channel steps).
      const int tok0 = 8 * warp;
      float acc[2][4] = {};
      FMLA_UNROLL
      for (int kk = 0; kk < kD / 32; ++kk) {
        uint32_t kb[4], qa[4];
        ldmatrix<4, false>(kb, sk + (tok0 + lane % 8) * kLd + 32 * kk + (lane / 8) * 8);
        FMLA_UNROLL
        for (int h = 0; h < 2; ++h) {
          ldmatrix<4, false>(qa, sq + (lane % 16) * kLd + 32 * kk + 16 * h + (lane / 16) * 8);
          const uint32_t b[2] = {kb[2 * h], kb[2 * h + 1]};
          mma_m16n8k16_bf16(acc[h], qa, b, acc[h]);
        }
      }

      // Online softmax (log2 units); invalid columns are -inf, so p = 0 there.
      float s[4];
      FMLA_UNROLL
      for (int e = 0; e < 4; ++e) {
        s[e] = valid[tok0 + 2 * q4 + (e & 1)] ? (acc[0][e] + acc[1][e]) * a.scale_log2 : -kInf;
      }
      online_softmax_bf16(s, m, l, o, sp, kLdp, s_max, s_sum, warp, lane);

      // O += P V for this warp's 128 channels (V: the first 512 channels of the stage).
      pv_accumulate<false, kTile>(o, sp, kLdp, sk, kLd, warp, lane);
    }
  }
  __syncthreads();  // every read of the last tile's stage is done

  // Epilogue: rows g and g + 8 of the head group, staged as bf16 in the first KV stage.
  uint16_t* so = skv;
  FMLA_UNROLL
  for (int i = 0; i < 2; ++i) {
    const int hr = g + 8 * i;
    const float factor =
        sparse_prefill::finish_row(a, tok, h0, hr, nh, m[i], l[i], warp == 0 && q4 == 0);
    FMLA_UNROLL
    for (int nt = 0; nt < 16; ++nt) {
      *reinterpret_cast<uint32_t*>(so + hr * kLdo + 128 * warp + 8 * nt + 2 * q4) =
          pack_bf16x2(o[nt][2 * i] * factor, o[nt][2 * i + 1] * factor);
    }
  }
  __syncthreads();
  sparse_prefill::store_rows<kThreads>(a, so, kLdo, tok, h0, nh);
}

void launch_sparse_prefill_sm80(const SparsePrefillKernelArgs& a, void* stream) {
  sparse_prefill::launch_in_chunks(a, kHeads, [&](dim3 grid, int64_t b0) {
    if (a.d_qk == 576) {
      FMLA_LAUNCH(sparse_prefill_sm80<576>, grid, dim3(kThreads), smem_bytes(576), stream, a, b0);
    } else {
      FMLA_LAUNCH(sparse_prefill_sm80<512>, grid, dim3(kThreads), smem_bytes(512), stream, a, b0);
    }
  });
}

FMLA_CUDA_NS_END
