// Dense decode test cases generated like FlashMLA's tests/test_flash_mla_dense_decoding.py
// (reference §6.2): paged bf16/fp16 KV cache with NaN in every slot that is not a valid token,
// garbage block-table entries past each sequence, optional varlen / zero-length requests and
// non-contiguous q / block_table.
#pragma once

#include <cstdint>
#include <ostream>
#include <optional>
#include <string>
#include <vector>

#include "flashmla/flashmla.h"
#include "testing/compare.h"
#include "testing/host_tensor.h"

namespace flashmla::testing {

inline constexpr int64_t kDenseHeadDimQK = 576;  // d_qk
inline constexpr int64_t kDenseHeadDimV = 512;   // d_v
// Block-table entry of blocks past a sequence's end (FlashMLA's tests use the same value).
inline constexpr int32_t kGarbageBlockId = 2147480000;

struct DenseDecodeCase {
  int64_t batch = 1, q_len = 1, kv_len = 1, num_heads_q = 1, num_heads_kv = 1;
  int64_t page_block_size = 64;  // any value >= 1
  bool varlen = false;           // cache_seqlens ~ max(round(N(kv_len, kv_len/2)), q_len)
  bool causal = false;
  bool zero_lengths = false;     // about half of the requests (at least one if batch > 1) empty
  bool non_contiguous = false;   // q and block_table padded (Padding::non_contiguous())
  DType dtype = DType::bf16;     // q, k_cache and out
  uint64_t seed = 0;

  // A GoogleTest-friendly name, e.g. "b2_sq1_sk140_hq64_hkv1_p64_varlen_causal_bf16_s0".
  std::string name() const;
};

// GoogleTest prints parameters with this (the case name instead of raw bytes).
inline void PrintTo(const DenseDecodeCase& c, std::ostream* os) { *os << c.name(); }


struct DenseDecodeData {
  HostTensor q;              // (b, s_q, h_q, 576)
  HostTensor k_cache;        // (num_blocks, page_block_size, h_kv, 576)
  HostTensor block_table;    // (b, max_blocks_per_seq) int32
  HostTensor cache_seqlens;  // (b,) int32
  HostTensor out;            // (b, s_q, h_q, 512), NaN until written
  HostTensor lse;            // (b, h_q, s_q) fp32, NaN until written
  std::vector<int32_t> seqlens;  // cache_seqlens as a vector
  bool causal = false;

  // Arguments of a decode call writing into `out` and `lse` (no schedule given).
  MlaDecodeArgs args(std::optional<float> softmax_scale = {}) const;
};

// Deterministic in c.seed. The logical content (seqlens, q, and the K value of every logical
// token) depends only on the seed and the sizes, not on page_block_size or non_contiguous, so
// cases differing only in layout must give identical results.
DenseDecodeData make_dense_decode_data(const DenseDecodeCase& c);

// out and lse of a dense decode call (args: host views of what the call wrote; the cache may be
// FP8 V32) against ref::dense_decode of the same inputs, with FlashMLA's dense decode tolerances.
std::vector<CompareResult> compare_dense_decode_with_reference(const MlaDecodeArgs& args);

}  // namespace flashmla::testing
