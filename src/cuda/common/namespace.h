// The namespace of the CUDA backend's code. Kernels and their host entry points live in
// flashmla::cuda, inside an inline namespace that says which build they come from: `device`
// (nvcc, the real backend linked into the library) or `harness` (the same source compiled by
// the host compiler for the CPU harness, tests/cuda_harness). Both can be linked into one test
// binary without clashing. Headers declaring entry points include only this file, so core code
// compiled by the host compiler can call the backend.
#pragma once

#if defined(FLASHMLA_CUDA_HARNESS) && !defined(__CUDACC__)
#define FMLA_CUDA_INLINE_NS harness
#else
#define FMLA_CUDA_INLINE_NS device
#endif

#define FMLA_CUDA_NS_BEGIN namespace flashmla::cuda { inline namespace FMLA_CUDA_INLINE_NS {
#define FMLA_CUDA_NS_END } }
