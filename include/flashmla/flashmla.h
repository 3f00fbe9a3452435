// flashmla: the public C++ API. Framework-free: tensors are TensorViews (pointer, dtype, shape,
// strides in elements); errors are flashmla::Error naming the argument, what was expected and
// what was given. Shapes, vocabulary and edge-case rules: docs/conventions.md.
//
// Typical decoding step (one schedule for every layer of the step):
//
//   int parts = flashmla::mla_num_sm_parts({.batch = b, .q_len = s_q, .num_heads_q = h_q,
//                                           .num_heads_kv = h_kv});
//   std::vector<int32_t> meta(parts * 8), splits(b + 1);
//   flashmla::get_mla_metadata({.cache_seqlens = seqlens, .num_sm_parts = parts,
//                               .tile_scheduler_metadata = TensorView::contiguous(meta.data(), ...),
//                               .num_splits = TensorView::contiguous(splits.data(), ...)});
//   for (layer ...) flashmla::flash_mla_with_kvcache({.q = ..., .tile_scheduler_metadata = ...});
//
// Devices: a call runs where its leading tensor is (q; o_accum for mla_combine;
// tile_scheduler_metadata for get_mla_metadata), and every other tensor must be on the same
// device. CPU tensors run the CPU backend. CUDA tensors (TensorView::device == Device::cuda,
// device pointers) run the CUDA backend on ctx.cuda_stream, asynchronously, when the library was
// built with it (else an Error, unsupported); the operations of flashmla/mha.h and kv_format.h
// are CPU-only. On the GPU the host checks shapes, dtypes and strides but cannot read values
// inside tensors (lengths, block ids, indices, a given schedule): the kernels keep every access
// inside the tensors whatever those values are, but out-of-range values give wrong results for
// the requests that hold them rather than an Error. Without a given schedule a GPU decode call
// runs the scheduler on the device and allocates its buffers on the stream (cudaMallocAsync).
#pragma once

#include <cstddef>
#include <optional>
#include <string>

#include "flashmla/context.h"
#include "flashmla/error.h"
#include "flashmla/tensor.h"

namespace flashmla {

inline constexpr const char* kVersion = "0.1.0";

// ---------------------------------------------------------------------------------------------
// Split-KV decode scheduler (FlashMLA's get_mla_metadata, reference §5).

struct MlaDecodeShape {
  int64_t batch = 0;
  int64_t q_len = 1;         // s_q
  int64_t num_heads_q = 0;   // h_q
  int64_t num_heads_kv = 1;  // h_kv
};

// Number of scheduler parts ("SM parts") the backend of `device` uses for this shape. CPU: one
// part per worker thread; a part processes every query head of every KV head of its (request,
// block) range, so a KV tile is gathered once per KV head and tile of up to 128 query rows (see
// docs/conventions.md). CUDA: FlashMLA's rule (reference §5.1) with S the multiprocessors of
// the current device, max(S / h_kv / ceil(q_len * h_q / h_kv / 64), 1).
int mla_num_sm_parts(const MlaDecodeShape& shape, const Context& ctx = {},
                     Device device = Device::cpu);

// Scheduler constants of the CPU dense decode kernel (the same as FlashMLA's SM90 dense decode).
inline constexpr int kSchedulerBlockSize = 64;     // tokens per scheduler block (a KV tile)
inline constexpr int kSchedulerFixedOverhead = 5;  // cost of one piece, in blocks

struct MlaMetadataArgs {
  TensorView cache_seqlens;            // dense: (b,) int32, contiguous: KV tokens of each request
  // Sparse mode (topk > 0), as the sparse decode call will use it (§5.3 step 1); then
  // cache_seqlens is not used and the batch is topk_length's or `batch`.
  int64_t batch = 0;                   // sparse: requests (when topk_length is null)
  int64_t topk = 0;                    // sparse: columns of `indices`; 0 = dense mode
  TensorView topk_length;              // sparse: optional (b,) int32
  int64_t extra_topk = 0;              // sparse: columns of extra_indices_in_kvcache; 0 = none
  TensorView extra_topk_length;        // sparse: optional (b,) int32
  int num_sm_parts = 0;                // in [1, kMaxSmParts]; mla_num_sm_parts() gives the
                                       // CPU's number
  TensorView tile_scheduler_metadata;  // (num_sm_parts, 8) int32, contiguous; written
  TensorView num_splits;               // (b + 1,) int32, contiguous; written
};

// Computes the split-KV schedule (records of §5.2 by the algorithm of §5.3). Compute it once per
// decoding step; every layer of the step reuses it.
void get_mla_metadata(const MlaMetadataArgs& args, const Context& ctx = {});

// ---------------------------------------------------------------------------------------------
// Dense MLA decode over a paged KV cache (FlashMLA's flash_mla_with_kvcache without indices).

struct MlaDecodeArgs {
  TensorView q;              // (b, s_q, h_q, 576) bf16 | fp16; last dim contiguous
  TensorView k_cache;        // (num_blocks, page_block_size, h_kv, 576), q's dtype; last dim
                             // contiguous. V is the first head_dim_v channels of K.
  TensorView block_table;    // (b, max_blocks_per_seq) int32; last dim contiguous
  TensorView cache_seqlens;  // (b,) int32
  int head_dim_v = 512;      // must be 512
  std::optional<float> softmax_scale;  // |scale| * log2(e) finite in fp32; default 1/sqrt(576)
  bool causal = false;       // bottom-right aligned; ignored when s_q == 1
  // Optional schedule from get_mla_metadata (both or neither); computed per call when absent.
  TensorView tile_scheduler_metadata;  // (num_sm_parts, 8) int32, contiguous; may be null
  TensorView num_splits;               // (b + 1,) int32, contiguous; may be null
  TensorView out;            // (b, s_q, h_q, 512), q's dtype; written
  TensorView lse;            // (b, h_q, s_q) fp32, natural log; written

  // Sparse mode (FlashMLA's `indices` path, §3.3), enabled when `indices` is given. Then q is
  // bf16 with d_qk 576 (FP8 format V32) or 512 (MODEL1); k_cache is either an FP8 cache
  // (num_blocks, page_block_size, 1, 656 | 584) of a 1-byte dtype with stride(1) == bytes per
  // token, or a bf16 cache (num_blocks, page_block_size, 1, d_qk); h_kv = 1; causal must be
  // false; block_table and cache_seqlens are not used (may be null). V = the first 512
  // dequantized channels (V32) or all 512 (MODEL1).
  TensorView indices;        // (b, s_q, topk) int32, topk >= 1, last dim contiguous: physical
                             // slots block * page_block_size + offset; -1 = invalid
  TensorView topk_length;    // optional (b,) int32 in [0, topk]: leading columns used
  TensorView attn_sink;      // optional (h_q,) fp32, natural units, +-inf allowed
  TensorView extra_k_cache;  // optional second pool, like k_cache (own num_blocks and page size)
  TensorView extra_indices_in_kvcache;  // (b, s_q, extra_topk) int32; iff extra_k_cache
  TensorView extra_topk_length;         // optional (b,) int32 in [0, extra_topk]
};

void flash_mla_with_kvcache(const MlaDecodeArgs& args, const Context& ctx = {});

// Empty when the call would run; otherwise the message of the Error it would throw.
std::optional<std::string> flash_mla_with_kvcache_can_run(const MlaDecodeArgs& args,
                                                          const Context& ctx = {});

// ---------------------------------------------------------------------------------------------
// Combine of split-KV pieces (reference §5.6). Rows of requests with a single piece are left
// untouched (the decode kernel wrote them); any number of pieces per request is supported.

struct MlaCombineArgs {
  TensorView lse_accum;   // (num_slots, s_q, h_q) fp32, log2 units; -inf for an empty piece
  TensorView o_accum;     // (num_slots, s_q, h_q, d_v) fp32, each piece normalised
  TensorView num_splits;  // (b + 1,) int32: exclusive prefix sum of pieces per request
  TensorView attn_sink;   // optional (h_q,) fp32, natural units; may be null
  TensorView out;         // (b, s_q, h_q, d_v) bf16 | fp16 | fp32; written
  TensorView lse;         // (b, h_q, s_q) fp32, natural log, without the sink; written
};

void mla_combine(const MlaCombineArgs& args, const Context& ctx = {});

// ---------------------------------------------------------------------------------------------
// Sparse MLA prefill (FlashMLA's flash_mla_sparse_fwd, reference §2.4, §3.4). All query heads of
// a query token share its index list (h_kv = 1). Callers flatten batches into s_q / s_kv.

struct SparsePrefillArgs {
  TensorView q;            // (s_q, h_q, d_qk) bf16, d_qk in {512, 576}; last dim contiguous
  TensorView kv;           // (s_kv, 1, d_qk) bf16; last dim contiguous. V = kv[..., :512]
  TensorView indices;      // (s_q, 1, topk) int32, topk >= 1; last dim contiguous. Entry c of
                           // token s is valid iff 0 <= idx < s_kv and c < topk_length[s]
  float sm_scale = 0;      // required; |sm_scale| * log2(e) finite in fp32
  int d_v = 512;           // must be 512
  TensorView attn_sink;    // optional (h_q,) fp32, natural units, +-inf allowed; may be null
  TensorView topk_length;  // optional (s_q,) int32 in [0, topk]; may be null (= topk)
  TensorView out;          // (s_q, h_q, 512) bf16; written (0 for an empty row)
  TensorView max_logits;   // (s_q, h_q) fp32, natural units; written (-inf for an empty row)
  TensorView lse;          // (s_q, h_q) fp32, natural log, without the sink; written (+inf
                           // for an empty row)
};

void flash_mla_sparse_fwd(const SparsePrefillArgs& args, const Context& ctx = {});

}  // namespace flashmla

#include "flashmla/mha.h"  // dense MHA varlen prefill, forward and backward
