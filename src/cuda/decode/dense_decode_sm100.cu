// Dense MLA decode split kernel, SM100 (datacenter Blackwell: KV tiles by TMA, tcgen05.mma
// bf16/fp16 -> fp32 into tensor memory). One CTA of 128 threads (one warpgroup) per (schedule
// part, KV head, tile of 128 query rows): DeepSeek's 128 heads with s_q = 1 are one CTA per part,
// reading every KV tile once. Thread i owns query row i, which is TMEM lane i of every M = 128
// MMA, so the softmax needs no exchange between threads.
//
// Per request: Q (128 x 576) by cp.async into 128-byte-swizzled slabs; then 32-token KV tiles,
// brought by warp 0 as bulk tensor copies into a double buffer (dense_kv_tma.cuh, as the SM90
// kernel) while the other stage is computed. Per tile:
//   S = Q K^T      thread 0 issues 36 MMAs (m128 n32 k16) into TMEM columns 0..31, commits;
//   softmax        each thread loads its row of S (tcgen05.ld 32x32b), masks (length, block id,
//                  causal) with -inf, and keeps a running max m in log2 units that it raises
//                  only when a score exceeds it by more than 2^8 (then O is rescaled: its TMEM
//                  columns loaded, scaled, stored back); P = exp2(s - m) <= 256 is rounded to
//                  bf16 (fp16) into shared memory as unswizzled core matrices;
//   O += P V       thread 0 issues, per 16 tokens, channels 0..255 and 256..447 into TMEM columns
//                  64..511 (accumulating) and channels 448..511 into columns 0..63 (fresh), whose
//                  sum each thread adds to 64 registers: O of 512 channels and S do not fit the
//                  512 columns together.
// Tensor memory: 512 columns, allocated by warp 0 for the CTA's life. Shared memory: Q 144 KiB,
// two KV stages of 36 KiB, P 8 KiB (about 225 KiB of the 227 KiB a block may have), which is
// why tiles are 32 tokens. Unsplit requests are finalised into out / lse; split pieces go to
// the accumulators (log2 units) for the combine. The cache's layout must suit the tensor map
// (as SM90); the entry point runs the SM80 kernel otherwise.
#include <cmath>

#include "cuda/common/mma_tile.cuh"
#include "cuda/common/portable.h"
#include "cuda/common/tcgen05.cuh"
#include "cuda/common/tma.cuh"
#include "cuda/common/tma_map.h"
#include "cuda/common/wgmma.cuh"
#include "cuda/common/wgmma_attention.cuh"
#include "cuda/decode/dense_decode_launch.h"
#include "cuda/decode/dense_decode_piece.cuh"
#include "cuda/decode/dense_decode_sm100.h"
#include "cuda/decode/dense_kv_tma.cuh"

FMLA_CUDA_NS_BEGIN

namespace {

using dense_kv_tma::kChunks;
using wgmma_attention::aligned_smem;
using dense_kv_tma::kDqk;
using dense_kv_tma::kSlabs;
constexpr int kThreads = 128, kRows = 128, kTile = 32, kStages = 2;
constexpr int kQSlab = kRows * 128, kKvSlab = kTile * 128, kStage = kSlabs * kKvSlab;

// Shared memory from a 1024-byte aligned base: Q, the KV stages, P, the stages' token validity,
// the TMEM address, the mbarriers (two stages', the MMAs'); plus 1 KiB to align.
constexpr int kKvOffset = kSlabs * kQSlab;  // Q at 0
constexpr int kPOffset = kKvOffset + kStages * kStage;
constexpr int kOkOffset = kPOffset + kRows * kTile * 2;
constexpr int kTmemSlotOffset = kOkOffset + kStages * kTile * 4;
constexpr int kBarOffset = kTmemSlotOffset + 8;
constexpr int kSmemBytes = kBarOffset + (kStages + 1) * 8 + 1024;
static_assert(kBarOffset % 8 == 0, "mbarriers are 8-byte aligned");
static_assert(kSmemBytes <= 227 * 1024, "fits the 227 KiB per block of sm_100");
static_assert(kThreads == 4 * kTile, "four threads per token of a tile (clear_row_unless)");

#if defined(FMLA_SM100_BODY)
constexpr float kInf = INFINITY;
// TMEM columns: S and the tail of P V in 0..63, O channels 0..447 in 64..511.
constexpr int kDv = 512, kTailCol = 0, kOCol = 64, kTail = 64, kOMain = kDv - kTail;
// A row's running max is raised only past this (log2 units), so P <= 2^8.
constexpr float kRescaleAbove = 8.0f;

// The 128 query rows row0.. of KV head g of request r (rows past rows_per_kv are zeros), chunk c
// of row `row` at slab c / 8, swizzled.
__device__ __forceinline__ void load_q(const DenseDecodeArgs& a, int r, int g, int row0,
                                       int rows_per_kv, unsigned char* sq) {
  const int hpk = a.num_heads_q / a.num_heads_kv;
  for (int it = static_cast<int>(threadIdx.x); it < kRows * kChunks; it += kThreads) {
    const int row = it / kChunks, c = it % kChunks, i = row0 + row;
    const bool valid = i < rows_per_kv;
    const uint16_t* src = valid ? q_row_chunk(a, hpk, r, g, i, c) : a.q;
    copy16(reinterpret_cast<uint16_t*>(sq + (c / 8) * kQSlab + swizzle128_offset(row, c % 8)), src,
           valid, a.q_aligned);
  }
}

// Thread 0: S = Q K^T for the tile at kv_addr into TMEM columns kTailCol.., committed on bar.
template <bool kFp16>
__device__ __forceinline__ void issue_scores(uint32_t tmem, uint32_t q_addr, uint32_t kv_addr,
                                             uint64_t* bar) {
  constexpr uint32_t idesc = umma_idesc_f16(kFp16, kRows, kTile, false);
  for (int ks = 0; ks < kDqk / 16; ++ks) {
    umma_f16(tmem + kTailCol, umma_desc_k_major(q_addr, kRows, 0, ks),
             umma_desc_k_major(kv_addr, kTile, 0, ks), idesc, ks > 0);
  }
  umma_commit(bar);
}

// Thread 0: O += P V (V = the first 512 channels of the tile, read MN-major): channels 0..447
// into columns kOCol.. (fresh at a request's first tile), 448..511 into kTailCol.. (always
// fresh), committed on bar.
template <bool kFp16>
__device__ __forceinline__ void issue_pv(uint32_t tmem, uint32_t p_addr, uint32_t kv_addr,
                                         bool first_tile, uint64_t* bar) {
  constexpr uint32_t id256 = umma_idesc_f16(kFp16, kRows, 256, true);
  constexpr uint32_t id192 = umma_idesc_f16(kFp16, kRows, kOMain - 256, true);
  constexpr uint32_t id_tail = umma_idesc_f16(kFp16, kRows, kTail, true);
  for (int ks = 0; ks < kTile / 16; ++ks) {
    const uint64_t pa = umma_desc_k_major_interleaved(p_addr, kRows, ks);
    const bool acc = !first_tile || ks > 0;
    umma_f16(tmem + kOCol, pa, umma_desc_mn_major(kv_addr, kTile, 0, ks), id256, acc);
    umma_f16(tmem + kOCol + 256, pa, umma_desc_mn_major(kv_addr, kTile, 256, ks), id192, acc);
    umma_f16(tmem + kTailCol, pa, umma_desc_mn_major(kv_addr, kTile, kOMain, ks), id_tail,
             ks > 0);
  }
  umma_commit(bar);
}

// This warp's rows of O's TMEM columns scaled by alpha (per thread; 1 leaves a row as it is).
__device__ __forceinline__ void rescale_o(uint32_t my_tmem, float alpha) {
  for (int c = 0; c < kOMain; c += 32) {
    uint32_t r[32];
    tmem_ld32(my_tmem + kOCol + c, r);
    tmem_wait_ld();
    tmem_fence_regs(r);
    FMLA_UNROLL
    for (int j = 0; j < 32; ++j) r[j] = __float_as_uint(__uint_as_float(r[j]) * alpha);
    tmem_st32(my_tmem + kOCol + c, r);
  }
  tmem_wait_st();
}

// Channels 32 c.. of this thread's row: pack to the element type and store to out (16 bytes at
// a time when aligned).
template <bool kFp16>
__device__ __forceinline__ void store_out32(const DenseDecodeArgs& a, uint16_t* dst,
                                            const float* v, float inv_l) {
  FMLA_UNROLL
  for (int j = 0; j < 32; j += 2) {
    const uint32_t w = pack2<kFp16>(v[j] * inv_l, v[j + 1] * inv_l);
    if (a.out_aligned) {
      *reinterpret_cast<uint32_t*>(dst + j) = w;
    } else {
      dst[j] = static_cast<uint16_t>(w & 0xffffu);
      dst[j + 1] = static_cast<uint16_t>(w >> 16);
    }
  }
}
#endif  // FMLA_SM100_BODY

}  // namespace

template <bool kFp16>
__global__ void __launch_bounds__(kThreads, 1)
    dense_decode_sm100(const __grid_constant__ DenseDecodeArgs a,
                       const __grid_constant__ TmaMap kv_map, const int rows_per_box) {
#if defined(FMLA_SM100_BODY)
  unsigned char* smem = aligned_smem();
  unsigned char* sq = smem;
  unsigned char* sp = smem + kPOffset;
  int* s_ok0 = reinterpret_cast<int*>(smem + kOkOffset);  // stage s at s * kTile
  uint32_t* tmem_slot = reinterpret_cast<uint32_t*>(smem + kTmemSlotOffset);
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + kBarOffset);  // stages', then the MMAs'
  uint64_t* mma_bar = bars + kStages;
  const uint32_t q_addr = smem_address(sq), p_addr = smem_address(sp);
  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32;
  const bool issuer = warp == 0;
  const int my_token = tid / 4;  // of a tile (token_valid, clear_row_unless)

  const DenseDecodeCta cta = dense_decode_cta(a, kRows);
  const int hpk = cta.hpk, rows_per_kv = cta.rows_per_kv, g = cta.g, row0 = cta.row0;
  const int begin_req = cta.rec[0], end_req = cta.rec[1];
  const int my_row = row0 + tid, my_tok = my_row / hpk;

  if (tid == 0) {
    for (int st = 0; st <= kStages; ++st) mbarrier_init(bars + st, 1);
    fence_mbarrier_init();
  }
  if (warp == 0) {
    tmem_alloc(tmem_slot, 512);
    tmem_relinquish_alloc_permit();
  }
  tcgen05_fence_before_sync();
  __syncthreads();
  tcgen05_fence_after_sync();
  const uint32_t tmem = *tmem_slot;
  const uint32_t my_tmem = tmem + (static_cast<uint32_t>(32 * warp) << 16);  // this warp's lanes
  unsigned parity = 0;    // bit st: the parity of stage st's next phase
  unsigned mma_parity = 0;
  int first_stage = 0;    // as the SM90 kernel: the next request's first tile may be in flight
  bool prefetched = false;
  bool my_ok = false;     // my_token of the tile in flight is read

  for (int r = begin_req < 0 ? 0 : begin_req; r <= end_req && r < a.batch; ++r) {
    const DenseDecodePiece piece = dense_decode_piece(a, cta.rec, r);
    const int seqlen = piece.seqlen, tok0 = piece.tok0, tok1 = piece.tok1;
    const int n_tiles = (tok1 - tok0 + kTile - 1) / kTile;
    const int last = a.causal ? seqlen - a.q_len + my_tok : seqlen;  // last visible key

    __syncthreads();  // the previous request is done with every buffer
    load_q(a, r, g, row0, rows_per_kv, sq);
    cp_async_commit();
    if (n_tiles > 0 && !prefetched) {
      my_ok = dense_kv_tma::token_valid(a, r, tok0 + my_token, tok1);
      if (tid % 4 == 0) s_ok0[first_stage * kTile + my_token] = my_ok ? 1 : 0;
      if (issuer) {
        dense_kv_tma::issue_kv_tile<kTile>(a, kv_map, rows_per_box, r, g, tok0, tok1,
                                           smem + kKvOffset + first_stage * kStage,
                                           bars + first_stage);
      }
    }

    float m = -kInf, l = 0.0f;  // m: the row's running max (log2 units), raised lazily
    float o_tail[kTail];        // channels 448..511
    FMLA_UNROLL
    for (auto& t : o_tail) t = 0.0f;

    for (int it = 0; it < n_tiles; ++it) {
      const int st = (first_stage + it) & 1, t0 = tok0 + it * kTile;
      unsigned char* sk = smem + kKvOffset + st * kStage;
      if (it == 0) cp_async_wait<0>();  // Q landed
      mbarrier_wait(bars + st, (parity >> st) & 1u);  // tile it landed
      parity ^= 1u << st;
      dense_kv_tma::clear_row_unless<kTile>(my_ok, sk);
      fence_proxy_async();  // Q and the cleared rows, for the MMAs (the async proxy)
      tcgen05_fence_before_sync();
      __syncthreads();  // to all; everyone is done with tile it-1's stage, P and TMEM columns
      tcgen05_fence_after_sync();
      // The next tile into the other stage (as the SM90 kernel).
      int nr = r, n0 = t0 + kTile, n_end = tok1;
      if (it + 1 == n_tiles) {
        nr = r + 1;
        n0 = n_end = 0;
        if (nr <= end_req && nr < a.batch) {
          const DenseDecodePiece next = dense_decode_piece(a, cta.rec, nr);
          n0 = next.tok0;
          n_end = next.tok1;
        }
        prefetched = n0 < n_end;
      }
      if (n0 < n_end) {
        my_ok = dense_kv_tma::token_valid(a, nr, n0 + my_token, n_end);
        if (tid % 4 == 0) s_ok0[(st ^ 1) * kTile + my_token] = my_ok ? 1 : 0;
        if (issuer) {
          dense_kv_tma::issue_kv_tile<kTile>(a, kv_map, rows_per_box, nr, g, n0, n_end,
                                             smem + kKvOffset + (st ^ 1) * kStage,
                                             bars + (st ^ 1));
        }
      }
      const uint32_t kv_addr = smem_address(sk);
      const int* ok = s_ok0 + st * kTile;

      if (tid == 0) issue_scores<kFp16>(tmem, q_addr, kv_addr, mma_bar);
      mbarrier_wait(mma_bar, mma_parity);
      mma_parity ^= 1u;
      tcgen05_fence_after_sync();
      uint32_t sr[kTile];
      tmem_ld32(my_tmem + kTailCol, sr);
      tmem_wait_ld();
      tmem_fence_regs(sr);

      // Scale to log2 units and mask: invalid tokens (past the piece's end, or in a block
      // outside the cache), or past the row's causal window.
      float s[kTile], row_max = -kInf;
      FMLA_UNROLL
      for (int j = 0; j < kTile; ++j) {
        s[j] = (ok[j] && t0 + j <= last) ? __uint_as_float(sr[j]) * a.scale_log2 : -kInf;
        row_max = fmaxf(row_max, s[j]);
      }
      // Raise m (and rescale) only when a score passes it by more than kRescaleAbove: the
      // result is the same (numerator and sum share m), P stays <= 2^8, and O's TMEM columns
      // are rewritten rarely. A warp rescales together (tcgen05.ld / st are warp-wide).
      const bool raise = row_max > m + kRescaleAbove;  // false while both are -inf
      float alpha = 1.0f;
      if (raise) {
        alpha = exp2f(m - row_max);  // 0 from m = -inf
        m = row_max;
        l *= alpha;
        FMLA_UNROLL
        for (auto& t : o_tail) t *= alpha;
      }
      if (it > 0 && __any_sync(kFullMask, raise)) rescale_o(my_tmem, alpha);
      const float m_use = m == -kInf ? 0.0f : m;
      FMLA_UNROLL
      for (int j = 0; j < kTile; j += 8) {
        uint32_t w[4];
        FMLA_UNROLL
        for (int q = 0; q < 4; ++q) {
          const float p0 = exp2f(s[j + 2 * q] - m_use), p1 = exp2f(s[j + 2 * q + 1] - m_use);
          l += p0 + p1;
          w[q] = pack2<kFp16>(p0, p1);
        }
        *reinterpret_cast<uint4*>(sp + interleaved_offset(kRows, tid, j)) =
            uint4{w[0], w[1], w[2], w[3]};
      }
      fence_proxy_async();  // P, for the MMAs
      tcgen05_fence_before_sync();
      __syncthreads();  // P written, S and O's rescale done by every warp
      if (tid == 0) {
        tcgen05_fence_after_sync();
        issue_pv<kFp16>(tmem, p_addr, kv_addr, it == 0, mma_bar);
      }
      mbarrier_wait(mma_bar, mma_parity);
      mma_parity ^= 1u;
      tcgen05_fence_after_sync();
      FMLA_UNROLL
      for (int c = 0; c < kTail; c += 32) {
        uint32_t tr[32];
        tmem_ld32(my_tmem + kTailCol + c, tr);
        tmem_wait_ld();
        tmem_fence_regs(tr);
        FMLA_UNROLL
        for (int j = 0; j < 32; ++j) o_tail[c + j] += __uint_as_float(tr[j]);
      }
      tcgen05_fence_before_sync();  // the loads, before the next tile's S overwrites them
    }
    cp_async_wait<0>();  // with no tile: Q still in flight
    first_stage = (first_stage + n_tiles) & 1;

    // Finalise this piece: this thread's row. Every warp loads O (warp-wide); a row past
    // rows_per_kv stores nothing. A request without tiles has no O in TMEM: out 0.
    const bool row_ok = my_row < rows_per_kv;
    const int s_idx = my_tok, head = g * hpk + my_row % hpk;
    const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;  // empty row: out 0
    const bool split = piece.split;
    uint16_t* out_row = a.out + r * a.out_stride[0] + s_idx * a.out_stride[1] +
                        head * a.out_stride[2];
    const int64_t acc_row = (piece.slot * a.q_len + s_idx) * a.num_heads_q + head;
    const bool to_out = row_ok && !split, to_acc = row_ok && split && piece.slot_ok;
    for (int c = 0; c < kOMain; c += 32) {
      float v[32];
      if (n_tiles > 0) {
        uint32_t orr[32];
        tmem_ld32(my_tmem + kOCol + c, orr);
        tmem_wait_ld();
        tmem_fence_regs(orr);
        FMLA_UNROLL
        for (int j = 0; j < 32; ++j) v[j] = __uint_as_float(orr[j]);
      } else {
        FMLA_UNROLL
        for (int j = 0; j < 32; ++j) v[j] = 0.0f;
      }
      if (to_out) store_out32<kFp16>(a, out_row + c, v, inv_l);
      if (to_acc) {
        FMLA_UNROLL
        for (int j = 0; j < 32; ++j) a.o_accum[acc_row * kDv + c + j] = v[j] * inv_l;
      }
    }
    for (int c = 0; c < kTail; c += 32) {
      if (to_out) store_out32<kFp16>(a, out_row + kOMain + c, o_tail + c, inv_l);
      if (to_acc) {
        FMLA_UNROLL
        for (int j = 0; j < 32; ++j) a.o_accum[acc_row * kDv + kOMain + c + j] = o_tail[c + j] * inv_l;
      }
    }
    if (to_out) {
      a.lse[r * a.lse_stride[0] + head * a.lse_stride[1] + s_idx * a.lse_stride[2]] =
          l > 0.0f ? (m + log2f(l)) * 0.69314718055994530942f : kInf;
    }
    if (to_acc) a.lse_accum[acc_row] = l > 0.0f ? m + log2f(l) : -kInf;
    tcgen05_fence_before_sync();  // O's loads, before the next request's MMAs
  }
  __syncthreads();
  if (warp == 0) {
    tcgen05_fence_after_sync();
    tmem_dealloc(tmem, 512);
  }
#else
  (void)a, (void)kv_map, (void)rows_per_box;  // not an sm_100a target: never launched there
#endif
}

bool launch_dense_decode_sm100(const DenseDecodeArgs& a, void* stream) {
  if (a.num_parts <= 0 || a.batch <= 0) return true;
  const dim3 grid = dense_decode_grid(a, kRows, "(KV head, 128-row tile) pairs");
  const int rows = dense_kv_tma::rows_per_box<kTile>(a.page_block_size);
  alignas(64) TmaMap map;
  if (!dense_kv_tma::encode_kv_map(a, rows, &map)) return false;
  launch_for_dtype(a, [&](auto fp16) {
    constexpr bool kFp16 = decltype(fp16)::value;
    FMLA_LAUNCH(dense_decode_sm100<kFp16>, grid, dim3(kThreads), kSmemBytes, stream, a, map,
                rows);
  });
  return true;
}

FMLA_CUDA_NS_END
