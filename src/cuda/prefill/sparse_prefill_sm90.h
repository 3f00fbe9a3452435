// The SM90 (Hopper, sm_90a) sparse prefill kernel's launch (sparse_prefill_sm90.cu); it takes the
// SM80 kernel's arguments. The entry point (sparse_prefill.cu) runs it when asked for the SM90
// generation, which the backend table does on compute capability 9.0 (cuda/backend.cu).
#pragma once

#include "cuda/common/namespace.h"
#include "cuda/prefill/sparse_prefill_sm80.h"

FMLA_CUDA_NS_BEGIN

// One CTA of 256 threads (two warpgroups) per (query token, group of 64 heads).
void launch_sparse_prefill_sm90(const SparsePrefillKernelArgs& a, void* stream);

FMLA_CUDA_NS_END
