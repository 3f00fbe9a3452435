// Reference dense MLA decode (spec §3.1-3.2): for each request, query token and query head,
// a plain softmax over the visible cached tokens, computed in double.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/common/kv_codec.h"
#include "ref/element.h"
#include "ref/ref.h"

namespace flashmla::ref {

namespace {


int32_t load_i32(const TensorView& t, int64_t offset) { return t.ptr<const int32_t>()[offset]; }

// The first `seqlen` logical tokens of request `i`, KV head `kv_head`, gathered through the block
// table into a row-major (seqlen, d_qk) buffer of doubles. Never touches tokens >= seqlen nor
// block-table entries past the last needed block.
std::vector<double> gather_keys(const MlaDecodeArgs& a, int64_t i, int64_t kv_head,
                                int64_t seqlen) {
  const TensorView& kc = a.k_cache;
  const int64_t page = kc.shape[1], d_qk = a.q.shape[3];
  std::vector<double> keys(static_cast<size_t>(seqlen * d_qk));
  for (int64_t t = 0; t < seqlen; ++t) {
    const int64_t block = load_i32(a.block_table, i * a.block_table.strides[0] +
                                                      (t / page) * a.block_table.strides[1]);
    const int64_t base = block * kc.strides[0] + (t % page) * kc.strides[1] +
                         kv_head * kc.strides[2];
    if (kc.dtype == DType::uint8 || kc.dtype == DType::fp8_e4m3) {  // FP8 V32 (656 B/token)
      auto* bytes = kc.ptr<uint8_t>() + base;
      uint16_t token[576];
      cpu::dequantize_kv_token(KvFormat::v32, {bytes, bytes + 512}, token);
      for (int64_t c = 0; c < d_qk; ++c) keys[t * d_qk + c] = cpu::bf16_to_float(token[c]);
      continue;
    }
    for (int64_t c = 0; c < d_qk; ++c) keys[t * d_qk + c] = load(kc, base + c * kc.strides[3]);
  }
  return keys;
}

// Logits scale·<q_h, k_j> of the `group` query heads sharing one KV head, for keys j < visible:
// logits[j * group + h]. `queries` is head-major (queries[h * d_qk + c]); each dot product sums
// its channels in order 0, 1, ..., d_qk - 1 in its own accumulator (four keys at a time, so that
// each query element loaded serves four products).
void group_logits(const std::vector<double>& queries, const std::vector<double>& keys,
                  int64_t group, int64_t d_qk, int64_t visible, double scale,
                  std::vector<double>& logits) {
  int64_t j = 0;
  for (; j + 4 <= visible; j += 4) {
    const double* k0 = &keys[j * d_qk];
    const double *k1 = k0 + d_qk, *k2 = k1 + d_qk, *k3 = k2 + d_qk;
    for (int64_t h = 0; h < group; ++h) {
      const double* q = &queries[h * d_qk];
      double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (int64_t c = 0; c < d_qk; ++c) {
        const double qc = q[c];
        s0 += qc * k0[c];
        s1 += qc * k1[c];
        s2 += qc * k2[c];
        s3 += qc * k3[c];
      }
      logits[j * group + h] = s0 * scale;
      logits[(j + 1) * group + h] = s1 * scale;
      logits[(j + 2) * group + h] = s2 * scale;
      logits[(j + 3) * group + h] = s3 * scale;
    }
  }
  for (; j < visible; ++j) {
    const double* k = &keys[j * d_qk];
    for (int64_t h = 0; h < group; ++h) {
      const double* q = &queries[h * d_qk];
      double s = 0;
      for (int64_t c = 0; c < d_qk; ++c) s += q[c] * k[c];
      logits[j * group + h] = s * scale;
    }
  }
}

// acc[c] += Σ_j p[j] · keys[j][c] for c < d_v, the keys j < n added in order (four at a time:
// one load and store of acc[c] per four keys).
void weighted_sum(const std::vector<double>& p, const std::vector<double>& keys, int64_t n,
                  int64_t d_qk, int64_t d_v, std::vector<double>& acc) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const double* k0 = &keys[j * d_qk];
    const double *k1 = k0 + d_qk, *k2 = k1 + d_qk, *k3 = k2 + d_qk;
    const double p0 = p[j], p1 = p[j + 1], p2 = p[j + 2], p3 = p[j + 3];
    for (int64_t c = 0; c < d_v; ++c) {
      double a = acc[c];
      a += p0 * k0[c];
      a += p1 * k1[c];
      a += p2 * k2[c];
      a += p3 * k3[c];
      acc[c] = a;
    }
  }
  for (; j < n; ++j) {
    const double* k = &keys[j * d_qk];
    for (int64_t c = 0; c < d_v; ++c) acc[c] += p[j] * k[c];
  }
}

}  // namespace

void dense_decode(const MlaDecodeArgs& a) {
  const TensorView &q = a.q, &out = a.out, &lse = a.lse;
  const int64_t batch = q.shape[0], s_q = q.shape[1], h_q = q.shape[2], d_qk = q.shape[3];
  const int64_t h_kv = a.k_cache.shape[2], group = h_q / h_kv, d_v = a.head_dim_v;
  const double scale = a.softmax_scale ? *a.softmax_scale : 1.0 / std::sqrt(double(d_qk));
  const bool causal = a.causal && s_q > 1;

  // Each (request, KV head) pair writes disjoint rows; the arithmetic of a row does not depend
  // on the thread that computes it.
#pragma omp parallel for collapse(2) schedule(dynamic)
  for (int64_t i = 0; i < batch; ++i) {
    for (int64_t g = 0; g < h_kv; ++g) {
      const int64_t seqlen = load_i32(a.cache_seqlens, i * a.cache_seqlens.strides[0]);
      const std::vector<double> keys = gather_keys(a, i, g, seqlen);
      std::vector<double> queries(static_cast<size_t>(d_qk * group));
      std::vector<double> logits(static_cast<size_t>(seqlen * group));
      std::vector<double> acc(static_cast<size_t>(d_v));
      std::vector<double> p(static_cast<size_t>(seqlen));  // one row's probabilities
      for (int64_t s = 0; s < s_q; ++s) {
        // Bottom-right aligned causal window: token s sees keys j <= seqlen - s_q + s.
        const int64_t visible = causal ? std::clamp<int64_t>(seqlen - s_q + s + 1, 0, seqlen)
                                       : seqlen;
        for (int64_t hg = 0; hg < group; ++hg) {
          const int64_t h = g * group + hg;
          const int64_t q_base = i * q.strides[0] + s * q.strides[1] + h * q.strides[2];
          for (int64_t c = 0; c < d_qk; ++c) {
            queries[hg * d_qk + c] = load(q, q_base + c * q.strides[3]);
          }
        }
        group_logits(queries, keys, group, d_qk, visible, scale, logits);

        for (int64_t hg = 0; hg < group; ++hg) {
          const int64_t h = g * group + hg;
          double row_lse = std::numeric_limits<double>::infinity();  // empty row
          std::fill(acc.begin(), acc.end(), 0.0);
          if (visible > 0) {
            double max_logit = -std::numeric_limits<double>::infinity();
            for (int64_t j = 0; j < visible; ++j) {
              max_logit = std::max(max_logit, logits[j * group + hg]);
            }
            double sum = 0;
            for (int64_t j = 0; j < visible; ++j) {
              sum += std::exp(logits[j * group + hg] - max_logit);
            }
            row_lse = max_logit + std::log(sum);
            for (int64_t j = 0; j < visible; ++j) p[j] = std::exp(logits[j * group + hg] - row_lse);
            weighted_sum(p, keys, visible, d_qk, d_v, acc);
          }
          const int64_t o_base = i * out.strides[0] + s * out.strides[1] + h * out.strides[2];
          for (int64_t c = 0; c < d_v; ++c) store(out, o_base + c * out.strides[3], acc[c]);
          lse.ptr<float>()[i * lse.strides[0] + h * lse.strides[1] + s * lse.strides[2]] =
              static_cast<float>(row_lse);
        }
      }
    }
  }
}

}  // namespace flashmla::ref
