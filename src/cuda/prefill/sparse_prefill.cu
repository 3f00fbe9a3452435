// Sparse MLA prefill on the GPU: core::SparsePrefillParams -> the SM80 or the SM90 kernel.
#include "cuda/prefill/sparse_prefill.h"

#include <cstdint>

#include "cuda/common/portable.h"
#include "cuda/prefill/sparse_prefill_sm80.h"
#include "cuda/prefill/sparse_prefill_sm90.h"

FMLA_CUDA_NS_BEGIN

namespace {

// `p` and every stride (in elements of `elem_bytes`) are multiples of 16 bytes.
bool aligned16(const void* p, int64_t elem_bytes, const int64_t* strides, int n) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  for (int i = 0; i < n; ++i) {
    if ((strides[i] * elem_bytes) % 16 != 0) return false;
  }
  return true;
}

}  // namespace

void run_sparse_prefill(const core::SparsePrefillParams& p, void* stream,
                        KernelGeneration gen) {
  SparsePrefillKernelArgs a{};
  a.q_len = p.q_len;
  a.kv_len = p.kv_len;
  a.num_heads_q = p.num_heads_q;
  a.topk = p.topk;
  a.d_qk = static_cast<int>(p.d_qk);
  a.scale_log2 = p.scale_log2;
  a.q = p.q;
  a.kv = p.kv;
  a.kv_stride = p.kv_stride;
  a.indices = p.indices;
  a.indices_stride = p.indices_stride;
  a.topk_length = p.topk_length;
  a.attn_sink = p.attn_sink;
  a.out = p.out;
  a.max_logits = p.max_logits;
  a.lse = p.lse;
  for (int i = 0; i < 2; ++i) {
    a.q_stride[i] = p.q_stride[i];
    a.out_stride[i] = p.out_stride[i];
    a.max_logits_stride[i] = p.max_logits_stride[i];
    a.lse_stride[i] = p.lse_stride[i];
  }
  a.q_aligned = aligned16(p.q, 2, p.q_stride, 2);
  a.kv_aligned = aligned16(p.kv, 2, &p.kv_stride, 1);
  a.out_aligned = aligned16(p.out, 2, p.out_stride, 2);
  if (gen == KernelGeneration::sm90) {
    launch_sparse_prefill_sm90(a, stream);
  } else {
    launch_sparse_prefill_sm80(a, stream);
  }
}

FMLA_CUDA_NS_END
