// Dense MLA decode on the GPU: core::DenseDecodeParams -> the SM80, SM90 or SM100 split kernel, then the
// combine of split requests (as cpu/decode/dense_decode.cpp).
#include "cuda/decode/dense_decode.h"

#include <cstdint>

#include "cuda/common/portable.h"
#include "cuda/decode/combine.h"
#include "cuda/decode/dense_decode_sm80.h"
#include "cuda/decode/dense_decode_sm90.h"
#include "cuda/decode/dense_decode_sm100.h"
#include "flashmla/error.h"

FMLA_CUDA_NS_BEGIN

namespace {

bool aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// p and every stride (in 2-byte elements) are multiples of `bytes`.
bool layout_aligned(const void* p, const int64_t (&stride)[3], int bytes) {
  const int64_t elems = bytes / 2;
  return aligned(p, bytes) && stride[0] % elems == 0 && stride[1] % elems == 0 &&
         stride[2] % elems == 0;
}

}  // namespace

KernelGeneration run_dense_decode(const core::DenseDecodeParams& p, void* stream,
                                  KernelGeneration gen) {
  if (p.kv_fp8_v32) {
    // TODO(issue 8): FP8 V32 cache (656 bytes per token, dequantised in the tile loader).
    throw Error(ErrorKind::unsupported, "flash_mla_with_kvcache", "k_cache",
                "a bf16/fp16 cache (the CUDA dense decode kernel does not read FP8 V32 yet)",
                "an FP8 V32 cache");
  }
  DenseDecodeArgs a{};
  a.batch = static_cast<int>(p.batch);
  a.q_len = static_cast<int>(p.q_len);
  a.num_heads_q = static_cast<int>(p.num_heads_q);
  a.num_heads_kv = static_cast<int>(p.num_heads_kv);
  a.page_block_size = static_cast<int>(p.page_block_size);
  a.fp16 = p.dtype == DType::fp16;
  a.scale_log2 = p.scale_log2;
  a.causal = p.causal;
  a.q = static_cast<const uint16_t*>(p.q);
  a.k_cache = static_cast<const uint16_t*>(p.k_cache);
  for (int i = 0; i < 3; ++i) {
    a.q_stride[i] = p.q_stride[i];
    a.k_stride[i] = p.k_stride[i];
    a.out_stride[i] = p.out_stride[i];
    a.lse_stride[i] = p.lse_stride[i];
  }
  a.q_aligned = layout_aligned(p.q, p.q_stride, 16);
  a.k_aligned = layout_aligned(p.k_cache, p.k_stride, 16);
  a.out_aligned = layout_aligned(p.out, p.out_stride, 4);
  a.num_blocks = p.num_blocks;
  a.block_table = p.block_table;
  a.block_table_stride = p.block_table_stride;
  a.max_blocks_per_seq = p.max_blocks_per_seq;
  a.cache_seqlens = p.cache_seqlens;
  a.out = static_cast<uint16_t*>(p.out);
  a.lse = p.lse;
  a.sched = reinterpret_cast<const int32_t*>(p.sched);
  a.num_parts = p.num_parts;
  a.num_splits = p.num_splits;
  a.lse_accum = p.lse_accum;
  a.o_accum = p.o_accum;
  a.num_accum_slots = p.num_accum_slots;
  KernelGeneration ran = KernelGeneration::sm80;
  if (gen == KernelGeneration::sm90 && launch_dense_decode_sm90(a, stream)) {
    ran = KernelGeneration::sm90;
  } else if (gen == KernelGeneration::sm100 && launch_dense_decode_sm100(a, stream)) {
    ran = KernelGeneration::sm100;
  } else {
    launch_dense_decode_sm80(a, stream);
  }
  combine_decode_accumulators(p.batch, p.q_len, p.num_heads_q, p.d_v, p.lse_accum, p.o_accum,
                              p.num_accum_slots, p.num_splits, nullptr, p.dtype, p.out,
                              p.out_stride, p.lse, p.lse_stride, stream);
  return ran;
}

FMLA_CUDA_NS_END
