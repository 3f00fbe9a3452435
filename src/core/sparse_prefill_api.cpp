// flash_mla_sparse_fwd: arguments -> validated params -> CPU kernel, or for CUDA tensors the CUDA
// backend's.
#include <cmath>
#include <string>

#include "core/check.h"
#include "core/cuda_backend.h"
#include "core/sparse_prefill_params.h"
#include "core/sparse_prefill_prepare.h"
#include "cpu/prefill/sparse_prefill.h"
#include "flashmla/flashmla.h"

namespace flashmla {

core::SparsePrefillParams core::prepare_sparse_prefill(const SparsePrefillArgs& a,
                                                       const Context& ctx) {
  core::Checker c("flash_mla_sparse_fwd");
  const int num_threads = core::checked_num_threads(c, ctx);

  c.use_device_of(a.q, "q");
  c.present(a.q, "q");
  c.rank(a.q, "q", 3);
  c.dtype(a.q, "q", {DType::bf16});
  const int64_t s_q = a.q.size(0), h_q = a.q.size(1), d_qk = a.q.size(2);
  if (s_q < 1 || h_q < 1 || (d_qk != 512 && d_qk != 576)) {
    c.fail(ErrorKind::value, "q", "shape (s_q >= 1, h_q >= 1, d_qk = 512 or 576)",
           a.q.shape_string());
  }
  c.last_dim_contiguous(a.q, "q");

  c.present(a.kv, "kv");
  c.rank(a.kv, "kv", 3);
  c.dtype(a.kv, "kv", {DType::bf16});
  const int64_t s_kv = a.kv.size(0);
  c.shape(a.kv, "kv", {s_kv, 1, d_qk});
  c.last_dim_contiguous(a.kv, "kv");

  c.present(a.indices, "indices");
  c.rank(a.indices, "indices", 3);
  c.dtype(a.indices, "indices", {DType::int32});
  const int64_t topk = a.indices.size(2);
  if (topk < 1) c.fail(ErrorKind::value, "indices", "shape (s_q, 1, topk >= 1)", a.indices.shape_string());
  c.shape(a.indices, "indices", {s_q, 1, topk});
  c.last_dim_contiguous(a.indices, "indices");

  const float scale_log2 = core::checked_scale_log2(c, a.sm_scale, "sm_scale");
  if (a.d_v != 512) c.fail(ErrorKind::value, "d_v", "512", std::to_string(a.d_v));

  if (a.attn_sink.defined()) c.tensor(a.attn_sink, "attn_sink", {DType::fp32}, {h_q}, true);
  if (a.topk_length.defined()) {
    c.tensor(a.topk_length, "topk_length", {DType::int32}, {s_q}, true);
    const auto* len = a.topk_length.ptr<const int32_t>();
    for (int64_t s = 0; s < (c.on_cuda() ? 0 : s_q); ++s) {  // the GPU kernel clamps instead
      if (len[s] < 0 || len[s] > topk) {
        c.fail(ErrorKind::value, "topk_length", "values in [0, " + std::to_string(topk) + "]",
               "topk_length[" + std::to_string(s) + "] = " + std::to_string(len[s]));
      }
    }
  }

  c.tensor(a.out, "out", {DType::bf16}, {s_q, h_q, 512}, true);
  c.non_overlapping(a.out, "out");
  c.tensor(a.max_logits, "max_logits", {DType::fp32}, {s_q, h_q}, false);
  c.non_overlapping(a.max_logits, "max_logits");
  c.tensor(a.lse, "lse", {DType::fp32}, {s_q, h_q}, false);
  c.non_overlapping(a.lse, "lse");

  return {
      .q_len = s_q, .kv_len = s_kv, .num_heads_q = h_q, .d_qk = d_qk, .d_v = 512, .topk = topk,
      .scale_log2 = scale_log2,
      .q = a.q.ptr<const uint16_t>(),
      .q_stride = {a.q.stride(0), a.q.stride(1)},
      .kv = a.kv.ptr<const uint16_t>(),
      .kv_stride = a.kv.stride(0),
      .indices = a.indices.ptr<const int32_t>(),
      .indices_stride = a.indices.stride(0),
      .topk_length = a.topk_length.defined() ? a.topk_length.ptr<const int32_t>() : nullptr,
      .attn_sink = a.attn_sink.defined() ? a.attn_sink.ptr<const float>() : nullptr,
      .out = a.out.ptr<uint16_t>(),
      .out_stride = {a.out.stride(0), a.out.stride(1)},
      .max_logits = a.max_logits.ptr<float>(),
      .max_logits_stride = {a.max_logits.stride(0), a.max_logits.stride(1)},
      .lse = a.lse.ptr<float>(),
      .lse_stride = {a.lse.stride(0), a.lse.stride(1)},
      .num_threads = num_threads,
  };
}

void flash_mla_sparse_fwd(const SparsePrefillArgs& a, const Context& ctx) {
  const core::SparsePrefillParams p = core::prepare_sparse_prefill(a, ctx);
  if (a.q.device == Device::cuda) return core::cuda_backend()->sparse_prefill(p, ctx.cuda_stream);
  cpu::prefill::run_sparse_prefill(p);
}

}  // namespace flashmla
