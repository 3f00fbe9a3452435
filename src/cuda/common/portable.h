// The portability header of every CUDA kernel: one source compiles under nvcc for the GPU and
// under the host compiler for the CPU test harness (docs/cuda-harness.md).
//
// Rules for kernel sources (src/cuda/**/*.cu):
//  - launch only through FMLA_LAUNCH / FMLA_LAUNCH_SMEM_CAP (never <<<...>>>);
//  - shared memory only through flashmla::cuda::dynamic_smem() (no __shared__ variables): the
//    harness gives each block an exact-size buffer filled with 0xFF (NaN) at block start;
//  - inline PTX only in the wrappers below (mma.sync, ldmatrix, cp.async), in wgmma.cuh
//    (Hopper's wgmma) and tma.cuh (mbarriers, bulk tensor copies): PTX under __CUDA_ARCH__,
//    the harness's emulation under FLASHMLA_CUDA_HARNESS;
//  - warp collectives through the CUDA builtins (__shfl_*_sync, __ballot_sync, __any_sync,
//    __all_sync, __syncwarp) and __syncthreads, which the harness provides with the same names;
//  - code between FMLA_CUDA_NS_BEGIN / END (cuda/common/namespace.h): flashmla::cuda plus the
//    inline namespace that keeps the GPU build (cuda::device) and the harness build
//    (cuda::harness) apart when both are linked into one test binary.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/common/namespace.h"

#if defined(__CUDACC__)
#include <cuda_runtime.h>

#include "flashmla/error.h"
#elif defined(FLASHMLA_CUDA_HARNESS)
#include "cuda_harness/runtime.h"
#else
#error "src/cuda sources compile under nvcc or, for the CPU harness, with FLASHMLA_CUDA_HARNESS"
#endif

#if defined(__CUDA_ARCH__)
#define FMLA_CUDA_ARCH __CUDA_ARCH__
#else
#define FMLA_CUDA_ARCH 0
#endif

// ---- loop unrolling ----
// FMLA_UNROLL before a loop: full unrolling under nvcc, where register arrays indexed by the loop
// variable must stay in registers; nothing for the host compiler of the harness (which has its
// own heuristics and would warn about the pragma).
#if defined(__CUDACC__)
#define FMLA_UNROLL _Pragma("unroll")
#else
#define FMLA_UNROLL
#endif

// ---- launch ----
// FMLA_LAUNCH(kernel, grid, block, smem_bytes, stream, args...): on the GPU a <<<>>> launch on
// `stream` (cudaStream_t, may be null) after raising the kernel's dynamic shared memory limit;
// in the harness a synchronous run of every block (errors throw std::runtime_error).
// FMLA_LAUNCH_SMEM_CAP(kernel, grid, block, smem_bytes, cap, stream, args...): the same, with
// the kernel's limit raised to `cap` (>= smem_bytes) — for a kernel launched with different
// sizes, so that launches from several host threads never lower the limit under each other.
// On the GPU a failed attribute call or launch (cudaGetLastError) throws flashmla::Error
// naming the kernel; it never goes unnoticed until some later CUDA call.
#if defined(__CUDACC__)
namespace flashmla::cuda_launch {
inline void check(cudaError_t status, const char* kernel, const char* step) {
  if (status != cudaSuccess) {
    throw ::flashmla::Error(::flashmla::ErrorKind::unsupported, kernel, step,
                            "a successful CUDA call", cudaGetErrorString(status));
  }
}
}  // namespace flashmla::cuda_launch
#define FMLA_LAUNCH_SMEM_CAP(kernel, grid, block, smem, cap, stream, ...)                      \
  do {                                                                                          \
    if ((cap) > 48 * 1024) {                                                                    \
      ::flashmla::cuda_launch::check(                                                           \
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(cap)),  \
          #kernel, "cudaFuncSetAttribute");                                                     \
    }                                                                                           \
    kernel<<<(grid), (block), (smem), static_cast<cudaStream_t>(stream)>>>(__VA_ARGS__);        \
    ::flashmla::cuda_launch::check(cudaGetLastError(), #kernel, "launch");                      \
  } while (0)
#else
#define FMLA_LAUNCH_SMEM_CAP(kernel, grid, block, smem, cap, stream, ...)                      \
  ::flashmla::cuda_harness::launch(#kernel, kernel, (grid), (block), (smem) __VA_OPT__(, ) __VA_ARGS__)
#endif
#define FMLA_LAUNCH(kernel, grid, block, smem, stream, ...) \
  FMLA_LAUNCH_SMEM_CAP(kernel, grid, block, smem, smem, stream __VA_OPT__(, ) __VA_ARGS__)

FMLA_CUDA_NS_BEGIN

// The block's dynamic shared memory (at least 16-byte aligned).
__device__ __forceinline__ unsigned char* dynamic_smem() {
#if defined(__CUDACC__)
  extern __shared__ __align__(128) unsigned char fmla_dynamic_smem[];
  return fmla_dynamic_smem;
#else
  return static_cast<unsigned char*>(::flashmla::cuda_harness::dynamic_smem());
#endif
}

__device__ __forceinline__ int lane_id() { return static_cast<int>(threadIdx.x & 31u); }
__device__ __forceinline__ int warp_id() { return static_cast<int>(threadIdx.x >> 5); }

inline constexpr unsigned kFullMask = 0xffffffffu;

// ---- matrix multiply-accumulate: mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.f32 ----
// a: the lane's 4 registers of the 16x16 A fragment, b: 2 registers of the 16x8 B fragment,
// c/d: 4 fp32 of the 16x8 accumulator (PTX ISA fragment layout for m16n8k16). d may alias c.
__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4],
                                                  const uint32_t (&b)[2], const float (&c)[4]) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
        "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::mma_m16n8k16(::flashmla::cuda_harness::MmaType::bf16, d, a, b, c);
#endif
}

__device__ __forceinline__ void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4],
                                                 const uint32_t (&b)[2], const float (&c)[4]) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
        "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::mma_m16n8k16(::flashmla::cuda_harness::MmaType::f16, d, a, b, c);
#endif
}

// ---- ldmatrix.sync.aligned.m8n8.{x1,x2,x4}[.trans].shared.b16 ----
// row: this lane's row address in shared memory (16-byte aligned; lanes 0-7 address matrix 0,
// 8-15 matrix 1, ...; for x1 / x2 the other lanes' addresses are ignored).
template <int kNum, bool kTrans>
__device__ __forceinline__ void ldmatrix(uint32_t (&r)[kNum], const void* row) {
  static_assert(kNum == 1 || kNum == 2 || kNum == 4, "ldmatrix loads 1, 2 or 4 matrices");
#if defined(__CUDA_ARCH__)
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (kNum == 1 && !kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(addr));
  } else if constexpr (kNum == 1) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0]) : "r"(addr));
  } else if constexpr (kNum == 2 && !kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
  } else if constexpr (kNum == 2) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
  } else if constexpr (!kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
  }
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::ldmatrix(r, kNum, kTrans, row);
#endif
}

// ---- cp.async.cg.shared.global (16 bytes; src_bytes < 16 zero-fills the rest, 0 reads
// nothing) and its groups ----
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, int src_bytes) {
#if defined(__CUDA_ARCH__)
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
               :: "r"(dst), "l"(gmem_src), "r"(src_bytes));
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::cp_async(smem_dst, gmem_src, 16, src_bytes);
#endif
}

// cp.async.ca.shared.global of 8 bytes (both addresses 8-byte aligned).
__device__ __forceinline__ void cp_async_8(void* smem_dst, const void* gmem_src) {
#if defined(__CUDA_ARCH__)
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" :: "r"(dst), "l"(gmem_src));
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::cp_async(smem_dst, gmem_src, 8, 8);
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;\n" ::);
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::cp_async_commit();
#endif
}

// Waits until at most kPending of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;\n" :: "n"(kPending));
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::cp_async_wait(kPending);
#endif
}

// ---- packing helpers (same on both compilers) ----
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
__device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

FMLA_CUDA_NS_END
