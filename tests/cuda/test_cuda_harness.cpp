// The CPU harness itself (tests/cuda_harness): barriers, random order, warp collectives and the
// emulated PTX instructions, each checked against the PTX ISA's own description — the expected
// values here are written from the ISA's tables, never taken from a kernel.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/common/portable.h"

namespace flashmla::cuda {
inline namespace harness {
namespace {

// EXPECT_PRED2(contains, text, part): the failure message shows both.
bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// ---- block barrier and random order ----

__global__ void rotate_through_smem(const float* in, float* out, int with_barrier) {
  float* s = reinterpret_cast<float*>(dynamic_smem());
  const int t = threadIdx.x, n = blockDim.x;
  s[t] = in[blockIdx.x * n + t];
  if (with_barrier) __syncthreads();
  out[blockIdx.x * n + t] = s[(t + 1) % n];
}

TEST(CudaHarnessBlock, BarrierOrdersSharedMemory) {
  const int n = 64, blocks = 3;
  std::vector<float> in(n * blocks), out(n * blocks);
  for (int i = 0; i < n * blocks; ++i) in[i] = static_cast<float>(i);
  FMLA_LAUNCH(rotate_through_smem, dim3(blocks), dim3(n), n * sizeof(float), nullptr, in.data(),
              out.data(), 1);
  for (int b = 0; b < blocks; ++b) {
    for (int t = 0; t < n; ++t) EXPECT_EQ(out[b * n + t], in[b * n + (t + 1) % n]);
  }
}

TEST(CudaHarnessBlock, MissingBarrierReadsPoisonedSharedMemory) {
  // Without the barrier some thread runs before its neighbour wrote: it reads the 0xFF fill.
  const int n = 64;
  std::vector<float> in(n, 1.0f), out(n);
  FMLA_LAUNCH(rotate_through_smem, dim3(1), dim3(n), n * sizeof(float), nullptr, in.data(),
              out.data(), 0);
  int poisoned = 0;
  for (float v : out) poisoned += std::isnan(v);
  EXPECT_GT(poisoned, 0);
  EXPECT_LT(poisoned, n);  // and the order is random, not "everyone before everyone"
}

// Each thread writes its slot, meets its warp at a shuffle (as a kernel's row max would), then
// reads a slot of the next warp. Only a __syncthreads orders that read after the other warp's
// write; the shuffle orders nothing across warps.
__global__ void read_next_warp_after_shuffle(int* out, int with_barrier) {
  int* s = reinterpret_cast<int*>(dynamic_smem());
  const int t = threadIdx.x, n = blockDim.x;
  s[t] = t;
  const int partner = __shfl_xor_sync(0xffffffffu, t, 1);
  if (with_barrier) __syncthreads();
  out[blockIdx.x * n + t] = partner == (t ^ 1) ? s[(t + 32) % n] : -2;
}

TEST(CudaHarnessBlock, MissingBarrierBetweenWarpCollectivesIsCaught) {
  // A schedule that moves all warps in step would let every thread write before any reads
  // (each passes the shuffle in the same round): the missing barrier would go unseen. Warps
  // that drift or run ahead make some reads see the 0xFF fill (-1).
  const int n = 128, blocks = 24;
  std::vector<int> out(n * blocks);
  for (int with_barrier = 1; with_barrier >= 0; --with_barrier) {
    FMLA_LAUNCH(read_next_warp_after_shuffle, dim3(blocks), dim3(n), n * sizeof(int), nullptr,
                out.data(), with_barrier);
    int stale = 0, wrong = 0;
    for (int b = 0; b < blocks; ++b) {
      for (int t = 0; t < n; ++t) {
        const int v = out[b * n + t];
        stale += v == -1;
        wrong += v != -1 && v != (t + 32) % n;
      }
    }
    EXPECT_EQ(wrong, 0);
    if (with_barrier) {
      EXPECT_EQ(stale, 0);
    } else {
      EXPECT_GT(stale, 0) << "no schedule let a warp read before the next warp wrote";
    }
  }
}

__global__ void record_order(int* order, int* counter) {
  order[threadIdx.x] = (*counter)++;
}

TEST(CudaHarnessBlock, ThreadOrderIsRandomAndSeeded) {
  const int n = 32;
  std::vector<int> a(n), b(n);
  int counter = 0;
  FMLA_LAUNCH(record_order, dim3(1), dim3(n), 0, nullptr, a.data(), &counter);
  counter = 0;
  FMLA_LAUNCH(record_order, dim3(1), dim3(n), 0, nullptr, b.data(), &counter);
  EXPECT_NE(a, b);  // two launches, two seeds
  std::vector<int> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (int i = 0; i < n; ++i) EXPECT_EQ(sorted[i], i);
}

__global__ void early_exit_then_barrier() {
  if (threadIdx.x == 5) return;
  __syncthreads();
}

TEST(CudaHarnessBlock, DivergentBarrierIsAnErrorNotAHang) {
  try {
    FMLA_LAUNCH(early_exit_then_barrier, dim3(2), dim3(32), 0, nullptr);
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_PRED2(contains, e.what(), "divergent __syncthreads");
    EXPECT_PRED2(contains, e.what(), "seed 0x");
  }
}

__global__ void built_ins(uint3* tid, uint3* bid, dim3* bdim, dim3* gdim) {
  const int linear = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int i = block * blockDim.x * blockDim.y * blockDim.z + linear;
  tid[i] = threadIdx;
  bid[i] = blockIdx;
  bdim[i] = blockDim;
  gdim[i] = gridDim;
}

TEST(CudaHarnessBlock, BuiltInVariablesFollowCudaNumbering) {
  const dim3 grid(3, 2, 2), block(4, 2, 3);
  const int total = 12 * 24;
  std::vector<uint3> tid(total), bid(total);
  std::vector<dim3> bdim(total), gdim(total);
  FMLA_LAUNCH(built_ins, grid, block, 0, nullptr, tid.data(), bid.data(), bdim.data(),
              gdim.data());
  int i = 0;
  for (unsigned bz = 0; bz < 2; ++bz)
    for (unsigned by = 0; by < 2; ++by)
      for (unsigned bx = 0; bx < 3; ++bx)
        for (unsigned tz = 0; tz < 3; ++tz)
          for (unsigned ty = 0; ty < 2; ++ty)
            for (unsigned tx = 0; tx < 4; ++tx, ++i) {
              EXPECT_EQ(tid[i].x, tx); EXPECT_EQ(tid[i].y, ty); EXPECT_EQ(tid[i].z, tz);
              EXPECT_EQ(bid[i].x, bx); EXPECT_EQ(bid[i].y, by); EXPECT_EQ(bid[i].z, bz);
              EXPECT_EQ(bdim[i].x, 4u); EXPECT_EQ(bdim[i].z, 3u);
              EXPECT_EQ(gdim[i].x, 3u); EXPECT_EQ(gdim[i].y, 2u);
            }
}

__global__ void throws_in_thread_7() {
  if (threadIdx.x == 7) ::flashmla::cuda_harness::fail("deliberate");
  __syncthreads();
}

// The launch's error message, or "" if it succeeded.
std::string error_of_throwing_launch() {
  try {
    FMLA_LAUNCH(throws_in_thread_7, dim3(1), dim3(64), 0, nullptr);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

TEST(CudaHarnessBlock, ErrorsNameTheThreadTheSeedAndTheSchedule) {
  const std::string first = error_of_throwing_launch();
  EXPECT_PRED2(contains, first, "thread (7,0,0): deliberate");
  EXPECT_PRED2(contains, first, "throws_in_thread_7");
  EXPECT_PRED2(contains, first, " schedule; FLASHMLA_HARNESS_SEED reproduces it");
  // The seed named in the message reproduces the launch, schedule included.
  const size_t at = first.find("(seed ");
  ASSERT_NE(at, std::string::npos) << first;
  const std::string seed = first.substr(at + 6, 18);
  ::setenv("FLASHMLA_HARNESS_SEED", seed.c_str(), 1);
  const std::string again = error_of_throwing_launch();
  ::unsetenv("FLASHMLA_HARNESS_SEED");
  EXPECT_EQ(again, first);
}

// ---- warp collectives (CUDA Programming Guide, "Warp Shuffle Functions") ----

__global__ void shuffles(int* out, int width) {
  const int t = threadIdx.x;
  const int v = 100 + t;
  out[0 * 64 + t] = __shfl_sync(kFullMask, v, 5, width);
  out[1 * 64 + t] = __shfl_up_sync(kFullMask, v, 3, width);
  out[2 * 64 + t] = __shfl_down_sync(kFullMask, v, 3, width);
  out[3 * 64 + t] = __shfl_xor_sync(kFullMask, v, 6, width);
  out[4 * 64 + t] = static_cast<int>(__ballot_sync(kFullMask, t % 3 == 0));
  out[5 * 64 + t] = __any_sync(kFullMask, t == 40);
  out[6 * 64 + t] = __all_sync(kFullMask, t < 40);
}

TEST(CudaHarnessWarp, ShufflesBallotAndVotesPerWidth) {
  for (int width : {32, 16, 8, 4}) {
    std::vector<int> out(7 * 64);
    FMLA_LAUNCH(shuffles, dim3(1), dim3(64), 0, nullptr, out.data(), width);
    for (int t = 0; t < 64; ++t) {
      const int lane = t % 32, warp_base = t - lane;
      const int seg = lane / width * width;  // first lane of the segment
      auto value = [&](int l) { return 100 + warp_base + l; };
      EXPECT_EQ(out[t], value(seg + 5 % width)) << "idx w" << width << " t" << t;
      EXPECT_EQ(out[64 + t], lane - 3 >= seg ? value(lane - 3) : value(lane)) << "up " << t;
      EXPECT_EQ(out[128 + t], lane + 3 < seg + width ? value(lane + 3) : value(lane)) << "down";
      const int x = lane ^ 6;
      EXPECT_EQ(out[192 + t], x >= seg && x < seg + width ? value(x) : value(lane)) << "xor";
      unsigned ballot = 0;
      for (int l = 0; l < 32; ++l) ballot |= unsigned((warp_base + l) % 3 == 0) << l;
      EXPECT_EQ(static_cast<unsigned>(out[256 + t]), ballot);
      EXPECT_EQ(out[320 + t], warp_base == 32 ? 1 : 0);  // lane 8 of warp 1 is thread 40
      EXPECT_EQ(out[384 + t], warp_base == 0 ? 1 : 0);
    }
  }
}

__global__ void partial_mask_shuffle(int* out) {
  const int t = threadIdx.x;
  if (t < 16) out[t] = __shfl_xor_sync(0x0000ffffu, t, 1);
  else out[t] = __shfl_xor_sync(0xffff0000u, t * 10, 2);
}

TEST(CudaHarnessWarp, DisjointMasksMeetSeparately) {
  std::vector<int> out(32);
  FMLA_LAUNCH(partial_mask_shuffle, dim3(1), dim3(32), 0, nullptr, out.data());
  for (int t = 0; t < 16; ++t) EXPECT_EQ(out[t], t ^ 1);
  for (int t = 16; t < 32; ++t) EXPECT_EQ(out[t], (t ^ 2) * 10);
}

__global__ void lane_missing_from_collective(int* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_sync(kFullMask, 1, 0);
}

TEST(CudaHarnessWarp, ExitedLaneInMaskIsReported) {
  std::vector<int> out(32);
  try {
    FMLA_LAUNCH(lane_missing_from_collective, dim3(1), dim3(32), 0, nullptr, out.data());
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_PRED2(contains, e.what(), "never arrive");
  }
}

// ---- mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.f32 ----
// PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type", per element index i:
//   A (a0..a7, two per .b32 register, lower index in the lower half):
//     row = groupID            for a0, a1, a4, a5;  groupID + 8 for a2, a3, a6, a7
//     col = threadID_in_group * 2 + (i & 1)        for a0..a3;  ... + 8 for a4..a7
//   B (b0..b3): row = threadID_in_group * 2 + (i & 1) for b0, b1; ... + 8 for b2, b3;
//               col = groupID
//   C / D (c0..c3): row = groupID for c0, c1; groupID + 8 for c2, c3;
//                   col = threadID_in_group * 2 + (i & 1)
struct MmaFragmentTable {
  static int a_row(int lane, int i) { return (lane >> 2) + ((i == 2 || i == 3 || i >= 6) ? 8 : 0); }
  static int a_col(int lane, int i) { return (lane % 4) * 2 + (i & 1) + (i >= 4 ? 8 : 0); }
  static int b_row(int lane, int i) { return (lane % 4) * 2 + (i & 1) + (i >= 2 ? 8 : 0); }
  static int b_col(int lane, int) { return lane >> 2; }
  static int c_row(int lane, int i) { return (lane >> 2) + (i >= 2 ? 8 : 0); }
  static int c_col(int lane, int i) { return (lane % 4) * 2 + (i & 1); }
};

template <bool kBf16>
__global__ void one_mma(const uint32_t* a, const uint32_t* b, const float* c, float* d) {
  const int l = lane_id();
  uint32_t ra[4], rb[2];
  float rc[4], rd[4];
  for (int r = 0; r < 4; ++r) ra[r] = a[l * 4 + r];
  for (int r = 0; r < 2; ++r) rb[r] = b[l * 2 + r];
  for (int r = 0; r < 4; ++r) rc[r] = c[l * 4 + r];
  if constexpr (kBf16) mma_m16n8k16_bf16(rd, ra, rb, rc);
  else mma_m16n8k16_f16(rd, ra, rb, rc);
  for (int r = 0; r < 4; ++r) d[l * 4 + r] = rd[r];
}

uint16_t to_bits(float x, bool bf16) {
  if (bf16) {
    const __nv_bfloat16 h = __float2bfloat16(x);
    uint16_t u; std::memcpy(&u, &h, 2); return u;
  }
  const __half h = __float2half(x);
  uint16_t u; std::memcpy(&u, &h, 2); return u;
}
float from_bits(uint16_t u, bool bf16) {
  if (bf16) {
    __nv_bfloat16_raw raw;
    raw.x = u;
    return __bfloat162float(__nv_bfloat16(raw));
  }
  __half_raw raw;
  raw.x = u;
  return __half2float(__half(raw));
}

template <bool kBf16>
void check_mma(uint64_t seed) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::normal_distribution<float> nd(0.f, 1.f);
  uint16_t A[16][16], B[16][8];
  float C[16][8];
  for (auto& row : A) for (auto& x : row) x = to_bits(nd(rng), kBf16);
  for (auto& row : B) for (auto& x : row) x = to_bits(nd(rng), kBf16);
  for (auto& row : C) for (auto& x : row) x = nd(rng);
  std::vector<uint32_t> a(32 * 4, 0), b(32 * 2, 0);
  std::vector<float> c(32 * 4), d(32 * 4, NAN);
  using T = MmaFragmentTable;
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 8; ++i) {
      a[lane * 4 + i / 2] |= uint32_t{A[T::a_row(lane, i)][T::a_col(lane, i)]} << (16 * (i & 1));
    }
    for (int i = 0; i < 4; ++i) {
      b[lane * 2 + i / 2] |= uint32_t{B[T::b_row(lane, i)][T::b_col(lane, i)]} << (16 * (i & 1));
    }
    for (int i = 0; i < 4; ++i) c[lane * 4 + i] = C[T::c_row(lane, i)][T::c_col(lane, i)];
  }
  FMLA_LAUNCH(one_mma<kBf16>, dim3(1), dim3(32), 0, nullptr, a.data(), b.data(), c.data(),
              d.data());
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 4; ++i) {
      const int r = T::c_row(lane, i), col = T::c_col(lane, i);
      double want = C[r][col];
      for (int k = 0; k < 16; ++k) {
        want += double(from_bits(A[r][k], kBf16)) * from_bits(B[k][col], kBf16);
      }
      EXPECT_NEAR(d[lane * 4 + i], want, 1e-5 * (1 + std::fabs(want)))
          << "lane " << lane << " d" << i << " (row " << r << ", col " << col << ")";
    }
  }
}

TEST(CudaHarnessMma, M16n8k16Bf16FollowsTheFragmentTable) {
  for (uint64_t s = 0; s < 3; ++s) check_mma<true>(s);
}
TEST(CudaHarnessMma, M16n8k16F16FollowsTheFragmentTable) {
  for (uint64_t s = 0; s < 3; ++s) check_mma<false>(s);
}

// ---- ldmatrix.sync.aligned.m8n8.{x1,x2,x4}[.trans].shared.b16 ----
// PTX ISA, "Warp-level matrix load instruction: ldmatrix": threads 0-7 give the row addresses
// of matrix 0, 8-15 of matrix 1, 16-23 of matrix 2, 24-31 of matrix 3 (x1: only 0-7, x2: 0-15
// are used); each thread receives a fragment of each matrix i in register i: lane l holds row
// l / 4, elements 2 * (l % 4) and 2 * (l % 4) + 1 (lower element in the lower half). With
// .trans the matrix is transposed on the way: lane l holds column l / 4, rows 2 * (l % 4) and
// 2 * (l % 4) + 1.

// Matrix m's row r lives at row_slot(m, r) of a 40-row shared tile (rows deliberately permuted
// and spread, so each lane's own address matters).
__device__ int row_slot(int m, int r) { return (r * 5 + m * 9 + 3) % 40; }

template <int kNum, bool kTrans>
__global__ void load_matrices(const uint16_t* tile, uint32_t* out) {
  uint16_t* s = reinterpret_cast<uint16_t*>(dynamic_smem());
  for (int i = threadIdx.x; i < 40 * 8; i += 32) s[i] = tile[i];
  __syncwarp();
  const int l = lane_id();
  // Lanes beyond 8 * kNum point at an address ldmatrix must ignore (misaligned on purpose).
  const unsigned char* row = l < 8 * kNum
      ? reinterpret_cast<const unsigned char*>(s + row_slot(l / 8, l % 8) * 8)
      : reinterpret_cast<const unsigned char*>(s) + 2;
  uint32_t r[kNum];
  ldmatrix<kNum, kTrans>(r, row);
  for (int i = 0; i < kNum; ++i) out[l * 4 + i] = r[i];
}

template <int kNum, bool kTrans>
void check_ldmatrix() {
  std::vector<uint16_t> tile(40 * 8, 0xdead);
  auto value = [](int m, int r, int c) { return static_cast<uint16_t>(1000 * m + 10 * r + c); };
  for (int m = 0; m < 4; ++m)
    for (int r = 0; r < 8; ++r)
      for (int c = 0; c < 8; ++c) tile[row_slot(m, r) * 8 + c] = value(m, r, c);
  std::vector<uint32_t> out(32 * 4, 0);
  FMLA_LAUNCH((load_matrices<kNum, kTrans>), dim3(1), dim3(32), 40 * 8 * 2, nullptr, tile.data(),
              out.data());
  for (int l = 0; l < 32; ++l) {
    for (int m = 0; m < kNum; ++m) {
      const uint32_t got = out[l * 4 + m];
      const int a = l / 4, b = 2 * (l % 4);
      const uint32_t want = kTrans ? (value(m, b, a) | uint32_t{value(m, b + 1, a)} << 16)
                                   : (value(m, a, b) | uint32_t{value(m, a, b + 1)} << 16);
      EXPECT_EQ(got, want) << "x" << kNum << (kTrans ? ".trans" : "") << " lane " << l
                           << " matrix " << m;
    }
  }
}

TEST(CudaHarnessLdmatrix, X1X2X4FollowTheFragmentTable) {
  check_ldmatrix<1, false>();
  check_ldmatrix<2, false>();
  check_ldmatrix<4, false>();
}
TEST(CudaHarnessLdmatrix, TransposedVariants) {
  check_ldmatrix<1, true>();
  check_ldmatrix<2, true>();
  check_ldmatrix<4, true>();
}

__global__ void ldmatrix_past_smem(uint32_t* out) {
  const unsigned char* s = dynamic_smem();
  uint32_t r[1];
  ldmatrix<1, false>(r, s + 16 * (lane_id() % 8) + 16);  // row 7 ends past the 128-byte buffer
  out[lane_id()] = r[0];
}

TEST(CudaHarnessLdmatrix, AddressOutsideSharedMemoryIsAnError) {
  std::vector<uint32_t> out(32);
  try {
    FMLA_LAUNCH(ldmatrix_past_smem, dim3(1), dim3(32), 128, nullptr, out.data());
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_PRED2(contains, e.what(), "outside the block's shared memory");
  }
}

// ---- cp.async ----

__global__ void async_copies(const float* src, float* out) {
  float* s = reinterpret_cast<float*>(dynamic_smem());
  const int t = threadIdx.x;  // 1 thread: the copy's visibility to itself
  cp_async_16(s + 0, src + 0, 16);   // group 0
  cp_async_commit();
  cp_async_16(s + 4, src + 4, 8);    // group 1: 8 bytes copied, 8 zero-filled
  cp_async_commit();
  cp_async_16(s + 8, src + 8, 0);    // group 2: zero-fill only
  cp_async_commit();
  out[0] = s[0];                     // nothing has landed yet
  cp_async_wait<2>();                // group 0 complete
  out[1] = s[0];
  out[2] = s[4];
  cp_async_wait<0>();
  for (int i = 0; i < 12; ++i) out[3 + i] = s[i];
  (void)t;
}

TEST(CudaHarnessCpAsync, GroupsLandAtTheirWaitAndZeroFill) {
  alignas(16) float src[12];
  for (int i = 0; i < 12; ++i) src[i] = static_cast<float>(i + 1);
  std::vector<float> out(15, -1.f);
  FMLA_LAUNCH(async_copies, dim3(1), dim3(1), 64, nullptr, src, out.data());
  EXPECT_TRUE(std::isnan(out[0]));  // shared memory's poison, not the copy
  EXPECT_EQ(out[1], 1.f);
  EXPECT_TRUE(std::isnan(out[2]));  // group 1 still in flight after wait_group 2
  const float want[12] = {1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0, 0};
  for (int i = 0; i < 12; ++i) EXPECT_EQ(out[3 + i], want[i]) << i;
}

__global__ void misaligned_cp_async(const float* src) {
  float* s = reinterpret_cast<float*>(dynamic_smem());
  cp_async_16(s + 1, src, 16);
}

TEST(CudaHarnessCpAsync, MisalignedCopyIsAnError) {
  alignas(16) float src[8] = {};
  try {
    FMLA_LAUNCH(misaligned_cp_async, dim3(1), dim3(1), 64, nullptr, src);
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_PRED2(contains, e.what(), "not aligned");
  }
}

}  // namespace
}  // namespace harness
}  // namespace flashmla::cuda
