// Sparse prefill test cases generated like FlashMLA's tests/test_flash_mla_sparse_prefill.py
// (reference §6.4): bf16 q / kv, per-token index lists mixing distinct valid positions,
// duplicates and invalid markers, optional topk_length / attention sink / all-invalid rows /
// non-contiguous inputs, and NaN in every kv row that no valid in-length index references.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "flashmla/flashmla.h"
#include "testing/compare.h"
#include "testing/host_tensor.h"

namespace flashmla::testing {

inline constexpr int64_t kSparseHeadDimV = 512;  // d_v
inline constexpr float kSparseSmScale = 0.5f;    // FlashMLA's test value

struct SparsePrefillCase {
  int64_t q_len = 1, kv_len = 1, num_heads_q = 1, d_qk = 576, topk = 1;
  bool sink = false;              // attn_sink: N(0,1) with ~31% +inf and ~31% -inf entries
  bool topk_length = false;       // per-token lengths in [0, topk], some 0
  bool all_invalid_rows = false;  // ~10% of the tokens (at least one) index nothing valid
  bool non_contiguous = false;    // q, kv and indices padded (Padding::non_contiguous())
  uint64_t seed = 0;

  // A GoogleTest-friendly name, e.g. "sq62_sk592_hq64_d576_k128_sink_len_s3".
  std::string name() const;
};

// GoogleTest prints parameters with this (the case name instead of raw bytes).
inline void PrintTo(const SparsePrefillCase& c, std::ostream* os) { *os << c.name(); }

struct SparsePrefillData {
  HostTensor q;            // (s_q, h_q, d_qk) bf16
  HostTensor kv;           // (s_kv, 1, d_qk) bf16, NaN rows where unreferenced
  HostTensor indices;      // (s_q, 1, topk) int32
  HostTensor attn_sink;    // (h_q,) fp32; unallocated (null view) without a sink
  HostTensor topk_length;  // (s_q,) int32; unallocated without lengths
  HostTensor out;          // (s_q, h_q, 512) bf16, NaN until written
  HostTensor max_logits;   // (s_q, h_q) fp32, NaN until written
  HostTensor lse;          // (s_q, h_q) fp32, NaN until written
  float sm_scale = kSparseSmScale;

  // Arguments of a flash_mla_sparse_fwd call writing into out, max_logits and lse.
  SparsePrefillArgs args() const;
};

// Deterministic in c.seed. Entries past a token's topk_length may hold valid indices, and some
// of them point at NaN rows; indices with topk > kv_len hold every position once plus invalid
// markers (-2^31, -123456, -1, s_kv, 114514, 1919810, 2147480000, 2^31-1).
SparsePrefillData make_sparse_prefill_data(const SparsePrefillCase& c);

// The outputs args.out, args.max_logits and args.lse (already computed) against the reference
// run on the same inputs, with FlashMLA's sparse prefill tolerances (reference §6.1): one
// result per output, for `EXPECT_TRUE(r.ok) << r.message`.
std::vector<CompareResult> compare_sparse_prefill_with_reference(const SparsePrefillArgs& args);

}  // namespace flashmla::testing
