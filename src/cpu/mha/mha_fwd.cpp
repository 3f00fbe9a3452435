// MHA forward on the CPU: for one tile of up to kFwdRowTile query rows of one head, the KV tiles
// of its sequence up to the causal window are packed once (K for Q·Kᵀ, V for P·V), scored
// against each kRowTile-row sub-tile that sees them, and folded into the running output by the
// online softmax of the shared drivers. The epilogue writes
// out = O / l and lse = ln(l) + m·ln 2, or out 0 and lse -inf for a row that sees no key.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/common/attn_scratch.h"
#include "cpu/common/microkernel.h"
#include "cpu/common/online_softmax.h"
#include "cpu/decode/store.h"
#include "cpu/mha/mha.h"
#include "cpu/mha/mha_tiles.h"

namespace flashmla::cpu::mha {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Query rows sharing each packed KV tile: sub-tiles of kRowTile rows, each packed on its own so
// that under causal a sub-tile is skipped for the KV tiles it cannot see (the same products as
// kRowTile-row tiles, with K and V packed once for four of them).
constexpr int kSubTiles = 4;
constexpr int kFwdRowTile = kSubTiles * kRowTile;

struct FwdScratch {
  AttnScratch sc;  // packed K and V, the score tile of one sub-tile, token pointers
  std::vector<std::vector<unsigned char>> q;  // packed Q per sub-tile
  std::vector<float> o, m, l;                 // running output, max, sum of kFwdRowTile rows

  FwdScratch(const AttnMicrokernel& mk, int d_qk, int d_v)
      : sc(mk, kRowTile, d_qk, d_v),
        q(kSubTiles, std::vector<unsigned char>(mk.packed_q_bytes(kRowTile, d_qk))),
        o(static_cast<size_t>(kFwdRowTile) * d_v), m(kFwdRowTile), l(kFwdRowTile) {}
};

void fwd_task(const core::MhaParams& p, const AttnMicrokernel& mk, SoftmaxUpdateFn softmax,
              const SeqTile& tile, int64_t h, FwdScratch& fs) {
  const int d_qk = static_cast<int>(p.d_qk), d_v = static_cast<int>(p.d_v);
  const int m = tile.size, subs = (m + kRowTile - 1) / kRowTile;
  const int64_t hk = h / p.group();
  const int64_t q0 = p.q_start[tile.seq] + tile.start, kv0 = p.kv_start[tile.seq];
  const Window win(p, tile.seq);
  AttnScratch& sc = fs.sc;

  for (int u = 0; u < subs; ++u) {
    const int u0 = u * kRowTile, mu = std::min(kRowTile, m - u0);
    gather(p.q + h * p.q_stride[1], q0 + u0, mu, p.q_stride[0], sc.rows);
    mk.pack_q(sc.rows.data(), mu, DType::bf16, d_qk, fs.q[u].data());
  }
  std::fill(fs.m.begin(), fs.m.begin() + m, -kInf);
  std::fill(fs.l.begin(), fs.l.begin() + m, 0.0f);
  std::fill(fs.o.begin(), fs.o.begin() + static_cast<size_t>(m) * d_v, 0.0f);

  const int64_t kv_end = win.end(tile.start + m - 1);  // the tile's last row sees the most
  for (int64_t j0 = 0; j0 < kv_end; j0 += kKvTile) {
    const int n = static_cast<int>(std::min<int64_t>(kKvTile, kv_end - j0));
    gather(p.k + hk * p.k_stride[1], kv0 + j0, n, p.k_stride[0], sc.tokens);
    mk.pack_k(sc.tokens.data(), n, DType::bf16, d_qk, sc.k.data());
    gather(p.v + hk * p.v_stride[1], kv0 + j0, n, p.v_stride[0], sc.tokens);
    mk.pack_v(sc.tokens.data(), n, DType::bf16, d_v, sc.v.data());
    for (int u = 0; u < subs; ++u) {
      const int u0 = u * kRowTile, mu = std::min(kRowTile, m - u0);
      if (win.end(tile.start + u0 + mu - 1) <= j0) continue;  // no row of it sees this tile
      mk.qk(fs.q[u].data(), mu, sc.k.data(), d_qk, p.scale_log2, sc.s.data());
      for (int i = 0; i < mu; ++i) {
        const int r = u0 + i;
        softmax(sc.s.data() + static_cast<size_t>(i) * kKvTile,
                win.visible(tile.start + r, j0, n), fs.m[r], fs.l[r],
                fs.o.data() + static_cast<size_t>(r) * d_v, d_v);
      }
      mk.pv(sc.s.data(), mu, n, sc.v.data(), d_v, fs.o.data() + static_cast<size_t>(u0) * d_v);
    }
  }

  for (int i = 0; i < m; ++i) {
    const float l = fs.l[i];
    float* lse = p.lse + (q0 + i) * p.lse_stride[0] + h * p.lse_stride[1];
    *lse = l > 0.0f ? (fs.m[i] + std::log2(l)) * static_cast<float>(M_LN2) : -kInf;
    decode::store_row(fs.o.data() + static_cast<size_t>(i) * d_v, l > 0.0f ? 1.0f / l : 0.0f,
                      d_v, DType::bf16, p.out + (q0 + i) * p.out_stride[0] + h * p.out_stride[1]);
  }
}

}  // namespace

void run_mha_fwd(const core::MhaParams& p) {
  const AttnMicrokernel& mk = active_microkernel();
  const SoftmaxUpdateFn softmax = active_softmax_update();
  const std::vector<SeqTile> tiles = seq_tiles(p.q_start, kFwdRowTile);
  const int64_t num_tiles = static_cast<int64_t>(tiles.size());
  const int64_t tasks = num_tiles * p.num_heads_q;
#pragma omp parallel num_threads(p.num_threads) if (tasks > 1)
  {
    FwdScratch scratch(mk, static_cast<int>(p.d_qk), static_cast<int>(p.d_v));
    // Later tiles of a sequence see more keys under causal: hand them out first.
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      fwd_task(p, mk, softmax, tiles[num_tiles - 1 - t / p.num_heads_q], t % p.num_heads_q,
               scratch);
    }
  }
}

}  // namespace flashmla::cpu::mha
