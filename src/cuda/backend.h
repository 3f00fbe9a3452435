// This build's CUDA backend as a table of entry points (core/cuda_backend.h): the GPU build
// (cuda::device, nvcc) is what the library calls for CUDA tensors; the harness build
// (cuda::harness) is what tests install to run the API's CUDA path on the CPU.
#pragma once

#include "core/cuda_backend.h"
#include "cuda/common/namespace.h"

FMLA_CUDA_NS_BEGIN

const core::CudaBackend& backend();

FMLA_CUDA_NS_END
