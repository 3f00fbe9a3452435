// The kernel generations an entry point can run. sm80: the portable kernels, on every GPU from
// SM80 (mma.sync). sm90: the Hopper kernels (wgmma), on compute capability 9.0 only and from a
// build with sm_90a code; the backend table (cuda/backend.cu) picks them there.
#pragma once

#include "cuda/common/namespace.h"

FMLA_CUDA_NS_BEGIN

enum class KernelGeneration { sm80, sm90 };

inline const char* generation_name(KernelGeneration g) {
  return g == KernelGeneration::sm90 ? "sm90" : "sm80";
}

FMLA_CUDA_NS_END
