#include "cpu/decode/combine.h"

#include <cmath>
#include <limits>
#include <vector>

#include "cpu/decode/store.h"

namespace flashmla::cpu::decode {

void run_combine(const core::CombineParams& p) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const float log2e = static_cast<float>(M_LOG2E);
  const int64_t rows = p.batch * p.q_len;  // (request, query token) pairs

#pragma omp parallel num_threads(p.num_threads)
  {
    std::vector<float> weight, acc(p.d_v);
#pragma omp for schedule(dynamic, 4)
    for (int64_t rs = 0; rs < rows; ++rs) {
      const int64_t r = rs / p.q_len, s = rs % p.q_len;
      const int64_t first = p.num_splits[r], n = p.num_splits[r + 1] - first;
      if (n < 2) continue;
      weight.resize(n);
      for (int64_t h = 0; h < p.num_heads_q; ++h) {
        auto lse_at = [&](int64_t k) {
          return p.lse_accum[(first + k) * p.lse_accum_stride[0] + s * p.lse_accum_stride[1] +
                             h * p.lse_accum_stride[2]];
        };
        float m = -kInf;
        for (int64_t k = 0; k < n; ++k) m = std::max(m, lse_at(k));
        if (m == -kInf) m = 0.0f;
        float sum = 0.0f;
        for (int64_t k = 0; k < n; ++k) sum += std::exp2(lse_at(k) - m);
        float g = sum == 0.0f ? kInf : std::log2(sum) + m;
        p.lse[r * p.lse_stride[0] + h * p.lse_stride[1] + s * p.lse_stride[2]] = g / log2e;
        if (p.attn_sink != nullptr) {
          const float sink = p.attn_sink[h];
          if (g != kInf) {
            g += std::log2(1.0f + std::exp2(sink * log2e - g));
          } else {
            g = sink == -kInf ? kInf : sink * log2e;
          }
        }
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t k = 0; k < n; ++k) {
          const float w = std::exp2(lse_at(k) - g);
          if (w == 0.0f) continue;  // an empty piece adds nothing
          const float* o = p.o_accum + (first + k) * p.o_accum_stride[0] +
                           s * p.o_accum_stride[1] + h * p.o_accum_stride[2];
          for (int64_t c = 0; c < p.d_v; ++c) acc[c] += w * o[c];
        }
        store_row(acc.data(), 1.0f, p.d_v, p.out_dtype,
                  static_cast<char*>(p.out) + dtype_size(p.out_dtype) *
                      (r * p.out_stride[0] + s * p.out_stride[1] + h * p.out_stride[2]));
      }
    }
  }
}

void combine_decode_accumulators(int64_t batch, int64_t q_len, int64_t num_heads_q, int64_t d_v,
                                 const float* lse_accum, const float* o_accum,
                                 const int32_t* num_splits, const float* attn_sink,
                                 DType out_dtype, void* out, const int64_t out_stride[3],
                                 float* lse, const int64_t lse_stride[3], int num_threads) {
  if (num_splits[batch] == batch) return;  // no request was split
  const int64_t slot_rows = q_len * num_heads_q;
  run_combine({
      .batch = batch, .q_len = q_len, .num_heads_q = num_heads_q, .d_v = d_v,
      .lse_accum = lse_accum,
      .lse_accum_stride = {slot_rows, num_heads_q, 1},
      .o_accum = o_accum,
      .o_accum_stride = {slot_rows * d_v, num_heads_q * d_v, d_v},
      .num_splits = num_splits,
      .attn_sink = attn_sink,
      .out_dtype = out_dtype,
      .out = out,
      .out_stride = {out_stride[0], out_stride[1], out_stride[2]},
      .lse = lse,
      .lse_stride = {lse_stride[0], lse_stride[1], lse_stride[2]},
      .num_threads = num_threads,
  });
}

}  // namespace flashmla::cpu::decode
