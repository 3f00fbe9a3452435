// Sparse decode test cases generated like FlashMLA's tests/test_flash_mla_sparse_decoding.py
// (reference §6.3): bf16 q, a paged KV cache (FP8 in format V32 or MODEL1, or bf16) whose
// tokens are NaN unless a valid in-length index references them, physical-slot index lists
// built through a random block table, optional topk_length, extra pool, attention sink,
// all-invalid / zero-length requests, varlen pools and non-contiguous q / indices.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "flashmla/flashmla.h"
#include "testing/compare.h"
#include "testing/host_tensor.h"

namespace flashmla::testing {

inline constexpr int64_t kSparseDecodeHeadDimV = 512;  // d_v

struct SparseDecodeCase {
  int64_t batch = 1, q_len = 1, num_heads_q = 1;
  int64_t d_qk = 576;            // 576: V32 format, 512: MODEL1
  int64_t kv_len = 64;           // tokens per request in the main pool (before varlen)
  int64_t topk = 64;             // columns of indices
  int64_t page_block_size = 64;  // any value >= 1
  bool fp8 = true;               // false: bf16 cache (num_blocks, B, 1, d_qk)
  bool topk_length = false;      // per-request lengths randint(0, topk + 1)
  bool extra = false;            // a second pool (extra_k_cache, extra_indices_in_kvcache)
  bool extra_topk_length = false;  // per-request extra lengths (needs `extra`)
  bool sink = false;             // attn_sink: N(0,1) with ~31% +inf and ~31% -inf entries
  bool all_invalid = false;      // ~1/3 of the requests (at least one) index nothing (-1 only)
  bool zero_lengths = false;     // about half of the requests of each pool have no tokens
  bool varlen = false;           // pool lengths ~ max(round(N(kv_len, kv_len/2)), q_len)
  bool non_contiguous = false;   // q and index lists padded (Padding::non_contiguous())
  int64_t extra_kv_len = 0;      // 0: 2 * extra_topk
  int64_t extra_topk = 0;        // columns of extra_indices_in_kvcache (>= 1 with `extra`)
  int64_t extra_page_block_size = 0;  // 0: page_block_size
  uint64_t seed = 0;

  // A GoogleTest-friendly name, e.g. "b4_sq1_hq64_d576_sk512_k64_p2_fp8_len_x128k64p3_s3".
  std::string name() const;
};

// GoogleTest prints parameters with this (the case name instead of raw bytes).
inline void PrintTo(const SparseDecodeCase& c, std::ostream* os) { *os << c.name(); }

struct SparseDecodeData {
  HostTensor q;                  // (b, s_q, h_q, d_qk) bf16
  // FP8: the cache's backing bytes (num_blocks * block stride, uint8; see cache_view()); bf16:
  // the cache itself, (num_blocks, B, 1, d_qk).
  HostTensor k_cache;
  HostTensor indices;            // (b, s_q, topk) int32
  HostTensor topk_length;        // (b,) int32; unallocated without lengths
  HostTensor attn_sink;          // (h_q,) fp32; unallocated without a sink
  HostTensor extra_k_cache;      // like k_cache; unallocated without an extra pool
  HostTensor extra_indices;      // (b, s_q, extra_topk) int32; unallocated without extra
  HostTensor extra_topk_length;  // (b,) int32; unallocated without extra lengths
  HostTensor out;                // (b, s_q, h_q, 512) bf16, NaN until written
  HostTensor lse;                // buffer (b, s_q, h_q) fp32, NaN until written (see lse_view)
  float softmax_scale = 0;       // d_qk^-0.55

  // Layout of each pool's cache (the FP8 views are rebuilt from these on every call, so that
  // copies of the data stay consistent).
  struct CacheLayout {
    int64_t num_blocks = 0, page_block_size = 0, block_stride = 0;  // stride(0) in bytes (FP8)
    bool fp8 = false;
    int64_t bytes_per_token = 0;  // 656 | 584 (FP8)
  };
  CacheLayout main_layout, extra_layout;

  TensorView cache_view() const;        // the k_cache argument
  TensorView extra_cache_view() const;  // the extra_k_cache argument (null without extra)
  // The lse argument: a (b, h_q, s_q) view of the (b, s_q, h_q) buffer, strides
  // (s_q * h_q, 1, h_q), as FlashMLA returns it.
  TensorView lse_view() const;

  // Arguments of a sparse decode call writing into `out` and `lse` (no schedule given).
  MlaDecodeArgs args() const;
};

// Deterministic in c.seed. Index entries past a request's topk_length hold garbage (INT_MAX,
// INT_MIN, 2147480000, -2) or valid slots pointing at NaN tokens.
SparseDecodeData make_sparse_decode_data(const SparseDecodeCase& c);

// args.out and args.lse (already computed) against the reference run on the same inputs, with
// FlashMLA's sparse decode tolerances (reference §6.1): one result per output.
std::vector<CompareResult> compare_sparse_decode_with_reference(const MlaDecodeArgs& args);

// Owned buffers of an explicit get_mla_metadata schedule (sparse mode) of `parts` parts for the
// data's lengths; attach() computes it and points args' metadata and num_splits at it.
struct SparseDecodeSchedule {
  std::vector<int32_t> meta, splits;
  void attach(const SparseDecodeData& d, int parts, MlaDecodeArgs& args);
};

}  // namespace flashmla::testing
