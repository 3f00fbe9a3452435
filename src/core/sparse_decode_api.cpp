// flash_mla_with_kvcache in sparse mode (indices given): arguments -> validated params -> the CPU
// kernel, or for CUDA tensors the CUDA backend's.
#include <cmath>
#include <string>

#include "core/check.h"
#include "core/device_schedule.h"
#include "core/schedule_arg.h"
#include "core/sparse_decode_call.h"
#include "core/sparse_decode_params.h"
#include "core/sparse_decode_prepare.h"
#include "cpu/decode/sparse_decode.h"
#include "flashmla/kv_format.h"

namespace flashmla::core {
namespace {

constexpr const char* kFn = "flash_mla_with_kvcache";

// Checks one pool's cache and index list; `cache_arg` / `indices_arg` name them in errors.
SparseKvPool check_pool(const Checker& c, const TensorView& cache, const char* cache_arg,
                        const TensorView& indices, const char* indices_arg,
                        const TensorView& lengths, const char* lengths_arg, int64_t b,
                        int64_t s_q, int64_t d_qk) {
  const KvFormat format = d_qk == 576 ? KvFormat::v32 : KvFormat::model1;
  const KvFormatInfo f = kv_format_info(format);
  c.present(cache, cache_arg);
  c.rank(cache, cache_arg, 4);
  c.dtype(cache, cache_arg, {DType::bf16, DType::uint8, DType::fp8_e4m3});
  const bool fp8 = cache.dtype != DType::bf16;
  const int64_t num_blocks = cache.size(0), page = cache.size(1);
  const int64_t width = fp8 ? f.bytes_per_token : d_qk;
  if (page < 1) {
    c.fail(ErrorKind::value, cache_arg, "page_block_size (dim 1) >= 1", cache.shape_string());
  }
  if (cache.size(2) != 1) {
    c.fail(ErrorKind::value, cache_arg, "num_heads_kv (dim 2) = 1 in sparse mode",
           cache.shape_string());
  }
  c.shape(cache, cache_arg, {num_blocks, page, 1, width});
  c.last_dim_contiguous(cache, cache_arg);
  if (fp8 && page > 1 && cache.stride(1) != f.bytes_per_token) {
    c.fail(ErrorKind::value, cache_arg,
           "stride(1) == " + std::to_string(f.bytes_per_token) + " (bytes per token of " +
               kv_format_name(format) + ")",
           "strides " + cache.strides_string());
  }
  if (fp8 && num_blocks > 1 && cache.stride(0) < page * f.bytes_per_token) {
    c.fail(ErrorKind::value, cache_arg,
           "stride(0) >= " + std::to_string(page * f.bytes_per_token) + " (a whole page block)",
           "strides " + cache.strides_string());
  }

  c.present(indices, indices_arg);
  c.rank(indices, indices_arg, 3);
  c.dtype(indices, indices_arg, {DType::int32});
  const int64_t topk = indices.size(2);
  if (topk < 1 || topk > kMaxSparseTopk) {
    c.fail(ErrorKind::value, indices_arg,
           "shape (b, s_q, topk in [1, " + std::to_string(kMaxSparseTopk) + "])",
           indices.shape_string());
  }
  c.shape(indices, indices_arg, {b, s_q, topk});
  c.last_dim_contiguous(indices, indices_arg);
  const int32_t* len = checked_lengths(c, lengths, lengths_arg, b, topk);

  // Every in-length entry is -1 or a slot inside the cache (never an out-of-bounds read). On
  // the GPU the kernel masks a slot outside the cache like -1 instead.
  const int64_t slots = num_blocks * page;
  const auto* idx = indices.ptr<const int32_t>();
  for (int64_t i = 0; i < (c.on_cuda() ? 0 : b); ++i) {
    const int64_t cols = len ? len[i] : topk;
    for (int64_t s = 0; s < s_q; ++s) {
      const int32_t* row = idx + i * indices.stride(0) + s * indices.stride(1);
      for (int64_t col = 0; col < cols; ++col) {
        if (row[col] != -1 && (row[col] < 0 || row[col] >= slots)) {
          c.fail(ErrorKind::value, indices_arg,
                 "-1 or a cache slot in [0, " + std::to_string(slots) +
                     ") (num_blocks x page_block_size)",
                 std::string(indices_arg) + "[" + std::to_string(i) + "][" + std::to_string(s) +
                     "][" + std::to_string(col) + "] = " + std::to_string(row[col]));
        }
      }
    }
  }
  return SparseKvPool{
      .kind = !fp8 ? KvCacheKind::bf16
                   : (format == KvFormat::v32 ? KvCacheKind::fp8_v32 : KvCacheKind::fp8_model1),
      .data = cache.ptr<const uint8_t>(),
      .block_stride_bytes = cache.stride(0) * static_cast<int64_t>(dtype_size(cache.dtype)),
      .token_stride_bytes = cache.stride(1) * static_cast<int64_t>(dtype_size(cache.dtype)),
      .page_block_size = page,
      .num_tokens = num_blocks * page,
      .indices = idx,
      .indices_stride = {indices.stride(0), indices.stride(1)},
      .topk = topk,
      .topk_length = len,
  };
}

}  // namespace

void prepare_sparse_decode(const MlaDecodeArgs& a, const Context& ctx, bool allocate,
                           PreparedSparseDecode& out) {
  Checker c(kFn);
  const int num_threads = checked_num_threads(c, ctx);
  c.use_device_of(a.q, "q");
  c.present(a.q, "q");
  c.rank(a.q, "q", 4);
  c.dtype(a.q, "q", {DType::bf16});
  const int64_t b = a.q.size(0), s_q = a.q.size(1), h_q = a.q.size(2), d_qk = a.q.size(3);
  if (b < 1 || s_q < 1 || h_q < 1 || (d_qk != 576 && d_qk != 512)) {
    c.fail(ErrorKind::value, "q",
           "shape (b >= 1, s_q >= 1, h_q >= 1, d_qk = 576 (V32) or 512 (MODEL1)) in sparse mode",
           a.q.shape_string());
  }
  c.last_dim_contiguous(a.q, "q");
  if (a.head_dim_v != 512) c.fail(ErrorKind::value, "head_dim_v", "512", std::to_string(a.head_dim_v));
  if (a.causal) {
    c.fail(ErrorKind::value, "causal", "false in sparse mode (encode causality in indices)",
           "true");
  }
  const float scale_log2 = checked_scale_log2(
      c, a.softmax_scale.value_or(1.0f / std::sqrt(static_cast<float>(d_qk))), "softmax_scale");

  SparseDecodeParams& p = out.params;
  p = SparseDecodeParams{.batch = b, .q_len = s_q, .num_heads_q = h_q, .d_qk = d_qk,
                         .d_v = 512,
                         .scale_log2 = scale_log2,
                         .q = a.q.ptr<const uint16_t>(),
                         .q_stride = {a.q.stride(0), a.q.stride(1), a.q.stride(2)},
                         .num_threads = num_threads};
  p.main = check_pool(c, a.k_cache, "k_cache", a.indices, "indices", a.topk_length,
                      "topk_length", b, s_q, d_qk);
  const bool has_extra = a.extra_k_cache.defined();
  if (has_extra != a.extra_indices_in_kvcache.defined()) {
    c.fail(ErrorKind::value, has_extra ? "extra_indices_in_kvcache" : "extra_k_cache",
           has_extra ? "a tensor when extra_k_cache is given"
                     : "a tensor when extra_indices_in_kvcache is given",
           "null");
  }
  if (!has_extra && a.extra_topk_length.defined()) {
    c.fail(ErrorKind::value, "extra_topk_length", "null without extra_k_cache",
           "a tensor of shape " + a.extra_topk_length.shape_string());
  }
  if (has_extra) {
    p.extra = check_pool(c, a.extra_k_cache, "extra_k_cache", a.extra_indices_in_kvcache,
                         "extra_indices_in_kvcache", a.extra_topk_length, "extra_topk_length", b,
                         s_q, d_qk);
    if (p.extra.kind != p.main.kind) {
      c.fail(ErrorKind::type, "extra_k_cache", "the dtype of k_cache",
             dtype_name(a.extra_k_cache.dtype));
    }
  }
  if (a.attn_sink.defined()) {
    c.tensor(a.attn_sink, "attn_sink", {DType::fp32}, {h_q}, true);
    p.attn_sink = a.attn_sink.ptr<const float>();
  }
  c.tensor(a.out, "out", {DType::bf16}, {b, s_q, h_q, 512}, true);
  c.non_overlapping(a.out, "out");
  c.tensor(a.lse, "lse", {DType::fp32}, {b, h_q, s_q}, false);
  c.non_overlapping(a.lse, "lse");
  p.out = a.out.ptr<uint16_t>();
  p.out_stride[0] = a.out.stride(0), p.out_stride[1] = a.out.stride(1);
  p.out_stride[2] = a.out.stride(2);
  p.lse = a.lse.ptr<float>();
  p.lse_stride[0] = a.lse.stride(0), p.lse_stride[1] = a.lse.stride(1);
  p.lse_stride[2] = a.lse.stride(2);

  if (c.on_cuda()) return;  // the schedule is the device's (sparse_decode_cuda)
  const std::vector<int32_t> n_tok =
      sparse_token_counts(b, p.main.topk, p.main.topk_length, has_extra ? p.extra.topk : 0,
                          has_extra ? p.extra.topk_length : nullptr);
  ResolvedSchedule& sched = out.schedule;
  resolve_schedule(c, a.tile_scheduler_metadata, a.num_splits, n_tok, num_threads,
                   "topk_length and topk (sparse mode)", sched);
  if (!allocate) return;
  p.sched = sched.records;
  p.num_parts = sched.num_parts;
  p.num_splits = sched.num_splits;
  attach_accumulators(sched, p);
}

namespace {

// A sparse call on the GPU: the schedule (given, or from the device scheduler) and accumulators
// on ctx's stream, then the CUDA kernel (`run`).
void sparse_decode_cuda(const MlaDecodeArgs& a, const Context& ctx, bool run) {
  PreparedSparseDecode prep;
  prepare_sparse_decode(a, ctx, false, prep);  // validation; no host schedule on the GPU
  SparseDecodeParams& p = prep.params;
  const CudaBackend& backend = *cuda_backend();  // validation found one
  Checker c(kFn);
  c.use_device_of(a.q, "q");
  const bool has_extra = a.extra_k_cache.defined();
  DeviceSchedule sched;
  resolve_device_schedule(c, backend, a.tile_scheduler_metadata, a.num_splits,
                          {.topk = p.main.topk, .topk_length = p.main.topk_length,
                           .extra_topk = has_extra ? p.extra.topk : 0,
                           .extra_topk_length = has_extra ? p.extra.topk_length : nullptr},
                          {.batch = p.batch, .q_len = p.q_len, .num_heads_q = p.num_heads_q,
                           .num_heads_kv = 1, .d_v = p.d_v},
                          ctx.cuda_stream, run, sched);
  if (!run) return;
  attach_device_schedule(sched, p);
  backend.sparse_decode(p, ctx.cuda_stream);
}

}  // namespace

void sparse_decode_call(const MlaDecodeArgs& a, const Context& ctx, bool run) {
  if (a.q.device == Device::cuda) return sparse_decode_cuda(a, ctx, run);
  PreparedSparseDecode prep;
  prepare_sparse_decode(a, ctx, run, prep);
  if (run) cpu::decode::run_sparse_decode(prep.params);
}

}  // namespace flashmla::core
