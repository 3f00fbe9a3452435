// The harness's tensor-memory and tcgen05 emulation (tests/cuda_harness/tcgen05.cpp) and the
// descriptor helpers of src/cuda/common/tcgen05.cuh, checked against the PTX ISA's descriptions
// written here in another form: shared-memory layouts as the byte offset of each element, the
// descriptors as their bit fields, D as row i in TMEM lane i. A kernel of one warpgroup stages
// A and B, one thread issues the MMAs and commits them to an mbarrier, every warp reads its 32
// lanes of D back; the product is compared with a double-precision one (exact: small dyadic
// values). Then each misuse the emulation claims to catch is made once.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/common/tcgen05.cuh"
#include "cuda/common/tma.cuh"

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

enum class Layout {
  k_major_b128,   // rows = M or N, cols = K: 64-column slabs of `rows` rows, 128-byte swizzled
  mn_major_b128,  // rows = K, cols = N: 64-column slabs of `rows` rows, 128-byte swizzled
  interleaved,    // rows = M or N, cols = K: 8 x 8 core matrices, M/N-adjacent (SBO 128)
};

// Byte offset of (row, col) of a rows x cols matrix in `layout`.
uint32_t offset_of(Layout layout, int rows, int row, int col) {
  if (layout == Layout::interleaved) {
    return static_cast<uint32_t>((col / 8) * rows * 16 + (row / 8) * 128 + (row % 8) * 16 +
                                 (col % 8) * 2);
  }
  const int slab = col / 64, chunk = (col % 64) / 8;  // chunk c of row r stored at c ^ (r % 8)
  return static_cast<uint32_t>(slab * rows * 128 + row * 128 + ((chunk ^ (row % 8)) * 16) +
                               (col % 8) * 2);
}

struct Gemm {
  int n = 64, k_steps = 4;  // D (128 x n) = [C +] A (128 x 16 k_steps) B (16 k_steps x n)
  Layout a_layout = Layout::k_major_b128, b_layout = Layout::k_major_b128;
  bool accumulate_c = false;  // D starts as C, stored by tcgen05.st
  // Misuses (each must be caught, or show as NaN in the result).
  bool ld_before_wait = false, regs_before_wait = false, no_dealloc = false;
  bool wrong_lanes = false, skip_proxy_fence = false, clobber_before_wait = false;
  bool st_not_waited = false, alloc_after_relinquish = false, alloc_48 = false;
  bool wgmma_desc = false, commit_not_waited = false;
};

constexpr int kM = 128, kCols = 256;

// Bytes of a rows x cols matrix in `layout` (swizzled slabs are 64 columns wide, padded).
int bytes_of(Layout layout, int rows, int cols) {
  return layout == Layout::interleaved ? rows * cols * 2 : rows * 128 * ((cols + 63) / 64);
}
int a_bytes(const Gemm& g) { return bytes_of(g.a_layout, kM, 16 * g.k_steps); }
int b_bytes(const Gemm& g) {
  const int k = 16 * g.k_steps;
  return g.b_layout == Layout::mn_major_b128 ? bytes_of(g.b_layout, k, g.n)
                                             : bytes_of(g.b_layout, g.n, k);
}
int smem_bytes(const Gemm& g) { return a_bytes(g) + b_bytes(g) + 64; }

uint64_t desc_a(const Gemm& g, uint32_t addr, int ks) {
  return g.a_layout == Layout::interleaved ? umma_desc_k_major_interleaved(addr, kM, ks)
                                           : umma_desc_k_major(addr, kM, 0, ks);
}
uint64_t desc_b(const Gemm& g, uint32_t addr, int ks) {
  const int k = 16 * g.k_steps;
  switch (g.b_layout) {
    case Layout::mn_major_b128: return umma_desc_mn_major(addr, k, 0, ks);
    case Layout::interleaved: return umma_desc_k_major_interleaved(addr, g.n, ks);
    default: return umma_desc_k_major(addr, g.n, 0, ks);
  }
}

__global__ void umma_gemm(const Gemm g, const uint16_t* a, const uint16_t* b, const float* c,
                          float* out) {
  unsigned char* smem = dynamic_smem();
  const int tid = threadIdx.x, warp = tid / 32, k = 16 * g.k_steps;
  unsigned char* sb = smem + a_bytes(g);
  uint64_t* bar = reinterpret_cast<uint64_t*>(sb + b_bytes(g));
  uint32_t* slot = reinterpret_cast<uint32_t*>(bar + 1);
  for (int i = tid; i < kM * k; i += 128) {
    std::memcpy(smem + offset_of(g.a_layout, kM, i / k, i % k), a + i, 2);
  }
  for (int i = tid; i < k * g.n; i += 128) {
    const int kk = i / g.n, nn = i % g.n;
    const uint32_t off = g.b_layout == Layout::mn_major_b128 ? offset_of(g.b_layout, k, kk, nn)
                                                             : offset_of(g.b_layout, g.n, nn, kk);
    std::memcpy(sb + off, b + i, 2);
  }
  if (tid == 0) mbarrier_init(bar, 1);
  if (warp == 0) {
    tmem_alloc(slot, g.alloc_48 ? 48 : kCols);
    tmem_relinquish_alloc_permit();
    if (g.alloc_after_relinquish) tmem_alloc(slot, 32);
  }
  if (!g.skip_proxy_fence) fence_proxy_async();
  tcgen05_fence_before_sync();
  __syncthreads();
  tcgen05_fence_after_sync();
  const uint32_t tmem = *slot;
  // This warp's lanes: rows 32 warp.. (wrong_lanes: warp 1 addresses warp 0's).
  const int lane0 = 32 * ((g.wrong_lanes && warp == 1) ? 0 : warp);
  const uint32_t my_lanes = tmem + (static_cast<uint32_t>(lane0) << 16);
  if (g.accumulate_c) {
    for (int c0 = 0; c0 < g.n; c0 += 32) {
      uint32_t r[32];
      for (int j = 0; j < 32; ++j) {
        r[j] = 0;
        if (c0 + j < g.n) std::memcpy(&r[j], &c[(lane0 + tid % 32) * g.n + c0 + j], 4);
      }
      tmem_st32(my_lanes + c0, r);
    }
    if (!g.st_not_waited) tmem_wait_st();
  }
  tcgen05_fence_before_sync();
  __syncthreads();
  if (tid == 0) {
    tcgen05_fence_after_sync();
    const uint32_t idesc = umma_idesc_f16(false, kM, g.n, g.b_layout == Layout::mn_major_b128);
    for (int ks = 0; ks < g.k_steps; ++ks) {
      uint64_t da = desc_a(g, smem_address(smem), ks);
      if (g.wgmma_desc) da &= ~(uint64_t{7} << 46);
      umma_f16(tmem, da, desc_b(g, smem_address(sb), ks), idesc, g.accumulate_c || ks > 0);
    }
    umma_commit(bar);
  }
  if (g.clobber_before_wait) {
    __syncthreads();  // issued
    for (int i = tid; i < b_bytes(g); i += 128) sb[i] = 0;
  }
  if (g.ld_before_wait) {
    uint32_t r[32];
    tmem_ld32(my_lanes, r);
    tmem_wait_ld();
  }
  if (!g.commit_not_waited) mbarrier_wait(bar, 0);
  tcgen05_fence_after_sync();
  for (int c0 = 0; c0 < g.n; c0 += 32) {
    uint32_t r[32];
    tmem_ld32(my_lanes + c0, r);
    if (!g.regs_before_wait) tmem_wait_ld();
    for (int j = 0; j < 32 && c0 + j < g.n; ++j) {
      std::memcpy(&out[(lane0 + tid % 32) * g.n + c0 + j], &r[j], 4);
    }
    if (g.regs_before_wait) tmem_wait_ld();
  }
  tcgen05_fence_before_sync();
  __syncthreads();
  if (warp == 0 && !g.no_dealloc) tmem_dealloc(tmem, kCols);
}

struct Result {
  std::vector<float> d;
  std::vector<double> expected;
};

Result run(const Gemm& g, uint64_t seed = 1) {
  const int k = 16 * g.k_steps;
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> small(-8, 8);
  std::vector<uint16_t> a(kM * k), b(k * g.n);
  std::vector<float> c(kM * g.n);
  for (auto& x : a) x = to_bf16(static_cast<float>(small(rng)) / 4.0f);
  for (auto& x : b) x = to_bf16(static_cast<float>(small(rng)) / 8.0f);
  for (auto& x : c) x = static_cast<float>(small(rng)) / 2.0f;
  Result r;
  r.d.assign(kM * g.n, NAN);
  FMLA_LAUNCH(umma_gemm, dim3(1), dim3(128), smem_bytes(g), nullptr, g, a.data(), b.data(),
              c.data(), r.d.data());
  r.expected.assign(kM * g.n, 0.0);
  for (int row = 0; row < kM; ++row) {
    for (int col = 0; col < g.n; ++col) {
      double e = g.accumulate_c ? c[row * g.n + col] : 0.0;
      for (int kk = 0; kk < k; ++kk) {
        e += static_cast<double>(from_bf16(a[row * k + kk])) * from_bf16(b[kk * g.n + col]);
      }
      r.expected[row * g.n + col] = e;
    }
  }
  return r;
}

int wrong_elements(const Gemm& g) {
  const Result r = run(g);
  int wrong = 0;
  for (size_t i = 0; i < r.d.size(); ++i) {
    if (r.d[i] != static_cast<float>(r.expected[i])) ++wrong;  // NaN counts as wrong
  }
  return wrong;
}

std::string error_of(const Gemm& g) {
  try {
    run(g);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

TEST(CudaHarnessTcgen05, DescriptorFields) {
  const uint64_t d = umma_desc(0x12340, 0x560, 0x7890, UmmaSwizzle::b128);
  EXPECT_EQ(d & 0x3fff, 0x1234u);        // start address >> 4, bits 0-13
  EXPECT_EQ((d >> 16) & 0x3fff, 0x56u);  // LBO >> 4, bits 16-29
  EXPECT_EQ((d >> 32) & 0x3fff, 0x789u);  // SBO >> 4, bits 32-45
  EXPECT_EQ((d >> 46) & 7, 1u);           // the fixed 0b001
  EXPECT_EQ((d >> 49) & 0xfff, 0u);       // base offset, LBO mode, fixed zeros
  EXPECT_EQ(d >> 61, 2u);                 // 128-byte swizzle
  const uint64_t k = umma_desc_k_major(0x400, 128, 32, 5);
  EXPECT_EQ((k & 0x3fff) << 4, 0x400u + 128 * 128 + 32 * 128 + 32);
  EXPECT_EQ(((k >> 32) & 0x3fff) << 4, 1024u);
  const uint64_t mn = umma_desc_mn_major(0x800, 32, 256, 1);
  EXPECT_EQ((mn & 0x3fff) << 4, 0x800u + 4 * 32 * 128 + 16 * 128);
  EXPECT_EQ(((mn >> 16) & 0x3fff) << 4, 32u * 128);
  const uint64_t il = umma_desc_k_major_interleaved(0x1000, 128, 3);
  EXPECT_EQ((il & 0x3fff) << 4, 0x1000u + 3 * 2 * 128 * 16);
  EXPECT_EQ(((il >> 16) & 0x3fff) << 4, 128u * 16);  // LBO: the next core matrix along K
  EXPECT_EQ(((il >> 32) & 0x3fff) << 4, 128u);       // SBO: the next 8 rows
  EXPECT_EQ(il >> 61, 0u);
  // Instruction descriptor: D f32 (bits 4-5), A / B bf16 (7-9, 10-12), B MN-major (16), N >> 3
  // (17-22), M >> 4 (24-28).
  const uint32_t id = umma_idesc_f16(false, 128, 256, true);
  EXPECT_EQ((id >> 4) & 3, 1u);
  EXPECT_EQ((id >> 7) & 7, 1u);
  EXPECT_EQ((id >> 10) & 7, 1u);
  EXPECT_EQ((id >> 15) & 1, 0u);
  EXPECT_EQ((id >> 16) & 1, 1u);
  EXPECT_EQ((id >> 17) & 63, 32u);
  EXPECT_EQ((id >> 24) & 31, 8u);
  EXPECT_EQ(id & ~((3u << 4) | (63u << 7) | (3u << 15) | (63u << 17) | (31u << 24)), 0u);
  EXPECT_EQ((umma_idesc_f16(true, 128, 32, false) >> 7) & 63, 0u);  // f16 A and B
  EXPECT_EQ(interleaved_offset(128, 9, 17), offset_of(Layout::interleaved, 128, 9, 17));
}

TEST(CudaHarnessTcgen05, ProductsMatch) {
  for (const Gemm& g : {Gemm{.n = 16, .k_steps = 1}, Gemm{.n = 32, .k_steps = 8},
                        Gemm{.n = 256, .k_steps = 2},
                        Gemm{.n = 64, .k_steps = 4, .b_layout = Layout::mn_major_b128},
                        Gemm{.n = 192, .k_steps = 2, .b_layout = Layout::mn_major_b128},
                        Gemm{.n = 32, .k_steps = 2, .a_layout = Layout::interleaved},
                        Gemm{.n = 48, .k_steps = 3, .a_layout = Layout::interleaved,
                             .b_layout = Layout::interleaved},
                        Gemm{.n = 64, .k_steps = 2, .accumulate_c = true}}) {
    SCOPED_TRACE("n " + std::to_string(g.n) + " k_steps " + std::to_string(g.k_steps) +
                 " layouts " + std::to_string(static_cast<int>(g.a_layout)) + "/" +
                 std::to_string(static_cast<int>(g.b_layout)));
    EXPECT_EQ(wrong_elements(g), 0);
  }
}

// Registers used before tcgen05.wait::ld hold NaN, not the loaded values.
TEST(CudaHarnessTcgen05, LoadedRegistersAreValidOnlyAfterTheWait) {
  const Result r = run({.n = 32, .k_steps = 1, .regs_before_wait = true});
  for (float x : r.d) ASSERT_TRUE(std::isnan(x));
}

TEST(CudaHarnessTcgen05, MisuseIsAnError) {
  EXPECT_PRED2(contains, error_of({.ld_before_wait = true}), "still in flight");
  EXPECT_PRED2(contains, error_of({.no_dealloc = true}), "still allocated");
  EXPECT_PRED2(contains, error_of({.wrong_lanes = true}), "may only reach lanes 32..63");
  EXPECT_PRED2(contains, error_of({.skip_proxy_fence = true}),
               "A reads shared memory the async proxy does not see as written");
  EXPECT_PRED2(contains, error_of({.clobber_before_wait = true}),
               "operands changed between the issue and the completion");
  EXPECT_PRED2(contains, error_of({.accumulate_c = true, .st_not_waited = true}),
               "tcgen05.st has not completed");
  EXPECT_PRED2(contains, error_of({.alloc_after_relinquish = true}),
               "after tcgen05.relinquish_alloc_permit");
  EXPECT_PRED2(contains, error_of({.alloc_48 = true}), "power of two");
  EXPECT_PRED2(contains, error_of({.wgmma_desc = true}), "lacks the fixed 0b001");
  EXPECT_PRED2(contains, error_of({.commit_not_waited = true}), "still in flight");
}

}  // namespace
}  // namespace harness
}  // namespace flashmla::cuda
