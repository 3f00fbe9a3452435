// Reference dense MHA varlen prefill, forward and backward (spec §2.5, §3.1, §3.5): for each
// sequence and head, a plain softmax over the visible keys and its exact gradients, computed in
// double.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "ref/element.h"
#include "ref/mha_head.h"
#include "ref/ref.h"

namespace flashmla::ref {

namespace {

double dot(const double* a, const double* b, int64_t n) {
  double sum = 0;
  for (int64_t c = 0; c < n; ++c) sum += a[c] * b[c];
  return sum;
}

// The softmax of every row over its visible keys: probs (s_q, s_k) row-major, P_ij =
// exp(s_ij − lse_i) for j < mha_visible_keys(i) and 0 beyond; lse (s_q,), -inf for an empty row.
void softmax_probs(const MhaHeadProblem& p, std::vector<double>& probs, std::vector<double>& lse) {
  probs.assign(static_cast<size_t>(p.s_q * p.s_k), 0.0);
  lse.assign(static_cast<size_t>(p.s_q), -std::numeric_limits<double>::infinity());
  std::vector<double> logits(static_cast<size_t>(p.s_k));
  for (int64_t i = 0; i < p.s_q; ++i) {
    const int64_t n = mha_visible_keys(p.s_q, p.s_k, p.causal, i);
    if (n == 0) continue;
    double max_logit = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < n; ++j) {
      logits[j] = p.scale * dot(p.q.data() + i * p.d_qk, p.k.data() + j * p.d_qk, p.d_qk);
      max_logit = std::max(max_logit, logits[j]);
    }
    double sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += std::exp(logits[j] - max_logit);
    lse[i] = max_logit + std::log(sum);
    for (int64_t j = 0; j < n; ++j) probs[i * p.s_k + j] = std::exp(logits[j] - lse[i]);
  }
}

// ---- tensor access ---------------------------------------------------------------------------

// Query rows [q0, q0 + s_q) and key rows [k0, k0 + s_k) of one sequence.
struct Sequence {
  int64_t q0, s_q, k0, s_k;
};

int32_t load_i32(const TensorView& t, int64_t offset) { return t.ptr<const int32_t>()[offset]; }

// Sequence i: from cu_seqlens, or with is_varlen = false total / b rows each (cu_seqlens unread).
Sequence sequence(const MhaFwdArgs& a, int64_t i) {
  const int64_t b = a.cu_seqlens_qo.shape[0] - 1;
  if (!a.is_varlen) {
    const int64_t s_q = a.q.shape[0] / b, s_k = a.k.shape[0] / b;
    return {i * s_q, s_q, i * s_k, s_k};
  }
  const TensorView &cq = a.cu_seqlens_qo, &ck = a.cu_seqlens_kv;
  const int64_t q0 = load_i32(cq, i * cq.strides[0]), q1 = load_i32(cq, (i + 1) * cq.strides[0]);
  const int64_t k0 = load_i32(ck, i * ck.strides[0]), k1 = load_i32(ck, (i + 1) * ck.strides[0]);
  return {q0, q1 - q0, k0, k1 - k0};
}

// Rows [row0, row0 + rows) of head `head` of a (total, heads, width) tensor, as a row-major
// (rows, width) buffer of doubles.
std::vector<double> load_head(const TensorView& t, int64_t row0, int64_t rows, int64_t head) {
  const int64_t width = t.shape[2];
  std::vector<double> values(static_cast<size_t>(rows * width));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = (row0 + r) * t.strides[0] + head * t.strides[1];
    for (int64_t c = 0; c < width; ++c) values[r * width + c] = load(t, base + c * t.strides[2]);
  }
  return values;
}

// The inverse of load_head: each value rounded once to the tensor's dtype.
void store_head(const TensorView& t, int64_t row0, int64_t rows, int64_t head,
                const std::vector<double>& values) {
  const int64_t width = t.shape[2];
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = (row0 + r) * t.strides[0] + head * t.strides[1];
    for (int64_t c = 0; c < width; ++c) store(t, base + c * t.strides[2], values[r * width + c]);
  }
}

// The problem of sequence `s` with the keys and values of KV head `kv_head`; q left empty.
MhaHeadProblem kv_problem(const MhaFwdArgs& a, const Sequence& s, int64_t kv_head) {
  MhaHeadProblem p;
  p.s_q = s.s_q;
  p.s_k = s.s_k;
  p.d_qk = a.q.shape[2];
  p.d_v = a.v.shape[2];
  p.scale = a.softmax_scale ? *a.softmax_scale : 1.0 / std::sqrt(double(p.d_qk));
  p.causal = a.causal;
  p.k = load_head(a.k, s.k0, s.s_k, kv_head);
  p.v = load_head(a.v, s.k0, s.s_k, kv_head);
  return p;
}

}  // namespace

// ---- one (sequence, head) --------------------------------------------------------------------

MhaHeadOutput mha_head_fwd(const MhaHeadProblem& p) {
  MhaHeadOutput o;
  std::vector<double> probs;
  softmax_probs(p, probs, o.lse);
  o.out.assign(static_cast<size_t>(p.s_q * p.d_v), 0.0);
  for (int64_t i = 0; i < p.s_q; ++i) {
    const int64_t n = mha_visible_keys(p.s_q, p.s_k, p.causal, i);
    double* out = o.out.data() + i * p.d_v;
    for (int64_t j = 0; j < n; ++j) {
      const double pij = probs[i * p.s_k + j];
      for (int64_t c = 0; c < p.d_v; ++c) out[c] += pij * p.v[j * p.d_v + c];
    }
  }
  return o;
}

MhaHeadGrads mha_head_bwd(const MhaHeadProblem& p, const std::vector<double>& dout) {
  std::vector<double> probs, lse;
  softmax_probs(p, probs, lse);
  MhaHeadGrads g;
  g.dq.assign(static_cast<size_t>(p.s_q * p.d_qk), 0.0);
  g.dk.assign(static_cast<size_t>(p.s_k * p.d_qk), 0.0);
  g.dv.assign(static_cast<size_t>(p.s_k * p.d_v), 0.0);
  std::vector<double> ds(static_cast<size_t>(p.s_k));
  for (int64_t i = 0; i < p.s_q; ++i) {
    const int64_t n = mha_visible_keys(p.s_q, p.s_k, p.causal, i);
    const double* d_o = dout.data() + i * p.d_v;
    const double* prob = probs.data() + i * p.s_k;
    // dP_ij = <dO_i, V_j>; D_i = Σ_j P_ij dP_ij (= <dO_i, out_i> with the exact out).
    double d_i = 0;
    for (int64_t j = 0; j < n; ++j) {
      ds[j] = dot(d_o, p.v.data() + j * p.d_v, p.d_v);
      d_i += prob[j] * ds[j];
    }
    for (int64_t j = 0; j < n; ++j) ds[j] = prob[j] * (ds[j] - d_i);  // dS_ij
    double* dq = g.dq.data() + i * p.d_qk;
    const double* q = p.q.data() + i * p.d_qk;
    for (int64_t j = 0; j < n; ++j) {
      const double* k = p.k.data() + j * p.d_qk;
      double* dk = g.dk.data() + j * p.d_qk;
      double* dv = g.dv.data() + j * p.d_v;
      for (int64_t c = 0; c < p.d_qk; ++c) dq[c] += ds[j] * k[c];   // Σ_j dS_ij K_j
      for (int64_t c = 0; c < p.d_qk; ++c) dk[c] += ds[j] * q[c];   // Σ_i dS_ij Q_i
      for (int64_t c = 0; c < p.d_v; ++c) dv[c] += prob[j] * d_o[c];  // Σ_i P_ij dO_i
    }
  }
  for (double& x : g.dq) x *= p.scale;
  for (double& x : g.dk) x *= p.scale;
  return g;
}

// ---- tensors ---------------------------------------------------------------------------------

void mha_fwd(const MhaFwdArgs& a) {
  const int64_t b = a.cu_seqlens_qo.shape[0] - 1, h_q = a.q.shape[1];
  const int64_t group = h_q / a.k.shape[1];

  // Each (sequence, query head) pair writes its own rows of out and lse; the arithmetic of an
  // element does not depend on the thread that computes it.
#pragma omp parallel for schedule(dynamic)
  for (int64_t t = 0; t < b * h_q; ++t) {
    const int64_t i = t / h_q, h = t % h_q;
    const Sequence s = sequence(a, i);
    MhaHeadProblem p = kv_problem(a, s, h / group);
    p.q = load_head(a.q, s.q0, s.s_q, h);
    const MhaHeadOutput o = mha_head_fwd(p);
    store_head(a.out, s.q0, s.s_q, h, o.out);
    for (int64_t r = 0; r < s.s_q; ++r) {
      store(a.lse, (s.q0 + r) * a.lse.strides[0] + h * a.lse.strides[1], o.lse[r]);
    }
  }
}

void mha_bwd(const MhaBwdArgs& a) {
  const MhaFwdArgs& f = a.fwd;
  const int64_t b = f.cu_seqlens_qo.shape[0] - 1, h_kv = f.k.shape[1];
  const int64_t group = f.q.shape[1] / h_kv;

  // Each (sequence, KV head) pair writes its own rows of dk / dv and the dq rows of its group's
  // query heads; dk / dv sum the heads of the group in order, whatever the thread.
#pragma omp parallel for schedule(dynamic)
  for (int64_t t = 0; t < b * h_kv; ++t) {
    const int64_t i = t / h_kv, g = t % h_kv;
    const Sequence s = sequence(f, i);
    MhaHeadProblem p = kv_problem(f, s, g);
    std::vector<double> dk(p.k.size(), 0.0), dv(p.v.size(), 0.0);
    for (int64_t h = g * group; h < (g + 1) * group; ++h) {
      p.q = load_head(f.q, s.q0, s.s_q, h);
      const MhaHeadGrads grads = mha_head_bwd(p, load_head(a.dout, s.q0, s.s_q, h));
      store_head(a.dq, s.q0, s.s_q, h, grads.dq);
      for (size_t e = 0; e < dk.size(); ++e) dk[e] += grads.dk[e];
      for (size_t e = 0; e < dv.size(); ++e) dv[e] += grads.dv[e];
    }
    store_head(a.dk, s.k0, s.s_k, g, dk);
    store_head(a.dv, s.k0, s.s_k, g, dv);
  }
}

}  // namespace flashmla::ref
