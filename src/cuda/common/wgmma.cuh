// Hopper's warpgroup matrix multiply (wgmma.mma_async, sm_90a only) for kernels that also run
// in the CPU harness: shared-memory matrix descriptors, the wgmma fences and groups, and the two
// shapes the SM90 kernels use. Like portable.h: PTX under nvcc, the harness's emulation
// (tests/cuda_harness/wgmma.cpp) under FLASHMLA_CUDA_HARNESS.
//
// The instructions exist on sm_90a alone, so they are guarded by __CUDA_ARCH_FEAT_SM90_ALL: for
// every other GPU target (sm_80, plain sm_90, sm_100a, sm_120, the PTX) these wrappers compile
// to nothing, and a kernel built on them must not be launched there (its host side selects it
// on compute capability 9.0 only, cuda/backend.cu).
//
// Operands in shared memory use 128-byte swizzling (wgmma_desc_*): a "slab" is R rows of 128
// bytes (64 bf16 of the K or N dimension), R a multiple of 8, starting on a 1024-byte boundary;
// the 16-byte chunk c of row r lies at r * 128 + ((c ^ (r % 8)) * 16) (swizzle128_offset).
#pragma once

#include <cstdint>

#include "cuda/common/portable.h"

// FMLA_SM90_BODY: defined where a kernel built on these wrappers has its body — sm_90a and the
// harness. Such a kernel wraps its body (and the helpers only the body uses) in
// #if defined(FMLA_SM90_BODY), so every other GPU target compiles an empty kernel, never
// launched there.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) || !defined(__CUDA_ARCH__)
#define FMLA_SM90_BODY 1
#endif

FMLA_CUDA_NS_BEGIN

// ---- layout helpers (host and device) ----

// Byte offset, within a 128-byte-swizzled slab, of 16-byte chunk `chunk` (0..7) of row `row`.
__host__ __device__ constexpr uint32_t swizzle128_offset(int row, int chunk) {
  return static_cast<uint32_t>(row * 128 + ((chunk ^ (row % 8)) * 16));
}

enum class WgmmaSwizzle : uint32_t { none = 0, b128 = 1, b64 = 2, b32 = 3 };

// The 64-bit shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format"): start
// address, leading / stride dimension byte offsets (each stored >> 4 in 14 bits), base offset 0,
// swizzle mode in bits 62-63.
__host__ __device__ constexpr uint64_t wgmma_desc(uint32_t smem_addr, uint32_t lbo_bytes,
                                                  uint32_t sbo_bytes, WgmmaSwizzle swizzle) {
  return static_cast<uint64_t>((smem_addr & 0x3ffffu) >> 4) |
         static_cast<uint64_t>((lbo_bytes & 0x3ffffu) >> 4) << 16 |
         static_cast<uint64_t>((sbo_bytes & 0x3ffffu) >> 4) << 32 |
         static_cast<uint64_t>(swizzle) << 62;
}

// K-major operand (A, or B of Q K^T) in 128-byte-swizzled slabs of 64 K-elements each, `rows`
// rows (M or N) per slab: k-step `ks` (16 elements of K) of the matrix starting at row `row0`.
// (LBO is unused by K-major swizzled layouts and set to 16 bytes.)
__host__ __device__ constexpr uint64_t wgmma_desc_k_major(uint32_t slabs_addr, int rows,
                                                          int row0, int ks) {
  return wgmma_desc(slabs_addr + static_cast<uint32_t>((ks / 4) * rows * 128 + row0 * 128 +
                                                       (ks % 4) * 32),
                    16, 1024, WgmmaSwizzle::b128);
}

// MN-major operand (B of P V: V[token][channel], K = tokens, N = channels) in the same slabs:
// k-step `ks` (tokens 16 ks..16 ks + 15), channels from `n0` (a multiple of 64): the next 64
// channels are the next slab (LBO = rows * 128), the next 8 tokens 1024 bytes on (SBO).
__host__ __device__ constexpr uint64_t wgmma_desc_mn_major(uint32_t slabs_addr, int rows, int n0,
                                                           int ks) {
  return wgmma_desc(slabs_addr + static_cast<uint32_t>((n0 / 64) * rows * 128 + ks * 16 * 128),
                    static_cast<uint32_t>(rows * 128), 1024, WgmmaSwizzle::b128);
}

// ---- shared-memory address and fences ----

// The shared-window address of a pointer into the block's shared memory (the harness: its offset
// from the block's dynamic shared memory).
__device__ __forceinline__ uint32_t smem_address(const void* p) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#elif !defined(__CUDACC__)
  return ::flashmla::cuda_harness::smem_offset(p);
#else
  (void)p;
  return 0;
#endif
}

// Makes this thread's earlier generic-proxy writes to shared memory (st.shared, cp.async)
// visible to the async proxy that wgmma and tcgen05.mma read through (sm_90 and later); a
// barrier after it publishes them to the block.
__device__ __forceinline__ void fence_proxy_async() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::fence_proxy_async();
#endif
}

// Orders the accumulator registers' earlier accesses before the wgmma that follow (required
// before the first wgmma and after any other instruction touched its registers).
__device__ __forceinline__ void wgmma_fence() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::wgmma_fence();
#endif
}

__device__ __forceinline__ void wgmma_commit() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::wgmma_commit();
#endif
}

// Waits until at most kPending committed groups are in flight. The accumulators of the groups
// waited for may be read after it. wgmma_fence_operands(acc) pins the accumulator registers in
// program order (the fences above are ordered against memory only): after a wait, so that their
// reads are not hoisted above it; before a wgmma_fence, so that writes to them (zeroing,
// rescaling) are not sunk below it.
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::wgmma_wait(kPending);
#endif
}

template <int kN>
__device__ __forceinline__ void wgmma_fence_operands(float (&d)[kN]) {
#if defined(__CUDA_ARCH__)
  FMLA_UNROLL
  for (int i = 0; i < kN; ++i) asm volatile("" : "+f"(d[i])::"memory");
#else
  (void)d;
#endif
}

// ---- wgmma.mma_async.sync.aligned.m64nNk16.f32.{bf16,f16}, A and B from shared memory ----
// kFp16: fp16 operands (else bf16). kTransB: B is MN-major (imm-trans-b = 1); A is K-major.
// accumulate false: D = A B.

// The accumulators as asm operands: "+f"(d[o]) ... "+f"(d[o + 15]), and their %-names.
#define FMLA_WGMMA_F4(d, o) "+f"(d[o]), "+f"(d[o + 1]), "+f"(d[o + 2]), "+f"(d[o + 3])
#define FMLA_WGMMA_F16(d, o) \
  FMLA_WGMMA_F4(d, o), FMLA_WGMMA_F4(d, o + 4), FMLA_WGMMA_F4(d, o + 8), FMLA_WGMMA_F4(d, o + 12)
#define FMLA_WGMMA_F128(d)                                                                    \
  FMLA_WGMMA_F16(d, 0), FMLA_WGMMA_F16(d, 16), FMLA_WGMMA_F16(d, 32), FMLA_WGMMA_F16(d, 48), \
      FMLA_WGMMA_F16(d, 64), FMLA_WGMMA_F16(d, 80), FMLA_WGMMA_F16(d, 96), FMLA_WGMMA_F16(d, 112)
#define FMLA_WGMMA_REGS16 "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15"
#define FMLA_WGMMA_REGS128                                                                   \
  "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"                                  \
  "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"                        \
  "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"                        \
  "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,"                        \
  "%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,"                        \
  "%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95,"                        \
  "%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111,"            \
  "%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127"

// One wgmma of shape SHAPE ("m64nNk16") on TYPE operands ("bf16" / "f16"): REGS names the
// accumulators, then come desc_a (%A), desc_b (%A+1), accumulate (%A+2, as the scale-d
// predicate) and kTransB (%A+3, imm-trans-b); the accumulator operands follow as __VA_ARGS__.
// Expects desc_a, desc_b, accumulate and kTransB in scope.
#define FMLA_WGMMA_ASYNC(SHAPE, TYPE, REGS, A, A1, A2, A3, ...)                                  \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #A2 ", 0;\n"                                \
               "wgmma.mma_async.sync.aligned." SHAPE ".f32." TYPE "." TYPE " {" REGS "}, %" #A   \
               ", %" #A1 ", p, 1, 1, 0, %" #A3 ";\n}\n"                                         \
               : __VA_ARGS__                                                                   \
               : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)),                  \
                 "n"(static_cast<int>(kTransB)))

// D (64 x 32, fp32) {=, +=} A (64 x 16) B (16 x 32), both from shared memory.
template <bool kFp16, bool kTransB>
__device__ __forceinline__ void wgmma_m64n32k16(float (&d)[16], uint64_t desc_a, uint64_t desc_b,
                                                bool accumulate) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if constexpr (kFp16) {
    FMLA_WGMMA_ASYNC("m64n32k16", "f16", FMLA_WGMMA_REGS16, 16, 17, 18, 19, FMLA_WGMMA_F16(d, 0));
  } else {
    FMLA_WGMMA_ASYNC("m64n32k16", "bf16", FMLA_WGMMA_REGS16, 16, 17, 18, 19, FMLA_WGMMA_F16(d, 0));
  }
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::wgmma_mma_async(
      kFp16 ? ::flashmla::cuda_harness::MmaType::f16 : ::flashmla::cuda_harness::MmaType::bf16, d,
      32, desc_a, desc_b, accumulate, false, kTransB);
#else
  (void)d, (void)desc_a, (void)desc_b, (void)accumulate;
#endif
}

// D (64 x 256, fp32) {=, +=} A (64 x 16) B (16 x 256), both from shared memory.
template <bool kFp16, bool kTransB>
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[128], uint64_t desc_a, uint64_t desc_b,
                                                bool accumulate) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if constexpr (kFp16) {
    FMLA_WGMMA_ASYNC("m64n256k16", "f16", FMLA_WGMMA_REGS128, 128, 129, 130, 131,
                     FMLA_WGMMA_F128(d));
  } else {
    FMLA_WGMMA_ASYNC("m64n256k16", "bf16", FMLA_WGMMA_REGS128, 128, 129, 130, 131,
                     FMLA_WGMMA_F128(d));
  }
#elif !defined(__CUDACC__)
  ::flashmla::cuda_harness::wgmma_mma_async(
      kFp16 ? ::flashmla::cuda_harness::MmaType::f16 : ::flashmla::cuda_harness::MmaType::bf16, d,
      256, desc_a, desc_b, accumulate, false, kTransB);
#else
  (void)d, (void)desc_a, (void)desc_b, (void)accumulate;
#endif
}

#undef FMLA_WGMMA_ASYNC
#undef FMLA_WGMMA_REGS128
#undef FMLA_WGMMA_REGS16
#undef FMLA_WGMMA_F128
#undef FMLA_WGMMA_F16
#undef FMLA_WGMMA_F4

FMLA_CUDA_NS_END
