// Sparse MLA decode split kernel, SM90 (Hopper: wgmma.mma_async bf16 -> fp32 from shared memory).
// One CTA of 256 threads = two warpgroups per (schedule part, query token, group of 64 heads)
// walks its part's (request, block) range as the SM80 kernel does (sparse_decode_piece.cuh), one
// 64-column schedule block per tile: the slots go to shared memory, the rows are gathered and
// dequantised (FP8 V32 / MODEL1, or copied from a bf16 pool) by all 256 threads into
// 128-byte-swizzled slabs - once per 64 heads (the SM80 kernel: per 16) - then S = Q K^T, online
// softmax, O += P V as common/wgmma_attention.cuh. Unsplit requests are finalised with the sink;
// split pieces go to the accumulators for the combine.
// With a 16-byte aligned pool, the next tile's raw token bytes are copied by cp.async into a
// staging buffer while this tile's wgmma runs, and dequantised from shared memory; the
// dequantisation itself still runs between the products (overlapping it too needs producer
// warps). Not yet: a 128-head CTA.
#include <cmath>

#include "cuda/common/portable.h"
#include "cuda/common/wgmma.cuh"
#include "cuda/common/wgmma_attention.cuh"
#include "cuda/decode/sparse_decode_piece.cuh"
#include "cuda/decode/sparse_decode_sm90.h"
#include "cuda/decode/sparse_kv_tile.cuh"
#include "cuda/decode/decode_grid.h"
#include "flashmla/error.h"

FMLA_CUDA_NS_BEGIN

namespace {

using namespace wgmma_attention;

__host__ __device__ constexpr int slabs(int d_qk) { return d_qk / 64; }

// Shared memory from a 1024-byte aligned base: Q (64 heads), the KV tile (64 tokens), P, the two
// warpgroups' row maxima and sums, the slots of this tile and the next, the next tile's raw
// token bytes (staging); plus 1 KiB to align the base.
__host__ __device__ constexpr int p_offset(int d) { return 2 * slabs(d) * kSlab; }  // Q, KV first
__host__ __device__ constexpr int stats_offset(int d) { return p_offset(d) + kSlab; }
__host__ __device__ constexpr int stage_offset(int d) {
  return stats_offset(d) + (2 * 2 * kRows + 2 * kTile) * 4;
}
__host__ __device__ constexpr int smem_bytes(int d) {
  return stage_offset(d) + kTile * max_stage_stride(d) + 1024;
}
static_assert(smem_bytes(576) <= 227 * 1024, "fits the 227 KiB per block of sm_90");
static_assert(stage_offset(512) % 16 == 0 && stage_offset(576) % 16 == 0, "cp.async alignment");

#if defined(FMLA_SM90_BODY)
constexpr float kInf = INFINITY;
__device__ constexpr int kv_offset(int d) { return slabs(d) * kSlab; }

// Q rows h0.. of (r, s) into the Q slabs (rows past num_heads_q are zeros).
template <int kD>
__device__ __forceinline__ void load_q(const SparseDecodeArgs& a, int r, int s, int h0, int nh,
                                       unsigned char* sq) {
  constexpr int kChunks = kD / 8;
  for (int it = static_cast<int>(threadIdx.x); it < kRows * kChunks; it += kThreads) {
    const int row = it / kChunks, c = it % kChunks;
    Bytes16 v = {{0u, 0u, 0u, 0u}};
    if (row < nh) {
      const uint16_t* src = a.q + r * a.q_stride[0] + s * a.q_stride[1] +
                            (h0 + row) * a.q_stride[2] + 8 * c;
      v = load_bytes16(reinterpret_cast<const uint8_t*>(src), a.q_aligned);
    }
    *reinterpret_cast<Bytes16*>(slab_chunk(sq, row, c)) = v;
  }
}
#endif  // FMLA_SM90_BODY

}  // namespace

template <int kD>
__global__ void __launch_bounds__(kThreads, 1) sparse_decode_sm90(const SparseDecodeArgs a) {
#if defined(FMLA_SM90_BODY)
  unsigned char* smem = aligned_smem();
  unsigned char* sq = smem;
  unsigned char* skv = smem + kv_offset(kD);
  unsigned char* sp = smem + p_offset(kD);
  float* s_max = reinterpret_cast<float*>(smem + stats_offset(kD));  // [warpgroup][row]
  float* s_sum = s_max + 2 * kRows;
  int32_t* s_slots = reinterpret_cast<int32_t*>(s_sum + 2 * kRows);  // [tile parity][column]
  uint8_t* stage = smem + stage_offset(kD);
  // Aligned pools: each tile's token bytes are copied (cp.async) into `stage` while the tile
  // before it is computed, then dequantised from there. Unaligned ones: gathered in place.
  const bool staged = a.kv_aligned;
  const uint32_t q_addr = smem_address(sq), kv_addr = smem_address(skv);

  const int lane = lane_id();
  const Place pl = place();
  const SparseDecodeCta cta = sparse_decode_cta(a, kRows);
  const int s = cta.s, h0 = cta.h0, nh = cta.nh;
  const int32_t* rec = a.sched + 8 * cta.part;
  const int begin_req = rec[0], end_req = rec[1];

  for (int r = begin_req < 0 ? 0 : begin_req; r <= end_req && r < a.batch; ++r) {
    const SparseDecodePiece piece = sparse_decode_piece(a, rec, r);
    // Every read of the previous request's Q (its scores) ended at a barrier of its last tile.
    load_q<kD>(a, r, s, h0, nh, sq);
    float m[2] = {-kInf, -kInf}, l[2] = {0.0f, 0.0f};  // rows[0], rows[1]; m in log2 units
    float o[128];  // O rows x channels 256 wg.., wgmma m64n256 accumulator layout
    FMLA_UNROLL
    for (auto& t : o) t = 0.0f;

    if (staged && piece.blk0 < piece.blk1) {  // the first tile's copy
      __syncthreads();  // the previous piece's readers of the slots and the staging are done
      const SparseKvPoolArgs& pool =
          sparse_block_slots(a, piece, r, s, piece.blk0, 0, kTile, s_slots);
      __syncthreads();
      stage_kv_tile(pool, a.kv_kind, s_slots, kTile, stage, kD);
      cp_async_commit();
    }
    for (int64_t blk = piece.blk0; blk < piece.blk1; ++blk) {
      int32_t* s_slot = s_slots + kTile * ((blk - piece.blk0) & 1);
      if (staged) cp_async_wait<0>();  // this thread's copies of this tile
      __syncthreads();  // the previous tile's readers are done (staged: everyone's copies landed)
      const SparseKvPoolArgs* pool = &a.main;
      if (!staged) {
        pool = &sparse_block_slots(a, piece, r, s, blk, 0, kTile, s_slot);
        __syncthreads();
      }
      // Blocks without a valid slot change nothing (the CPU's n == 0): the same answer in
      // every warp.
      const bool any = __any_sync(kFullMask, s_slot[lane] >= 0 || s_slot[lane + 32] >= 0);
      if (any) {
        const auto chunk = [=](int t, int c8) { return slab_chunk(skv, t, c8); };
        if (staged) {
          dequant_kv_tile(StagedTokens{stage, stage_stride(a.kv_kind, kD)}, a.kv_kind, true,
                          s_slot, kTile, chunk, kD);
        } else {
          gather_kv_tile(*pool, a.kv_kind, a.kv_aligned, s_slot, kTile, chunk, kD);
        }
        fence_proxy_async();  // Q and the tile, for the wgmma
      }
      if (staged && blk + 1 < piece.blk1) {  // the next tile's copy, under this tile's wgmma
        int32_t* next = s_slots + kTile * ((blk + 1 - piece.blk0) & 1);
        const SparseKvPoolArgs& next_pool =
            sparse_block_slots(a, piece, r, s, blk + 1, 0, kTile, next);
        __syncthreads();  // its slots; and every read of the staging above is done
        stage_kv_tile(next_pool, a.kv_kind, next, kTile, stage, kD);
        cp_async_commit();
      } else {
        __syncthreads();
      }
      if (!any) continue;

      float sc[16];
      scores<kD>(sc, q_addr, kv_addr, pl);
      FMLA_UNROLL
      for (int i = 0; i < 16; ++i) {
        sc[i] = s_slot[s_column(pl, i)] >= 0 ? sc[i] * a.scale_log2 : -kInf;
      }
      softmax_pv(sc, m, l, o, sp, kv_addr, s_max, s_sum, pl);
    }

    // Finalise this piece: this thread's rows, channels 256 wg + 8 nt + 2 q4 + {0, 1}.
    FMLA_UNROLL
    for (int h = 0; h < 2; ++h) {
      const int hr = pl.rows[h];
      if (hr >= nh) continue;
      const int head = h0 + hr;
      const bool empty = !(l[h] > 0.0f);
      if (piece.split) {  // the combine applies the sink
        if (!piece.slot_ok) continue;
        const int64_t arow = (piece.slot * a.q_len + s) * a.num_heads_q + head;
        const float factor = empty ? 0.0f : 1.0f / l[h];
        float* dst = a.o_accum + arow * kDv + 256 * pl.wg + 2 * pl.q4;
        FMLA_UNROLL
        for (int nt = 0; nt < 32; ++nt) {
          dst[8 * nt] = o[4 * nt + 2 * h] * factor;
          dst[8 * nt + 1] = o[4 * nt + 2 * h + 1] * factor;
        }
        if (pl.wg == 0 && pl.q4 == 0) a.lse_accum[arow] = empty ? -kInf : m[h] + log2f(l[h]);
        continue;
      }
      float lse = kInf, factor = 0.0f;  // empty row: out 0, lse +inf
      if (!empty) {
        lse = (m[h] + log2f(l[h])) * static_cast<float>(M_LN2);
        factor = 1.0f / l[h];
        if (a.attn_sink) factor /= 1.0f + expf(a.attn_sink[head] - lse);
      }
      uint16_t* dst = a.out + r * a.out_stride[0] + s * a.out_stride[1] +
                      head * a.out_stride[2] + 256 * pl.wg + 2 * pl.q4;
      FMLA_UNROLL
      for (int nt = 0; nt < 32; ++nt) {
        dst[8 * nt] = static_cast<uint16_t>(float_to_bf16_bits(o[4 * nt + 2 * h] * factor));
        dst[8 * nt + 1] =
            static_cast<uint16_t>(float_to_bf16_bits(o[4 * nt + 2 * h + 1] * factor));
      }
      if (pl.wg == 0 && pl.q4 == 0) {
        a.lse[r * a.lse_stride[0] + head * a.lse_stride[1] + s * a.lse_stride[2]] = lse;
      }
    }
  }
#else
  (void)a;  // not an sm_90a target: never launched there (see wgmma.cuh)
#endif
}

void launch_sparse_decode_sm90(const SparseDecodeArgs& a, void* stream) {
  if (a.num_parts <= 0) return;
  const int64_t groups = (a.num_heads_q + kRows - 1) / kRows;
  check_decode_grid(a.num_parts, int64_t{a.q_len} * groups,
                    "(query token, 64-head group) pairs");
  const dim3 grid(static_cast<unsigned>(a.q_len * groups), static_cast<unsigned>(a.num_parts));
  if (a.d_qk == 576) {
    FMLA_LAUNCH(sparse_decode_sm90<576>, grid, dim3(kThreads), smem_bytes(576), stream, a);
  } else {
    FMLA_LAUNCH(sparse_decode_sm90<512>, grid, dim3(kThreads), smem_bytes(512), stream, a);
  }
}

FMLA_CUDA_NS_END
