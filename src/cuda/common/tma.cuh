// Hopper's tensor memory accelerator for kernels that also run in the CPU harness: mbarriers in
// shared memory and the tiled bulk tensor copy (cp.async.bulk.tensor) that completes on one.
// Like wgmma.cuh: PTX on sm_90 and later, the harness's emulation (tests/cuda_harness/tma.cpp)
// under FLASHMLA_CUDA_HARNESS, nothing for older GPU targets (where no kernel using these is
// launched). The tensor map (TmaMap: CUtensorMap on the GPU) is encoded on the host
// (cuda/common/tma_map.h) and passed as a __grid_constant__ kernel parameter, so its address is
// in the parameter space the copy reads it from.
#pragma once

#include <cstdint>

#include "cuda/common/portable.h"
#include "cuda/common/wgmma.cuh"

#if defined(__CUDACC__)
#include <cuda.h>
#endif

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define FMLA_TMA_PTX 1
#endif

FMLA_CUDA_NS_BEGIN

#if defined(__CUDACC__)
using TmaMap = CUtensorMap;
#else
using TmaMap = ::flashmla::cuda_harness::TensorMap;
#endif

// bar: an 8-byte aligned uint64_t in the block's shared memory.
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, unsigned count) {
#if defined(FMLA_TMA_PTX)
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_address(bar)), "r"(count)
               : "memory");
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::mbarrier_init(bar, count);
#else
  (void)bar, (void)count;
#endif
}

// Makes initialised mbarriers visible to the async proxy (the bulk copies); a __syncthreads
// after it publishes them to the block.
__device__ __forceinline__ void fence_mbarrier_init() {
#if defined(FMLA_TMA_PTX)
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

// Raises the current phase's expected transaction bytes, then arrives.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, unsigned bytes) {
#if defined(FMLA_TMA_PTX)
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(
                   smem_address(bar)),
               "r"(bytes)
               : "memory");
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::mbarrier_arrive_expect_tx(bar, bytes);
#else
  (void)bar, (void)bytes;
#endif
}

// Waits until the phase of parity `parity` (0 for the first, then alternating) has completed;
// its bulk copies' data is then visible to the waiting thread.
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, unsigned parity) {
#if defined(FMLA_TMA_PTX)
  const uint32_t addr = smem_address(bar);
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(addr), "r"(parity)
        : "memory");
  } while (!done);
#elif !defined(__CUDACC__)
  while (!::flashmla::cuda_harness::mbarrier_try_wait_parity(bar, parity)) {
  }
#else
  (void)bar, (void)parity;
#endif
}

// The box of `map` at element coordinates (c0, c1, c2, c3) into shared memory at dst (1024-byte
// aligned for the 128-byte swizzle), completing its bytes on bar.
__device__ __forceinline__ void tma_load_4d(void* dst, const TmaMap* map, int c0, int c1, int c2,
                                            int c3, uint64_t* bar) {
#if defined(FMLA_TMA_PTX)
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(smem_address(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3),
      "r"(smem_address(bar))
      : "memory");
#elif !defined(__CUDACC__)
  const int32_t coords[4] = {c0, c1, c2, c3};
  ::flashmla::cuda_harness::tma_load_tile(dst, map, coords, bar);
#else
  (void)dst, (void)map, (void)c0, (void)c1, (void)c2, (void)c3, (void)bar;
#endif
}

FMLA_CUDA_NS_END
