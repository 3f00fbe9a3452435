// Dense MLA decode on the GPU (the SM80, SM90 or SM100 kernel): the CUDA twin of
// cpu/decode/dense_decode.h.
#pragma once

#include "core/decode_params.h"
#include "cuda/common/generation.h"
#include "cuda/common/namespace.h"

FMLA_CUDA_NS_BEGIN

// Same contract as cpu::decode::run_dense_decode (p.num_threads is ignored): runs every part of
// the schedule, then combines split requests. Every pointer of p is a device pointer; `stream`
// is a cudaStream_t (null = default stream). Asynchronous on the GPU, synchronous in the
// harness. Throws flashmla::Error (unsupported) for an FP8 V32 cache (p.kv_fp8_v32; the API runs
// those on the sparse kernel, see cuda/decode/dense_token_slots.h), which this
// kernel does not read yet. `gen`: the split kernel's generation (common/generation.h); the SM90
// and SM100 kernels read the cache through a TMA tensor map, and where the cache's layout does not suit one
// (page size not a multiple of 8, strides or base not 16-byte aligned) the SM80 kernel runs
// instead. Returns the generation that ran.
KernelGeneration run_dense_decode(const core::DenseDecodeParams& p, void* stream,
                                  KernelGeneration gen = KernelGeneration::sm80);

FMLA_CUDA_NS_END
