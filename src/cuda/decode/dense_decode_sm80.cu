// Dense MLA decode split kernel, SM80+ (mma.sync m16n8k16 bf16/fp16, fp32 accumulate). One CTA
// of 128 threads (4 warps) per (schedule part, KV head, tile of 16 query rows) walks its part's
// (request, block) range as cpu/decode/dense_decode.cpp does; row i of a KV head is (query token
// i / hpk, head kv_head * hpk + i % hpk). Per request: Q tile (16 x 576) into shared memory, then
// 32-token KV tiles gathered through the block table with cp.async, double-buffered (tokens past
// the piece's end are zero-filled, never read): S = Q K^T (warp w: tokens 8w..8w+7, all 16 rows),
// masking (length, causal) with -inf, online softmax in log2 units (row maxima across warps
// through shared memory, sums kept per warp until the end), P rounded to the element type into
// shared memory, O += P V (warp w: channels 128w..128w+127, V = the first 512 channels of the K
// tile, ldmatrix .trans). Unsplit requests are finalised into out / lse; split pieces go to the
// accumulators (log2 units) for the combine.
#include <cmath>

#include "cuda/common/mma_tile.cuh"
#include "cuda/common/portable.h"
#include "cuda/decode/dense_decode_sm80.h"
#include "cuda/decode/dense_decode_launch.h"
#include "cuda/decode/dense_decode_piece.cuh"

FMLA_CUDA_NS_BEGIN

namespace {

constexpr int kThreads = 128, kWarps = 4, kRows = 16, kTile = 32, kDqk = 576, kDv = 512;
constexpr int kLdk = kDqk + 8;    // row stride (elements) of Q and K: conflict-free ldmatrix
constexpr int kLdp = kTile + 8;   // row stride of P
constexpr int kChunks = kDqk / 8; // 16-byte chunks per row
constexpr float kInf = INFINITY;

// Shared memory: Q (16 rows), two K tiles (32 rows each), P (16 x 32), per-warp row maxima and
// row sums, the tiles' token validity.
constexpr int kSmemBytes =
    (kRows + 2 * kTile) * kLdk * 2 + kRows * kLdp * 2 + 2 * kWarps * kRows * 4 + 2 * kTile * 4;
static_assert(kSmemBytes <= 99 * 1024, "fits every SM80+ GPU");

// The 16 query rows row0.. of KV head g of request r (rows past rows_per_kv are zeros).
__device__ __forceinline__ void load_q(const DenseDecodeArgs& a, int r, int g, int row0,
                                       int rows_per_kv, uint16_t* sq) {
  const int hpk = a.num_heads_q / a.num_heads_kv;
  for (int it = static_cast<int>(threadIdx.x); it < kRows * kChunks; it += kThreads) {
    const int row = it / kChunks, c = it % kChunks, i = row0 + row;
    const bool valid = i < rows_per_kv;
    const uint16_t* src = valid ? q_row_chunk(a, hpk, r, g, i, c) : a.q;
    copy16(sq + row * kLdk + 8 * c, src, valid, a.q_aligned);
  }
}

// Tokens t0..t0+31 of KV head g of request r into sk, and their validity into ok; tokens >= t_end
// are zero-filled. Thread (token tid / 4, quarter tid % 4) copies chunks quarter, quarter + 4,
// ... of its token.
__device__ __forceinline__ void load_kv_tile(const DenseDecodeArgs& a, int r, int g, int t0,
                                             int t_end, uint16_t* sk, int* ok) {
  const int j = static_cast<int>(threadIdx.x) / 4, quarter = static_cast<int>(threadIdx.x) % 4;
  const int t = t0 + j;
  // An invalid token (token_block: past the end, or a block outside the cache) reads nothing
  // and its score is -inf.
  const int64_t blk = token_block(a, r, t, t_end);
  const bool valid = blk >= 0;
  const uint16_t* src = a.k_cache;
  if (valid) {
    src += blk * a.k_stride[0] + (t % a.page_block_size) * a.k_stride[1] + g * a.k_stride[2];
  }
  uint16_t* dst = sk + j * kLdk;
  for (int c = quarter; c < kChunks; c += 4) {
    copy16(dst + 8 * c, valid ? src + 8 * c : src, valid, a.k_aligned);
  }
  if (quarter == 0) ok[j] = valid ? 1 : 0;
}

}  // namespace

template <bool kFp16>
__global__ void __launch_bounds__(kThreads, 1) dense_decode_sm80(const DenseDecodeArgs a) {
  unsigned char* smem = dynamic_smem();
  uint16_t* sq = reinterpret_cast<uint16_t*>(smem);
  uint16_t* sk0 = sq + kRows * kLdk;
  uint16_t* sp = sk0 + 2 * kTile * kLdk;
  float* s_max = reinterpret_cast<float*>(sp + kRows * kLdp);
  float* s_sum = s_max + kWarps * kRows;
  int* s_ok0 = reinterpret_cast<int*>(s_sum + kWarps * kRows);  // two tiles' token validity

  const int lane = lane_id(), warp = warp_id();
  const DenseDecodeCta cta = dense_decode_cta(a, kRows);
  const int hpk = cta.hpk, rows_per_kv = cta.rows_per_kv, g = cta.g, row0 = cta.row0;
  const int begin_req = cta.rec[0], end_req = cta.rec[1];

  // This lane's accumulator rows (r_lo, r_lo + 8) and their query tokens.
  const int r_lo = lane / 4, quad = lane % 4;
  const int tok_lo = (row0 + r_lo) / hpk, tok_hi = (row0 + r_lo + 8) / hpk;

  // Device values are clamped to the tensors (dense_decode_piece.cuh).
  for (int r = begin_req < 0 ? 0 : begin_req; r <= end_req && r < a.batch; ++r) {
    const DenseDecodePiece piece = dense_decode_piece(a, cta.rec, r);
    const int seqlen = piece.seqlen, tok0 = piece.tok0, tok1 = piece.tok1;
    const bool split = piece.split, slot_ok = piece.slot_ok;
    const int64_t slot = piece.slot;
    const int n_tiles = (tok1 - tok0 + kTile - 1) / kTile;
    // Last visible key of each row (causal: bottom-right aligned).
    const int last_lo = a.causal ? seqlen - a.q_len + tok_lo : seqlen;
    const int last_hi = a.causal ? seqlen - a.q_len + tok_hi : seqlen;

    __syncthreads();  // the previous request is done with every buffer
    load_q(a, r, g, row0, rows_per_kv, sq);
    if (n_tiles > 0) load_kv_tile(a, r, g, tok0, tok1, sk0, s_ok0);
    cp_async_commit();

    float o[16][4];
    for (int j = 0; j < 16; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float m_lo = -kInf, m_hi = -kInf, l_lo = 0.0f, l_hi = 0.0f;

    for (int it = 0; it < n_tiles; ++it) {
      const int t0 = tok0 + it * kTile;
      const uint16_t* sk = sk0 + (it & 1) * kTile * kLdk;
      cp_async_wait<0>();
      __syncthreads();  // tile it visible; everyone is done with tile it-1's buffer and P
      if (it + 1 < n_tiles) {
        load_kv_tile(a, r, g, t0 + kTile, tok1, sk0 + ((it + 1) & 1) * kTile * kLdk,
                     s_ok0 + ((it + 1) & 1) * kTile);
      }
      cp_async_commit();

      // S = Q K^T for this warp's 8 tokens (two accumulators: even / odd 16-channel steps).
      float s[4] = {0.0f, 0.0f, 0.0f, 0.0f}, s2[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      const uint16_t* q_row = sq + (lane % 8 + 8 * ((lane / 8) & 1)) * kLdk + 8 * (lane / 16);
      const uint16_t* k_row = sk + (8 * warp + lane % 8) * kLdk + 8 * (lane / 8);
      for (int k0 = 0; k0 < kDqk; k0 += 32) {
        uint32_t qa[4], qb[4], kb[4];
        ldmatrix<4, false>(qa, q_row + k0);
        ldmatrix<4, false>(qb, q_row + k0 + 16);
        ldmatrix<4, false>(kb, k_row + k0);
        const uint32_t b0[2] = {kb[0], kb[1]}, b1[2] = {kb[2], kb[3]};
        mma_acc<kFp16>(s, qa, b0);
        mma_acc<kFp16>(s2, qb, b1);
      }
      // Scale to log2 units and mask: invalid tokens (past the piece's end, or in a block
      // outside the cache), or past the row's causal window.
      const int t = t0 + 8 * warp + 2 * quad;
      const int* ok = s_ok0 + (it & 1) * kTile;
      for (int e = 0; e < 4; ++e) {
        const int te = t + (e & 1);
        const int last = e < 2 ? last_lo : last_hi;
        s[e] = (ok[te - t0] && te <= last) ? (s[e] + s2[e]) * a.scale_log2 : -kInf;
      }
      const float wmax_lo = quad_max(fmaxf(s[0], s[1])), wmax_hi = quad_max(fmaxf(s[2], s[3]));
      if (quad == 0) {
        s_max[warp * kRows + r_lo] = wmax_lo;
        s_max[warp * kRows + r_lo + 8] = wmax_hi;
      }
      __syncthreads();
      float mn_lo = m_lo, mn_hi = m_hi;
      for (int w = 0; w < kWarps; ++w) {
        mn_lo = fmaxf(mn_lo, s_max[w * kRows + r_lo]);
        mn_hi = fmaxf(mn_hi, s_max[w * kRows + r_lo + 8]);
      }
      // A row with no visible key yet keeps m = -inf: its p are 0 and O stays 0.
      const float base_lo = mn_lo == -kInf ? 0.0f : mn_lo, base_hi = mn_hi == -kInf ? 0.0f : mn_hi;
      const float sc_lo = exp2f(m_lo - base_lo), sc_hi = exp2f(m_hi - base_hi);
      m_lo = mn_lo;
      m_hi = mn_hi;
      const float p0 = exp2f(s[0] - base_lo), p1 = exp2f(s[1] - base_lo);
      const float p2 = exp2f(s[2] - base_hi), p3 = exp2f(s[3] - base_hi);
      l_lo = l_lo * sc_lo + p0 + p1;
      l_hi = l_hi * sc_hi + p2 + p3;
      for (int j = 0; j < 16; ++j) {
        o[j][0] *= sc_lo;
        o[j][1] *= sc_lo;
        o[j][2] *= sc_hi;
        o[j][3] *= sc_hi;
      }
      uint16_t* p_lo = sp + r_lo * kLdp + 8 * warp + 2 * quad;
      *reinterpret_cast<uint32_t*>(p_lo) = pack2<kFp16>(p0, p1);
      *reinterpret_cast<uint32_t*>(p_lo + 8 * kLdp) = pack2<kFp16>(p2, p3);
      __syncthreads();  // P complete

      // O += P V for this warp's 128 channels (V: the first 512 channels of the K tile).
      pv_accumulate<kFp16, kTile>(o, sp, kLdp, sk, kLdk, warp, lane);
    }

    cp_async_wait<0>();  // nothing of this request still in flight (with no tile: Q)

    // Row sums across the quad, then across warps (every warp saw different tokens).
    l_lo = quad_sum(l_lo);
    l_hi = quad_sum(l_hi);
    if (quad == 0) {
      s_sum[warp * kRows + r_lo] = l_lo;
      s_sum[warp * kRows + r_lo + 8] = l_hi;
    }
    __syncthreads();
    l_lo = l_hi = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      l_lo += s_sum[w * kRows + r_lo];
      l_hi += s_sum[w * kRows + r_lo + 8];
    }

    for (int half = 0; half < 2; ++half) {
      const int i = row0 + r_lo + 8 * half;
      if (i >= rows_per_kv) continue;
      const int s_idx = i / hpk, h = g * hpk + i % hpk;
      const float l = half ? l_hi : l_lo, m = half ? m_hi : m_lo;
      const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;  // empty row: out 0
      const int col0 = 128 * warp + 2 * quad;
      if (!split) {
        uint16_t* dst = a.out + r * a.out_stride[0] + s_idx * a.out_stride[1] +
                        h * a.out_stride[2] + col0;
        for (int j = 0; j < 16; ++j) {
          const uint32_t v = pack2<kFp16>(o[j][2 * half] * inv_l, o[j][2 * half + 1] * inv_l);
          if (a.out_aligned) {
            *reinterpret_cast<uint32_t*>(dst + 8 * j) = v;
          } else {
            dst[8 * j] = static_cast<uint16_t>(v & 0xffffu);
            dst[8 * j + 1] = static_cast<uint16_t>(v >> 16);
          }
        }
        if (warp == 0 && quad == 0) {
          a.lse[r * a.lse_stride[0] + h * a.lse_stride[1] + s_idx * a.lse_stride[2]] =
              l > 0.0f ? (m + log2f(l)) * 0.69314718055994530942f : kInf;
        }
      } else if (slot_ok) {
        const int64_t row = (slot * a.q_len + s_idx) * a.num_heads_q + h;
        float* dst = a.o_accum + row * kDv + col0;
        for (int j = 0; j < 16; ++j) {
          dst[8 * j] = o[j][2 * half] * inv_l;
          dst[8 * j + 1] = o[j][2 * half + 1] * inv_l;
        }
        if (warp == 0 && quad == 0) a.lse_accum[row] = l > 0.0f ? m + log2f(l) : -kInf;
      }
    }
  }
}

void launch_dense_decode_sm80(const DenseDecodeArgs& a, void* stream) {
  if (a.num_parts <= 0 || a.batch <= 0) return;
  const dim3 grid = dense_decode_grid(a, kRows, "(KV head, 16-row tile) pairs");
  launch_for_dtype(a, [&](auto fp16) {
    constexpr bool kFp16 = decltype(fp16)::value;
    FMLA_LAUNCH(dense_decode_sm80<kFp16>, grid, dim3(kThreads), kSmemBytes, stream, a);
  });
}

FMLA_CUDA_NS_END
