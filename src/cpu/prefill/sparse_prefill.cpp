// Sparse MLA prefill on the CPU. For each query token, its valid in-length indices are gathered
// (compacted: invalid entries are skipped, never read) into 64-token KV tiles; each tile is
// packed once for both products and used by every head of the token (MQA), with the online
// softmax of the shared drivers. The epilogue writes max_logits and lse (natural units) and the
// output scaled by the attention sink.
#include "cpu/prefill/sparse_prefill.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/common/attn_scratch.h"
#include "cpu/common/microkernel.h"
#include "cpu/common/online_softmax.h"
#include "cpu/decode/store.h"

namespace flashmla::cpu::prefill {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int kMaxRowTile = 128;  // heads processed against one gathered KV tile


// Heads [h0, h0 + nh) of query token `tok`.
void run_task(const core::SparsePrefillParams& p, const AttnMicrokernel& mk, int64_t tok,
              int64_t h0, int nh, AttnScratch& sc) {
  const int d_qk = static_cast<int>(p.d_qk), d_v = static_cast<int>(p.d_v);
  const SoftmaxUpdateFn softmax = active_softmax_update();
  for (int i = 0; i < nh; ++i) sc.rows[i] = p.q + tok * p.q_stride[0] + (h0 + i) * p.q_stride[1];
  mk.pack_q(sc.rows.data(), nh, DType::bf16, d_qk, sc.q.data());
  std::fill(sc.m.begin(), sc.m.begin() + nh, -kInf);
  std::fill(sc.l.begin(), sc.l.begin() + nh, 0.0f);
  std::fill(sc.o.begin(), sc.o.begin() + static_cast<size_t>(nh) * d_v, 0.0f);

  const int32_t* idx = p.indices + tok * p.indices_stride;
  const int64_t cols = p.topk_length ? p.topk_length[tok] : p.topk;
  for (int64_t c = 0; c < cols;) {
    int n = 0;  // valid tokens gathered into this tile
    for (; n < kKvTile && c < cols; ++c) {
      const int32_t t = idx[c];
      if (t >= 0 && t < p.kv_len) sc.tokens[n++] = p.kv + t * p.kv_stride;
    }
    if (n == 0) break;
    mk.pack_kv(sc.tokens.data(), n, DType::bf16, d_qk, d_v, sc.k.data(), sc.v.data());
    mk.qk(sc.q.data(), nh, sc.k.data(), d_qk, p.scale_log2, sc.s.data());
    for (int i = 0; i < nh; ++i) {
      softmax(sc.s.data() + static_cast<size_t>(i) * kKvTile, n, sc.m[i], sc.l[i],
              sc.o.data() + static_cast<size_t>(i) * d_v, d_v);
    }
    mk.pv(sc.s.data(), nh, n, sc.v.data(), d_v, sc.o.data());
  }

  for (int i = 0; i < nh; ++i) {
    const int64_t h = h0 + i;
    const float l = sc.l[i], m = sc.m[i];
    float* max_logits = p.max_logits + tok * p.max_logits_stride[0] + h * p.max_logits_stride[1];
    float* lse = p.lse + tok * p.lse_stride[0] + h * p.lse_stride[1];
    float factor = 0.0f;  // empty row: out 0
    if (l > 0.0f) {
      *max_logits = m * static_cast<float>(M_LN2);
      *lse = (m + std::log2(l)) * static_cast<float>(M_LN2);
      factor = 1.0f / l;
      if (p.attn_sink != nullptr) {  // the sink is an extra logit with a zero value vector
        const float sink = p.attn_sink[h];
        factor /= 1.0f + std::exp(sink - *lse);  // sink +inf: 0; -inf: unchanged
      }
    } else {
      *max_logits = -kInf;
      *lse = kInf;
    }
    decode::store_row(sc.o.data() + static_cast<size_t>(i) * d_v, factor, d_v, DType::bf16,
                      p.out + tok * p.out_stride[0] + h * p.out_stride[1]);
  }
}

}  // namespace

void run_sparse_prefill(const core::SparsePrefillParams& p) {
  const AttnMicrokernel& mk = active_microkernel();
  const int row_tile = static_cast<int>(std::min<int64_t>(p.num_heads_q, kMaxRowTile));
  const int64_t head_tiles = (p.num_heads_q + row_tile - 1) / row_tile;
#pragma omp parallel num_threads(p.num_threads)
  {
    AttnScratch scratch(mk, row_tile, static_cast<int>(p.d_qk), static_cast<int>(p.d_v));
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < p.q_len * head_tiles; ++task) {
      const int64_t tok = task / head_tiles, h0 = (task % head_tiles) * row_tile;
      const int nh = static_cast<int>(std::min<int64_t>(row_tile, p.num_heads_q - h0));
      run_task(p, mk, tok, h0, nh, scratch);
    }
  }
}

}  // namespace flashmla::cpu::prefill
