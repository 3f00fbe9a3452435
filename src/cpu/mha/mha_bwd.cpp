// MHA backward on the CPU (FlashAttention-2 math, deterministic partitioning). With s the
// logits, P = exp(s - lse) recomputed tile by tile from the forward's lse:
//   dV_j = Σ_i P_ij dO_i,  dP_ij = dO_i·V_j,  dS_ij = P_ij (dP_ij - D_i),  D_i = dO_i·O_i,
//   dQ_i = scale Σ_j dS_ij K_j,  dK_j = scale Σ_i dS_ij Q_i.
// Pass 1 computes D. Pass 2 owns up to kSuper KV tiles of one KV head per task and sums over the
// group's query heads and the query tiles that see them; pass 3 owns up to kSuper query tiles of
// one query head per task and sums over their KV tiles. No output is shared between tasks, so no atomics and no
// order that depends on threads: dQ, dK and dV are bitwise reproducible. The price is that P
// and dP are computed twice (7 tile products instead of 5).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/common/half.h"
#include "cpu/common/microkernel.h"
#include "cpu/common/online_softmax.h"
#include "cpu/decode/store.h"
#include "cpu/mha/mha.h"
#include "cpu/mha/mha_tiles.h"

namespace flashmla::cpu::mha {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kLog2e = static_cast<float>(M_LOG2E);

// Per-row values the passes share, indexed [token * h_q + head]: D = dO·O and the lse in log2
// units (-inf for a row that saw no key).
struct RowStats {
  std::vector<float> d, lse2;
};

RowStats row_stats(const core::MhaParams& p) {
  const int64_t total_q = p.q_start.back(), h_q = p.num_heads_q, d_v = p.d_v;
  RowStats r{std::vector<float>(static_cast<size_t>(total_q * h_q)),
             std::vector<float>(static_cast<size_t>(total_q * h_q))};
#pragma omp parallel for num_threads(p.num_threads) schedule(static) if (total_q > 1)
  for (int64_t t = 0; t < total_q; ++t) {
    for (int64_t h = 0; h < h_q; ++h) {
      const uint16_t* o = p.out + t * p.out_stride[0] + h * p.out_stride[1];
      const uint16_t* dout = p.dout + t * p.dout_stride[0] + h * p.dout_stride[1];
      float acc = 0.0f;
      for (int64_t c = 0; c < d_v; ++c) acc += bf16_to_float(o[c]) * bf16_to_float(dout[c]);
      r.d[t * h_q + h] = acc;
      r.lse2[t * h_q + h] = p.lse[t * p.lse_stride[0] + h * p.lse_stride[1]] * kLog2e;
    }
  }
  return r;
}

// Tiles per task: a dK/dV task owns kSuper KV tiles, a dQ task kSuper query tiles, so that the
// operands packed for one side are used by kSuper tiles of the other (packing Q and dO for
// every KV tile, or K and V for every query tile, would cost as much as the products at small
// head dims). Under causal, a (query tile, KV tile) pair that no row of the query tile can see
// is skipped, exactly as with single tiles.
constexpr int kSuper = 4;

struct PackedQuery {  // one query tile of one head
  std::vector<unsigned char> q, dout;          // packed as left operands of qk
  PackedQuery(const AttnMicrokernel& mk, int d_qk, int d_v)
      : q(mk.packed_q_bytes(kRowTile, d_qk)), dout(mk.packed_q_bytes(kRowTile, d_v)) {}
};
struct PackedKv {  // one KV tile of one KV head
  std::vector<unsigned char> k, vt;            // K and V as right operands of qk
  PackedKv(const AttnMicrokernel& mk, int d_qk, int d_v)
      : k(mk.packed_k_bytes(d_qk)), vt(mk.packed_k_bytes(d_v)) {}
};

struct BwdScratch {
  std::vector<PackedQuery> qs;                 // kSuper query tiles (dQ) or one (dK/dV)
  std::vector<PackedKv> kvs;                   // kSuper KV tiles (dK/dV) or one (dQ)
  std::vector<unsigned char> q_rows, do_rows;  // Q and dO packed as right operands of pt
  std::vector<unsigned char> kv;               // K packed as the right operand of pv
  std::vector<float> s, dp;                    // (kRowTile, kKvTile): P, then dP -> dS
  std::vector<float> acc;                      // (kSuper x (kKvTile | kRowTile), d_qk): dK | dQ
  std::vector<float> acc_v;                    // (kSuper x kKvTile, d_v): dV
  std::vector<const void*> ptrs;

  BwdScratch(const AttnMicrokernel& mk, int d_qk, int d_v)
      : qs(kSuper, PackedQuery(mk, d_qk, d_v)), kvs(kSuper, PackedKv(mk, d_qk, d_v)),
        q_rows(mk.packed_rows_bytes(kRowTile, d_qk)), do_rows(mk.packed_rows_bytes(kRowTile, d_v)),
        kv(mk.packed_v_bytes(d_qk)), s(static_cast<size_t>(kRowTile) * kKvTile),
        dp(static_cast<size_t>(kRowTile) * kKvTile),
        acc(static_cast<size_t>(kSuper) * std::max(kRowTile, kKvTile) * d_qk),
        acc_v(static_cast<size_t>(kSuper) * kKvTile * d_v), ptrs(std::max(kRowTile, kKvTile)) {}
};

// Rows [r0, r0 + m) of one sequence and head (packed in pq) against a KV tile [j0, j0 + n)
// (packed in pkv): sc.s = P and sc.dp = dS (both zero where a key is masked or past n).
void probabilities_and_ds(const core::MhaParams& p, const AttnMicrokernel& mk, const Window& win,
                          const RowStats& rs, int64_t q0, int64_t r0, int m, int64_t h,
                          int64_t j0, int n, const PackedQuery& pq, const PackedKv& pkv,
                          BwdScratch& sc) {
  const int d_qk = static_cast<int>(p.d_qk), d_v = static_cast<int>(p.d_v);
  mk.qk(pq.q.data(), m, pkv.k.data(), d_qk, p.scale_log2, sc.s.data());
  mk.qk(pq.dout.data(), m, pkv.vt.data(), d_v, 1.0f, sc.dp.data());
  const SoftmaxGradRowFn grad_row = active_softmax_grad_row();
  for (int i = 0; i < m; ++i) {
    const int64_t row = (q0 + r0 + i) * p.num_heads_q + h;
    const float lse2 = rs.lse2[row];
    const int visible = lse2 == -kInf ? 0 : win.visible(r0 + i, j0, n);
    // P <= 1 exactly; the clamp inside only matters when fp32 cannot resolve the logits (|s| of
    // 1e9 and more), where the lse round trip could otherwise overflow exp2.
    grad_row(sc.s.data() + static_cast<size_t>(i) * kKvTile,
             sc.dp.data() + static_cast<size_t>(i) * kKvTile, visible, lse2, rs.d[row]);
  }
}

// Packs rows [r0, r0 + m) of query head h: Q and dO as left operands of qk into pq (and, with
// `as_rows`, as right operands of pt into sc).
void pack_query_rows(const core::MhaParams& p, const AttnMicrokernel& mk, int64_t q0, int m,
                     int64_t h, bool as_rows, PackedQuery& pq, BwdScratch& sc) {
  const int d_qk = static_cast<int>(p.d_qk), d_v = static_cast<int>(p.d_v);
  gather(p.q + h * p.q_stride[1], q0, m, p.q_stride[0], sc.ptrs);
  mk.pack_q(sc.ptrs.data(), m, DType::bf16, d_qk, pq.q.data());
  if (as_rows) mk.pack_rows(sc.ptrs.data(), m, DType::bf16, d_qk, sc.q_rows.data());
  gather(p.dout + h * p.dout_stride[1], q0, m, p.dout_stride[0], sc.ptrs);
  mk.pack_q(sc.ptrs.data(), m, DType::bf16, d_v, pq.dout.data());
  if (as_rows) mk.pack_rows(sc.ptrs.data(), m, DType::bf16, d_v, sc.do_rows.data());
}

// Packs KV tokens [kv0, kv0 + n) of KV head hk: K and V as right operands of qk into pkv (and K
// as the right operand of pv into sc, with `k_as_v`).
void pack_kv_tile(const core::MhaParams& p, const AttnMicrokernel& mk, int64_t kv0, int n,
                  int64_t hk, bool k_as_v, PackedKv& pkv, BwdScratch& sc) {
  const int d_qk = static_cast<int>(p.d_qk), d_v = static_cast<int>(p.d_v);
  gather(p.k + hk * p.k_stride[1], kv0, n, p.k_stride[0], sc.ptrs);
  mk.pack_k(sc.ptrs.data(), n, DType::bf16, d_qk, pkv.k.data());
  if (k_as_v) mk.pack_v(sc.ptrs.data(), n, DType::bf16, d_qk, sc.kv.data());
  gather(p.v + hk * p.v_stride[1], kv0, n, p.v_stride[0], sc.ptrs);
  mk.pack_k(sc.ptrs.data(), n, DType::bf16, d_v, pkv.vt.data());
}

// dK and dV of KV tokens [tile.start, + tile.size) (up to kSuper KV tiles) of KV head hk.
void dkdv_task(const core::MhaParams& p, const AttnMicrokernel& mk, const RowStats& rs,
               const SeqTile& tile, int64_t hk, BwdScratch& sc) {
  const int d_qk = static_cast<int>(p.d_qk), d_v = static_cast<int>(p.d_v);
  const int64_t q0 = p.q_start[tile.seq], kv0 = p.kv_start[tile.seq] + tile.start;
  const int64_t s_q = p.q_len(tile.seq);
  const int subs = (tile.size + kKvTile - 1) / kKvTile;
  const Window win(p, tile.seq);
  for (int u = 0; u < subs; ++u) {
    pack_kv_tile(p, mk, kv0 + u * kKvTile, std::min(kKvTile, tile.size - u * kKvTile), hk, false,
                 sc.kvs[u], sc);
  }
  std::fill(sc.acc.begin(), sc.acc.begin() + static_cast<size_t>(tile.size) * d_qk, 0.0f);
  std::fill(sc.acc_v.begin(), sc.acc_v.begin() + static_cast<size_t>(tile.size) * d_v, 0.0f);

  for (int64_t h = hk * p.group(); h < (hk + 1) * p.group(); ++h) {
    for (int64_t r0 = win.first_row(tile.start); r0 < s_q; r0 += kRowTile) {
      const int m = static_cast<int>(std::min<int64_t>(kRowTile, s_q - r0));
      pack_query_rows(p, mk, q0 + r0, m, h, true, sc.qs[0], sc);
      for (int u = 0; u < subs; ++u) {
        const int64_t j0 = tile.start + u * kKvTile;
        if (win.end(r0 + m - 1) <= j0) break;  // no row of the query tile sees this KV tile
        const int n = std::min(kKvTile, tile.size - u * kKvTile);
        probabilities_and_ds(p, mk, win, rs, q0, r0, m, h, j0, n, sc.qs[0], sc.kvs[u], sc);
        const size_t j = static_cast<size_t>(u) * kKvTile;
        mk.pt(sc.s.data(), m, sc.do_rows.data(), d_v, sc.acc_v.data() + j * d_v);
        mk.pt(sc.dp.data(), m, sc.q_rows.data(), d_qk, sc.acc.data() + j * d_qk);
      }
    }
  }
  for (int j = 0; j < tile.size; ++j) {
    decode::store_row(sc.acc.data() + static_cast<size_t>(j) * d_qk, p.scale, d_qk, DType::bf16,
                      p.dk + (kv0 + j) * p.dk_stride[0] + hk * p.dk_stride[1]);
    decode::store_row(sc.acc_v.data() + static_cast<size_t>(j) * d_v, 1.0f, d_v, DType::bf16,
                      p.dv + (kv0 + j) * p.dv_stride[0] + hk * p.dv_stride[1]);
  }
}

// dQ of query rows [tile.start, + tile.size) (up to kSuper query tiles) of query head h.
void dq_task(const core::MhaParams& p, const AttnMicrokernel& mk, const RowStats& rs,
             const SeqTile& tile, int64_t h, BwdScratch& sc) {
  const int d_qk = static_cast<int>(p.d_qk);
  const int64_t q0 = p.q_start[tile.seq], kv0 = p.kv_start[tile.seq];
  const int subs = (tile.size + kRowTile - 1) / kRowTile;
  const Window win(p, tile.seq);
  for (int u = 0; u < subs; ++u) {
    pack_query_rows(p, mk, q0 + tile.start + u * kRowTile,
                    std::min(kRowTile, tile.size - u * kRowTile), h, false, sc.qs[u], sc);
  }
  std::fill(sc.acc.begin(), sc.acc.begin() + static_cast<size_t>(tile.size) * d_qk, 0.0f);

  const int64_t kv_end = win.end(tile.start + tile.size - 1);
  for (int64_t j0 = 0; j0 < kv_end; j0 += kKvTile) {
    const int n = static_cast<int>(std::min<int64_t>(kKvTile, kv_end - j0));
    pack_kv_tile(p, mk, kv0 + j0, n, h / p.group(), true, sc.kvs[0], sc);
    for (int u = 0; u < subs; ++u) {
      const int64_t r0 = tile.start + u * kRowTile;
      const int m = std::min(kRowTile, tile.size - u * kRowTile);
      if (win.end(r0 + m - 1) <= j0) continue;  // no row of this query tile sees the KV tile
      probabilities_and_ds(p, mk, win, rs, q0, r0, m, h, j0, n, sc.qs[u], sc.kvs[0], sc);
      mk.pv(sc.dp.data(), m, n, sc.kv.data(), d_qk,
            sc.acc.data() + static_cast<size_t>(u) * kRowTile * d_qk);
    }
  }
  for (int i = 0; i < tile.size; ++i) {
    decode::store_row(sc.acc.data() + static_cast<size_t>(i) * d_qk, p.scale, d_qk, DType::bf16,
                      p.dq + (q0 + tile.start + i) * p.dq_stride[0] + h * p.dq_stride[1]);
  }
}

}  // namespace

void run_mha_bwd(const core::MhaParams& p) {
  const AttnMicrokernel& mk = active_microkernel();
  const RowStats rs = row_stats(p);
  const std::vector<SeqTile> kv_tiles = seq_tiles(p.kv_start, kSuper * kKvTile);
  const std::vector<SeqTile> q_tiles = seq_tiles(p.q_start, kSuper * kRowTile);
  const int64_t kv_tasks = static_cast<int64_t>(kv_tiles.size()) * p.num_heads_kv;
  const int64_t q_tasks = static_cast<int64_t>(q_tiles.size()) * p.num_heads_q;
#pragma omp parallel num_threads(p.num_threads) if (kv_tasks + q_tasks > 1)
  {
    BwdScratch scratch(mk, static_cast<int>(p.d_qk), static_cast<int>(p.d_v));
    // Under causal the first KV tiles and the last query tiles carry the most work: first.
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t t = 0; t < kv_tasks; ++t) {
      dkdv_task(p, mk, rs, kv_tiles[t / p.num_heads_kv], t % p.num_heads_kv, scratch);
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < q_tasks; ++t) {
      const int64_t n = static_cast<int64_t>(q_tiles.size());
      dq_task(p, mk, rs, q_tiles[n - 1 - t / p.num_heads_q], t % p.num_heads_q, scratch);
    }
  }
}

}  // namespace flashmla::cpu::mha
