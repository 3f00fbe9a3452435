// mla_combine: argument checks around the CPU combine kernel, or for CUDA tensors the CUDA
// backend's.
#include "core/check.h"
#include "core/combine_params.h"
#include "core/cuda_backend.h"
#include "cpu/decode/combine.h"
#include "flashmla/flashmla.h"

namespace flashmla {

void mla_combine(const MlaCombineArgs& a, const Context& ctx) {
  core::Checker c("mla_combine");
  const int num_threads = core::checked_num_threads(c, ctx);
  const core::CudaBackend* cuda = c.use_device_of(a.o_accum, "o_accum");
  c.present(a.o_accum, "o_accum");
  c.rank(a.o_accum, "o_accum", 4);
  c.dtype(a.o_accum, "o_accum", {DType::fp32});
  const int64_t slots = a.o_accum.size(0), s_q = a.o_accum.size(1), h_q = a.o_accum.size(2),
                d_v = a.o_accum.size(3);
  if (s_q < 1 || h_q < 1 || d_v < 1) {
    c.fail(ErrorKind::value, "o_accum", "shape (num_slots, q_len >= 1, num_heads_q >= 1, d_v >= 1)",
           a.o_accum.shape_string());
  }
  c.last_dim_contiguous(a.o_accum, "o_accum");
  c.tensor(a.lse_accum, "lse_accum", {DType::fp32}, {slots, s_q, h_q}, false);

  c.present(a.num_splits, "num_splits");
  c.rank(a.num_splits, "num_splits", 1);
  c.dtype(a.num_splits, "num_splits", {DType::int32});
  c.contiguous(a.num_splits, "num_splits");
  const int64_t b = a.num_splits.size(0) - 1;
  if (b < 1) c.fail(ErrorKind::value, "num_splits", "shape (batch + 1,) with batch >= 1",
                    a.num_splits.shape_string());
  // The prefix sum is checked on the host only; on the GPU the kernel leaves a request whose
  // pieces fall outside the slots untouched.
  const auto* splits = a.num_splits.ptr<const int32_t>();
  if (!c.on_cuda() && splits[0] != 0) {
    c.fail(ErrorKind::value, "num_splits", "num_splits[0] = 0",
           "num_splits[0] = " + std::to_string(splits[0]));
  }
  for (int64_t i = 0; i < (c.on_cuda() ? 0 : b); ++i) {
    if (splits[i + 1] < splits[i] || splits[i + 1] > slots) {
      c.fail(ErrorKind::value, "num_splits",
             "a non-decreasing prefix sum within [0, " + std::to_string(slots) +
                 "] (o_accum slots)",
             "num_splits[" + std::to_string(i + 1) + "] = " + std::to_string(splits[i + 1]) +
                 " after " + std::to_string(splits[i]));
    }
  }
  if (a.attn_sink.defined()) c.tensor(a.attn_sink, "attn_sink", {DType::fp32}, {h_q}, true);

  c.present(a.out, "out");
  c.rank(a.out, "out", 4);
  c.dtype(a.out, "out", {DType::bf16, DType::fp16, DType::fp32});
  c.shape(a.out, "out", {b, s_q, h_q, d_v});
  c.last_dim_contiguous(a.out, "out");
  c.non_overlapping(a.out, "out");
  c.tensor(a.lse, "lse", {DType::fp32}, {b, h_q, s_q}, false);
  c.non_overlapping(a.lse, "lse");

  const core::CombineParams p{
      .batch = b, .q_len = s_q, .num_heads_q = h_q, .d_v = d_v,
      .lse_accum = a.lse_accum.ptr<const float>(),
      .lse_accum_stride = {a.lse_accum.stride(0), a.lse_accum.stride(1), a.lse_accum.stride(2)},
      .o_accum = a.o_accum.ptr<const float>(),
      .o_accum_stride = {a.o_accum.stride(0), a.o_accum.stride(1), a.o_accum.stride(2)},
      .num_slots = slots,
      .num_splits = splits,
      .attn_sink = a.attn_sink.defined() ? a.attn_sink.ptr<const float>() : nullptr,
      .out_dtype = a.out.dtype,
      .out = a.out.data,
      .out_stride = {a.out.stride(0), a.out.stride(1), a.out.stride(2)},
      .lse = a.lse.ptr<float>(),
      .lse_stride = {a.lse.stride(0), a.lse.stride(1), a.lse.stride(2)},
      .num_threads = num_threads,
  };
  if (cuda != nullptr) return cuda->combine(p, ctx.cuda_stream);
  cpu::decode::run_combine(p);
}

}  // namespace flashmla
