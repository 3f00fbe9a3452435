// flash_attn_varlen_fwd / _bwd and the packed-form views: arguments -> validated params -> CPU
// kernels.
#include <cmath>
#include <string>

#include "core/check.h"
#include "core/mha_params.h"
#include "cpu/mha/mha.h"
#include "flashmla/flashmla.h"

namespace flashmla {
namespace {

using core::Checker;

std::string head_dim_rule() {
  return "a multiple of " + std::to_string(kMhaHeadDimMultiple) + " in [" +
         std::to_string(kMhaHeadDimMultiple) + ", " + std::to_string(kMhaMaxHeadDim) + "]";
}

bool valid_head_dim(int64_t d) {
  return d >= kMhaHeadDimMultiple && d <= kMhaMaxHeadDim && d % kMhaHeadDimMultiple == 0;
}

// A (b + 1,) cu_seqlens tensor: 0 first, non-decreasing, `total` last. Returns the offsets;
// then every length must be at most max_seqlen.
std::vector<int64_t> checked_offsets(const Checker& c, const TensorView& cu, const char* arg,
                                     int64_t total, const char* total_name, int64_t max_seqlen,
                                     const char* max_arg) {
  const auto* v = cu.ptr<const int32_t>();
  const int64_t b = cu.size(0) - 1;
  auto entry = [&](int64_t i) {
    return std::string(arg) + "[" + std::to_string(i) + "] = " + std::to_string(v[i]);
  };
  if (v[0] != 0) c.fail(ErrorKind::value, arg, "a first entry of 0", entry(0));
  for (int64_t i = 1; i <= b; ++i) {
    if (v[i] < v[i - 1]) {
      c.fail(ErrorKind::value, arg, "non-decreasing entries (" + entry(i - 1) + ")", entry(i));
    }
  }
  if (v[b] != total) {
    c.fail(ErrorKind::value, arg,
           "a last entry equal to " + std::string(total_name) + " = " + std::to_string(total),
           entry(b));
  }
  std::vector<int64_t> start(v, v + b + 1);
  for (int64_t i = 0; i < b; ++i) {
    if (start[i + 1] - start[i] > max_seqlen) {
      c.fail(ErrorKind::value, max_arg,
             ">= every sequence length (sequence " + std::to_string(i) + " has " +
                 std::to_string(start[i + 1] - start[i]) + ")",
             std::to_string(max_seqlen));
    }
  }
  return start;
}

// is_varlen = false: b sequences of total / b tokens each.
std::vector<int64_t> fixed_offsets(const Checker& c, int64_t b, int64_t total, const char* arg,
                                   const char* total_name, int64_t max_seqlen,
                                   const char* max_arg) {
  if (total % b != 0) {
    c.fail(ErrorKind::value, arg,
           std::string(total_name) + " divisible by b = " + std::to_string(b) +
               " (is_varlen is false: every sequence has the same length)",
           std::string(total_name) + " = " + std::to_string(total));
  }
  const int64_t len = total / b;
  if (len > max_seqlen) {
    c.fail(ErrorKind::value, max_arg,
           ">= the sequence length " + std::to_string(len) + " (is_varlen is false)",
           std::to_string(max_seqlen));
  }
  std::vector<int64_t> start(static_cast<size_t>(b + 1));
  for (int64_t i = 0; i <= b; ++i) start[i] = i * len;
  return start;
}

// Checks the forward problem (q, k, v, lengths, scale, flags) and fills the shape fields of p.
void check_problem(const Checker& c, const MhaFwdArgs& a, core::MhaParams& p) {
  c.present(a.q, "q");
  c.rank(a.q, "q", 3);
  c.dtype(a.q, "q", {DType::bf16});
  const int64_t total_q = a.q.size(0), h_q = a.q.size(1), d_qk = a.q.size(2);
  if (h_q < 1) c.fail(ErrorKind::value, "q", "shape (total_q, h_q >= 1, d_qk)", a.q.shape_string());
  if (!valid_head_dim(d_qk)) {
    c.fail(ErrorKind::value, "q", "head dim d_qk " + head_dim_rule(),
           "shape " + a.q.shape_string());
  }
  c.last_dim_contiguous(a.q, "q");

  c.present(a.k, "k");
  c.rank(a.k, "k", 3);
  c.dtype(a.k, "k", {DType::bf16});
  const int64_t total_kv = a.k.size(0), h_kv = a.k.size(1);
  if (h_kv < 1 || h_q % h_kv != 0) {
    c.fail(ErrorKind::value, "k", "shape (total_kv, h_kv, " + std::to_string(d_qk) +
                                      ") with h_kv >= 1 dividing h_q = " + std::to_string(h_q),
           a.k.shape_string());
  }
  c.shape(a.k, "k", {total_kv, h_kv, d_qk});
  c.last_dim_contiguous(a.k, "k");

  c.present(a.v, "v");
  c.rank(a.v, "v", 3);
  c.dtype(a.v, "v", {DType::bf16});
  const int64_t d_v = a.v.size(2);
  if (!valid_head_dim(d_v)) {
    c.fail(ErrorKind::value, "v", "head dim d_v " + head_dim_rule(),
           "shape " + a.v.shape_string());
  }
  c.shape(a.v, "v", {total_kv, h_kv, d_v});
  c.last_dim_contiguous(a.v, "v");

  c.tensor(a.cu_seqlens_qo, "cu_seqlens_qo", {DType::int32}, {core::kAnySize}, true);
  const int64_t b = a.cu_seqlens_qo.size(0) - 1;
  if (b < 1) {
    c.fail(ErrorKind::value, "cu_seqlens_qo", "shape (b + 1,) with b >= 1",
           a.cu_seqlens_qo.shape_string());
  }
  c.tensor(a.cu_seqlens_kv, "cu_seqlens_kv", {DType::int32}, {b + 1}, true);
  if (a.max_seqlen_qo < 0) {
    c.fail(ErrorKind::value, "max_seqlen_qo", ">= 0", std::to_string(a.max_seqlen_qo));
  }
  if (a.max_seqlen_kv < 0) {
    c.fail(ErrorKind::value, "max_seqlen_kv", ">= 0", std::to_string(a.max_seqlen_kv));
  }
  if (a.is_varlen) {
    p.q_start = checked_offsets(c, a.cu_seqlens_qo, "cu_seqlens_qo", total_q, "total_q",
                                a.max_seqlen_qo, "max_seqlen_qo");
    p.kv_start = checked_offsets(c, a.cu_seqlens_kv, "cu_seqlens_kv", total_kv, "total_kv",
                                 a.max_seqlen_kv, "max_seqlen_kv");
  } else {
    p.q_start = fixed_offsets(c, b, total_q, "q", "total_q", a.max_seqlen_qo, "max_seqlen_qo");
    p.kv_start = fixed_offsets(c, b, total_kv, "k", "total_kv", a.max_seqlen_kv,
                               "max_seqlen_kv");
  }

  if (!(a.dropout_p >= 0.0f && a.dropout_p <= 1.0f)) {
    c.fail(ErrorKind::value, "dropout_p", "a probability in [0, 1] (and 0: no dropout)",
           std::to_string(a.dropout_p));
  }
  if (a.dropout_p != 0.0f) {
    c.fail(ErrorKind::unsupported, "dropout_p", "0 (dropout is not supported)",
           std::to_string(a.dropout_p));
  }
  // deterministic = true is honoured: every output of both passes is bitwise deterministic.
  p.scale = a.softmax_scale.value_or(static_cast<float>(1.0 / std::sqrt(static_cast<double>(d_qk))));
  p.scale_log2 = core::checked_scale_log2(c, p.scale, "softmax_scale");

  p.batch = b;
  p.num_heads_q = h_q;
  p.num_heads_kv = h_kv;
  p.d_qk = d_qk;
  p.d_v = d_v;
  p.causal = a.causal;
  p.q = a.q.ptr<const uint16_t>();
  p.q_stride[0] = a.q.stride(0), p.q_stride[1] = a.q.stride(1);
  p.k = a.k.ptr<const uint16_t>();
  p.k_stride[0] = a.k.stride(0), p.k_stride[1] = a.k.stride(1);
  p.v = a.v.ptr<const uint16_t>();
  p.v_stride[0] = a.v.stride(0), p.v_stride[1] = a.v.stride(1);
}

// out (total_q, h_q, d_v) bf16 and lse (total_q, h_q) fp32; `output`: also non-overlapping.
void check_out_lse(const Checker& c, const MhaFwdArgs& a, const core::MhaParams& p,
                   bool output) {
  const int64_t total_q = p.q_start.back();
  c.tensor(a.out, "out", {DType::bf16}, {total_q, p.num_heads_q, p.d_v}, true);
  c.tensor(a.lse, "lse", {DType::fp32}, {total_q, p.num_heads_q}, false);
  if (output) {
    c.non_overlapping(a.out, "out");
    c.non_overlapping(a.lse, "lse");
  }
}

void set_out_lse(const MhaFwdArgs& a, core::MhaParams& p) {
  p.out = a.out.ptr<uint16_t>();
  p.out_stride[0] = a.out.stride(0), p.out_stride[1] = a.out.stride(1);
  p.lse = a.lse.ptr<float>();
  p.lse_stride[0] = a.lse.stride(0), p.lse_stride[1] = a.lse.stride(1);
}

// A gradient output shaped like `like`.
void check_grad(const Checker& c, const TensorView& g, const char* arg, const TensorView& like) {
  c.tensor(g, arg, {DType::bf16}, {like.size(0), like.size(1), like.size(2)}, true);
  c.non_overlapping(g, arg);
}

}  // namespace

void flash_attn_varlen_fwd(const MhaFwdArgs& a, const Context& ctx) {
  Checker c("flash_attn_varlen_fwd");
  core::MhaParams p;
  p.num_threads = core::checked_num_threads(c, ctx);
  check_problem(c, a, p);
  check_out_lse(c, a, p, true);
  set_out_lse(a, p);
  cpu::mha::run_mha_fwd(p);
}

void flash_attn_varlen_bwd(const MhaBwdArgs& a, const Context& ctx) {
  Checker c("flash_attn_varlen_bwd");
  core::MhaParams p;
  p.num_threads = core::checked_num_threads(c, ctx);
  check_problem(c, a.fwd, p);
  check_out_lse(c, a.fwd, p, false);
  set_out_lse(a.fwd, p);
  c.tensor(a.dout, "dout", {DType::bf16}, {p.q_start.back(), p.num_heads_q, p.d_v}, true);
  check_grad(c, a.dq, "dq", a.fwd.q);
  check_grad(c, a.dk, "dk", a.fwd.k);
  check_grad(c, a.dv, "dv", a.fwd.v);
  p.dout = a.dout.ptr<const uint16_t>();
  p.dout_stride[0] = a.dout.stride(0), p.dout_stride[1] = a.dout.stride(1);
  p.dq = a.dq.ptr<uint16_t>();
  p.dq_stride[0] = a.dq.stride(0), p.dq_stride[1] = a.dq.stride(1);
  p.dk = a.dk.ptr<uint16_t>();
  p.dk_stride[0] = a.dk.stride(0), p.dk_stride[1] = a.dk.stride(1);
  p.dv = a.dv.ptr<uint16_t>();
  p.dv_stride[0] = a.dv.stride(0), p.dv_stride[1] = a.dv.stride(1);
  cpu::mha::run_mha_bwd(p);
}

namespace {

// The packed tensor (total, h, last) split after `head_dim_qk` channels, `parts` times, leaving
// the rest as d_v.
void check_packed(const Checker& c, const TensorView& t, const char* arg, int64_t head_dim_qk,
                  int parts, const char* layout) {
  c.present(t, arg);
  c.rank(t, arg, 3);
  c.dtype(t, arg, {DType::bf16});
  c.last_dim_contiguous(t, arg);
  if (head_dim_qk < 1 || head_dim_qk > (t.size(2) - 1) / parts) {  // d_v = rest >= 1
    c.fail(ErrorKind::value, arg,
           std::string("last dimension ") + layout + " with head_dim_qk = " +
               std::to_string(head_dim_qk) + " and d_v >= 1",
           "shape " + t.shape_string());
  }
}

// Channels [begin, end) of the last dimension.
TensorView slice_last(const TensorView& t, int64_t begin, int64_t end) {
  TensorView s = t;
  s.data = static_cast<char*>(t.data) + begin * t.strides[2] * dtype_size(t.dtype);
  s.shape[2] = end - begin;
  return s;
}

}  // namespace

QkvViews split_qkv_packed(const TensorView& qkv, int64_t d) {
  Checker c("split_qkv_packed");
  check_packed(c, qkv, "qkv", d, 2, "2 * head_dim_qk + d_v");
  return {slice_last(qkv, 0, d), slice_last(qkv, d, 2 * d), slice_last(qkv, 2 * d, qkv.size(2))};
}

KvViews split_kv_packed(const TensorView& kv, int64_t d) {
  Checker c("split_kv_packed");
  check_packed(c, kv, "kv", d, 1, "head_dim_qk + d_v");
  return {slice_last(kv, 0, d), slice_last(kv, d, kv.size(2))};
}

}  // namespace flashmla
