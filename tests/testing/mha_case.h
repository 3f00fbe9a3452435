// Dense MHA prefill test cases generated like FlashMLA's tests/test_fmha_sm100.py (reference
// §6.5), scaled down: bf16 q, k, v, dout = N(0,1)/10; per-sequence lengths fixed or
// max(N(mean, mean/2), 1) with s_k >= s_q when the case's kv_len >= q_len; softmax_scale
// (d_qk + 100)^-0.5; lse stored head-major (strides (1, total_q)) as FlashMLA returns it.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "flashmla/flashmla.h"
#include "testing/host_tensor.h"

namespace flashmla::testing {

struct MhaCase {
  int64_t batch = 2, q_len = 64, kv_len = 64;  // mean lengths per sequence
  int64_t num_heads_q = 8, num_heads_kv = 8, d_qk = 128, d_v = 128;
  bool varlen = false;          // lengths drawn per sequence (else all equal)
  bool fixed_api = false;       // equal lengths passed with is_varlen = false (cu_seqlens garbage)
  bool causal = false;
  bool zero_lengths = false;    // some sequences get s_q = 0, others s_k = 0
  bool non_contiguous = false;  // q, k, v, dout, out and gradients padded (NaN in the padding)
  bool default_scale = false;   // softmax_scale left unset (d_qk^-0.5)
  uint64_t seed = 0;

  // A GoogleTest-friendly name, e.g. "b2_sq64_sk64_h8_hk2_d192_dv128_var_causal_s1".
  std::string name() const;
};

inline void PrintTo(const MhaCase& c, std::ostream* os) { *os << c.name(); }

struct MhaData {
  MhaCase c;
  std::vector<int32_t> q_lens, kv_lens;
  HostTensor q, k, v, dout;           // inputs, bf16
  HostTensor cu_seqlens_qo, cu_seqlens_kv;
  int64_t max_seqlen_qo = 0, max_seqlen_kv = 0;
  HostTensor out;                     // (total_q, h_q, d_v) bf16, NaN until written
  HostTensor lse_storage;             // (h_q, total_q) fp32, NaN until written
  HostTensor dq, dk, dv;              // bf16, NaN until written

  int64_t total_q() const { return q.size(0); }
  int64_t total_kv() const { return k.size(0); }
  // lse as the API sees it: (total_q, h_q) with strides (1, total_q).
  TensorView lse() const;
  // Arguments of the forward call writing out and lse, and of the backward call reading them
  // and writing dq, dk, dv.
  MhaFwdArgs fwd_args() const;
  MhaBwdArgs bwd_args() const;
};

// Deterministic in c.seed.
MhaData make_mha_data(const MhaCase& c);

// Fresh NaN-filled outputs (out, lse, dq, dk, dv) shaped like d's: for a second run into other
// buffers (reference, other thread counts).
MhaData with_fresh_outputs(const MhaData& d);

}  // namespace flashmla::testing
