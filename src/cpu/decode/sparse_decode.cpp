// Sparse MLA decode on the CPU. A part walks its (request, block) range of the sparse schedule:
// block k of a request covers 64 columns of its main index list (the first max(ceil(t/64), 1)
// blocks) or of its extra list (the rest), as in §5.3. For every query token and tile of heads,
// the valid entries of a block are gathered compacted (FP8 tokens dequantised once into a bf16
// staging tile shared by all heads), packed once for both products, and folded into the online
// softmax. Unsplit requests are finalised with the sink; split pieces go to the accumulators.
#include "cpu/decode/sparse_decode.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/common/attn_scratch.h"
#include "cpu/common/kv_codec.h"
#include "cpu/common/microkernel.h"
#include "cpu/common/online_softmax.h"
#include "cpu/common/prefetch.h"
#include "cpu/decode/combine.h"
#include "cpu/decode/store.h"

namespace flashmla::cpu::decode {
namespace {

using core::KvCacheKind;
using core::SparseKvPool;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int kMaxRowTile = 128;

KvFormat fp8_format(KvCacheKind kind) {
  return kind == KvCacheKind::fp8_v32 ? KvFormat::v32 : KvFormat::model1;
}

// Where cache slot v of a pool lives: a bf16 row (values; no scales), or an FP8 token.
KvTokenBytes slot_bytes(const SparseKvPool& pool, int32_t v) {
  const int64_t blk = v / pool.page_block_size, off = v % pool.page_block_size;
  auto* block = const_cast<uint8_t*>(pool.data + blk * pool.block_stride_bytes);
  if (pool.kind == KvCacheKind::bf16) return {block + off * pool.token_stride_bytes, nullptr};
  return kv_token_bytes(fp8_format(pool.kind), block, pool.page_block_size, off);
}

// Gathers the valid in-length entries of columns [c0, c1) of one query token's list into
// sc.tokens (bf16 rows); returns how many.
int gather(const SparseKvPool& pool, const int32_t* row, int64_t c0, int64_t c1, int d_qk,
           DequantizeKvTokenFn dequant, AttnScratch& sc) {
  int n = 0;
  for (int64_t col = c0; col < c1; ++col) {
    const int32_t v = row[col];
    if (v == -1) continue;
    const KvTokenBytes t = slot_bytes(pool, v);
    if (pool.kind == KvCacheKind::bf16) {
      sc.tokens[n++] = t.values;
      continue;
    }
    uint16_t* dst = sc.staging.data() + static_cast<size_t>(n) * d_qk;
    dequant(fp8_format(pool.kind), t, dst);
    sc.tokens[n++] = dst;
  }
  return n;
}

// Asks for the valid tokens of columns [c0, c1) in L2 ahead of their gather: the indices are
// random, so no hardware prefetcher can.
void prefetch(const SparseKvPool& pool, const int32_t* row, int64_t c0, int64_t c1) {
  for (int64_t col = c0; col < c1; ++col) {
    const int32_t v = row[col];
    if (v == -1) continue;
    const KvTokenBytes t = slot_bytes(pool, v);
    if (pool.kind == KvCacheKind::bf16) {
      prefetch_to_l2(t.values, pool.token_stride_bytes);
    } else if (pool.kind == KvCacheKind::fp8_v32) {
      prefetch_to_l2(t.values, 656);
    } else {
      prefetch_to_l2(t.values, 576);
      prefetch_to_l2(t.scales, 8);
    }
  }
}

class SparseDecodeDriver {
 public:
  SparseDecodeDriver(const core::SparseDecodeParams& p, const AttnMicrokernel& mk)
      : p_(p), mk_(mk) {}

  int row_tile() const { return static_cast<int>(std::min<int64_t>(p_.num_heads_q, kMaxRowTile)); }

  void run_part(int part, AttnScratch& sc) const {
    const core::SchedRecord& rec = p_.sched[part];
    for (int64_t r = rec.begin_req_idx; r <= rec.end_req_idx && r < p_.batch; ++r) {
      const bool is_begin = r == rec.begin_req_idx, is_end = r == rec.end_req_idx;
      const int64_t blk0 = is_begin ? rec.begin_block_idx : 0;
      const int64_t blk1 = is_end ? rec.end_block_idx : num_blocks(r);
      bool split = false;
      if (is_begin) split = rec.is_first_req_splitted != 0;
      else if (is_end) split = rec.is_last_req_splitted != 0;
      const int64_t slot = p_.num_splits[r] + (is_begin ? rec.begin_split_idx : 0);
      for (int64_t s = 0; s < p_.q_len; ++s) {
        for (int64_t h0 = 0; h0 < p_.num_heads_q; h0 += row_tile()) {
          const int nh = static_cast<int>(std::min<int64_t>(row_tile(), p_.num_heads_q - h0));
          run_piece(r, s, h0, nh, blk0, blk1, split, slot, sc);
        }
      }
    }
  }

 private:
  static int64_t length(const SparseKvPool& pool, int64_t r) {
    return pool.topk_length ? pool.topk_length[r] : pool.topk;
  }
  int64_t main_blocks(int64_t r) const {
    return core::sparse_main_blocks(length(p_.main, r), kKvTile);
  }
  int64_t num_blocks(int64_t r) const {
    const int64_t extra = p_.extra.indices ? (length(p_.extra, r) + kKvTile - 1) / kKvTile : 0;
    return main_blocks(r) + extra;
  }

  // Block blk of request r's list for query token s: columns [c0, c1) of `row` in `pool`.
  struct BlockColumns {
    const SparseKvPool* pool;
    const int32_t* row;
    int64_t c0, c1;
  };
  BlockColumns block_columns(int64_t r, int64_t s, int64_t blk) const {
    const int64_t main = main_blocks(r);
    const bool in_main = blk < main;
    const SparseKvPool& pool = in_main ? p_.main : p_.extra;
    const int64_t c0 = (in_main ? blk : blk - main) * kKvTile;
    return {&pool, pool.indices + r * pool.indices_stride[0] + s * pool.indices_stride[1], c0,
            std::min(c0 + kKvTile, length(pool, r))};
  }

  void run_piece(int64_t r, int64_t s, int64_t h0, int nh, int64_t blk0, int64_t blk1,
                 bool split, int64_t slot, AttnScratch& sc) const {
    const int d_qk = static_cast<int>(p_.d_qk), d_v = static_cast<int>(p_.d_v);
    for (int i = 0; i < nh; ++i) {
      sc.rows[i] = p_.q + r * p_.q_stride[0] + s * p_.q_stride[1] + (h0 + i) * p_.q_stride[2];
    }
    mk_.pack_q(sc.rows.data(), nh, DType::bf16, d_qk, sc.q.data());
    std::fill(sc.m.begin(), sc.m.begin() + nh, -kInf);
    std::fill(sc.l.begin(), sc.l.begin() + nh, 0.0f);
    std::fill(sc.o.begin(), sc.o.begin() + static_cast<size_t>(nh) * d_v, 0.0f);

    for (int64_t blk = blk0; blk < blk1; ++blk) {
      const BlockColumns bc = block_columns(r, s, blk);
      if (blk + 1 < blk1) {  // overlaps this block's work
        const BlockColumns next = block_columns(r, s, blk + 1);
        prefetch(*next.pool, next.row, next.c0, next.c1);
      }
      const int n = gather(*bc.pool, bc.row, bc.c0, bc.c1, d_qk, dequant_, sc);
      if (n == 0) continue;
      mk_.pack_kv(sc.tokens.data(), n, DType::bf16, d_qk, d_v, sc.k.data(), sc.v.data());
      mk_.qk(sc.q.data(), nh, sc.k.data(), d_qk, p_.scale_log2, sc.s.data());
      for (int i = 0; i < nh; ++i) {
        softmax_(sc.s.data() + static_cast<size_t>(i) * kKvTile, n, sc.m[i], sc.l[i],
                 sc.o.data() + static_cast<size_t>(i) * d_v, d_v);
      }
      mk_.pv(sc.s.data(), nh, n, sc.v.data(), d_v, sc.o.data());
    }

    for (int i = 0; i < nh; ++i) {
      const int64_t h = h0 + i;
      const float l = sc.l[i], m = sc.m[i];
      const float* o = sc.o.data() + static_cast<size_t>(i) * d_v;
      if (split) {  // the combine applies the sink
        const int64_t row = (slot * p_.q_len + s) * p_.num_heads_q + h;
        store_split_piece(o, m, l, d_v, p_.o_accum + row * d_v, p_.lse_accum + row);
        continue;
      }
      float* lse = p_.lse + r * p_.lse_stride[0] + h * p_.lse_stride[1] + s * p_.lse_stride[2];
      float factor = 0.0f;  // empty row: out 0, lse +inf
      *lse = kInf;
      if (l > 0.0f) {
        *lse = (m + std::log2(l)) * static_cast<float>(M_LN2);
        factor = 1.0f / l;
        if (p_.attn_sink) factor /= 1.0f + std::exp(p_.attn_sink[h] - *lse);
      }
      store_row(o, factor, d_v, DType::bf16,
                p_.out + r * p_.out_stride[0] + s * p_.out_stride[1] + h * p_.out_stride[2]);
    }
  }

  const core::SparseDecodeParams& p_;
  const AttnMicrokernel& mk_;
  const DequantizeKvTokenFn dequant_ = active_kv_dequantizer();
  const SoftmaxUpdateFn softmax_ = active_softmax_update();
};

}  // namespace

void run_sparse_decode(const core::SparseDecodeParams& p) {
  const AttnMicrokernel& mk = active_microkernel();
  const SparseDecodeDriver driver(p, mk);
#pragma omp parallel num_threads(p.num_threads)
  {
    AttnScratch scratch(mk, driver.row_tile(), static_cast<int>(p.d_qk), 512);
#pragma omp for schedule(dynamic, 1)
    for (int part = 0; part < p.num_parts; ++part) driver.run_part(part, scratch);
  }
  combine_decode_accumulators(p.batch, p.q_len, p.num_heads_q, p.d_v, p.lse_accum, p.o_accum,
                              p.num_splits, p.attn_sink, DType::bf16, p.out, p.out_stride, p.lse,
                              p.lse_stride, p.num_threads);
}

}  // namespace flashmla::cpu::decode
