// Per-thread buffers of the CPU attention drivers: packed operands of one tile of query rows and
// one KV tile, the score tile, and the online-softmax state of each row.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/common/microkernel.h"

namespace flashmla::cpu {

struct AttnScratch {
  std::vector<unsigned char> q, k, v;  // packed by the microkernel
  std::vector<unsigned char> qt;       // Q packed for qk_tokens (only where the kernel has it)
  std::vector<float> s;                // (row_tile, kKvTile) scores, then probabilities
  std::vector<float> o;                // (row_tile, d_v) running output
  std::vector<float> m, l;             // running max (log2 units) and sum per row
  std::vector<const void*> rows, tokens;  // gathered query rows and KV tokens
  std::vector<uint16_t> staging;          // FP8 tokens dequantised to bf16: kKvTile x d_qk

  AttnScratch(const AttnMicrokernel& mk, int row_tile, int d_qk, int d_v)
      : q(mk.packed_q_bytes(row_tile, d_qk)), k(mk.packed_k_bytes(d_qk)),
        v(mk.packed_v_bytes(d_v)),
        qt(mk.qk_tokens != nullptr ? mk.packed_qt_bytes(kSmallRows, d_qk) : 0),
        s(static_cast<size_t>(row_tile) * kKvTile),
        o(static_cast<size_t>(row_tile) * d_v), m(row_tile), l(row_tile), rows(row_tile),
        tokens(kKvTile), staging(static_cast<size_t>(kKvTile) * d_qk) {}
};

}  // namespace flashmla::cpu
