// flash_mla_with_kvcache (dense): arguments -> validated params -> CPU kernel, or for CUDA tensors
// the CUDA backend's kernel.
#include <cmath>
#include <span>
#include <utility>
#include <vector>

#include "core/check.h"
#include "core/decode_params.h"
#include "core/decode_prepare.h"
#include "core/device_schedule.h"
#include "core/schedule_arg.h"
#include "core/scheduler.h"
#include "core/sparse_decode_params.h"
#include "core/sparse_decode_call.h"
#include "cpu/decode/dense_decode.h"
#include "flashmla/flashmla.h"

namespace flashmla {
namespace {

constexpr const char* kFn = "flash_mla_with_kvcache";
constexpr int64_t kDqk = 576;
constexpr int64_t kDv = 512;
constexpr int64_t kFp8V32BytesPerToken = 656;

std::string at(const char* name, std::initializer_list<int64_t> idx) {
  std::string s = name;
  for (int64_t i : idx) s += "[" + std::to_string(i) + "]";
  return s;
}

}  // namespace

namespace core {

// Checks everything and fills params (except the schedule and the accumulators).
DenseDecodeParams validate_dense_decode(const MlaDecodeArgs& a, const Context& ctx) {
  core::Checker c(kFn);
  const int num_threads = core::checked_num_threads(c, ctx);
  // q fixes the device, batch, q_len, num_heads_q and the dtype.
  c.use_device_of(a.q, "q");
  c.present(a.q, "q");
  c.rank(a.q, "q", 4);
  c.dtype(a.q, "q", {DType::bf16, DType::fp16});
  const int64_t b = a.q.size(0), s_q = a.q.size(1), h_q = a.q.size(2);
  if (b < 1 || s_q < 1 || h_q < 1) {
    c.fail(ErrorKind::value, "q", "shape (batch >= 1, q_len >= 1, num_heads_q >= 1, 576)",
           a.q.shape_string());
  }
  c.shape(a.q, "q", {b, s_q, h_q, kDqk});
  c.last_dim_contiguous(a.q, "q");

  c.present(a.k_cache, "k_cache");
  c.rank(a.k_cache, "k_cache", 4);
  // q's dtype, or (bf16 q only) an FP8 cache in format V32: 656 bytes per token, h_kv = 1.
  const bool fp8 = a.k_cache.dtype == DType::uint8 || a.k_cache.dtype == DType::fp8_e4m3;
  if (a.q.dtype == DType::bf16) {
    c.dtype(a.k_cache, "k_cache", {DType::bf16, DType::uint8, DType::fp8_e4m3});
  } else {
    c.dtype(a.k_cache, "k_cache", {a.q.dtype});
  }
  const int64_t num_blocks = a.k_cache.size(0), page = a.k_cache.size(1),
                h_kv = a.k_cache.size(2);
  const int64_t width = fp8 ? kFp8V32BytesPerToken : kDqk;
  if (page < 1 || h_kv < 1 || (fp8 && h_kv != 1)) {
    c.fail(ErrorKind::value, "k_cache",
           fp8 ? "shape (num_blocks, page_block_size >= 1, 1, 656) for an FP8 V32 cache"
               : "shape (num_blocks, page_block_size >= 1, num_heads_kv >= 1, 576)",
           a.k_cache.shape_string());
  }
  c.shape(a.k_cache, "k_cache", {num_blocks, page, h_kv, width});
  c.last_dim_contiguous(a.k_cache, "k_cache");
  if (fp8 && page > 1 && a.k_cache.stride(1) != kFp8V32BytesPerToken) {
    c.fail(ErrorKind::value, "k_cache", "stride(1) == 656 (bytes per token of V32)",
           "strides " + a.k_cache.strides_string());
  }
  if (fp8 && num_blocks > 1 && a.k_cache.stride(0) < page * kFp8V32BytesPerToken) {
    c.fail(ErrorKind::value, "k_cache",
           "stride(0) >= " + std::to_string(page * kFp8V32BytesPerToken) + " (a whole page block)",
           "strides " + a.k_cache.strides_string());
  }
  if (h_q % h_kv != 0) {
    c.fail(ErrorKind::value, "k_cache",
           "num_heads_kv (dim 2) dividing num_heads_q = " + std::to_string(h_q),
           "num_heads_kv = " + std::to_string(h_kv));
  }
  if (a.head_dim_v != kDv) {
    c.fail(ErrorKind::value, "head_dim_v", "512", std::to_string(a.head_dim_v));
  }

  c.tensor(a.cache_seqlens, "cache_seqlens", {DType::int32}, {b}, true);
  c.present(a.block_table, "block_table");
  c.rank(a.block_table, "block_table", 2);
  c.dtype(a.block_table, "block_table", {DType::int32});
  const int64_t max_blocks = a.block_table.size(1);
  c.shape(a.block_table, "block_table", {b, max_blocks});
  c.last_dim_contiguous(a.block_table, "block_table");

  const float scale_log2 = core::checked_scale_log2(
      c, a.softmax_scale.value_or(1.0f / std::sqrt(static_cast<float>(kDqk))), "softmax_scale");

  // Lengths, and every block-table entry that will be read (on the host only: on the GPU the
  // kernel clamps lengths to the table's row and masks block ids outside the cache).
  const auto* seqlens = a.cache_seqlens.ptr<const int32_t>();
  const auto* table = a.block_table.ptr<const int32_t>();
  const int64_t bt_stride = a.block_table.stride(0);
  for (int64_t i = 0; i < (c.on_cuda() ? 0 : b); ++i) {
    const int64_t len = seqlens[i];
    if (len < 0 || len > max_blocks * page) {
      c.fail(ErrorKind::value, "cache_seqlens",
             "lengths in [0, " + std::to_string(max_blocks * page) +
                 "] (block_table columns x page_block_size)",
             at("cache_seqlens", {i}) + " = " + std::to_string(len));
    }
    const int64_t used = (len + page - 1) / page;
    for (int64_t j = 0; j < used; ++j) {
      const int32_t blk = table[i * bt_stride + j];
      if (blk < 0 || blk >= num_blocks) {
        c.fail(ErrorKind::value, "block_table",
               "block ids in [0, " + std::to_string(num_blocks) + ") for the " +
                   std::to_string(used) + " blocks request " + std::to_string(i) + " reads",
               at("block_table", {i, j}) + " = " + std::to_string(blk));
      }
    }
  }

  // Sparse-only arguments (FlashMLA asserts they are None on the dense path).
  for (auto [t, name] : {std::pair{&a.topk_length, "topk_length"}, {&a.attn_sink, "attn_sink"},
                         {&a.extra_k_cache, "extra_k_cache"},
                         {&a.extra_indices_in_kvcache, "extra_indices_in_kvcache"},
                         {&a.extra_topk_length, "extra_topk_length"}}) {
    if (t->defined()) {
      c.fail(ErrorKind::value, name, "null without indices (a sparse-mode argument)",
             "a tensor of shape " + t->shape_string());
    }
  }

  c.present(a.out, "out");
  c.rank(a.out, "out", 4);
  c.dtype(a.out, "out", {a.q.dtype});
  c.shape(a.out, "out", {b, s_q, h_q, kDv});
  c.last_dim_contiguous(a.out, "out");
  c.non_overlapping(a.out, "out");
  c.tensor(a.lse, "lse", {DType::fp32}, {b, h_q, s_q}, false);
  c.non_overlapping(a.lse, "lse");

  core::DenseDecodeParams p{
      .batch = b, .q_len = s_q, .num_heads_q = h_q, .num_heads_kv = h_kv,
      .d_qk = kDqk, .d_v = kDv, .page_block_size = page, .num_blocks = num_blocks,
      .dtype = a.q.dtype,
      .kv_fp8_v32 = fp8,
      .scale_log2 = scale_log2,
      .causal = a.causal && s_q > 1,
      .q = a.q.data,
      .q_stride = {a.q.stride(0), a.q.stride(1), a.q.stride(2)},
      .k_cache = a.k_cache.data,
      .k_stride = {a.k_cache.stride(0), a.k_cache.stride(1), a.k_cache.stride(2)},
      .block_table = table, .block_table_stride = bt_stride, .max_blocks_per_seq = max_blocks,
      .cache_seqlens = seqlens,
      .out = a.out.data,
      .out_stride = {a.out.stride(0), a.out.stride(1), a.out.stride(2)},
      .lse = a.lse.ptr<float>(),
      .lse_stride = {a.lse.stride(0), a.lse.stride(1), a.lse.stride(2)},
      .num_threads = num_threads,
  };
  return p;
}

// Validation (throws) and the schedule of a dense call.
DenseDecodeParams prepare_dense_decode(const MlaDecodeArgs& args, const Context& ctx,
                                       ResolvedSchedule& sched) {
  core::DenseDecodeParams p = validate_dense_decode(args, ctx);
  core::Checker c(kFn);
  c.use_device_of(args.q, "q");
  core::resolve_schedule(c, args.tile_scheduler_metadata, args.num_splits,
                         std::span<const int32_t>(p.cache_seqlens, p.batch), p.num_threads,
                         "cache_seqlens", sched);
  p.sched = sched.records;
  p.num_parts = sched.num_parts;
  p.num_splits = sched.num_splits;
  return p;
}

// A dense call over an FP8 V32 cache on the GPU (h_kv = 1, bf16 q): the sparse decode kernel,
// which gathers and dequantises V32 tokens, over index lists holding the slots of every visible
// token (all of the request's, or up to the causal bound), with the request's length as its
// topk_length. The dense schedule fits it as it is: sparse token counts would be the same lengths
// with an empty request counted as one token, which occupies the same single block.
void dense_decode_fp8_cuda(const CudaBackend& backend, const DenseDecodeParams& p, void* stream) {
  const int64_t topk = p.max_blocks_per_seq * p.page_block_size;
  DeviceBuffer indices;
  indices.allocate(backend, sizeof(int32_t) * p.batch * p.q_len * topk, stream);
  backend.dense_token_slots(p.block_table, p.block_table_stride, p.max_blocks_per_seq,
                            p.cache_seqlens, p.page_block_size, p.num_blocks, p.batch, p.q_len,
                            p.causal, indices.as<int32_t>(), stream);
  SparseDecodeParams sp{
      .batch = p.batch, .q_len = p.q_len, .num_heads_q = p.num_heads_q, .d_qk = p.d_qk,
      .d_v = p.d_v, .scale_log2 = p.scale_log2, .q = static_cast<const uint16_t*>(p.q),
      .q_stride = {p.q_stride[0], p.q_stride[1], p.q_stride[2]},
      .main = {.kind = KvCacheKind::fp8_v32,
               .data = static_cast<const uint8_t*>(p.k_cache),
               .block_stride_bytes = p.k_stride[0],  // uint8 / fp8 elements are bytes
               .token_stride_bytes = p.k_stride[1],
               .page_block_size = p.page_block_size,
               .num_tokens = p.num_blocks * p.page_block_size,
               .indices = indices.as<const int32_t>(),
               .indices_stride = {p.q_len * topk, topk},
               .topk = topk,
               .topk_length = p.cache_seqlens},
      .out = static_cast<uint16_t*>(p.out),
      .out_stride = {p.out_stride[0], p.out_stride[1], p.out_stride[2]},
      .lse = p.lse,
      .lse_stride = {p.lse_stride[0], p.lse_stride[1], p.lse_stride[2]},
  };
  sp.sched = p.sched;
  sp.num_parts = p.num_parts;
  sp.num_splits = p.num_splits;
  sp.lse_accum = p.lse_accum;  // (slots, q_len, h_q[, 512]): the layout of both kernels
  sp.o_accum = p.o_accum;
  sp.num_accum_slots = p.num_accum_slots;
  backend.sparse_decode(sp, stream);
}

// A dense call on the GPU: validation without reading device values, the schedule (given, or
// from the device scheduler) and accumulators on ctx's stream, then the CUDA kernel (`run`).
void dense_decode_cuda(const MlaDecodeArgs& args, const Context& ctx, bool run) {
  core::DenseDecodeParams p = validate_dense_decode(args, ctx);
  const CudaBackend& backend = *cuda_backend();  // validation found one
  Checker c(kFn);
  c.use_device_of(args.q, "q");
  DeviceSchedule sched;
  resolve_device_schedule(c, backend, args.tile_scheduler_metadata, args.num_splits,
                          {.cache_seqlens = p.cache_seqlens},
                          {.batch = p.batch, .q_len = p.q_len, .num_heads_q = p.num_heads_q,
                           .num_heads_kv = p.num_heads_kv, .d_v = p.d_v},
                          ctx.cuda_stream, run, sched);
  if (!run) return;
  attach_device_schedule(sched, p);
  if (p.kv_fp8_v32) return dense_decode_fp8_cuda(backend, p, ctx.cuda_stream);
  backend.dense_decode(p, ctx.cuda_stream);
}

}  // namespace core

void flash_mla_with_kvcache(const MlaDecodeArgs& args, const Context& ctx) {
  if (args.indices.defined()) return core::sparse_decode_call(args, ctx, /*run=*/true);
  if (args.q.device == Device::cuda) return core::dense_decode_cuda(args, ctx, /*run=*/true);
  core::ResolvedSchedule sched;
  core::DenseDecodeParams p = core::prepare_dense_decode(args, ctx, sched);
  core::attach_accumulators(sched, p);
  cpu::decode::run_dense_decode(p);
}

std::optional<std::string> flash_mla_with_kvcache_can_run(const MlaDecodeArgs& args,
                                                          const Context& ctx) {
  try {
    if (args.indices.defined()) {
      core::sparse_decode_call(args, ctx, /*run=*/false);
    } else if (args.q.device == Device::cuda) {
      core::dense_decode_cuda(args, ctx, /*run=*/false);
    } else {
      core::ResolvedSchedule sched;
      core::prepare_dense_decode(args, ctx, sched);
    }
  } catch (const Error& e) {
    return std::string(e.what());
  }
  return std::nullopt;
}

}  // namespace flashmla
