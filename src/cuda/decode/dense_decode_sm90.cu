// Dense MLA decode split kernel, SM90 (Hopper: KV tiles by TMA, wgmma.mma_async bf16/fp16 ->
// fp32 from shared memory). One CTA of 256 threads = two warpgroups per (schedule part, KV head,
// tile of 64 query rows) walks its part's (request, block) range as the SM80 kernel and
// cpu/decode/dense_decode.cpp do; row i of a KV head is (query token i / hpk, head
// kv_head * hpk + i % hpk), so DeepSeek's 128 heads with s_q = 1 are two CTAs per part (the SM80
// kernel: eight), each reading every KV tile once. Per request: Q (64 x 576) by cp.async into
// 128-byte-swizzled slabs; then 64-token KV tiles, each brought by warp 0 as bulk tensor copies
// (one per 64-channel slab and run of rows within a page, the tensor map swizzling them as wgmma
// reads them) into a double buffer, completing on the stage's mbarrier while the other stage is
// computed (after a request's last tile comes the next request's first, so the requests of a
// part follow each other without waiting for a first copy). Runs of tokens that are not read
// (past the piece's end, or in a block outside the cache) are not copied; after the wait, the
// rows of tokens not read are zeroed (the stage's old contents, or cache bytes past the end, may
// be NaN). Per tile S = Q K^T, masking (length, block id, causal) with -inf, online softmax,
// O += P V as common/wgmma_attention.cuh. Unsplit requests are finalised into out / lse; split
// pieces go to the accumulators (log2 units) for the combine. The cache's layout must suit the
// tensor map (a page size that is a multiple of 8, 16-byte aligned strides); the entry point
// runs the SM80 kernel otherwise.
#include <cmath>

#include "cuda/common/mma_tile.cuh"
#include "cuda/common/portable.h"
#include "cuda/common/tma.cuh"
#include "cuda/common/tma_map.h"
#include "cuda/common/wgmma.cuh"
#include "cuda/common/wgmma_attention.cuh"
#include "cuda/decode/dense_decode_sm90.h"
#include "cuda/decode/dense_decode_launch.h"
#include "cuda/decode/dense_decode_piece.cuh"
#include "cuda/decode/dense_kv_tma.cuh"

FMLA_CUDA_NS_BEGIN

namespace {

using namespace wgmma_attention;
using dense_kv_tma::kChunks;
using dense_kv_tma::kDqk;
using dense_kv_tma::kSlabs;
using dense_kv_tma::token_valid;
constexpr int kStages = 2;

// Shared memory from a 1024-byte aligned base: Q (64 rows), two KV stages (64 tokens each), P,
// the two warpgroups' row maxima and sums, the stages' token validity, the stages' mbarriers;
// plus 1 KiB to align.
constexpr int kKvOffset = kSlabs * kSlab;                       // Q at 0
constexpr int kPOffset = kKvOffset + kStages * kSlabs * kSlab;
constexpr int kStatsOffset = kPOffset + kSlab;
constexpr int kBarOffset = kStatsOffset + (2 * 2 * kRows + kStages * kTile) * 4;
constexpr int kSmemBytes = kBarOffset + kStages * 8 + 1024;
static_assert(kBarOffset % 8 == 0, "mbarriers are 8-byte aligned");
static_assert(kSmemBytes <= 227 * 1024, "fits the 227 KiB per block of sm_90");

#if defined(FMLA_SM90_BODY)
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

#endif  // FMLA_SM90_BODY

}  // namespace

template <bool kFp16>
__global__ void __launch_bounds__(kThreads, 1)
    dense_decode_sm90(const __grid_constant__ DenseDecodeArgs a,
                      const __grid_constant__ TmaMap kv_map, const int rows_per_box) {
#if defined(FMLA_SM90_BODY)
  static_assert(kThreads == 4 * kTile, "four threads per token of a tile");
  unsigned char* smem = aligned_smem();
  unsigned char* sq = smem;
  unsigned char* sp = smem + kPOffset;
  float* s_max = reinterpret_cast<float*>(smem + kStatsOffset);  // [warpgroup][row]
  float* s_sum = s_max + 2 * kRows;
  int* s_ok0 = reinterpret_cast<int*>(s_sum + 2 * kRows);  // stage s at s * kTile
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + kBarOffset);  // stage s's tile landed
  const uint32_t q_addr = smem_address(sq);
  const bool issuer = warp_id() == 0;
  const int my_token = static_cast<int>(threadIdx.x) / 4;  // of a tile (token_valid, clear)

  const Place pl = place();
  const DenseDecodeCta cta = dense_decode_cta(a, kRows);
  const int hpk = cta.hpk, rows_per_kv = cta.rows_per_kv, g = cta.g, row0 = cta.row0;
  const int begin_req = cta.rec[0], end_req = cta.rec[1];
  // The query tokens of this thread's two accumulator rows.
  const int tok_of[2] = {(row0 + pl.rows[0]) / hpk, (row0 + pl.rows[1]) / hpk};

  if (threadIdx.x == 0) {
    for (int st = 0; st < kStages; ++st) mbarrier_init(bars + st, 1);
    fence_mbarrier_init();
  }
  unsigned parity = 0;  // bit st: the parity of stage st's next phase
  // The stage of the next request's first tile, and whether that tile is already in flight
  // (issued under the previous request's last tile; set at every request's last tile, and a
  // request without tiles never has one prefetched). Uniform across the CTA.
  int first_stage = 0;
  bool prefetched = false;
  bool my_ok = false;  // my_token of the tile in flight is read

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

    __syncthreads();  // the previous request is done with every buffer (and the barriers ready)
    load_q(a, r, g, row0, rows_per_kv, sq);
    cp_async_commit();
    if (n_tiles > 0 && !prefetched) {
      my_ok = token_valid(a, r, tok0 + my_token, tok1);
      if (threadIdx.x % 4 == 0) s_ok0[first_stage * kTile + my_token] = my_ok ? 1 : 0;
      if (issuer) {
        dense_kv_tma::issue_kv_tile<kTile>(a, kv_map, rows_per_box, r, g, tok0, tok1,
                      smem + kKvOffset + first_stage * kSlabs * kSlab, bars + first_stage);
      }
    }

    float m[2] = {-kInf, -kInf}, l[2] = {0.0f, 0.0f};  // rows[0], rows[1]; m in log2 units
    float o[128];  // O rows x channels 256 wg.., wgmma m64n256 accumulator layout
    FMLA_UNROLL
    for (auto& t : o) t = 0.0f;

    for (int it = 0; it < n_tiles; ++it) {
      const int st = (first_stage + it) & 1, t0 = tok0 + it * kTile;
      unsigned char* sk = smem + kKvOffset + st * kSlabs * kSlab;
      if (it == 0) cp_async_wait<0>();  // Q landed
      mbarrier_wait(bars + st, (parity >> st) & 1u);  // tile it landed
      parity ^= 1u << st;
      dense_kv_tma::clear_row_unless<kTile>(my_ok, sk);
      fence_proxy_async();  // Q and the cleared rows, for wgmma (the async proxy)
      __syncthreads();      // to all; everyone is done with tile it-1's stage and P
      // The next tile into the other stage: this request's, or after its last tile the next
      // request's first (if it has one), so no request starts by waiting for its first copy.
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
        my_ok = token_valid(a, nr, n0 + my_token, n_end);
        if (threadIdx.x % 4 == 0) s_ok0[(st ^ 1) * kTile + my_token] = my_ok ? 1 : 0;
        if (issuer) {
          dense_kv_tma::issue_kv_tile<kTile>(a, kv_map, rows_per_box, nr, g, n0, n_end,
                        smem + kKvOffset + (st ^ 1) * kSlabs * kSlab, bars + (st ^ 1));
        }
      }
      const uint32_t kv_addr = smem_address(sk);
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
    cp_async_wait<0>();  // with no tile: Q still in flight
    first_stage = (first_stage + n_tiles) & 1;

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

bool launch_dense_decode_sm90(const DenseDecodeArgs& a, void* stream) {
  if (a.num_parts <= 0 || a.batch <= 0) return true;
  const dim3 grid = dense_decode_grid(a, kRows, "(KV head, 64-row tile) pairs");
  const int rows = dense_kv_tma::rows_per_box<kTile>(a.page_block_size);
  alignas(64) TmaMap map;
  if (!dense_kv_tma::encode_kv_map(a, rows, &map)) return false;
  launch_for_dtype(a, [&](auto fp16) {
    constexpr bool kFp16 = decltype(fp16)::value;
    FMLA_LAUNCH(dense_decode_sm90<kFp16>, grid, dim3(kThreads), kSmemBytes, stream, a, map, rows);
  });
  return true;
}

FMLA_CUDA_NS_END
