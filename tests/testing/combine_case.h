// Random inputs for the split-KV combine (reference §5.6): piece LSEs in log2 units with some
// empty (-inf) pieces and whole empty requests, normalised piece outputs, an optional sink with
// ±inf entries, and NaN-prefilled outputs (rows of requests with <= 1 piece must stay NaN).
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "core/combine_params.h"
#include "flashmla/flashmla.h"
#include "testing/compare.h"
#include "testing/host_tensor.h"

namespace flashmla::testing {

struct CombineCase {
  int64_t q_len = 1, num_heads_q = 1, head_dim_v = 512;
  std::vector<int> pieces;  // pieces of each request (its size is the batch); 0 and 1 allowed
  bool sink = false;        // with attn_sink
  DType out_dtype = DType::bf16;
  uint64_t seed = 0;

  int64_t batch() const { return static_cast<int64_t>(pieces.size()); }
  // A GoogleTest-friendly name, e.g. "b3_sq2_hq8_dv512_n1_2_5_sink_bf16_s0".
  std::string name() const;
};

// GoogleTest prints parameters with this (the case name instead of raw bytes).
inline void PrintTo(const CombineCase& c, std::ostream* os) { *os << c.name(); }

struct CombineData {
  HostTensor num_splits;  // (b + 1,) int32
  HostTensor lse_accum;   // (num_slots, s_q, h_q) fp32, log2 units
  HostTensor o_accum;     // (num_slots, s_q, h_q, d_v) fp32; 0 for empty pieces
  HostTensor attn_sink;   // (h_q,) fp32; unallocated (null view) without a sink
  HostTensor out;         // (b, s_q, h_q, d_v) out_dtype, NaN until written
  HostTensor lse;         // (b, h_q, s_q) fp32, NaN until written

  MlaCombineArgs args() const;
};

// Deterministic in c.seed. Each piece row is empty (-inf) with probability 1/8, each request
// with >= 2 pieces is entirely empty with probability 1/4 (the last such request always is, when
// there are two or more), and each sink entry is -inf or +inf with probability about 1/8 each.
CombineData make_combine_data(const CombineCase& c);

// data.out and data.lse (already computed) against the reference combine of data's inputs,
// with FlashMLA's tolerances (reference §6.1): one result per output, for
// `EXPECT_TRUE(r.ok) << r.message`.
std::vector<CompareResult> compare_combine_with_reference(const CombineData& data);

// The params of a combine of `data` as the library would build them (for calling a backend's
// run_combine directly).
core::CombineParams combine_params_of(const CombineData& data);

}  // namespace flashmla::testing
