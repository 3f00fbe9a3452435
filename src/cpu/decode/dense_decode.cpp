// Dense MLA decode on the CPU. Each part of the split-KV schedule is one task: for every
// (request, KV head, tile of query rows) in its range it walks the 64-token KV tiles, gathers
// each tile once through the block table, packs it for both products, computes the scores of
// all query rows of that KV head at once, updates the online softmax (log2 domain) and
// accumulates P·V. With few rows per KV head (m <= kSmallRows: e.g. DeepSeek-V3 with 16 heads
// on a tensor-parallel rank), packing K would cost about as much as the product, so where the
// microkernel has qk_tokens the scores are computed from the gathered bf16 tokens directly and
// only V is packed. Unsplit requests are finalised in place; pieces of split requests go to the
// accumulators and are merged by the combine.
#include "cpu/decode/dense_decode.h"

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

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int kMaxRowTile = 128;  // query rows processed against one gathered KV tile


// One piece of work: query rows [row0, row0 + nrows) of KV head `kv_head` of request `req`,
// against tokens [tok0, tok1). Row i of a KV head is (token i / hpk, head kv_head*hpk + i % hpk).
struct Piece {
  int64_t req, kv_head, row0, nrows, tok0, tok1;
  bool split;    // write to accumulator `slot` instead of out/lse
  int64_t slot;
};

class DenseDecodeDriver {
 public:
  DenseDecodeDriver(const core::DenseDecodeParams& p, const AttnMicrokernel& mk)
      : p_(p), mk_(mk), hpk_(p.num_heads_q / p.num_heads_kv), elem_(dtype_size(p.dtype)),
        kv_elem_(p.kv_fp8_v32 ? 1 : elem_) {}

  int row_tile() const { return static_cast<int>(std::min<int64_t>(rows_per_kv(), kMaxRowTile)); }
  int64_t rows_per_kv() const { return p_.q_len * hpk_; }

  void run_part(int part, AttnScratch& sc) const {
    const core::SchedRecord& rec = p_.sched[part];
    for (int64_t r = rec.begin_req_idx; r <= rec.end_req_idx && r < p_.batch; ++r) {
      const int64_t seqlen = p_.cache_seqlens[r];
      const bool is_begin = r == rec.begin_req_idx, is_end = r == rec.end_req_idx;
      const int64_t blk0 = is_begin ? rec.begin_block_idx : 0;
      const int64_t blk1 = is_end ? rec.end_block_idx : core::sched_num_blocks(seqlen, kKvTile);
      bool split = false;
      if (is_begin) split = rec.is_first_req_splitted != 0;
      else if (is_end) split = rec.is_last_req_splitted != 0;
      const int64_t slot = p_.num_splits[r] + (is_begin ? rec.begin_split_idx : 0);
      const int64_t tok0 = std::min(blk0 * kKvTile, seqlen);
      const int64_t tok1 = std::min(blk1 * kKvTile, seqlen);
      for (int64_t g = 0; g < p_.num_heads_kv; ++g) {
        for (int64_t row0 = 0; row0 < rows_per_kv(); row0 += row_tile()) {
          const int64_t nrows = std::min<int64_t>(row_tile(), rows_per_kv() - row0);
          run_piece({r, g, row0, nrows, tok0, tok1, split, slot}, sc);
        }
      }
    }
  }

 private:
  int64_t head_of(const Piece& pc, int64_t i) const { return pc.kv_head * hpk_ + (pc.row0 + i) % hpk_; }
  int64_t token_of(const Piece& pc, int64_t i) const { return (pc.row0 + i) / hpk_; }

  const void* token_ptr(int64_t req, int64_t kv_head, int64_t t) const {
    const int64_t blk = p_.block_table[req * p_.block_table_stride + t / p_.page_block_size];
    const int64_t off = blk * p_.k_stride[0] + (t % p_.page_block_size) * p_.k_stride[1] +
                        kv_head * p_.k_stride[2];
    return static_cast<const char*>(p_.k_cache) + off * static_cast<int64_t>(kv_elem_);
  }

  // Asks for the tokens [t0, t1) in L2 ahead of their tile, so that reading the cache overlaps
  // the products of the tile before (the rows of a block are 1152 or 656 bytes apart, many
  // streams at once for the hardware prefetchers).
  void prefetch_tokens(const Piece& pc, int64_t t0, int64_t t1) const {
    const int64_t bytes = p_.kv_fp8_v32 ? 656 : p_.d_qk * static_cast<int64_t>(kv_elem_);
    for (int64_t t = t0; t < t1; ++t) prefetch_to_l2(token_ptr(pc.req, pc.kv_head, t), bytes);
  }

  void run_piece(const Piece& pc, AttnScratch& sc) const {
    const int m = static_cast<int>(pc.nrows);
    const int d_qk = static_cast<int>(p_.d_qk), d_v = static_cast<int>(p_.d_v);
    for (int i = 0; i < m; ++i) {
      const int64_t off = pc.req * p_.q_stride[0] + token_of(pc, i) * p_.q_stride[1] +
                          head_of(pc, i) * p_.q_stride[2];
      sc.rows[i] = static_cast<const char*>(p_.q) + off * static_cast<int64_t>(elem_);
    }
    const DType kv_dtype = p_.kv_fp8_v32 ? DType::bf16 : p_.dtype;  // FP8: bf16 staging
    // The token-major qk reads bf16 tokens only (an fp16 cache has an fp32 microkernel).
    const bool qk_tokens = m <= kSmallRows && mk_.qk_tokens != nullptr && kv_dtype == DType::bf16;
    if (qk_tokens) {
      mk_.pack_qt(sc.rows.data(), m, p_.dtype, d_qk, sc.qt.data());
    } else {
      mk_.pack_q(sc.rows.data(), m, p_.dtype, d_qk, sc.q.data());
    }
    std::fill(sc.m.begin(), sc.m.begin() + m, -kInf);
    std::fill(sc.l.begin(), sc.l.begin() + m, 0.0f);
    std::fill(sc.o.begin(), sc.o.begin() + static_cast<size_t>(m) * d_v, 0.0f);

    const int64_t seqlen = p_.cache_seqlens[pc.req];
    // The first tile too: packing only V (qk_tokens) reads the tokens two at a time, too few
    // misses in flight for a cold tile.
    if (qk_tokens) prefetch_tokens(pc, pc.tok0, std::min<int64_t>(pc.tok0 + kKvTile, pc.tok1));
    for (int64_t t0 = pc.tok0; t0 < pc.tok1; t0 += kKvTile) {
      const int n = static_cast<int>(std::min<int64_t>(kKvTile, pc.tok1 - t0));
      prefetch_tokens(pc, t0 + n, std::min<int64_t>(t0 + n + kKvTile, pc.tok1));
      for (int j = 0; j < n; ++j) {
        sc.tokens[j] = token_ptr(pc.req, pc.kv_head, t0 + j);
        if (p_.kv_fp8_v32) {  // dequantised once per tile, for every head
          uint16_t* dst = sc.staging.data() + static_cast<size_t>(j) * d_qk;
          auto* bytes = static_cast<uint8_t*>(const_cast<void*>(sc.tokens[j]));
          dequant_(KvFormat::v32, {bytes, bytes + 512}, dst);
          sc.tokens[j] = dst;
        }
      }
      if (qk_tokens) {
        mk_.pack_v(sc.tokens.data(), n, kv_dtype, d_v, sc.v.data());
        mk_.qk_tokens(sc.qt.data(), m, sc.tokens.data(), n, d_qk, p_.scale_log2, sc.s.data());
      } else {
        mk_.pack_kv(sc.tokens.data(), n, kv_dtype, d_qk, d_v, sc.k.data(), sc.v.data());
        mk_.qk(sc.q.data(), m, sc.k.data(), d_qk, p_.scale_log2, sc.s.data());
      }
      for (int i = 0; i < m; ++i) {
        // Keys visible to this row in the tile: causal hides the last q_len-1-s tokens.
        int64_t visible = n;
        if (p_.causal) {
          const int64_t last = seqlen - p_.q_len + token_of(pc, i);  // last visible position
          visible = std::clamp<int64_t>(last - t0 + 1, 0, n);
        }
        softmax_(sc.s.data() + static_cast<size_t>(i) * kKvTile, static_cast<int>(visible),
                 sc.m[i], sc.l[i], sc.o.data() + static_cast<size_t>(i) * d_v, d_v);
      }
      mk_.pv(sc.s.data(), m, n, sc.v.data(), d_v, sc.o.data());
    }
    for (int i = 0; i < m; ++i) finish_row(pc, i, sc);
  }

  void finish_row(const Piece& pc, int i, const AttnScratch& sc) const {
    const int64_t s = token_of(pc, i), h = head_of(pc, i);
    const float l = sc.l[i], m = sc.m[i];
    const float* o = sc.o.data() + static_cast<size_t>(i) * p_.d_v;
    const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;  // empty row: out 0
    if (!pc.split) {
      const int64_t off = pc.req * p_.out_stride[0] + s * p_.out_stride[1] + h * p_.out_stride[2];
      store_row(o, inv_l, p_.d_v, p_.dtype,
                static_cast<char*>(p_.out) + off * static_cast<int64_t>(elem_));
      p_.lse[pc.req * p_.lse_stride[0] + h * p_.lse_stride[1] + s * p_.lse_stride[2]] =
          l > 0.0f ? (m + std::log2(l)) * static_cast<float>(M_LN2) : kInf;
    } else {
      const int64_t row = (pc.slot * p_.q_len + s) * p_.num_heads_q + h;
      store_split_piece(o, m, l, p_.d_v, p_.o_accum + row * p_.d_v, p_.lse_accum + row);
    }
  }

  const core::DenseDecodeParams& p_;
  const AttnMicrokernel& mk_;
  const DequantizeKvTokenFn dequant_ = active_kv_dequantizer();  // FP8 tiles
  const SoftmaxUpdateFn softmax_ = active_softmax_update();
  const int64_t hpk_;
  const size_t elem_;     // bytes per element of q and out
  const size_t kv_elem_;  // bytes per element of k_cache
};

}  // namespace

void run_dense_decode(const core::DenseDecodeParams& p) {
  const AttnMicrokernel& mk = active_microkernel(p.dtype);  // q's dtype (fp16: fp32 products)
  const DenseDecodeDriver driver(p, mk);
#pragma omp parallel num_threads(p.num_threads)
  {
    AttnScratch scratch(mk, driver.row_tile(), static_cast<int>(p.d_qk), static_cast<int>(p.d_v));
#pragma omp for schedule(dynamic, 1)
    for (int part = 0; part < p.num_parts; ++part) driver.run_part(part, scratch);
  }
  combine_decode_accumulators(p.batch, p.q_len, p.num_heads_q, p.d_v, p.lse_accum, p.o_accum,
                              p.num_splits, nullptr, p.dtype, p.out, p.out_stride, p.lse,
                              p.lse_stride, p.num_threads);
}

}  // namespace flashmla::cpu::decode
