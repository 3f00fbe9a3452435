// Sparse MLA decode on the GPU: core::SparseDecodeParams -> the SM80 or SM90 split kernel, then the
// combine of split requests (as cpu/decode/sparse_decode.cpp).
#include "cuda/decode/sparse_decode.h"

#include <cstdint>

#include "cuda/common/portable.h"
#include "cuda/decode/combine.h"
#include "cuda/decode/sparse_decode_sm80.h"
#include "cuda/decode/sparse_decode_sm90.h"

FMLA_CUDA_NS_BEGIN

namespace {

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

SparseKvPoolArgs pool_args(const core::SparseKvPool& pool) {
  return {.data = pool.data,
          .block_stride_bytes = pool.block_stride_bytes,
          .token_stride_bytes = pool.token_stride_bytes,
          .page_block_size = pool.page_block_size,
          .num_tokens = pool.num_tokens,
          .indices = pool.indices,
          .indices_stride0 = pool.indices_stride[0],
          .indices_stride1 = pool.indices_stride[1],
          .topk = pool.topk,
          .topk_length = pool.topk_length};
}

// Every 16-byte chunk the kernel loads from the pool starts at a multiple of 16 bytes.
bool pool_aligned(const core::SparseKvPool& pool) {
  if (!pool.indices) return true;
  const bool bf16 = pool.kind == core::KvCacheKind::bf16;
  return aligned16(pool.data) && pool.block_stride_bytes % 16 == 0 &&
         (!bf16 || pool.token_stride_bytes % 16 == 0);
}

int kv_kind(core::KvCacheKind kind) {
  switch (kind) {
    case core::KvCacheKind::fp8_v32: return kSparseKvV32;
    case core::KvCacheKind::fp8_model1: return kSparseKvModel1;
    default: return kSparseKvBf16;
  }
}

}  // namespace

void run_sparse_decode(const core::SparseDecodeParams& p, void* stream, KernelGeneration gen) {
  SparseDecodeArgs a{};
  a.batch = static_cast<int>(p.batch);
  a.q_len = static_cast<int>(p.q_len);
  a.num_heads_q = static_cast<int>(p.num_heads_q);
  a.d_qk = static_cast<int>(p.d_qk);
  a.scale_log2 = p.scale_log2;
  a.q = p.q;
  for (int i = 0; i < 3; ++i) {
    a.q_stride[i] = p.q_stride[i];
    a.out_stride[i] = p.out_stride[i];
    a.lse_stride[i] = p.lse_stride[i];
  }
  a.q_aligned = aligned16(p.q) && p.q_stride[0] % 8 == 0 && p.q_stride[1] % 8 == 0 &&
                p.q_stride[2] % 8 == 0;
  a.kv_kind = kv_kind(p.main.kind);
  a.has_extra = p.extra.indices != nullptr;
  a.kv_aligned = pool_aligned(p.main) && pool_aligned(p.extra);
  a.main = pool_args(p.main);
  a.extra = a.has_extra ? pool_args(p.extra) : a.main;
  a.attn_sink = p.attn_sink;
  a.out = p.out;
  a.lse = p.lse;
  a.sched = reinterpret_cast<const int32_t*>(p.sched);
  a.num_parts = p.num_parts;
  a.num_splits = p.num_splits;
  a.lse_accum = p.lse_accum;
  a.o_accum = p.o_accum;
  a.num_accum_slots = p.num_accum_slots;
  if (gen == KernelGeneration::sm90) {
    launch_sparse_decode_sm90(a, stream);
  } else {
    launch_sparse_decode_sm80(a, stream);
  }
  combine_decode_accumulators(p.batch, p.q_len, p.num_heads_q, p.d_v, p.lse_accum, p.o_accum,
                              p.num_accum_slots, p.num_splits, p.attn_sink, DType::bf16, p.out,
                              p.out_stride, p.lse, p.lse_stride, stream);
}

FMLA_CUDA_NS_END
