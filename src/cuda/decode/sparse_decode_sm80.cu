// Sparse MLA decode split kernel, SM80+ (mma.sync m16n8k16 bf16, fp32 accumulate). One CTA of
// 128 threads (4 warps) per (schedule part, query token, group of 16 heads) walks its part's
// (request, block) range as cpu/decode/sparse_decode.cpp does: block k of a request is 64
// columns of its main index list (the first max(ceil(t/64), 1) blocks) or of its extra list.
// Per half block (a tile of 32 tokens): slots -> shared memory, KV rows gathered and
// dequantised into a bf16 tile, S = Q K^T (warp w: tokens 8w..8w+7, all 16 heads), online
// softmax in log2 units across warps, O += P V (warp w: channels 128w..128w+127). Shared memory
// ~57 KiB (d_qk 576), so two CTAs fit an A100 SM and three a Hopper one. Unsplit requests are
// finalised with the sink; split pieces go to the accumulators for the combine.
#include <cmath>

#include "cuda/common/mma_tile.cuh"
#include "cuda/common/portable.h"
#include "cuda/decode/sparse_decode_piece.cuh"
#include "cuda/decode/sparse_decode_sm80.h"
#include "cuda/decode/sparse_kv_tile.cuh"
#include "cuda/decode/decode_grid.h"
#include "flashmla/error.h"

FMLA_CUDA_NS_BEGIN

namespace {

constexpr int kThreads = 128, kWarps = 4, kHeads = 16, kDv = 512;
constexpr int kTile = 32;   // tokens per shared-memory tile (half a block)
constexpr int kPad = 8;              // bf16 per row of padding: conflict-free ldmatrix
constexpr int kLdp = kTile + kPad;   // row stride of P
constexpr float kInf = INFINITY;

__host__ __device__ constexpr int row_stride(int d_qk) { return d_qk + kPad; }

// Shared memory: Q (16 rows), K/V tile (32 rows), P (16 x 32 bf16), per-warp row maxima and
// sums, the tile's slots.
__host__ __device__ constexpr int smem_bytes(int d_qk) {
  return (kHeads + kTile) * row_stride(d_qk) * 2 + kHeads * kLdp * 2 +
         2 * kWarps * kHeads * 4 + kTile * 4;
}

// Q rows h0.. of (r, s) into sq (rows past num_heads_q are zeros).
__device__ __forceinline__ void load_q(const SparseDecodeArgs& a, int r, int s, int h0, int nh,
                                       uint16_t* sq, int ldq) {
  const int chunks = a.d_qk / 8;
  for (int it = static_cast<int>(threadIdx.x); it < kHeads * chunks; it += kThreads) {
    const int row = it / chunks, c = it % chunks;
    Bytes16 v = {{0u, 0u, 0u, 0u}};
    if (row < nh) {
      const uint16_t* src = a.q + r * a.q_stride[0] + s * a.q_stride[1] +
                            (h0 + row) * a.q_stride[2] + 8 * c;
      v = load_bytes16(reinterpret_cast<const uint8_t*>(src), a.q_aligned);
    }
    *reinterpret_cast<Bytes16*>(sq + row * ldq + 8 * c) = v;
  }
}

}  // namespace

__global__ void __launch_bounds__(kThreads, 1) sparse_decode_sm80(const SparseDecodeArgs a) {
  unsigned char* smem = dynamic_smem();
  const int d_qk = a.d_qk, ldk = row_stride(d_qk);
  uint16_t* sq = reinterpret_cast<uint16_t*>(smem);
  uint16_t* sk = sq + kHeads * ldk;
  uint16_t* sp = sk + kTile * ldk;
  float* s_max = reinterpret_cast<float*>(sp + kHeads * kLdp);
  float* s_sum = s_max + kWarps * kHeads;
  int32_t* s_slot = reinterpret_cast<int32_t*>(s_sum + kWarps * kHeads);

  const int warp = warp_id(), lane = lane_id();
  const int g = lane / 4, q4 = lane % 4;
  const SparseDecodeCta cta = sparse_decode_cta(a, kHeads);
  const int s = cta.s, h0 = cta.h0, nh = cta.nh;
  const int32_t* rec = a.sched + 8 * cta.part;
  const int begin_req = rec[0], end_req = rec[1];

  for (int r = begin_req < 0 ? 0 : begin_req; r <= end_req && r < a.batch; ++r) {
    const SparseDecodePiece piece = sparse_decode_piece(a, rec, r);
    const bool split = piece.split, slot_ok = piece.slot_ok;
    const int64_t slot = piece.slot;

    load_q(a, r, s, h0, nh, sq, ldk);
    float m[2] = {-kInf, -kInf}, l[2] = {0.0f, 0.0f};
    float o[16][4];
    FMLA_UNROLL
    for (auto& t : o) t[0] = t[1] = t[2] = t[3] = 0.0f;

    // Each 64-column schedule block is processed as two 32-token tiles.
    for (int64_t tile = 2 * piece.blk0; tile < 2 * piece.blk1; ++tile) {
      __syncthreads();  // the previous tile's readers are done (and Q is stored)
      const SparseKvPoolArgs& pool =
          sparse_block_slots(a, piece, r, s, tile / 2, (tile % 2) * kTile, kTile, s_slot);
      __syncthreads();
      if (!__any_sync(kFullMask, s_slot[lane] >= 0)) continue;  // the CPU's n == 0
      gather_kv_tile(pool, a.kv_kind, a.kv_aligned, s_slot, kTile, sk, ldk, d_qk);
      __syncthreads();

      // S = Q K^T for this warp's 8 tokens (one n8 tile), 32 channels per ldmatrix of K.
      float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      const int tok0 = 8 * warp;
      const uint16_t* k_row = sk + (tok0 + lane % 8) * ldk + (lane / 8) * 8;
      const uint16_t* q_row = sq + (lane % 16) * ldk + (lane / 16) * 8;
      FMLA_UNROLL
      for (int kk = 0; kk < d_qk / 32; ++kk) {
        uint32_t qa0[4], qa1[4], kb[4];
        ldmatrix<4, false>(qa0, q_row + 32 * kk);
        ldmatrix<4, false>(qa1, q_row + 32 * kk + 16);
        ldmatrix<4, false>(kb, k_row + 32 * kk);
        const uint32_t kb0[2] = {kb[0], kb[1]}, kb1[2] = {kb[2], kb[3]};
        mma_m16n8k16_bf16(acc, qa0, kb0, acc);
        mma_m16n8k16_bf16(acc, qa1, kb1, acc);
      }

      // Online softmax (log2 units); invalid columns are -inf, so p = 0 there.
      FMLA_UNROLL
      for (int j = 0; j < 4; ++j) {
        acc[j] = s_slot[tok0 + 2 * q4 + (j & 1)] >= 0 ? acc[j] * a.scale_log2 : -kInf;
      }
      online_softmax_bf16(acc, m, l, o, sp, kLdp, s_max, s_sum, warp, lane);

      // O += P V for this warp's 128 channels (V: the first 512 channels of the tile).
      pv_accumulate<false, kTile>(o, sp, kLdp, sk, ldk, warp, lane);
    }

    // Finalise this piece: rows g and g + 8 of the head group.
    FMLA_UNROLL
    for (int i = 0; i < 2; ++i) {
      const int hr = g + 8 * i;
      if (hr >= nh) continue;
      const int h = h0 + hr;
      const bool empty = !(l[i] > 0.0f);
      if (split) {  // the combine applies the sink
        if (!slot_ok) continue;
        const int64_t arow = (slot * a.q_len + s) * a.num_heads_q + h;
        const float factor = empty ? 0.0f : 1.0f / l[i];
        float* dst = a.o_accum + arow * kDv + 128 * warp + 2 * q4;
        FMLA_UNROLL
        for (int nt = 0; nt < 16; ++nt) {
          dst[8 * nt] = o[nt][2 * i] * factor;
          dst[8 * nt + 1] = o[nt][2 * i + 1] * factor;
        }
        if (warp == 0 && q4 == 0) a.lse_accum[arow] = empty ? -kInf : m[i] + log2f(l[i]);
        continue;
      }
      float lse = kInf, factor = 0.0f;  // empty row: out 0, lse +inf
      if (!empty) {
        lse = (m[i] + log2f(l[i])) * static_cast<float>(M_LN2);
        factor = 1.0f / l[i];
        if (a.attn_sink) factor /= 1.0f + expf(a.attn_sink[h] - lse);
      }
      uint16_t* dst = a.out + r * a.out_stride[0] + s * a.out_stride[1] + h * a.out_stride[2] +
                      128 * warp + 2 * q4;
      FMLA_UNROLL
      for (int nt = 0; nt < 16; ++nt) {
        dst[8 * nt] = static_cast<uint16_t>(float_to_bf16_bits(o[nt][2 * i] * factor));
        dst[8 * nt + 1] = static_cast<uint16_t>(float_to_bf16_bits(o[nt][2 * i + 1] * factor));
      }
      if (warp == 0 && q4 == 0) {
        a.lse[r * a.lse_stride[0] + h * a.lse_stride[1] + s * a.lse_stride[2]] = lse;
      }
    }
  }
}

void launch_sparse_decode_sm80(const SparseDecodeArgs& a, void* stream) {
  if (a.num_parts <= 0) return;
  const int64_t groups = (a.num_heads_q + kHeads - 1) / kHeads;
  check_decode_grid(a.num_parts, int64_t{a.q_len} * groups,
                    "(query token, 16-head group) pairs");
  const dim3 grid(static_cast<unsigned>(a.q_len * groups), static_cast<unsigned>(a.num_parts));
  // One kernel for both widths: its limit is raised to the larger size once for all launches.
  FMLA_LAUNCH_SMEM_CAP(sparse_decode_sm80, grid, dim3(kThreads), smem_bytes(a.d_qk),
                       smem_bytes(576), stream, a);
}

FMLA_CUDA_NS_END
