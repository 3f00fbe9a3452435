// Blackwell's fifth-generation tensor core (tcgen05, sm_100a) for kernels that also run in the
// CPU harness: tensor memory (TMEM) allocation, tcgen05.mma with A and B in shared memory and D
// in TMEM, its completion on an mbarrier, and the TMEM loads and stores of the 32x32b shape.
// Like wgmma.cuh: PTX under nvcc for sm_100a, the harness's emulation
// (tests/cuda_harness/tcgen05.cpp) under FLASHMLA_CUDA_HARNESS, nothing for every other GPU
// target (whose kernels built on these are empty and never launched: cuda/backend.cu selects
// them on compute capability 10.0 only).
//
// Tensor memory (PTX ISA, "Tensor Memory"): 128 lanes x 512 columns of 32-bit cells per CTA; an
// address is (lane << 16) | column. A warp allocates a power of two >= 32 columns (all lanes),
// and the kernel frees them before it exits. Warp w of a warpgroup reaches lanes
// 32 (w % 4) .. 32 (w % 4) + 31 only. The D of an M = 128 tcgen05.mma (cta_group::1) has row i
// in lane i, f32 column j in column j.
#pragma once

#include <cstdint>

#include "cuda/common/portable.h"
#include "cuda/common/wgmma.cuh"

// FMLA_SM100_BODY: where a kernel built on these wrappers has its body (sm_100a and the
// harness), as FMLA_SM90_BODY for the wgmma kernels.
#if defined(__CUDA_ARCH_FEAT_SM100_ALL) || !defined(__CUDA_ARCH__)
#define FMLA_SM100_BODY 1
#endif

FMLA_CUDA_NS_BEGIN

// ---- descriptors (host and device) ----

// The 64-bit shared-memory descriptor of tcgen05 (PTX ISA, "Shared memory descriptor"): start
// address, leading / stride dimension byte offsets (each >> 4 in 14 bits), bits 46-48 the fixed
// 0b001, base offset 0, relative LBO mode, swizzle mode in bits 61-63 (0 none, 2 128-byte).
// The same layouts as wgmma's descriptor (wgmma.cuh); only the encoding differs.
enum class UmmaSwizzle : uint32_t { none = 0, b128 = 2 };
__host__ __device__ constexpr uint64_t umma_desc(uint32_t smem_addr, uint32_t lbo_bytes,
                                                 uint32_t sbo_bytes, UmmaSwizzle swizzle) {
  return static_cast<uint64_t>((smem_addr & 0x3ffffu) >> 4) |
         static_cast<uint64_t>((lbo_bytes & 0x3ffffu) >> 4) << 16 |
         static_cast<uint64_t>((sbo_bytes & 0x3ffffu) >> 4) << 32 | uint64_t{1} << 46 |
         static_cast<uint64_t>(swizzle) << 61;
}

// K-major operand in 128-byte-swizzled slabs of `rows` rows x 64 K-elements: k-step `ks` (16
// elements of K) from row `row0` (as wgmma_desc_k_major; LBO unused, set to 16 bytes).
__host__ __device__ constexpr uint64_t umma_desc_k_major(uint32_t slabs_addr, int rows, int row0,
                                                         int ks) {
  return umma_desc(slabs_addr + static_cast<uint32_t>((ks / 4) * rows * 128 + row0 * 128 +
                                                      (ks % 4) * 32),
                   16, 1024, UmmaSwizzle::b128);
}

// MN-major operand in the same slabs (B of P V: V[token][channel]): k-step `ks` (16 tokens),
// channels from `n0` (a multiple of 64); the next 64 channels one slab on (LBO), the next 8
// tokens 1024 bytes on (SBO).
__host__ __device__ constexpr uint64_t umma_desc_mn_major(uint32_t slabs_addr, int rows, int n0,
                                                          int ks) {
  return umma_desc(slabs_addr + static_cast<uint32_t>((n0 / 64) * rows * 128 + ks * 16 * 128),
                   static_cast<uint32_t>(rows * 128), 1024, UmmaSwizzle::b128);
}

// K-major operand without swizzling, as core matrices of 8 rows x 16 bytes stored whole (128
// bytes each), the `rows` / 8 core matrices of one 8-element column of K one after another:
// element (row, k) at (k / 8) * rows * 16 + (row / 8) * 128 + (row % 8) * 16 + (k % 8) * 2.
// k-step `ks`: the next core matrix along K at LBO = rows * 16, the next 8 rows at SBO = 128.
__host__ __device__ constexpr uint32_t interleaved_offset(int rows, int row, int k) {
  return static_cast<uint32_t>((k / 8) * rows * 16 + (row / 8) * 128 + (row % 8) * 16 +
                               (k % 8) * 2);
}
__host__ __device__ constexpr uint64_t umma_desc_k_major_interleaved(uint32_t addr, int rows,
                                                                     int ks) {
  return umma_desc(addr + static_cast<uint32_t>(ks * 2 * rows * 16),
                   static_cast<uint32_t>(rows * 16), 128, UmmaSwizzle::none);
}

// The instruction descriptor of tcgen05.mma.kind::f16 (PTX ISA, "Instruction descriptor"): D
// f32 (bits 4-5 = 1), A and B bf16 (bits 7-9 / 10-12 = 1; kFp16: f16 = 0), A K-major, B
// MN-major if b_mn_major (bit 16), N >> 3 in bits 17-22, M >> 4 in bits 24-28; dense, no
// negation.
__host__ __device__ constexpr uint32_t umma_idesc_f16(bool fp16, int m, int n, bool b_mn_major) {
  const uint32_t ab = fp16 ? 0u : 1u;
  return 1u << 4 | ab << 7 | ab << 10 | (b_mn_major ? 1u : 0u) << 16 |
         static_cast<uint32_t>(n >> 3) << 17 | static_cast<uint32_t>(m >> 4) << 24;
}

// ---- tensor memory ----

// The warp allocates `ncols` columns (a power of two, 32..512) and writes their address to
// *dst (shared memory). Every lane of the warp calls it.
__device__ __forceinline__ void tmem_alloc(uint32_t* dst, uint32_t ncols) {
#if defined(__CUDA_ARCH_FEAT_SM100_ALL)
  asm volatile("tcgen05.alloc.cta_group::1.sync.aligned.shared::cta.b32 [%0], %1;\n" ::"r"(
                   smem_address(dst)),
               "r"(ncols)
               : "memory");
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::tmem_alloc(dst, ncols);
#else
  (void)dst, (void)ncols;
#endif
}

// The CTA will allocate no more (lets other CTAs on the SM allocate without waiting on it).
__device__ __forceinline__ void tmem_relinquish_alloc_permit() {
#if defined(__CUDA_ARCH_FEAT_SM100_ALL)
  asm volatile("tcgen05.relinquish_alloc_permit.cta_group::1.sync.aligned;\n" ::: "memory");
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::tmem_relinquish_alloc_permit();
#endif
}

__device__ __forceinline__ void tmem_dealloc(uint32_t taddr, uint32_t ncols) {
#if defined(__CUDA_ARCH_FEAT_SM100_ALL)
  asm volatile("tcgen05.dealloc.cta_group::1.sync.aligned.b32 %0, %1;\n" ::"r"(taddr), "r"(ncols)
               : "memory");
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::tmem_dealloc(taddr, ncols);
#else
  (void)taddr, (void)ncols;
#endif
}

// Order this thread's tensor-memory accesses (and tcgen05 operations) before a thread
// synchronisation (barrier, mbarrier) / after one.
__device__ __forceinline__ void tcgen05_fence_before_sync() {
#if defined(__CUDA_ARCH_FEAT_SM100_ALL)
  asm volatile("tcgen05.fence::before_thread_sync;\n" ::: "memory");
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::tcgen05_fence_before_sync();
#endif
}
__device__ __forceinline__ void tcgen05_fence_after_sync() {
#if defined(__CUDA_ARCH_FEAT_SM100_ALL)
  asm volatile("tcgen05.fence::after_thread_sync;\n" ::: "memory");
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::tcgen05_fence_after_sync();
#endif
}

// ---- tcgen05.mma.cta_group::1.kind::f16, A and B from shared memory, D in tensor memory ----
// Issued by one thread; D = A B, or D += A B when accumulate. Asynchronous: complete once the
// mbarrier of a later umma_commit (same thread) has completed its phase.
__device__ __forceinline__ void umma_f16(uint32_t d_tmem, uint64_t desc_a, uint64_t desc_b,
                                         uint32_t idesc, bool accumulate) {
#if defined(__CUDA_ARCH_FEAT_SM100_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %4, 0;\n"
      "tcgen05.mma.cta_group::1.kind::f16 [%0], %1, %2, %3, p;\n}\n" ::"r"(d_tmem),
      "l"(desc_a), "l"(desc_b), "r"(idesc), "r"(static_cast<uint32_t>(accumulate))
      : "memory");
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::umma_f16(d_tmem, desc_a, desc_b, idesc, accumulate);
#else
  (void)d_tmem, (void)desc_a, (void)desc_b, (void)idesc, (void)accumulate;
#endif
}

// One arrival on *bar once every tcgen05.mma this thread issued before it has completed.
__device__ __forceinline__ void umma_commit(uint64_t* bar) {
#if defined(__CUDA_ARCH_FEAT_SM100_ALL)
  asm volatile(
      "tcgen05.commit.cta_group::1.mbarrier::arrive::one.shared::cluster.b64 [%0];\n" ::"r"(
          smem_address(bar))
      : "memory");
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::umma_commit(bar);
#else
  (void)bar;
#endif
}

// ---- 32x32b loads and stores: lane l of the warp <-> TMEM lane (taddr's lane + l), 32
// consecutive columns from taddr's. Asynchronous: the registers of a load are valid after
// tmem_wait_ld, a store is complete after tmem_wait_st. tmem_fence_regs pins the registers in
// program order (after the wait, so that their uses are not hoisted above it). ----

#define FMLA_TMEM_REGS32                                                                      \
  "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24," \
  "%25,%26,%27,%28,%29,%30,%31"

__device__ __forceinline__ void tmem_ld32(uint32_t taddr, uint32_t (&r)[32]) {
#if defined(__CUDA_ARCH_FEAT_SM100_ALL)
#define FMLA_OUT8(o)                                                                            \
  "=r"(r[o]), "=r"(r[o + 1]), "=r"(r[o + 2]), "=r"(r[o + 3]), "=r"(r[o + 4]), "=r"(r[o + 5]), \
      "=r"(r[o + 6]), "=r"(r[o + 7])
  asm volatile("tcgen05.ld.sync.aligned.32x32b.x32.b32 {" FMLA_TMEM_REGS32 "}, [%32];\n"
               : FMLA_OUT8(0), FMLA_OUT8(8), FMLA_OUT8(16), FMLA_OUT8(24)
               : "r"(taddr)
               : "memory");
#undef FMLA_OUT8
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::tmem_ld(taddr, r, 32);
#else
  (void)taddr, (void)r;
#endif
}

__device__ __forceinline__ void tmem_st32(uint32_t taddr, const uint32_t (&r)[32]) {
#if defined(__CUDA_ARCH_FEAT_SM100_ALL)
#define FMLA_IN8(o)                                                                         \
  "r"(r[o]), "r"(r[o + 1]), "r"(r[o + 2]), "r"(r[o + 3]), "r"(r[o + 4]), "r"(r[o + 5]), \
      "r"(r[o + 6]), "r"(r[o + 7])
  asm volatile(
      "tcgen05.st.sync.aligned.32x32b.x32.b32 [%0], {"
      "%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,"
      "%25,%26,%27,%28,%29,%30,%31,%32};\n" ::"r"(taddr),
      FMLA_IN8(0), FMLA_IN8(8), FMLA_IN8(16), FMLA_IN8(24)
      : "memory");
#undef FMLA_IN8
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::tmem_st(taddr, r, 32);
#else
  (void)taddr, (void)r;
#endif
}

#undef FMLA_TMEM_REGS32

__device__ __forceinline__ void tmem_wait_ld() {
#if defined(__CUDA_ARCH_FEAT_SM100_ALL)
  asm volatile("tcgen05.wait::ld.sync.aligned;\n" ::: "memory");
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::tmem_wait_ld();
#endif
}

__device__ __forceinline__ void tmem_wait_st() {
#if defined(__CUDA_ARCH_FEAT_SM100_ALL)
  asm volatile("tcgen05.wait::st.sync.aligned;\n" ::: "memory");
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::tmem_wait_st();
#endif
}

template <int kN>
__device__ __forceinline__ void tmem_fence_regs(uint32_t (&r)[kN]) {
#if defined(__CUDA_ARCH__)
  FMLA_UNROLL
  for (int i = 0; i < kN; ++i) asm volatile("" : "+r"(r[i])::"memory");
#else
  (void)r;
#endif
}

FMLA_CUDA_NS_END
