// The double-precision core of the dense MHA reference (spec §3.1, §3.5): one sequence, one query
// head against one KV head, forward and exact backward. ref::mha_fwd / ref::mha_bwd are loops over
// (sequence, head) on top of it; tests call it directly (e.g. for finite differences).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace flashmla::ref {

// One attention problem; all matrices row-major.
struct MhaHeadProblem {
  int64_t s_q = 0, s_k = 0, d_qk = 0, d_v = 0;  // any of them may be 0
  double scale = 1.0;                            // logits are scale * <q_i, k_j>
  bool causal = false;                           // bottom-right aligned (mha_visible_keys)
  std::vector<double> q;                         // (s_q, d_qk)
  std::vector<double> k;                         // (s_k, d_qk)
  std::vector<double> v;                         // (s_k, d_v)
};

struct MhaHeadOutput {
  std::vector<double> out;  // (s_q, d_v); 0 for a row that sees no key
  std::vector<double> lse;  // (s_q,) natural log; -inf for a row that sees no key
};

struct MhaHeadGrads {
  std::vector<double> dq;  // (s_q, d_qk)
  std::vector<double> dk;  // (s_k, d_qk)
  std::vector<double> dv;  // (s_k, d_v)
};

// Number of keys query row `row` sees: keys 0 .. n-1. Causal (bottom-right aligned): row r sees
// keys j <= r + s_k - s_q, so n = clamp(r + s_k - s_q + 1, 0, s_k); otherwise n = s_k.
inline int64_t mha_visible_keys(int64_t s_q, int64_t s_k, bool causal, int64_t row) {
  return causal ? std::clamp<int64_t>(row + s_k - s_q + 1, 0, s_k) : s_k;
}

// out_i = Σ_j P_ij v_j with P_ij = exp(s_ij − lse_i), s_ij = scale <q_i, k_j> over the visible
// keys, lse_i = ln Σ_j exp(s_ij).
MhaHeadOutput mha_head_fwd(const MhaHeadProblem& p);

// Exact gradients of L = Σ dout ∘ out (dout: (s_q, d_v) row-major) with respect to q, k and v, no
// gradient through lse: dV_j = Σ_i P_ij dO_i, dP_ij = <dO_i, V_j>, D_i = Σ_j P_ij dP_ij,
// dS_ij = P_ij (dP_ij − D_i), dQ_i = scale Σ_j dS_ij K_j, dK_j = scale Σ_i dS_ij Q_i. P is
// recomputed from q and k. Rows that see no key get dq = 0; keys no row sees get dk = dv = 0.
MhaHeadGrads mha_head_bwd(const MhaHeadProblem& p, const std::vector<double>& dout);

}  // namespace flashmla::ref
