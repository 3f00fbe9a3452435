#include "testing/work.h"

#include <algorithm>
#include <numeric>
#include <vector>

namespace flashmla::testing {

Work dense_decode_work(const DenseDecodeCase& c, const DenseDecodeData& d, bool fp8_v32) {
  const double total_len = std::accumulate(d.seqlens.begin(), d.seqlens.end(), 0.0);
  const double d_qk = 576, d_v = 512, elem = dtype_size(c.dtype);
  return {.flops = 2.0 * c.num_heads_q * c.q_len * total_len * (d_qk + d_v),
          .bytes = total_len * c.num_heads_kv * (fp8_v32 ? 656 : d_qk * elem) +
                   double(c.batch) * c.q_len * c.num_heads_q * (d_qk + d_v) * elem};
}

Work sparse_decode_work(const SparseDecodeCase& c, const MlaDecodeArgs& a) {
  double attended = 0, unique = 0;
  auto count = [&](const TensorView& idx, const TensorView& len, int64_t slots) {
    if (!idx.defined()) return;
    std::vector<bool> used(static_cast<size_t>(slots), false);
    for (int64_t i = 0; i < c.batch; ++i) {
      const int64_t cols = len.defined() ? len.ptr<const int32_t>()[i] : idx.size(2);
      for (int64_t s = 0; s < c.q_len; ++s) {
        const int32_t* row = idx.ptr<const int32_t>() + i * idx.stride(0) + s * idx.stride(1);
        for (int64_t col = 0; col < cols; ++col) {
          if (row[col] == -1) continue;
          attended += 1;
          if (!used[row[col]]) unique += 1, used[row[col]] = true;
        }
      }
    }
  };
  count(a.indices, a.topk_length, a.k_cache.size(0) * a.k_cache.size(1));
  count(a.extra_indices_in_kvcache, a.extra_topk_length,
        a.extra_k_cache.defined() ? a.extra_k_cache.size(0) * a.extra_k_cache.size(1) : 0);
  const double d_v = 512, bpt = c.fp8 ? (c.d_qk == 576 ? 656 : 584) : 2.0 * c.d_qk;
  return {.flops = 2.0 * c.num_heads_q * attended * (c.d_qk + d_v),
          .bytes = unique * bpt + 2.0 * c.batch * c.q_len * c.num_heads_q * (c.d_qk + d_v)};
}

Work sparse_prefill_work(const SparsePrefillCase& c, const SparsePrefillData& d) {
  double pairs = 0;
  std::vector<bool> used(static_cast<size_t>(c.kv_len), false);
  for (int64_t s = 0; s < c.q_len; ++s) {
    const int64_t cols = d.topk_length.view().defined() ? d.topk_length.i32({s}) : c.topk;
    for (int64_t col = 0; col < cols; ++col) {
      const int32_t t = d.indices.i32({s, 0, col});
      if (t >= 0 && t < c.kv_len) pairs += 1, used[t] = true;
    }
  }
  const double n_valid = static_cast<double>(std::count(used.begin(), used.end(), true));
  const double d_v = 512;
  return {.flops = 2.0 * pairs * c.num_heads_q * (c.d_qk + d_v),
          .bytes = n_valid * c.d_qk * 2 + double(c.q_len) * c.num_heads_q * (c.d_qk + d_v) * 2};
}

MhaWork mha_work(const MhaCase& c, const MhaData& d) {
  double pairs = 0;
  for (int64_t i = 0; i < c.batch; ++i) {
    const int64_t s_q = d.q_lens[i], s_k = d.kv_lens[i];
    for (int64_t row = 0; row < s_q; ++row) {
      pairs += c.causal ? std::clamp<int64_t>(row + 1 + s_k - s_q, 0, s_k) : s_k;
    }
  }
  const double h = c.num_heads_q, hk = c.num_heads_kv, dq = c.d_qk, dv = c.d_v;
  const double tq = d.total_q(), tk = d.total_kv();
  MhaWork w;
  w.fwd = {.flops = pairs * h * 2 * (dq + dv), .bytes = 2 * (tq * h * (dq + dv) + tk * hk * (dq + dv))};
  w.bwd = {.flops = pairs * h * 2 * (3 * dq + 2 * dv), .bytes = 2 * w.fwd.bytes + 2 * tq * h * dv};
  return w;
}

}  // namespace flashmla::testing
