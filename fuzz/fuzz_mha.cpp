// libFuzzer target: flash_attn_varlen_fwd and _bwd with fuzzed head dims (FlashMLA's pairs,
// other multiples of 8, and invalid ones), GQA ratios, cu_seqlens (prefix sums, sometimes
// broken), max_seqlen bounds, is_varlen, causal, scales, shapes, strides and dtypes. Checks:
// success or flashmla::Error.
#include "flashmla/mha.h"
#include "fuzz_common.h"

using namespace flashmla;
using flashmla::fuzz::Tensor;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider f(data, size);
  namespace fz = flashmla::fuzz;
  const int64_t b = f.ConsumeIntegralInRange<int64_t>(1, 3);
  const int64_t h_kv = f.ConsumeIntegralInRange<int64_t>(1, 3);
  const int64_t h_q = h_kv * f.ConsumeIntegralInRange<int64_t>(1, 3);
  const int64_t d_qk = 8 * f.ConsumeIntegralInRange<int64_t>(1, 24);
  const int64_t d_v = 8 * f.ConsumeIntegralInRange<int64_t>(1, 16);

  Tensor cu_q(f, fz::dtype(f, DType::int32), {fz::dim(f, b + 1)}, false);
  Tensor cu_k(f, fz::dtype(f, DType::int32), {fz::dim(f, b + 1)}, false);
  cu_q.fill_prefix(f, 40);
  cu_k.fill_prefix(f, 40);
  const int64_t total_q = f.ConsumeIntegralInRange<int64_t>(0, 120);
  const int64_t total_k = f.ConsumeIntegralInRange<int64_t>(0, 120);
  Tensor q(f, fz::dtype(f, DType::bf16), {fz::dim(f, total_q), fz::dim(f, h_q), fz::dim(f, d_qk)});
  Tensor k(f, fz::dtype(f, DType::bf16), {fz::dim(f, total_k), fz::dim(f, h_kv), fz::dim(f, d_qk)});
  Tensor v(f, fz::dtype(f, DType::bf16), {fz::dim(f, total_k), fz::dim(f, h_kv), fz::dim(f, d_v)});
  Tensor out(f, fz::dtype(f, DType::bf16), {fz::dim(f, total_q), fz::dim(f, h_q), fz::dim(f, d_v)});
  Tensor lse(f, fz::dtype(f, DType::fp32), {fz::dim(f, total_q), fz::dim(f, h_q)});
  MhaFwdArgs a{.q = q.view(), .k = k.view(), .v = v.view(), .cu_seqlens_qo = cu_q.view(),
               .cu_seqlens_kv = cu_k.view(),
               .max_seqlen_qo = fz::dim(f, f.ConsumeIntegralInRange<int64_t>(0, 120)),
               .max_seqlen_kv = fz::dim(f, f.ConsumeIntegralInRange<int64_t>(0, 120)),
               .causal = f.ConsumeBool(), .is_varlen = f.ConsumeIntegralInRange<int>(0, 3) != 3,
               .out = out.view(), .lse = lse.view()};
  if (f.ConsumeBool()) a.softmax_scale = fz::scale(f, 0.1f);
  if (f.ConsumeIntegralInRange<int>(0, 15) == 15) a.dropout_p = 0.1f;
  const Context ctx{.num_threads = f.ConsumeIntegralInRange<int>(0, 3)};
  if (f.ConsumeBool()) {
    fz::call([&] { flash_attn_varlen_fwd(a, ctx); });
    return 0;
  }
  Tensor dout(f, fz::dtype(f, DType::bf16), {fz::dim(f, total_q), fz::dim(f, h_q), fz::dim(f, d_v)});
  Tensor dq(f, fz::dtype(f, DType::bf16), {fz::dim(f, total_q), fz::dim(f, h_q), fz::dim(f, d_qk)});
  Tensor dk(f, fz::dtype(f, DType::bf16), {fz::dim(f, total_k), fz::dim(f, h_kv), fz::dim(f, d_qk)});
  Tensor dv(f, fz::dtype(f, DType::bf16), {fz::dim(f, total_k), fz::dim(f, h_kv), fz::dim(f, d_v)});
  const MhaBwdArgs g{.fwd = a, .dout = dout.view(), .dq = dq.view(), .dk = dk.view(), .dv = dv.view()};
  fz::call([&] { flash_attn_varlen_bwd(g, ctx); });
  return 0;
}
