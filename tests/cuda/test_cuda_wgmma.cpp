// The harness's wgmma emulation (tests/cuda_harness/wgmma.cpp) and the descriptor helpers of
// src/cuda/common/wgmma.cuh, checked against the PTX ISA's descriptions written here in another
// form: shared-memory layouts as "swizzle atoms" of 8 rows x 8 chunks of 16 bytes whose chunk c
// of row r is stored at chunk c ^ r (the emulation XORs address bits), the accumulator fragment
// as the (warp, lane, register) that holds element (row, col) (the emulation maps the other
// way), the descriptor as its bit fields. The product is compared with a double-precision one.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/common/wgmma.cuh"

namespace flashmla::cuda {
inline namespace harness {
namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

uint16_t to_bf16(float f) {
  uint32_t w;
  std::memcpy(&w, &f, 4);
  return static_cast<uint16_t>(w >> 16);  // test values are exact in bf16
}
float from_bf16(uint16_t b) {
  const uint32_t w = uint32_t{b} << 16;
  float f;
  std::memcpy(&f, &w, 4);
  return f;
}

// Where element (row, col) of a matrix lives in shared memory, per layout.
enum class Layout {
  k_major_b128,      // rows = M or N, cols = K: 64-column slabs of `rows` rows, 128-byte swizzled
  mn_major_b128,     // rows = K, cols = N: 64-column slabs of `rows` rows, 128-byte swizzled
  k_major_cores_k,   // no swizzle, 8x8 core matrices, the next along K adjacent (LBO 128)
  k_major_cores_mn,  // no swizzle, 8x8 core matrices, the next along M/N adjacent (SBO 128)
};

// Byte offset of (row, col) in a rows x cols matrix stored in `layout`.
uint32_t offset_of(Layout layout, int rows, int cols, int row, int col) {
  switch (layout) {
    case Layout::k_major_b128:
    case Layout::mn_major_b128: {
      // Swizzle atom: 8 rows of 8 chunks; chunk c of row r stored at chunk c ^ (r mod 8).
      const int slab = col / 64, chunk = (col % 64) / 8;
      return static_cast<uint32_t>(slab * rows * 128 + row * 128 +
                                   ((chunk ^ (row % 8)) * 16) + (col % 8) * 2);
    }
    case Layout::k_major_cores_k:
      return static_cast<uint32_t>((row / 8) * (cols / 8) * 128 + (col / 8) * 128 +
                                   (row % 8) * 16 + (col % 8) * 2);
    case Layout::k_major_cores_mn:
      return static_cast<uint32_t>((col / 8) * (rows / 8) * 128 + (row / 8) * 128 +
                                   (row % 8) * 16 + (col % 8) * 2);
  }
  return 0;
}

struct Gemm {
  int n = 32, k_steps = 4;  // D (64 x n) = A (64 x 16 k_steps) B (16 k_steps x n)
  Layout b_layout = Layout::k_major_b128;
  Layout a_layout = Layout::k_major_b128;
  // Faults to inject (each must be caught or show the asynchrony).
  bool skip_fence = false, read_before_wait = false, clobber_before_wait = false;
  bool reserved_bit = false, past_smem = false, lane_disagrees = false, warp_disagrees = false;
  bool skip_proxy_fence = false;  // A and B stored, then __syncthreads without fence.proxy.async
  bool store_after_fence = false;  // then a thread rewrites one element, fenced by no one
  bool fence_after_barrier = false;  // the stores, __syncthreads, then each thread's fence
};

struct Sizes {
  int k, a_bytes, b_bytes;
};
// Bytes of a rows x cols matrix in `layout` (swizzled slabs are 64 columns wide, padded).
int bytes_of(Layout layout, int rows, int cols) {
  const bool swizzled = layout == Layout::k_major_b128 || layout == Layout::mn_major_b128;
  return swizzled ? rows * 128 * ((cols + 63) / 64) : rows * cols * 2;
}
Sizes sizes(const Gemm& g) {
  const int k = 16 * g.k_steps;
  return {k, bytes_of(g.a_layout, 64, k),
          g.b_layout == Layout::mn_major_b128 ? bytes_of(g.b_layout, k, g.n)
                                              : bytes_of(g.b_layout, g.n, k)};
}

// Descriptor of k-step ks of A (64 x K, K-major) at a_addr.
uint64_t desc_a(const Gemm& g, uint32_t a_addr, int ks) {
  const int k = 16 * g.k_steps;
  switch (g.a_layout) {
    case Layout::k_major_cores_k:  // next core along K: 128 bytes; along M: K / 8 cores on
      return wgmma_desc(a_addr + ks * 256, 128, (k / 8) * 128, WgmmaSwizzle::none);
    case Layout::k_major_cores_mn:  // next core along M: 128 bytes; along K: 64 / 8 cores on
      return wgmma_desc(a_addr + ks * 2 * 8 * 128, 8 * 128, 128, WgmmaSwizzle::none);
    default:
      return wgmma_desc_k_major(a_addr, 64, 0, ks);
  }
}

// Descriptor of k-step ks of B (K x n) at b_addr.
uint64_t desc_b(const Gemm& g, uint32_t b_addr, int ks) {
  const int k = 16 * g.k_steps;
  switch (g.b_layout) {
    case Layout::mn_major_b128:
      return wgmma_desc_mn_major(b_addr, k, 0, ks);
    case Layout::k_major_cores_k:
      return wgmma_desc(b_addr + ks * 256, 128, (k / 8) * 128, WgmmaSwizzle::none);
    case Layout::k_major_cores_mn:
      return wgmma_desc(b_addr + ks * 2 * (g.n / 8) * 128, (g.n / 8) * 128, 128,
                        WgmmaSwizzle::none);
    default:
      return wgmma_desc_k_major(b_addr, g.n, 0, ks);
  }
}

template <int kN>
__device__ void run_gemm(const Gemm& g, unsigned char* smem, float* out, float* early) {
  const int tid = threadIdx.x, lane = tid % 32;
  const Sizes s = sizes(g);
  const uint32_t a_addr = smem_address(smem), b_addr = smem_address(smem + s.a_bytes);
  float d[kN / 2];
  for (float& x : d) x = 7.0f;  // overwritten: the first step does not accumulate
  if (!g.skip_fence) wgmma_fence();
  for (int ks = 0; ks < g.k_steps; ++ks) {
    uint64_t da = desc_a(g, a_addr, ks), db = desc_b(g, b_addr, ks);
    if (g.reserved_bit) da |= uint64_t{1} << 15;
    if (g.past_smem) db = wgmma_desc(b_addr + 65536, 0, 1024, WgmmaSwizzle::b128);
    if (g.lane_disagrees && lane == 5) db += 1;
    if (g.warp_disagrees && tid / 32 == 2) db += 1;  // a whole warp: each warp is uniform
    if constexpr (kN == 32) {
      if (g.b_layout == Layout::mn_major_b128) {
        wgmma_m64n32k16<false, true>(d, da, db, ks > 0);
      } else {
        wgmma_m64n32k16<false, false>(d, da, db, ks > 0);
      }
    } else {
      if (g.b_layout == Layout::mn_major_b128) {
        wgmma_m64n256k16<false, true>(d, da, db, ks > 0);
      } else {
        wgmma_m64n256k16<false, false>(d, da, db, ks > 0);
      }
    }
  }
  wgmma_commit();
  if (g.read_before_wait) {
    for (int i = 0; i < kN / 2; ++i) early[tid * (kN / 2) + i] = d[i];
  }
  if (g.clobber_before_wait) {
    __syncthreads();  // everyone issued
    for (int i = tid; i < s.a_bytes; i += 128) smem[i] = 0;
    __syncthreads();
  }
  wgmma_wait<0>();
  wgmma_fence_operands(d);
  for (int i = 0; i < kN / 2; ++i) out[tid * (kN / 2) + i] = d[i];
}

// A and B given row-major as bf16 (A 64 x K, B K x n), stored by the block in their layouts.
__global__ void wgmma_gemm(const Gemm g, const uint16_t* a, const uint16_t* b, float* out,
                           float* early) {
  unsigned char* smem = dynamic_smem();
  const Sizes s = sizes(g);
  const int tid = threadIdx.x;
  for (int i = tid; i < 64 * s.k; i += 128) {
    const int row = i / s.k, col = i % s.k;
    std::memcpy(smem + offset_of(g.a_layout, 64, s.k, row, col), a + i, 2);
  }
  for (int i = tid; i < s.k * g.n; i += 128) {
    const int kk = i / g.n, nn = i % g.n;
    // K-major layouts store B^T (rows = n, cols = K); MN-major store B (rows = K, cols = n).
    const uint32_t off = g.b_layout == Layout::mn_major_b128
                             ? offset_of(g.b_layout, s.k, g.n, kk, nn)
                             : offset_of(g.b_layout, g.n, s.k, nn, kk);
    std::memcpy(smem + s.a_bytes + off, b + i, 2);
  }
  if (!g.skip_proxy_fence && !g.fence_after_barrier) fence_proxy_async();
  __syncthreads();
  if (g.fence_after_barrier) fence_proxy_async();  // (as valid: the barrier ordered the stores)
  if (g.store_after_fence) {
    if (tid == 0) smem[3] ^= 0x80;  // bit 15 of A (0, 1) (little-endian): its sign
    __syncthreads();
  }
  if (g.n == 32) {
    run_gemm<32>(g, smem, out, early);
  } else {
    run_gemm<256>(g, smem, out, early);
  }
}

struct Result {
  std::vector<float> d, early;  // D row-major; the accumulators read before the wait
  std::vector<double> expected;
};

Result run(const Gemm& g, uint64_t seed = 1) {
  const Sizes s = sizes(g);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> small(-8, 8);
  std::vector<uint16_t> a(64 * s.k), b(s.k * g.n);
  for (auto& x : a) x = to_bf16(static_cast<float>(small(rng)) / 4.0f);
  for (auto& x : b) x = to_bf16(static_cast<float>(small(rng)) / 8.0f);
  std::vector<float> frag(128 * g.n / 2, NAN), early(128 * g.n / 2, NAN);
  FMLA_LAUNCH(wgmma_gemm, dim3(1), dim3(128), s.a_bytes + s.b_bytes, nullptr, g, a.data(),
              b.data(), frag.data(), early.data());
  Result r;
  r.d.assign(64 * g.n, NAN);
  r.early.assign(64 * g.n, NAN);
  r.expected.assign(64 * g.n, 0.0);
  // The accumulator fragment (PTX ISA, wgmma .m64nNk16 D): element (row, col) is held by warp
  // row / 16, lane 4 (row % 8) + (col % 8) / 2, register 4 (col / 8) + 2 ((row % 16) / 8) +
  // col % 2.
  for (int row = 0; row < 64; ++row) {
    for (int col = 0; col < g.n; ++col) {
      const int thread = 32 * (row / 16) + 4 * (row % 8) + (col % 8) / 2;
      const int reg = 4 * (col / 8) + 2 * ((row % 16) / 8) + col % 2;
      r.d[row * g.n + col] = frag[thread * (g.n / 2) + reg];
      r.early[row * g.n + col] = early[thread * (g.n / 2) + reg];
      double e = 0.0;
      for (int k = 0; k < s.k; ++k) {
        e += static_cast<double>(from_bf16(a[row * s.k + k])) * from_bf16(b[k * g.n + col]);
      }
      r.expected[row * g.n + col] = e;
    }
  }
  return r;
}

void expect_product(const Gemm& g) {
  const Result r = run(g);
  int wrong = 0;
  for (size_t i = 0; i < r.d.size(); ++i) {
    if (r.d[i] != static_cast<float>(r.expected[i])) ++wrong;  // exact: small dyadic values
  }
  EXPECT_EQ(wrong, 0) << "of " << r.d.size() << " elements";
}

TEST(CudaHarnessWgmma, DescriptorFields) {
  const uint64_t d = wgmma_desc(0x12340, 0x560, 0x7890, WgmmaSwizzle::b128);
  EXPECT_EQ(d & 0x3fff, 0x1234u);           // start address >> 4, bits 0-13
  EXPECT_EQ((d >> 16) & 0x3fff, 0x56u);     // LBO >> 4, bits 16-29
  EXPECT_EQ((d >> 32) & 0x3fff, 0x789u);    // SBO >> 4, bits 32-45
  EXPECT_EQ((d >> 49) & 7, 0u);             // base offset
  EXPECT_EQ(d >> 62, 1u);                   // 128-byte swizzle
  EXPECT_EQ(d & ~((uint64_t{0x3fff}) | (uint64_t{0x3fff} << 16) | (uint64_t{0x3fff} << 32) |
                  (uint64_t{3} << 62)),
            0u);
  // K-major slabs of 64 rows: k-step 5 is slab 1, 32 bytes into the row; row 32 is 4 KiB on.
  const uint64_t k = wgmma_desc_k_major(0x400, 64, 32, 5);
  EXPECT_EQ((k & 0x3fff) << 4, 0x400u + 64 * 128 + 32 * 128 + 32);
  EXPECT_EQ(((k >> 32) & 0x3fff) << 4, 1024u);
  // MN-major: channels from 256 = slab 4; k-step 3 = 48 rows on; LBO = one slab.
  const uint64_t mn = wgmma_desc_mn_major(0x800, 64, 256, 3);
  EXPECT_EQ((mn & 0x3fff) << 4, 0x800u + 4 * 64 * 128 + 48 * 128);
  EXPECT_EQ(((mn >> 16) & 0x3fff) << 4, 64u * 128);
  EXPECT_EQ(((mn >> 32) & 0x3fff) << 4, 1024u);
  EXPECT_EQ(mn >> 62, 1u);
  // The swizzled chunk: chunk c of row r at c ^ (r % 8).
  EXPECT_EQ(swizzle128_offset(0, 3), 48u);
  EXPECT_EQ(swizzle128_offset(5, 3), 5u * 128 + (3 ^ 5) * 16);
  EXPECT_EQ(swizzle128_offset(13, 7), 13u * 128 + (7 ^ 5) * 16);
}

TEST(CudaHarnessWgmma, KMajorSwizzledOperands) {
  expect_product({.n = 32, .k_steps = 4});   // K within one 128-byte row: 32-byte steps
  expect_product({.n = 32, .k_steps = 8});   // two slabs of K
  expect_product({.n = 256, .k_steps = 2});  // 256 columns: 32 row groups of B
}

TEST(CudaHarnessWgmma, MnMajorSwizzledB) {
  expect_product({.n = 256, .k_steps = 4, .b_layout = Layout::mn_major_b128});  // 4 slabs of N
  expect_product({.n = 32, .k_steps = 1, .b_layout = Layout::mn_major_b128});
}

TEST(CudaHarnessWgmma, UnswizzledCoreMatricesFollowLboAndSbo) {
  // The two placements of the core matrices swap which of LBO / SBO is the small stride.
  expect_product({.n = 32, .k_steps = 2, .b_layout = Layout::k_major_cores_k,
                  .a_layout = Layout::k_major_cores_k});
  expect_product({.n = 32, .k_steps = 2, .b_layout = Layout::k_major_cores_mn,
                  .a_layout = Layout::k_major_cores_mn});
}

TEST(CudaHarnessWgmma, AFenceAfterTheBarrierOrdersTheStores) {
  expect_product({.n = 32, .k_steps = 2, .fence_after_barrier = true});
}

TEST(CudaHarnessWgmma, AccumulatorsAreWrittenAtTheWait) {
  // Read before the wait: the registers still hold what they held at the issue.
  const Result r = run({.n = 32, .k_steps = 2, .read_before_wait = true});
  for (float e : r.early) ASSERT_EQ(e, 7.0f);
}

std::string error_of(const Gemm& g) {
  try {
    run(g);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

TEST(CudaHarnessWgmma, MisuseIsAnError) {
  EXPECT_PRED2(contains, error_of({.skip_fence = true}), "without a wgmma.fence");
  EXPECT_PRED2(contains, error_of({.reserved_bit = true}), "reserved bits");
  EXPECT_PRED2(contains, error_of({.past_smem = true}), "outside the block's shared memory");
  EXPECT_PRED2(contains, error_of({.lane_disagrees = true}), "lanes of a warp pass different");
  EXPECT_PRED2(contains, error_of({.warp_disagrees = true}),
               "warps of a warpgroup pass different");
  // A zeroed after the issue but before the wait (as a write without a barrier before the issue
  // would change it in flight).
  EXPECT_PRED2(contains, error_of({.n = 32, .k_steps = 2, .clobber_before_wait = true}),
               "operands changed between");
  // Generic-proxy stores wgmma reads without a fence.proxy.async: every operand, or one element
  // stored after the fence (the barrier after it publishes nothing).
  EXPECT_PRED2(contains, error_of({.skip_proxy_fence = true}),
               "A reads shared memory the async proxy does not see as written");
  EXPECT_PRED2(contains, error_of({.store_after_fence = true}),
               "A reads shared memory the async proxy does not see as written");
}

}  // namespace
}  // namespace harness
}  // namespace flashmla::cuda
