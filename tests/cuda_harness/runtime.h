// The CPU harness that runs CUDA kernels' own source (docs/cuda-harness.md): the CUDA keywords,
// built-in variables and warp / block builtins for the host compiler, and the emulated PTX
// instructions the portability header (src/cuda/common/portable.h) wraps.
//
// Each CUDA thread of a block is a fiber (Boost.Context) on one OS thread; blocks of a grid run
// on OpenMP threads. __syncthreads and every warp collective are barriers: a fiber runs until
// it reaches one, and the runnable fibers are resumed in a random order under one of three
// schedules per block (warps in step, drifting apart, or one running ahead to its next
// __syncthreads; seeded: the seed is in every error message, FLASHMLA_HARNESS_SEED fixes it),
// so a missing barrier or a shared-memory race changes results instead of passing by luck.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#define __launch_bounds__(...)
// (cuda headers make it an attribute GCC does not know)
#undef __grid_constant__
#define __grid_constant__
#ifndef __restrict__
#define __restrict__ __restrict
#endif

namespace flashmla::cuda_harness {

// ---- built-in variables of the running fiber ----
const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();

// The running block's dynamic shared memory (exactly the launch's byte count, 0xFF-filled).
void* dynamic_smem();
size_t dynamic_smem_bytes();
// The running thread's index in its block (x fastest).
int thread_linear();
// Per-thread state of an emulated instruction family that lives outside runtime.cpp (wgmma.cpp):
// an empty slot until that family first stores its state there; destroyed with the block.
struct ThreadState {
  virtual ~ThreadState() = default;
  // For a block's state, checked when every thread has exited: what the block left unfinished
  // (empty: nothing), which fails the launch.
  virtual std::string unfinished() const { return {}; }
};
std::unique_ptr<ThreadState>& thread_state_slot();
// The same per block (shared by its threads; a block runs on one OS thread): one for wgmma
// (wgmma.cpp), one for mbarriers and bulk tensor copies (tma.cpp), one for tensor memory and
// tcgen05 (tcgen05.cpp).
std::unique_ptr<ThreadState>& block_state_slot();
std::unique_ptr<ThreadState>& block_tma_state_slot();
std::unique_ptr<ThreadState>& block_tcgen05_state_slot();

// ---- barriers and collectives ----
void sync_threads();
// Every lane of `mask` (which must include the caller) deposits `bytes` (<= 64) of payload;
// returns the 32 lanes' payload slots (64 bytes apart), valid until the caller's next
// collective. `op` names the collective in error messages; all lanes must use the same.
const unsigned char* warp_exchange(unsigned mask, const void* payload, size_t bytes,
                                   const char* op);
// Suspends the running thread until unpark(key) (tma.cpp: a thread waiting on an mbarrier
// phase); `what` names the wait if the block ends with the thread still parked.
void park(const void* key, const char* what);
// Makes every thread of the block parked on `key` runnable again.
void unpark(const void* key);
// Throws std::logic_error (turned into a failed launch naming the thread and the seed).
[[noreturn]] void fail(const char* what);

// ---- emulated instructions (instructions.cpp, from the PTX ISA's semantics) ----
enum class MmaType { bf16, f16 };
// A bf16 / fp16 bit pattern as float (exact; inline: the matrix emulations' innermost step).
inline float mma_element(uint16_t bits, MmaType type) {
  if (type == MmaType::bf16) {
    const uint32_t w = uint32_t{bits} << 16;
    float f;
    std::memcpy(&f, &w, 4);
    return f;
  }
  __half_raw raw;
  raw.x = bits;
  return __half2float(__half(raw));
}
void mma_m16n8k16(MmaType type, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                  const float (&c)[4]);
void ldmatrix(uint32_t* r, int num, bool trans, const void* row);
void cp_async(void* smem_dst, const void* gmem_src, int cp_bytes, int src_bytes);
void cp_async_commit();
void cp_async_wait(int pending);
// wgmma (wgmma.cpp): shared-memory addresses are offsets from the block's dynamic shared memory.
uint32_t smem_offset(const void* p);
void wgmma_fence();
void wgmma_mma_async(MmaType type, float* d, int n, uint64_t desc_a, uint64_t desc_b,
                     bool accumulate, bool trans_a, bool trans_b);
void wgmma_commit();
void wgmma_wait(int pending);
// The two proxies of shared memory. Plain stores, atomics and cp.async write it through the
// generic proxy; wgmma reads its operands, and bulk copies write, through the async proxy, which
// sees a generic-proxy write only once a fence.proxy.async and a barrier (or an mbarrier) order
// it before the reader. Emulated with a second copy of the shared memory, the async proxy's
// view. The view takes the shared memory's contents at each __syncthreads and each mbarrier
// phase completion that some thread's fence.proxy.async preceded (proxy_sync_point), and when a
// thread that has fenced since the last such update reads through the async proxy
// (async_proxy_smem: write; __syncthreads; fence; wgmma). Bulk copies write both copies
// (async_proxy_wrote: their 0xFF poison at the issue, their data when they land). wgmma fails
// the launch when its operands differ between the two. Coarser than the hardware (one thread's
// fence publishes every thread's writes, including those made after it) but a kernel with no
// fence between a generic write and a wgmma that reads it fails.
void fence_proxy_async();
void proxy_sync_point();
const unsigned char* async_proxy_smem();
void async_proxy_wrote(const void* smem_ptr, size_t bytes);
// mbarrier and the tiled bulk tensor copy (tma.cpp). A TensorMap stands for CUtensorMap: what
// cuTensorMapEncodeTiled was given, checked as the driver checks it.
struct alignas(64) TensorMap {
  uint64_t magic;  // kTensorMapMagic once encoded
  const void* base;
  int rank, elem_bytes, swizzle_bytes;  // swizzle: 0 (none) or 128
  uint64_t dims[5], strides[5];         // strides in bytes; strides[0] = elem_bytes
  uint32_t box[5];
};
inline constexpr uint64_t kTensorMapMagic = 0x544d41504d4c4131ull;
// Empty, or why the driver would refuse these parameters (as CUDA_ERROR_INVALID_VALUE).
std::string encode_tensor_map(TensorMap* map, int elem_bytes, int rank, const void* base,
                              const uint64_t* dims, const uint64_t* strides_bytes,
                              const uint32_t* box, int swizzle_bytes);
void mbarrier_init(void* bar, unsigned count);
void mbarrier_arrive_expect_tx(void* bar, unsigned tx_bytes);
void mbarrier_arrive(void* bar);
// Blocks until the phase of parity `parity` has completed; returns true (a try_wait that never
// times out).
bool mbarrier_try_wait_parity(void* bar, unsigned parity);
void tma_load_tile(void* smem_dst, const TensorMap* map, const int32_t* coords, void* bar);
// An arrival on `bar` that happens when a thread next waits on it: `complete` runs then, and
// arrives (tcgen05.commit: the MMAs it tracks complete when their completion is awaited).
void mbarrier_arrive_when_waited(void* bar, std::function<void()> complete);

// Blackwell's tensor memory and tcgen05 (tcgen05.cpp); tensor-memory addresses are
// (lane << 16) | column, shared-memory ones offsets from the block's dynamic shared memory.
void tmem_alloc(uint32_t* dst, uint32_t ncols);
void tmem_relinquish_alloc_permit();
void tmem_dealloc(uint32_t taddr, uint32_t ncols);
void tcgen05_fence_before_sync();
void tcgen05_fence_after_sync();
void umma_f16(uint32_t d_tmem, uint64_t desc_a, uint64_t desc_b, uint32_t idesc, bool accumulate);
void umma_commit(void* bar);
void tmem_ld(uint32_t taddr, uint32_t* r, int n);
void tmem_st(uint32_t taddr, const uint32_t* r, int n);
void tmem_wait_ld();
void tmem_wait_st();

// ---- launch ----
struct LaunchStats {
  uint64_t seed = 0;
  uint64_t blocks = 0, fiber_switches = 0;
};
// Runs `body` once per thread of every block; throws std::runtime_error on any harness error.
LaunchStats launch_blocks(const char* name, dim3 grid, dim3 block, size_t smem_bytes,
                          const std::function<void()>& body);
// Seed of the next launch: FLASHMLA_HARNESS_SEED if set, else a per-process counter.
uint64_t next_seed();

template <class... Params, class... Args>
LaunchStats launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
                   size_t smem_bytes, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "kernel argument count");
  const std::tuple<std::decay_t<Params>...> values(std::forward<Args>(args)...);
  return launch_blocks(name, grid, block, smem_bytes, [&] { std::apply(kernel, values); });
}

}  // namespace flashmla::cuda_harness

// ---- CUDA's names for the host compiler ----
#define threadIdx (::flashmla::cuda_harness::thread_idx())
#define blockIdx (::flashmla::cuda_harness::block_idx())
#define blockDim (::flashmla::cuda_harness::block_dim())
#define gridDim (::flashmla::cuda_harness::grid_dim())

inline void __syncthreads() { ::flashmla::cuda_harness::sync_threads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::flashmla::cuda_harness::warp_exchange(mask, nullptr, 0, "__syncwarp");
}

namespace flashmla::cuda_harness::detail {
inline int lane() { return static_cast<int>(thread_idx().x & 31u); }
// The value `lane` holds among the exchanged slots (must be in the mask).
template <class T>
T slot(const unsigned char* slots, unsigned mask, int src, const char* op) {
  if (!((mask >> src) & 1u)) fail(op);
  T v;
  std::memcpy(&v, slots + 64 * src, sizeof(T));
  return v;
}
template <class T>
T shuffle(unsigned mask, T var, int src_lane_in_segment, int width, int mode, const char* op) {
  static_assert(sizeof(T) <= 64 && std::is_trivially_copyable_v<T>);
  const unsigned char* slots = warp_exchange(mask, &var, sizeof(T), op);
  const int me = lane();
  const int w = (width >= 1 && width <= 32 && (width & (width - 1)) == 0) ? width : 32;
  const int base = me & ~(w - 1);
  int src = 0;
  switch (mode) {
    case 0: src = base + (src_lane_in_segment & (w - 1)); break;       // idx
    case 1: src = me - src_lane_in_segment; if (src < base) src = me; break;   // up
    case 2: src = me + src_lane_in_segment; if (src >= base + w) src = me; break;  // down
    default: src = me ^ src_lane_in_segment; if (src < base || src >= base + w) src = me; break;
  }
  return slot<T>(slots, mask, src, op);
}
}  // namespace flashmla::cuda_harness::detail

template <class T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  return ::flashmla::cuda_harness::detail::shuffle(mask, var, src_lane, width, 0,
                                                   "__shfl_sync from a lane outside the mask");
}
template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return ::flashmla::cuda_harness::detail::shuffle(mask, var, static_cast<int>(delta), width, 1,
                                                   "__shfl_up_sync from a lane outside the mask");
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return ::flashmla::cuda_harness::detail::shuffle(
      mask, var, static_cast<int>(delta), width, 2, "__shfl_down_sync from a lane outside the mask");
}
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  return ::flashmla::cuda_harness::detail::shuffle(mask, var, lane_mask, width, 3,
                                                   "__shfl_xor_sync from a lane outside the mask");
}
unsigned __ballot_sync(unsigned mask, int predicate);
int __any_sync(unsigned mask, int predicate);
int __all_sync(unsigned mask, int predicate);

// Device math and bit casts used by kernels, with the GPU's meaning.
inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline int __float_as_int(float f) { int v; std::memcpy(&v, &f, 4); return v; }
inline float __uint_as_float(unsigned v) { float f; std::memcpy(&f, &v, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned v; std::memcpy(&v, &f, 4); return v; }
inline float __fdividef(float a, float b) { return a / b; }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
// Separately rounded multiply / add (nvcc never contracts these into an fma).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
template <class T>
inline T __ldg(const T* p) { return *p; }
