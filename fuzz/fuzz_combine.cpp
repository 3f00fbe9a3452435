// libFuzzer target: mla_combine with fuzzed shapes, strides, dtypes, num_splits (a prefix sum,
// sometimes broken, pointing past the accumulator slots), lse_accum / o_accum contents (any
// floats) and sink. Checks: success or flashmla::Error.
#include "flashmla/flashmla.h"
#include "fuzz_common.h"

using namespace flashmla;
using flashmla::fuzz::Tensor;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider f(data, size);
  namespace fz = flashmla::fuzz;
  const int64_t b = f.ConsumeIntegralInRange<int64_t>(1, 5);
  const int64_t s_q = f.ConsumeIntegralInRange<int64_t>(1, 3);
  const int64_t h_q = f.ConsumeIntegralInRange<int64_t>(1, 8);
  const int64_t d_v = f.ConsumeBool() ? 512 : f.ConsumeIntegralInRange<int64_t>(1, 80);
  const int64_t slots = f.ConsumeIntegralInRange<int64_t>(0, 12);

  Tensor lse_accum(f, fz::dtype(f, DType::fp32), {fz::dim(f, slots), fz::dim(f, s_q), fz::dim(f, h_q)});
  Tensor o_accum(f, fz::dtype(f, DType::fp32),
                 {fz::dim(f, slots), fz::dim(f, s_q), fz::dim(f, h_q), fz::dim(f, d_v)});
  Tensor splits(f, fz::dtype(f, DType::int32), {fz::dim(f, b + 1)}, false);
  splits.fill_prefix(f, 4);
  Tensor sink;
  const DType out_dtype = f.ConsumeBool() ? DType::bf16 : (f.ConsumeBool() ? DType::fp16 : DType::fp32);
  Tensor out(f, fz::dtype(f, out_dtype), {fz::dim(f, b), fz::dim(f, s_q), fz::dim(f, h_q), fz::dim(f, d_v)});
  Tensor lse(f, fz::dtype(f, DType::fp32), {fz::dim(f, b), fz::dim(f, h_q), fz::dim(f, s_q)});
  MlaCombineArgs a{.lse_accum = lse_accum.view(), .o_accum = o_accum.view(),
                   .num_splits = splits.view(), .out = out.view(), .lse = lse.view()};
  if (f.ConsumeBool()) {
    sink = Tensor(f, fz::dtype(f, DType::fp32), {fz::dim(f, h_q)});
    a.attn_sink = sink.view();
  }
  fz::call([&] { mla_combine(a, {.num_threads = f.ConsumeIntegralInRange<int>(0, 3)}); });
  return 0;
}
