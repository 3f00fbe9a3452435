// Reference sparse MLA prefill (spec §3.1, §3.4): for each query token and query head, a plain
// softmax over the keys its index list selects, computed in double.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "ref/attention_row.h"
#include "ref/element.h"
#include "ref/ref.h"

namespace flashmla::ref {

namespace {


int32_t load_i32(const TensorView& t, int64_t offset) { return t.ptr<const int32_t>()[offset]; }

// The keys token `s` attends to, in index-list order, gathered into a row-major (n, d_qk)
// buffer of doubles. An entry counts (once per occurrence) when its column is below the token's
// topk_length and its value lies in [0, s_kv); other entries are skipped without touching kv.
std::vector<double> gather_keys(const SparsePrefillArgs& a, int64_t s) {
  const TensorView &kv = a.kv, &idx = a.indices;
  const int64_t s_kv = kv.shape[0], d_qk = kv.shape[2];
  int64_t limit = idx.shape[2];
  if (a.topk_length.defined()) {
    limit = std::min<int64_t>(limit, load_i32(a.topk_length, s * a.topk_length.strides[0]));
  }
  std::vector<double> keys;
  for (int64_t c = 0; c < limit; ++c) {
    const int64_t t = load_i32(idx, s * idx.strides[0] + c * idx.strides[2]);
    if (t < 0 || t >= s_kv) continue;
    const int64_t base = t * kv.strides[0];
    for (int64_t ch = 0; ch < d_qk; ++ch) keys.push_back(load(kv, base + ch * kv.strides[2]));
  }
  return keys;
}

}  // namespace

void sparse_prefill(const SparsePrefillArgs& a) {
  const TensorView &q = a.q, &out = a.out;
  const int64_t s_q = q.shape[0], h_q = q.shape[1], d_qk = q.shape[2], d_v = a.d_v;
  const double scale = a.sm_scale;

  // Each query token writes its own rows; the arithmetic of a row does not depend on the thread
  // that computes it.
#pragma omp parallel for schedule(dynamic)
  for (int64_t s = 0; s < s_q; ++s) {
    const std::vector<double> keys = gather_keys(a, s);
    const int64_t n = static_cast<int64_t>(keys.size()) / d_qk;

    // Queries channel-major (queries[c * h_q + h]) so that the innermost loop runs over heads;
    // each dot product still sums its channels in order 0, 1, ..., d_qk - 1.
    std::vector<double> queries(static_cast<size_t>(d_qk * h_q));
    for (int64_t h = 0; h < h_q; ++h) {
      const int64_t base = s * q.strides[0] + h * q.strides[1];
      for (int64_t c = 0; c < d_qk; ++c) queries[c * h_q + h] = load(q, base + c * q.strides[2]);
    }
    const std::vector<double> logits = head_logits(queries, h_q, keys, n, d_qk, scale);
    std::vector<double> acc(static_cast<size_t>(d_v));
    for (int64_t h = 0; h < h_q; ++h) {
      std::optional<double> sink;
      if (a.attn_sink.defined()) sink = load(a.attn_sink, h * a.attn_sink.strides[0]);
      const auto [max_logit, lse] = softmax_row(logits, h_q, h, n, keys, d_qk, sink, acc);
      const int64_t o_base = s * out.strides[0] + h * out.strides[1];
      for (int64_t c = 0; c < d_v; ++c) store(out, o_base + c * out.strides[2], acc[c]);
      a.max_logits.ptr<float>()[s * a.max_logits.strides[0] + h * a.max_logits.strides[1]] =
          static_cast<float>(max_logit);
      a.lse.ptr<float>()[s * a.lse.strides[0] + h * a.lse.strides[1]] =
          static_cast<float>(lse);
    }
  }
}

}  // namespace flashmla::ref
