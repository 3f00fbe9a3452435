// The kernel generations an entry point can run. sm80: the portable kernels, on every GPU from
// SM80 (mma.sync). sm90: the Hopper kernels (wgmma), on compute capability 9.0 only and from a
// build with sm_90a code. sm100: the datacenter Blackwell kernels (tcgen05), on compute
// capability 10.0 only and from a build with sm_100a code (dense decode so far; the other entry
// points run their SM80 kernel for it). The backend table (cuda/backend.cu) picks them there.
#pragma once

#include "cuda/common/namespace.h"

FMLA_CUDA_NS_BEGIN

enum class KernelGeneration { sm80, sm90, sm100 };

inline const char* generation_name(KernelGeneration g) {
  switch (g) {
    case KernelGeneration::sm90: return "sm90";
    case KernelGeneration::sm100: return "sm100";
    default: return "sm80";
  }
}

FMLA_CUDA_NS_END
