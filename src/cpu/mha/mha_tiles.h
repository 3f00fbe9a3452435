// Tiling shared by the MHA forward and backward drivers: query-row tiles and KV tiles of every
// sequence, the bottom-right causal window, and gathering of token pointers.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/mha_params.h"
#include "cpu/common/microkernel.h"

namespace flashmla::cpu::mha {

inline constexpr int kRowTile = 64;  // query rows per tile

// A tile of a sequence: rows (or tokens) [start, start + size) counted within the sequence.
struct SeqTile {
  int64_t seq = 0;
  int64_t start = 0;
  int size = 0;
};

// Tiles of `tile` rows over every sequence's lengths given by the offsets (b + 1,).
inline std::vector<SeqTile> seq_tiles(const std::vector<int64_t>& offsets, int tile) {
  std::vector<SeqTile> tiles;
  for (size_t i = 0; i + 1 < offsets.size(); ++i) {
    const int64_t len = offsets[i + 1] - offsets[i];
    for (int64_t s = 0; s < len; s += tile) {
      tiles.push_back({static_cast<int64_t>(i), s, static_cast<int>(std::min<int64_t>(tile, len - s))});
    }
  }
  return tiles;
}

// The causal window of one sequence: query r sees keys j < r + 1 + shift (bottom-right
// aligned, shift = s_k - s_q), all keys without causal.
struct Window {
  bool causal = false;
  int64_t s_k = 0, shift = 0;

  Window(const core::MhaParams& p, int64_t seq)
      : causal(p.causal), s_k(p.kv_len(seq)), shift(p.kv_len(seq) - p.q_len(seq)) {}

  // Keys [0, end(r)) are visible to query r.
  int64_t end(int64_t r) const { return causal ? std::clamp<int64_t>(r + 1 + shift, 0, s_k) : s_k; }
  // The first query that sees key j (0 without causal).
  int64_t first_row(int64_t j) const { return causal ? std::max<int64_t>(0, j - shift) : 0; }
  // Keys visible to query r within the tile [j0, j0 + n).
  int visible(int64_t r, int64_t j0, int n) const {
    return static_cast<int>(std::clamp<int64_t>(end(r) - j0, 0, n));
  }
};

// Pointers to `count` consecutive tokens of one head: base + (first + t) * token_stride.
template <class T>
void gather(const T* base, int64_t first, int count, int64_t token_stride,
            std::vector<const void*>& out) {
  for (int t = 0; t < count; ++t) out[t] = base + (first + t) * token_stride;
}

}  // namespace flashmla::cpu::mha
