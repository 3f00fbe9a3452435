// libFuzzer target: get_mla_metadata (dense and sparse mode) and mla_num_sm_parts with any
// lengths, batch, topk, part count and output shapes. Checks: success or flashmla::Error; on
// success, num_splits is a non-decreasing prefix sum from 0 and every busy part's record names
// requests inside the batch (§5.2).
#include <vector>

#include "flashmla/flashmla.h"
#include "fuzz_common.h"

using namespace flashmla;
using flashmla::fuzz::Tensor;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider f(data, size);
  namespace fz = flashmla::fuzz;
  const int64_t b = f.ConsumeIntegralInRange<int64_t>(0, 40);
  const bool sparse = f.ConsumeBool();
  const int parts = static_cast<int>(fz::dim(f, f.ConsumeIntegralInRange<int>(1, 40)));

  fz::call([&] {
    mla_num_sm_parts({.batch = fz::dim(f, b), .q_len = fz::dim(f, 2),
                      .num_heads_q = fz::dim(f, 64), .num_heads_kv = fz::dim(f, 1)},
                     {.num_threads = f.ConsumeIntegralInRange<int>(-1, 5)});
  });

  MlaMetadataArgs m;
  Tensor seqlens, topk_length, extra_length;
  const int64_t topk = f.ConsumeIntegralInRange<int64_t>(1, 5000);
  if (!sparse) {
    seqlens = Tensor(f, fz::dtype(f, DType::int32), {fz::dim(f, b)}, false);
    seqlens.fill_i32(f, 0, f.ConsumeIntegralInRange<int64_t>(0, 1 << 20));
    m.cache_seqlens = seqlens.view();
  } else {
    m.batch = fz::dim(f, b);
    m.topk = fz::dim(f, topk);
    if (f.ConsumeBool()) {
      topk_length = Tensor(f, fz::dtype(f, DType::int32), {fz::dim(f, b)}, false);
      topk_length.fill_i32(f, 0, topk);
      m.topk_length = topk_length.view();
    }
    if (f.ConsumeBool()) {
      m.extra_topk = fz::dim(f, f.ConsumeIntegralInRange<int64_t>(1, 600));
      if (f.ConsumeBool()) {
        extra_length = Tensor(f, DType::int32, {fz::dim(f, b)}, false);
        extra_length.fill_i32(f, 0, m.extra_topk);
        m.extra_topk_length = extra_length.view();
      }
    }
  }
  m.num_sm_parts = parts;
  Tensor meta(f, fz::dtype(f, DType::int32), {fz::dim(f, parts), fz::dim(f, 8)}, false);
  Tensor splits(f, fz::dtype(f, DType::int32), {fz::dim(f, b + 1)}, false);
  m.tile_scheduler_metadata = meta.view();
  m.num_splits = splits.view();
  if (!fz::call([&] { get_mla_metadata(m); })) return 0;

  const auto* s = static_cast<const int32_t*>(m.num_splits.data);
  const int64_t batch = m.num_splits.shape[0] - 1;
  if (s[0] != 0) __builtin_trap();
  for (int64_t i = 0; i < batch; ++i) {
    if (s[i + 1] < s[i]) __builtin_trap();
  }
  const auto* r = static_cast<const int32_t*>(m.tile_scheduler_metadata.data);
  for (int p = 0; p < m.num_sm_parts; ++p) {
    const int32_t begin = r[8 * p], end = r[8 * p + 1];  // first and last request (inclusive)
    if (begin < 0) __builtin_trap();
    if (begin < batch && (end < begin || end >= batch)) __builtin_trap();  // else the part is idle
  }
  return 0;
}
