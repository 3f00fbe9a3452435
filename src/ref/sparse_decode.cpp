// Reference sparse MLA decode (spec §3.1, §3.3, §6.3): for each request, query token and query
// head, a plain softmax over the cached tokens its index lists (main pool, then the optional
// extra pool) select, computed in double. FP8 caches are dequantized token by token with the
// kernels' numerics (cpu/common/kv_codec.h); bf16 caches are read directly.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/common/half.h"
#include "cpu/common/kv_codec.h"
#include "flashmla/kv_format.h"
#include "ref/attention_row.h"
#include "ref/element.h"
#include "ref/ref.h"

namespace flashmla::ref {

namespace {

constexpr int64_t kDv = 512;

int32_t load_i32(const TensorView& t, int64_t offset) { return t.ptr<const int32_t>()[offset]; }

// One KV pool: its cache, its index list and its optional per-request length.
struct Pool {
  const TensorView* cache;
  const TensorView* indices;
  const TensorView* length;  // may be undefined (= all columns)
};

// Appends token `slot` (= block * page_block_size + offset) of `cache` to `keys` as d_qk
// doubles: the dequantized FP8 token, or the bf16 values of a bf16 cache.
void append_token(const TensorView& cache, KvFormat format, int64_t d_qk, int64_t slot,
                  std::vector<double>& keys) {
  const int64_t page = cache.shape[1];
  const int64_t block = slot / page, r = slot % page;
  if (cache.dtype == DType::bf16) {
    const int64_t base = block * cache.strides[0] + r * cache.strides[1];
    for (int64_t c = 0; c < d_qk; ++c) keys.push_back(load(cache, base + c * cache.strides[3]));
    return;
  }
  // 1-byte dtype: strides are in bytes. The codec locates the token inside its page block (the
  // MODEL1 layout is block-structured, so it needs the block base, not the token's address).
  uint8_t* block_base = static_cast<uint8_t*>(cache.data) + block * cache.strides[0];
  std::vector<uint16_t> bf16(static_cast<size_t>(d_qk));
  cpu::dequantize_kv_token(format, cpu::kv_token_bytes(format, block_base, page, r), bf16.data());
  for (uint16_t v : bf16) keys.push_back(cpu::bf16_to_float(v));
}

// Appends the valid in-length tokens of request i, query token s from `pool`, in column order
// (duplicates once per occurrence). Entries that are -1 or at columns >= the length are skipped
// without touching the cache.
void gather_pool(const Pool& p, KvFormat format, int64_t d_qk, int64_t i, int64_t s,
                 std::vector<double>& keys) {
  const TensorView& idx = *p.indices;
  int64_t limit = idx.shape[2];
  if (p.length->defined()) {
    limit = std::min<int64_t>(limit, load_i32(*p.length, i * p.length->strides[0]));
  }
  const int64_t row = i * idx.strides[0] + s * idx.strides[1];
  for (int64_t c = 0; c < limit; ++c) {
    const int32_t slot = load_i32(idx, row + c * idx.strides[2]);
    if (slot == -1) continue;
    append_token(*p.cache, format, d_qk, slot, keys);
  }
}

}  // namespace

void sparse_decode(const MlaDecodeArgs& a) {
  const TensorView &q = a.q, &out = a.out, &lse = a.lse;
  const int64_t batch = q.shape[0], s_q = q.shape[1], h_q = q.shape[2], d_qk = q.shape[3];
  const KvFormat format = d_qk == 576 ? KvFormat::v32 : KvFormat::model1;
  const double scale = a.softmax_scale ? *a.softmax_scale : 1.0 / std::sqrt(double(d_qk));
  const Pool main_pool{&a.k_cache, &a.indices, &a.topk_length};
  const Pool extra_pool{&a.extra_k_cache, &a.extra_indices_in_kvcache, &a.extra_topk_length};
  const bool has_extra = a.extra_k_cache.defined() && a.extra_indices_in_kvcache.defined();

  // Each (request, query token) writes its own rows; the arithmetic of a row does not depend on
  // the thread that computes it.
#pragma omp parallel for collapse(2) schedule(dynamic)
  for (int64_t i = 0; i < batch; ++i) {
    for (int64_t s = 0; s < s_q; ++s) {
      // The candidate set J: valid main tokens, then valid extra tokens, as rows of d_qk.
      std::vector<double> keys;
      gather_pool(main_pool, format, d_qk, i, s, keys);
      if (has_extra) gather_pool(extra_pool, format, d_qk, i, s, keys);
      const int64_t n = static_cast<int64_t>(keys.size()) / d_qk;

      // Queries channel-major (queries[c * h_q + h]) so that the innermost loop runs over
      // heads; each dot product still sums its channels in order 0, 1, ..., d_qk - 1.
      std::vector<double> queries(static_cast<size_t>(d_qk * h_q));
      for (int64_t h = 0; h < h_q; ++h) {
        const int64_t base = i * q.strides[0] + s * q.strides[1] + h * q.strides[2];
        for (int64_t c = 0; c < d_qk; ++c) {
          queries[c * h_q + h] = load(q, base + c * q.strides[3]);
        }
      }
      const std::vector<double> logits = head_logits(queries, h_q, keys, n, d_qk, scale);
      std::vector<double> acc(static_cast<size_t>(kDv));
      for (int64_t h = 0; h < h_q; ++h) {
        std::optional<double> sink;
        if (a.attn_sink.defined()) sink = load(a.attn_sink, h * a.attn_sink.strides[0]);
        // V = the first 512 channels of each key (V32: the NoPE part; MODEL1: all of it).
        const double row_lse = softmax_row(logits, h_q, h, n, keys, d_qk, sink, acc).lse;
        const int64_t o_base = i * out.strides[0] + s * out.strides[1] + h * out.strides[2];
        for (int64_t c = 0; c < kDv; ++c) store(out, o_base + c * out.strides[3], acc[c]);
        lse.ptr<float>()[i * lse.strides[0] + h * lse.strides[1] + s * lse.strides[2]] =
            static_cast<float>(row_lse);
      }
    }
  }
}

}  // namespace flashmla::ref
