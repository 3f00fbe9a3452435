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

}  // namespace flashmla::cpu::decode
