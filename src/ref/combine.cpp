// Reference combine of split-KV pieces (spec §5.6), in double. Piece LSEs are in log2 units;
// the returned LSE is natural-log and excludes the attention sink.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "ref/element.h"
#include "ref/ref.h"

namespace flashmla::ref {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kLog2e = 1.4426950408889634;  // log2(e)


float load_f32(const TensorView& t, int64_t offset) { return t.ptr<const float>()[offset]; }

}  // namespace

void combine(const MlaCombineArgs& a) {
  const TensorView &la = a.lse_accum, &oa = a.o_accum, &out = a.out, &lse = a.lse;
  const int64_t batch = a.num_splits.shape[0] - 1;
  const int64_t s_q = la.shape[1], h_q = la.shape[2], d_v = oa.shape[3];
  auto split = [&](int64_t i) {
    return int64_t{a.num_splits.ptr<const int32_t>()[i * a.num_splits.strides[0]]};
  };
  // Offset of row (slot or request, s, h) in a tensor whose first three dims are (_, s_q, h_q).
  auto row = [](const TensorView& t, int64_t slot, int64_t s, int64_t h) {
    return slot * t.strides[0] + s * t.strides[1] + h * t.strides[2];
  };

  for (int64_t i = 0; i < batch; ++i) {
    const int64_t first = split(i), n = split(i + 1) - first;
    if (n <= 1) continue;  // a single piece was written by the decode kernel itself
    std::vector<double> ell(static_cast<size_t>(n));
    for (int64_t s = 0; s < s_q; ++s) {
      for (int64_t h = 0; h < h_q; ++h) {
        for (int64_t k = 0; k < n; ++k) {
          ell[k] = load_f32(la, row(la, first + k, s, h));
        }
        // 1-2: global LSE (log2 units) of the pieces; +inf for an empty row.
        double m = *std::max_element(ell.begin(), ell.end());
        if (m == -kInf) m = 0;
        double sum = 0;
        for (double l : ell) sum += std::exp2(l - m);
        double g = sum == 0 ? kInf : std::log2(sum) + m;
        // 3: the returned LSE is natural-log and excludes the sink.
        lse.ptr<float>()[i * lse.strides[0] + h * lse.strides[1] + s * lse.strides[2]] =
            static_cast<float>(g / kLog2e);
        // 4: the sink is one more logit whose value vector is 0.
        if (a.attn_sink.data != nullptr) {
          const double sigma = load_f32(a.attn_sink, h * a.attn_sink.strides[0]);
          const double sigma2 = sigma * kLog2e;
          if (g != kInf) {
            g += std::log2(1 + std::exp2(sigma2 - g));
          } else {
            g = sigma == -kInf ? kInf : sigma2;
          }
        }
        // 5: pieces weighted by their share of the total.
        for (int64_t c = 0; c < d_v; ++c) {
          double acc = 0;
          for (int64_t k = 0; k < n; ++k) {
            const double o = load_f32(oa, row(oa, first + k, s, h) + c * oa.strides[3]);
            acc += std::exp2(ell[k] - g) * o;
          }
          store(out, row(out, i, s, h) + c * out.strides[3], acc);
        }
      }
    }
  }
}

}  // namespace flashmla::ref
