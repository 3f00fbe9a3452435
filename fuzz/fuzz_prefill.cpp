// libFuzzer target: flash_mla_sparse_fwd with fuzzed shapes, strides, dtypes, indices (any
// int32), topk_length, sink and sm_scale (NaN, inf, 0 included). Checks: success or
// flashmla::Error.
#include "flashmla/flashmla.h"
#include "fuzz_common.h"

using namespace flashmla;
using flashmla::fuzz::Tensor;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider f(data, size);
  namespace fz = flashmla::fuzz;
  const int64_t s_q = f.ConsumeIntegralInRange<int64_t>(1, 5);
  const int64_t s_kv = f.ConsumeIntegralInRange<int64_t>(1, 200);
  const int64_t h_q = f.ConsumeIntegralInRange<int64_t>(1, 16);
  const int64_t d_qk = f.ConsumeBool() ? 576 : 512;
  const int64_t topk = f.ConsumeIntegralInRange<int64_t>(1, 100);

  Tensor q(f, fz::dtype(f, DType::bf16), {fz::dim(f, s_q), fz::dim(f, h_q), fz::dim(f, d_qk)});
  Tensor kv(f, fz::dtype(f, DType::bf16), {fz::dim(f, s_kv), fz::dim(f, 1), fz::dim(f, d_qk)});
  Tensor indices(f, fz::dtype(f, DType::int32), {fz::dim(f, s_q), fz::dim(f, 1), fz::dim(f, topk)});
  indices.fill_i32(f, -1, s_kv - 1);
  Tensor sink, topk_length;
  SparsePrefillArgs a{.q = q.view(), .kv = kv.view(), .indices = indices.view(),
                      .sm_scale = fz::scale(f, 0.0417f)};
  if (f.ConsumeBool()) a.d_v = static_cast<int>(fz::dim(f, 512));
  if (f.ConsumeBool()) {
    sink = Tensor(f, fz::dtype(f, DType::fp32), {fz::dim(f, h_q)});
    a.attn_sink = sink.view();
  }
  if (f.ConsumeBool()) {
    topk_length = Tensor(f, fz::dtype(f, DType::int32), {fz::dim(f, s_q)}, false);
    topk_length.fill_i32(f, 0, topk);
    a.topk_length = topk_length.view();
  }
  Tensor out(f, fz::dtype(f, DType::bf16), {fz::dim(f, s_q), fz::dim(f, h_q), fz::dim(f, 512)});
  Tensor max_logits(f, fz::dtype(f, DType::fp32), {fz::dim(f, s_q), fz::dim(f, h_q)});
  Tensor lse(f, fz::dtype(f, DType::fp32), {fz::dim(f, s_q), fz::dim(f, h_q)});
  a.out = out.view();
  a.max_logits = max_logits.view();
  a.lse = lse.view();
  fz::call([&] { flash_mla_sparse_fwd(a, {.num_threads = f.ConsumeIntegralInRange<int>(0, 3)}); });
  return 0;
}
