// Dense MHA varlen prefill, forward and backward (FlashMLA's flash_attn_varlen_func family,
// reference §2.5, §3.5): attention over the decompressed heads for prefill and training.
// Included by flashmla/flashmla.h. Rules and edge cases: docs/conventions.md §10.
//
//   flashmla::MhaFwdArgs fwd{.q = q, .k = k, .v = v, .cu_seqlens_qo = cu_q, .cu_seqlens_kv = cu_k,
//                            .max_seqlen_qo = max_q, .max_seqlen_kv = max_k, .causal = true,
//                            .out = out, .lse = lse};
//   flashmla::flash_attn_varlen_fwd(fwd);
//   flashmla::flash_attn_varlen_bwd({.fwd = fwd, .dout = dout, .dq = dq, .dk = dk, .dv = dv});
#pragma once

#include <cstdint>
#include <optional>

#include "flashmla/context.h"
#include "flashmla/tensor.h"

namespace flashmla {

// Head dims: FlashMLA's (d_qk, d_v) pairs (128, 128) and (192, 128), and beyond them any d_qk
// and d_v that are multiples of kMhaHeadDimMultiple in [kMhaHeadDimMultiple, kMhaMaxHeadDim].
inline constexpr int64_t kMhaHeadDimMultiple = 8;
inline constexpr int64_t kMhaMaxHeadDim = 256;

struct MhaFwdArgs {
  TensorView q;              // (total_q, h_q, d_qk) bf16; last dim contiguous
  TensorView k;              // (total_kv, h_kv, d_qk) bf16, h_q % h_kv == 0; last dim contiguous
  TensorView v;              // (total_kv, h_kv, d_v) bf16; last dim contiguous
  TensorView cu_seqlens_qo;  // (b + 1,) int32, contiguous, b >= 1: 0 = c[0] <= ... <= c[b] =
                             // total_q; sequence i has queries [c[i], c[i + 1])
  TensorView cu_seqlens_kv;  // (b + 1,) int32, contiguous: the same for keys, ending at total_kv
  int64_t max_seqlen_qo = 0;  // >= every query length (an upper bound)
  int64_t max_seqlen_kv = 0;  // >= every key length
  float dropout_p = 0.0f;     // must be 0 (no dropout)
  std::optional<float> softmax_scale;  // |scale| * log2(e) finite in fp32; default d_qk^-0.5
  bool causal = false;        // bottom-right aligned: query r of (s_q, s_k) sees keys
                              // j <= r + s_k - s_q
  bool deterministic = false;  // accepted either way: every output is bitwise deterministic
  bool is_varlen = true;      // false: every sequence has total_q / b queries and total_kv / b
                              // keys (both must divide); the cu_seqlens values are not read
  TensorView out;             // (total_q, h_q, d_v) bf16; last dim contiguous; written
  TensorView lse;             // (total_q, h_q) fp32, natural log, any non-overlapping strides
                              // (FlashMLA's are (1, total_q)); written. A row that sees no key
                              // gets out 0 and lse -inf
};

void flash_attn_varlen_fwd(const MhaFwdArgs& args, const Context& ctx = {});

// Gradients of sum(dout * out) with respect to q, k and v (FlashAttention-2 style, no gradient
// through lse). GQA is supported. dq, dk and dv are all bitwise deterministic: the same for any
// run and any thread count.
struct MhaBwdArgs {
  MhaFwdArgs fwd;   // the forward call's arguments; fwd.out and fwd.lse are now inputs (the
                    // forward's results)
  TensorView dout;  // (total_q, h_q, d_v) bf16; last dim contiguous
  TensorView dq;    // (total_q, h_q, d_qk) bf16; last dim contiguous; written
  TensorView dk;    // (total_kv, h_kv, d_qk) bf16; last dim contiguous; written
  TensorView dv;    // (total_kv, h_kv, d_v) bf16; last dim contiguous; written
};

void flash_attn_varlen_bwd(const MhaBwdArgs& args, const Context& ctx = {});

// The packed forms (flash_attn_varlen_qkvpacked_func / _kvpacked_func) only slice the last
// dimension. These give the views to pass as q, k, v (and, over the gradient buffer, as dq, dk,
// dv); they check that head_dim_qk leaves d_v >= 1 channels.
struct QkvViews {
  TensorView q, k, v;
};
// qkv (total, h, 2 * head_dim_qk + d_v): q = [..., :d_qk], k = [..., d_qk:2 d_qk], v = the rest.
QkvViews split_qkv_packed(const TensorView& qkv, int64_t head_dim_qk);

struct KvViews {
  TensorView k, v;
};
// kv (total_kv, h_kv, head_dim_qk + d_v): k = [..., :d_qk], v = the rest.
KvViews split_kv_packed(const TensorView& kv, int64_t head_dim_qk);

}  // namespace flashmla
