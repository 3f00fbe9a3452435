// Dense MLA decode split kernel, SM90 (Hopper: wgmma.mma_async bf16/fp16 -> fp32 from shared
// memory). One CTA of 256 threads = two warpgroups per (schedule part, KV head, tile of 64 query
// rows) walks its part's (request, block) range as the SM80 kernel and cpu/decode/dense_decode.cpp
// do; row i of a KV head is (query token i / hpk, head kv_head * hpk + i % hpk), so DeepSeek's
// 128 heads with s_q = 1 are two CTAs per part (the SM80 kernel: eight), each reading every KV
// tile once. Per request: Q (64 x 576) into 128-byte-swizzled slabs, then 64-token KV tiles
// gathered through the block table with cp.async into a double buffer of slabs (tokens past the
// piece's end zero-filled, never read); per tile S = Q K^T, masking (length, block id, causal)
// with -inf, online softmax, O += P V as common/wgmma_attention.cuh. Unsplit requests are
// finalised into out / lse; split pieces go to the accumulators (log2 units) for the combine.
#include <cmath>

#include "cuda/common/mma_tile.cuh"
#include "cuda/common/portable.h"
#include "cuda/common/wgmma.cuh"
#include "cuda/common/wgmma_attention.cuh"
#include "cuda/decode/dense_decode_sm90.h"
#include "cuda/decode/dense_decode_launch.h"
#include "cuda/decode/dense_decode_piece.cuh"

FMLA_CUDA_NS_BEGIN

namespace {

using namespace wgmma_attention;
constexpr int kDqk = 576, kSlabs = kDqk / 64, kStages = 2;

// Shared memory from a 1024-byte aligned base: Q (64 rows), two KV stages (64 tokens each), P,
// the two warpgroups' row maxima and sums, the stages' token validity; plus 1 KiB to align.
constexpr int kKvOffset = kSlabs * kSlab;                       // Q at 0
constexpr int kPOffset = kKvOffset + kStages * kSlabs * kSlab;
constexpr int kStatsOffset = kPOffset + kSlab;
constexpr int kSmemBytes = kStatsOffset + (2 * 2 * kRows + kStages * kTile) * 4 + 1024;
static_assert(kSmemBytes <= 227 * 1024, "fits the 227 KiB per block of sm_90");

#if defined(FMLA_SM90_BODY)
constexpr int kChunks = kDqk / 8;   // 16-byte chunks per row
constexpr float kInf = INFINITY;

// The 64 query rows row0.. of KV head g of request r (rows past rows_per_kv are zeros).
__device__ __forceinline__ void load_q(const DenseDecodeArgs& a, int r, int g, int row0,
                                       int rows_per_kv, unsigned char* sq) {
  const int hpk = a.num_heads_q / a.num_heads_kv;
  for (int it = static_cast<int>(threadIdx.x); it < kRows * kChunks; it += kThreads) {
    const int row = it / kChunks, c = it % kChunks, i = row0 + row;
    const bool valid = i < rows_per_kv;
    const uint16_t* src = valid ? q_row_chunk(a, hpk, r, g, i, c) : a.q;
    copy16(slab_chunk(sq, row, c), src, valid, a.q_aligned);
  }
}

// Tokens t0..t0+63 of KV head g of request r into the stage at sk, and their validity into ok;
// tokens >= t_end, and tokens whose block id is outside the cache (the table is device data,
// unchecked here), are zero-filled and invalid. Thread (token tid / 4, quarter tid % 4) copies
// chunks quarter, quarter + 4, ... of its token.
__device__ __forceinline__ void load_kv_tile(const DenseDecodeArgs& a, int r, int g, int t0,
                                             int t_end, unsigned char* sk, int* ok) {
  const int j = static_cast<int>(threadIdx.x) / 4, quarter = static_cast<int>(threadIdx.x) % 4;
  const int t = t0 + j;
  bool valid = t < t_end;
  const uint16_t* src = a.k_cache;
  if (valid) {
    const int64_t blk = a.block_table[r * a.block_table_stride + t / a.page_block_size];
    valid = blk >= 0 && blk < a.num_blocks;
    if (valid) {
      src += blk * a.k_stride[0] + (t % a.page_block_size) * a.k_stride[1] + g * a.k_stride[2];
    }
  }
  for (int c = quarter; c < kChunks; c += 4) {
    copy16(slab_chunk(sk, j, c), valid ? src + 8 * c : src, valid, a.k_aligned);
  }
  if (quarter == 0) ok[j] = valid ? 1 : 0;
}
#endif  // FMLA_SM90_BODY

}  // namespace

template <bool kFp16>
__global__ void __launch_bounds__(kThreads, 1) dense_decode_sm90(const DenseDecodeArgs a) {
#if defined(FMLA_SM90_BODY)
  static_assert(kThreads == 4 * kTile, "load_kv_tile: four threads per token");
  unsigned char* smem = aligned_smem();
  unsigned char* sq = smem;
  unsigned char* sp = smem + kPOffset;
  float* s_max = reinterpret_cast<float*>(smem + kStatsOffset);  // [warpgroup][row]
  float* s_sum = s_max + 2 * kRows;
  int* s_ok0 = reinterpret_cast<int*>(s_sum + 2 * kRows);  // stage s at s * kTile
  const uint32_t q_addr = smem_address(sq);

  const Place pl = place();
  const DenseDecodeCta cta = dense_decode_cta(a, kRows);
  const int hpk = cta.hpk, rows_per_kv = cta.rows_per_kv, g = cta.g, row0 = cta.row0;
  const int begin_req = cta.rec[0], end_req = cta.rec[1];
  // The query tokens of this thread's two accumulator rows.
  const int tok_of[2] = {(row0 + pl.rows[0]) / hpk, (row0 + pl.rows[1]) / hpk};

  // Device values are clamped to the tensors (dense_decode_piece.cuh).
  for (int r = begin_req < 0 ? 0 : begin_req; r <= end_req && r < a.batch; ++r) {
    const DenseDecodePiece piece = dense_decode_piece(a, cta.rec, r);
    const int seqlen = piece.seqlen, tok0 = piece.tok0, tok1 = piece.tok1;
    const bool split = piece.split, slot_ok = piece.slot_ok;
    const int64_t slot = piece.slot;
    const int n_tiles = (tok1 - tok0 + kTile - 1) / kTile;
    // Last visible key of each row (causal: bottom-right aligned).
    int last[2];
    FMLA_UNROLL
    for (int h = 0; h < 2; ++h) last[h] = a.causal ? seqlen - a.q_len + tok_of[h] : seqlen;

    __syncthreads();  // the previous request is done with every buffer
    load_q(a, r, g, row0, rows_per_kv, sq);
    if (n_tiles > 0) load_kv_tile(a, r, g, tok0, tok1, smem + kKvOffset, s_ok0);
    cp_async_commit();

    float m[2] = {-kInf, -kInf}, l[2] = {0.0f, 0.0f};  // rows[0], rows[1]; m in log2 units
    float o[128];  // O rows x channels 256 wg.., wgmma m64n256 accumulator layout
    FMLA_UNROLL
    for (auto& t : o) t = 0.0f;

    for (int it = 0; it < n_tiles; ++it) {
      const int st = it & 1, t0 = tok0 + it * kTile;
      cp_async_wait<0>();   // tile it (and Q) landed
      fence_proxy_async();  // ... and is visible to wgmma (the async proxy)
      __syncthreads();      // to all; everyone is done with tile it-1's stage and P
      if (it + 1 < n_tiles) {
        load_kv_tile(a, r, g, t0 + kTile, tok1, smem + kKvOffset + (st ^ 1) * kSlabs * kSlab,
                     s_ok0 + (st ^ 1) * kTile);
      }
      cp_async_commit();
      const uint32_t kv_addr = smem_address(smem + kKvOffset + st * kSlabs * kSlab);
      const int* ok = s_ok0 + st * kTile;

      float s[16];
      scores<kDqk, kFp16>(s, q_addr, kv_addr, pl);
      // Scale to log2 units and mask: invalid tokens (past the piece's end, or in a block
      // outside the cache), or past the row's causal window.
      FMLA_UNROLL
      for (int i = 0; i < 16; ++i) {
        const int c = s_column(pl, i), t = t0 + c;
        s[i] = (ok[c] && t <= last[(i % 4) / 2]) ? s[i] * a.scale_log2 : -kInf;
      }
      softmax_pv<kFp16>(s, m, l, o, sp, kv_addr, s_max, s_sum, pl);
    }
    cp_async_wait<0>();  // nothing of this request still in flight (with no tile: Q)

    // Finalise this piece: this thread's rows, channels 256 wg + 8 nt + 2 q4 + {0, 1}.
    FMLA_UNROLL
    for (int h = 0; h < 2; ++h) {
      const int i = row0 + pl.rows[h];
      if (i >= rows_per_kv) continue;
      const int s_idx = i / hpk, head = g * hpk + i % hpk;
      const float inv_l = l[h] > 0.0f ? 1.0f / l[h] : 0.0f;  // empty row: out 0
      const int col0 = 256 * pl.wg + 2 * pl.q4;
      if (!split) {
        uint16_t* dst = a.out + r * a.out_stride[0] + s_idx * a.out_stride[1] +
                        head * a.out_stride[2] + col0;
        FMLA_UNROLL
        for (int nt = 0; nt < 32; ++nt) {
          const uint32_t v =
              pack2<kFp16>(o[4 * nt + 2 * h] * inv_l, o[4 * nt + 2 * h + 1] * inv_l);
          if (a.out_aligned) {
            *reinterpret_cast<uint32_t*>(dst + 8 * nt) = v;
          } else {
            dst[8 * nt] = static_cast<uint16_t>(v & 0xffffu);
            dst[8 * nt + 1] = static_cast<uint16_t>(v >> 16);
          }
        }
        if (pl.wg == 0 && pl.q4 == 0) {
          a.lse[r * a.lse_stride[0] + head * a.lse_stride[1] + s_idx * a.lse_stride[2]] =
              l[h] > 0.0f ? (m[h] + log2f(l[h])) * 0.69314718055994530942f : kInf;
        }
      } else if (slot_ok) {
        const int64_t row = (slot * a.q_len + s_idx) * a.num_heads_q + head;
        float* dst = a.o_accum + row * kDv + col0;
        FMLA_UNROLL
        for (int nt = 0; nt < 32; ++nt) {
          dst[8 * nt] = o[4 * nt + 2 * h] * inv_l;
          dst[8 * nt + 1] = o[4 * nt + 2 * h + 1] * inv_l;
        }
        if (pl.wg == 0 && pl.q4 == 0) a.lse_accum[row] = l[h] > 0.0f ? m[h] + log2f(l[h]) : -kInf;
      }
    }
  }
#else
  (void)a;  // not an sm_90a target: never launched there (see wgmma.cuh)
#endif
}

void launch_dense_decode_sm90(const DenseDecodeArgs& a, void* stream) {
  if (a.num_parts <= 0 || a.batch <= 0) return;
  const dim3 grid = dense_decode_grid(a, kRows, "(KV head, 64-row tile) pairs");
  launch_for_dtype(a, [&](auto fp16) {
    constexpr bool kFp16 = decltype(fp16)::value;
    FMLA_LAUNCH(dense_decode_sm90<kFp16>, grid, dim3(kThreads), kSmemBytes, stream, a);
  });
}

FMLA_CUDA_NS_END
