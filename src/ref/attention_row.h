// The softmax core shared by the sparse references: logits of all heads against a gathered key
// set, and one head's softmax, output and sink, in double.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

namespace flashmla::ref {

// logits[j * h_q + h] = scale * <q_h, k_j> for j < n. `queries` is channel-major
// (queries[c * h_q + h]); each dot product sums its channels in order.
inline std::vector<double> head_logits(const std::vector<double>& queries, int64_t h_q,
                                       const std::vector<double>& keys, int64_t n, int64_t d_qk,
                                       double scale) {
  std::vector<double> logits(static_cast<size_t>(n * h_q), 0.0);
  for (int64_t j = 0; j < n; ++j) {
    double* row = &logits[j * h_q];
    for (int64_t c = 0; c < d_qk; ++c) {
      const double k = keys[j * d_qk + c];
      for (int64_t h = 0; h < h_q; ++h) row[h] += queries[c * h_q + h] * k;
    }
    for (int64_t h = 0; h < h_q; ++h) row[h] *= scale;
  }
  return logits;
}

struct RowSoftmax {
  double max_logit = -std::numeric_limits<double>::infinity();  // -inf for an empty row
  double lse = std::numeric_limits<double>::infinity();         // +inf for an empty row
};

// Head h over the n keys: acc = Σ softmax_j · k_j[0:d_v] (all zero for an empty row), then, with
// a sink σ (an extra logit whose value vector is 0), acc *= 1 / (1 + exp(σ − lse)); σ = +inf
// gives 0, −inf leaves acc unchanged. The returned lse never includes the sink.
inline RowSoftmax softmax_row(const std::vector<double>& logits, int64_t h_q, int64_t h,
                              int64_t n, const std::vector<double>& keys, int64_t d_qk,
                              std::optional<double> sink, std::vector<double>& acc) {
  std::fill(acc.begin(), acc.end(), 0.0);
  RowSoftmax r;
  if (n == 0) return r;
  for (int64_t j = 0; j < n; ++j) r.max_logit = std::max(r.max_logit, logits[j * h_q + h]);
  double sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += std::exp(logits[j * h_q + h] - r.max_logit);
  r.lse = r.max_logit + std::log(sum);
  for (int64_t j = 0; j < n; ++j) {
    const double p = std::exp(logits[j * h_q + h] - r.lse);
    for (size_t c = 0; c < acc.size(); ++c) acc[c] += p * keys[j * d_qk + c];
  }
  if (sink) {
    const double factor = 1.0 / (1.0 + std::exp(*sink - r.lse));
    for (double& v : acc) v *= factor;
  }
  return r;
}

}  // namespace flashmla::ref
