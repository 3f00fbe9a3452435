// libFuzzer target: flash_mla_with_kvcache, dense (paged bf16 / fp16 cache) and sparse (FP8 V32 /
// MODEL1 or bf16 cache, indices, topk_length, sink, extra pool), with and without a schedule
// from get_mla_metadata (sometimes corrupted). Block ids, lengths, indices and schedule entries
// take any value; every buffer covers its view. Checks: the call succeeds or throws
// flashmla::Error, and flash_mla_with_kvcache_can_run agrees with it.
#include <optional>
#include <vector>

#include "flashmla/flashmla.h"
#include "fuzz_common.h"

using namespace flashmla;
using flashmla::fuzz::Tensor;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider f(data, size);
  namespace fz = flashmla::fuzz;
  const bool sparse = f.ConsumeBool();
  const int64_t b = f.ConsumeIntegralInRange<int64_t>(1, 4);
  const int64_t s_q = f.ConsumeIntegralInRange<int64_t>(1, 3);
  const int64_t h_kv = sparse ? 1 : f.ConsumeIntegralInRange<int64_t>(1, 2);
  const int64_t h_q = h_kv * f.ConsumeIntegralInRange<int64_t>(1, 8);
  const bool model1 = sparse && f.ConsumeBool();
  const int64_t d_qk = model1 ? 512 : 576;
  const int64_t page = f.ConsumeIntegralInRange<int64_t>(1, 70);
  const int64_t num_blocks = f.ConsumeIntegralInRange<int64_t>(1, 6);
  const int64_t slots = page * num_blocks;
  const bool fp8 = sparse && f.ConsumeBool();
  const DType dt = sparse ? DType::bf16 : (f.ConsumeBool() ? DType::bf16 : DType::fp16);

  MlaDecodeArgs a;
  Tensor q(f, fz::dtype(f, dt), {fz::dim(f, b), fz::dim(f, s_q), fz::dim(f, h_q), fz::dim(f, d_qk)});
  const int64_t token_bytes = model1 ? 584 : 656;
  Tensor k = fp8 ? Tensor(f, fz::dtype(f, DType::uint8),
                          {fz::dim(f, num_blocks), fz::dim(f, page), fz::dim(f, 1),
                           fz::dim(f, token_bytes)})
                 : Tensor(f, fz::dtype(f, dt),
                          {fz::dim(f, num_blocks), fz::dim(f, page), fz::dim(f, h_kv),
                           fz::dim(f, d_qk)});
  a.q = q.view();
  a.k_cache = k.view();
  if (f.ConsumeBool()) a.head_dim_v = static_cast<int>(fz::dim(f, 512));
  if (f.ConsumeBool()) a.softmax_scale = fz::scale(f, 0.0417f);
  a.causal = !sparse && f.ConsumeBool();

  Tensor block_table, seqlens, indices, topk_length, sink, extra, extra_indices, extra_length;
  const int64_t max_blocks = f.ConsumeIntegralInRange<int64_t>(1, 6);
  const int64_t topk = f.ConsumeIntegralInRange<int64_t>(1, 80);
  if (!sparse || f.ConsumeIntegralInRange<int>(0, 7) == 7) {
    block_table = Tensor(f, fz::dtype(f, DType::int32), {fz::dim(f, b), fz::dim(f, max_blocks)});
    block_table.fill_i32(f, 0, num_blocks - 1);
    seqlens = Tensor(f, fz::dtype(f, DType::int32), {fz::dim(f, b)}, false);
    seqlens.fill_i32(f, 0, max_blocks * page);
    a.block_table = block_table.view();
    a.cache_seqlens = seqlens.view();
  }
  if (sparse) {
    indices = Tensor(f, fz::dtype(f, DType::int32), {fz::dim(f, b), fz::dim(f, s_q), fz::dim(f, topk)});
    indices.fill_i32(f, -1, slots - 1);
    a.indices = indices.view();
    if (f.ConsumeBool()) {
      topk_length = Tensor(f, fz::dtype(f, DType::int32), {fz::dim(f, b)}, false);
      topk_length.fill_i32(f, 0, topk);
      a.topk_length = topk_length.view();
    }
    if (f.ConsumeBool()) {
      sink = Tensor(f, fz::dtype(f, DType::fp32), {fz::dim(f, h_q)});
      a.attn_sink = sink.view();
    }
    if (f.ConsumeBool()) {
      const int64_t extra_blocks = f.ConsumeIntegralInRange<int64_t>(1, 3);
      const int64_t extra_topk = f.ConsumeIntegralInRange<int64_t>(1, 40);
      extra = fp8 ? Tensor(f, DType::uint8, {fz::dim(f, extra_blocks), fz::dim(f, page), 1,
                                             fz::dim(f, token_bytes)})
                  : Tensor(f, DType::bf16, {fz::dim(f, extra_blocks), fz::dim(f, page), 1,
                                            fz::dim(f, d_qk)});
      extra_indices = Tensor(f, DType::int32, {fz::dim(f, b), fz::dim(f, s_q), fz::dim(f, extra_topk)});
      extra_indices.fill_i32(f, -1, extra_blocks * page - 1);
      a.extra_k_cache = extra.view();
      a.extra_indices_in_kvcache = extra_indices.view();
      if (f.ConsumeBool()) {
        extra_length = Tensor(f, DType::int32, {fz::dim(f, b)}, false);
        extra_length.fill_i32(f, 0, extra_topk);
        a.extra_topk_length = extra_length.view();
      }
    }
  }
  Tensor out(f, fz::dtype(f, dt), {fz::dim(f, b), fz::dim(f, s_q), fz::dim(f, h_q), fz::dim(f, 512)});
  Tensor lse(f, fz::dtype(f, DType::fp32), {fz::dim(f, b), fz::dim(f, h_q), fz::dim(f, s_q)});
  a.out = out.view();
  a.lse = lse.view();

  // A schedule: none, computed, or computed then corrupted.
  std::vector<int32_t> meta, splits;
  if (f.ConsumeBool()) {
    const int parts = f.ConsumeIntegralInRange<int>(1, 9);
    meta.assign(static_cast<size_t>(parts) * 8, 0);
    splits.assign(static_cast<size_t>(b + 1), 0);
    a.tile_scheduler_metadata = TensorView::contiguous(meta.data(), DType::int32, {parts, 8});
    a.num_splits = TensorView::contiguous(splits.data(), DType::int32, {b + 1});
    MlaMetadataArgs m{.cache_seqlens = a.cache_seqlens, .num_sm_parts = parts,
                      .tile_scheduler_metadata = a.tile_scheduler_metadata,
                      .num_splits = a.num_splits};
    if (sparse) {
      m.batch = b;
      m.topk = topk;
      m.topk_length = a.topk_length;
      m.extra_topk = a.extra_indices_in_kvcache.defined() ? a.extra_indices_in_kvcache.shape[2] : 0;
      m.extra_topk_length = a.extra_topk_length;
    }
    fz::call([&] { get_mla_metadata(m); });
    if (f.ConsumeIntegralInRange<int>(0, 3) == 3) {
      auto& v = f.ConsumeBool() ? meta : splits;
      v[f.ConsumeIntegralInRange<size_t>(0, v.size() - 1)] = f.ConsumeIntegral<int32_t>();
    }
  }

  const Context ctx{.num_threads = f.ConsumeIntegralInRange<int>(0, 3)};
  const std::optional<std::string> verdict = flash_mla_with_kvcache_can_run(a, ctx);
  const bool ran = fz::call([&] { flash_mla_with_kvcache(a, ctx); });
  if (ran != !verdict.has_value()) __builtin_trap();  // can_run disagrees with the call
  return 0;
}
