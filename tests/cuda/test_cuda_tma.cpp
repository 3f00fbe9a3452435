// The harness's mbarrier and bulk tensor copy emulation (tests/cuda_harness/tma.cpp) through the
// kernels' wrappers (src/cuda/common/tma.cuh, tma_map.h), against the PTX ISA's description
// written here in another form: element (i0, i1, i2, i3) of a box lands at byte
// 2 * (((i3 * b2 + i2) * b1 + i1) * 64 + i0) of the destination with the 16-byte chunk index XORed
// by the 128-byte row index mod 8; out-of-tensor elements are zero. Also: phases alternate and
// re-arm, a read before the wait sees the in-flight poison, and a wait that never completes, a
// copy left in flight at exit, a misaligned destination and an mbarrier used before init fail
// the launch with a message naming them.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/common/tma.cuh"
#include "cuda/common/tma_map.h"

namespace flashmla::cuda {
inline namespace harness {
namespace {

// The global tensor: (channel, head, row, block) = 128 x 2 x 24 x 5 uint16 with padded strides
// (row 2 x 136 channels, block 24 rows + 1 spare), element value = a hash of its coordinates.
constexpr uint64_t kDims[4] = {128, 2, 24, 5};
constexpr uint64_t kHeadStride = 136, kRowStride = 2 * kHeadStride, kBlockStride = 25 * kRowStride;
constexpr uint32_t kBox[4] = {64, 1, 8, 1};  // 64 channels x 8 rows: 1 KiB, one swizzle period
constexpr uint32_t kBoxBytes = 64 * 8 * 2;

uint16_t value_at(uint64_t c, uint64_t h, uint64_t r, uint64_t b) {
  return static_cast<uint16_t>(1 + c + 131 * h + 263 * r + 6911 * b);  // never 0 or 0xFFFF
}

struct Tensor {
  std::vector<uint16_t> data;
  Tensor() : data(kDims[3] * kBlockStride + 64, 0xBEEF) {  // padding: a value the copy never reads
    for (uint64_t b = 0; b < kDims[3]; ++b)
      for (uint64_t r = 0; r < kDims[2]; ++r)
        for (uint64_t h = 0; h < kDims[1]; ++h)
          for (uint64_t c = 0; c < kDims[0]; ++c)
            data[b * kBlockStride + r * kRowStride + h * kHeadStride + c] = value_at(c, h, r, b);
  }
};

std::string encode(TmaMap* map, const void* base) {
  const uint64_t strides[3] = {kHeadStride * 2, kRowStride * 2, kBlockStride * 2};
  return encode_tma_map_16bit(map, 4, base, kDims, strides, kBox);
}

// A copy: box origin (channel, head, row, block).
struct Coord {
  int c, h, r, b;
};

// Rounds: in round k, warp 0 arms stage k % 2's mbarrier with `per_round` boxes and issues them
// (box i of round k: coords[k * per_round + i], to slot i of the stage); every thread waits, then
// copies the stage to out (round k at k * per_round boxes). `expect_extra` bytes are armed but
// never delivered; skip_wait leaves the last round unwaited; read_early: thread 0 of each round
// copies the stage before waiting (into early, round k at k * per_round boxes).
struct Plan {
  int rounds, per_round;
  const Coord* coords;
  unsigned expect_extra = 0;
  bool skip_wait = false, read_early = false;
  int dst_offset = 0;  // added to every destination (misalignment test)
};

__global__ void copy_rounds(const __grid_constant__ TmaMap map, const Plan plan, uint16_t* out,
                            uint16_t* early) {
  unsigned char* raw = dynamic_smem();
  unsigned char* smem = raw + ((1024u - smem_address(raw) % 1024u) % 1024u);
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem);
  unsigned char* stages = smem + 1024;
  const uint32_t stage_bytes = static_cast<uint32_t>(plan.per_round) * kBoxBytes;
  if (threadIdx.x == 0) {
    mbarrier_init(bars, 1);
    mbarrier_init(bars + 1, 1);
    fence_mbarrier_init();
  }
  __syncthreads();
  unsigned parity = 0;
  for (int k = 0; k < plan.rounds; ++k) {
    const int st = k % 2;
    unsigned char* stage = stages + st * stage_bytes + plan.dst_offset;
    if (threadIdx.x < 32) {
      if (threadIdx.x == 0) mbarrier_arrive_expect_tx(bars + st, stage_bytes + plan.expect_extra);
      __syncwarp();
      for (int i = static_cast<int>(threadIdx.x); i < plan.per_round; i += 32) {
        const Coord& c = plan.coords[k * plan.per_round + i];
        tma_load_4d(stage + i * kBoxBytes, &map, c.c, c.h, c.r, c.b, bars + st);
      }
      __syncwarp();  // every box of the round issued (read_early)
    }
    if (plan.read_early && threadIdx.x == 0) {
      std::memcpy(early + static_cast<size_t>(k) * stage_bytes / 2, stage, stage_bytes);
    }
    if (plan.read_early) __syncthreads();  // no thread waits (and so lands the copies) before it
    if (plan.skip_wait && k + 1 == plan.rounds) return;
    mbarrier_wait(bars + st, (parity >> st) & 1u);
    parity ^= 1u << st;
    for (uint32_t i = threadIdx.x; i < stage_bytes / 2; i += blockDim.x) {
      std::memcpy(out + static_cast<size_t>(k) * stage_bytes / 2 + i, stage + 2 * i, 2);
    }
    __syncthreads();  // the stage is read before round k + 2 copies into it
  }
}

size_t smem_for(const Plan& p) { return 2048 + 2 * static_cast<size_t>(p.per_round) * kBoxBytes; }

// What box `c` holds at byte offset `at` of its destination (the description in the header).
uint16_t expected(const Coord& c, uint32_t at) {
  const uint32_t row = at / 128, chunk = ((at / 16) % 8) ^ (row % 8);
  const uint32_t linear = row * 128 + chunk * 16 + at % 16;  // unswizzled byte offset
  const int64_t i0 = (linear / 2) % 64, i2 = linear / 128;   // box: 64 x 1 x 8 x 1
  const int64_t ch = c.c + i0, r = c.r + i2;
  if (ch < 0 || ch >= 128 || c.h < 0 || c.h >= 2 || r < 0 || r >= 24 || c.b < 0 || c.b >= 5) {
    return 0;
  }
  return value_at(ch, c.h, r, c.b);
}

std::string launch_error(const Plan& plan, const TmaMap& map) {
  std::vector<uint16_t> out(static_cast<size_t>(plan.rounds) * plan.per_round * kBoxBytes / 2);
  std::vector<uint16_t> early(out.size());
  try {
    FMLA_LAUNCH(copy_rounds, dim3(1), dim3(64), smem_for(plan), nullptr, map, plan, out.data(),
                early.data());
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return {};
}

TEST(CudaTma, BoxesLandSwizzledWithZerosOutsideTheTensor) {
  Tensor t;
  alignas(64) TmaMap map;
  ASSERT_EQ(encode(&map, t.data.data()), "");
  // Three rounds of five boxes over two stages (so stage 0 is re-armed at its second phase):
  // inside, at the edges (channel 64, row 16 of 24: half out), fully out (block -1, block 5,
  // negative channel and row).
  const std::vector<Coord> coords = {
      {0, 0, 0, 0},  {64, 1, 16, 4}, {0, 1, 8, 2},  {64, 0, 3, 1},   {0, 0, 0, -1},
      {64, 1, 20, 3}, {0, 0, 5, 5},  {-8, 1, 2, 0}, {64, 0, -4, 2},  {0, 1, 23, 0},
      {0, 0, 16, 4},  {64, 1, 0, 0}, {0, 2, 0, 0},  {128, 0, 0, 0},  {32, 0, 7, 3}};
  Plan plan{3, 5, coords.data()};
  plan.read_early = true;
  std::vector<uint16_t> out(15 * kBoxBytes / 2, 0x1234), early(out.size(), 0x1234);
  FMLA_LAUNCH(copy_rounds, dim3(1), dim3(64), smem_for(plan), nullptr, map, plan, out.data(),
              early.data());
  int wrong = 0, early_valid = 0;
  for (size_t box = 0; box < coords.size(); ++box) {
    for (uint32_t at = 0; at < kBoxBytes; at += 2) {
      const size_t i = box * kBoxBytes / 2 + at / 2;
      if (out[i] != expected(coords[box], at) && ++wrong <= 5) {
        ADD_FAILURE() << "box " << box << " byte " << at << ": " << out[i] << " expected "
                      << expected(coords[box], at);
      }
      early_valid += early[i] != 0xFFFF;
    }
  }
  EXPECT_EQ(wrong, 0);
  // Read before the wait: the copies are in flight, their bytes poison, never the data.
  EXPECT_EQ(early_valid, 0);
}

TEST(CudaTma, EncodeRefusesWhatTheDriverRefuses) {
  Tensor t;
  alignas(64) TmaMap map;
  const uint64_t good[3] = {kHeadStride * 2, kRowStride * 2, kBlockStride * 2};
  EXPECT_EQ(encode_tma_map_16bit(&map, 4, t.data.data(), kDims, good, kBox), "");
  EXPECT_NE(encode_tma_map_16bit(&map, 4, t.data.data() + 1, kDims, good, kBox), "")
      << "base not 16-byte aligned";
  const uint64_t odd[3] = {kHeadStride * 2 + 2, kRowStride * 2, kBlockStride * 2};
  EXPECT_NE(encode_tma_map_16bit(&map, 4, t.data.data(), kDims, odd, kBox), "")
      << "stride not a multiple of 16";
  const uint32_t wide[4] = {128, 1, 8, 1};
  EXPECT_NE(encode_tma_map_16bit(&map, 4, t.data.data(), kDims, good, wide), "")
      << "256-byte box rows under a 128-byte swizzle";
  const uint32_t tall[4] = {64, 1, 512, 1};
  EXPECT_NE(encode_tma_map_16bit(&map, 4, t.data.data(), kDims, good, tall), "")
      << "box dimension over 256";
  const uint64_t empty[4] = {128, 2, 24, 0};
  EXPECT_NE(encode_tma_map_16bit(&map, 4, t.data.data(), empty, good, kBox), "")
      << "zero-sized dimension";
  EXPECT_NE(encode_tma_map_16bit(&map, 6, t.data.data(), kDims, good, kBox), "") << "rank 6";
}

TEST(CudaTma, ProtocolErrorsFailTheLaunch) {
  Tensor t;
  alignas(64) TmaMap map;
  ASSERT_EQ(encode(&map, t.data.data()), "");
  const std::vector<Coord> coords = {{0, 0, 0, 0}, {64, 0, 8, 1}};
  auto contains = [](const std::string& s, const char* part) {
    return s.find(part) != std::string::npos;
  };
  Plan ok{2, 1, coords.data()};
  EXPECT_EQ(launch_error(ok, map), "");

  Plan short_bytes = ok;  // armed for more bytes than the copies bring: the wait never ends
  short_bytes.expect_extra = 16;
  const std::string never = launch_error(short_bytes, map);
  EXPECT_TRUE(contains(never, "mbarrier.try_wait.parity") && contains(never, "never completes"))
      << never;

  Plan no_wait = ok;  // the block exits with its last copy in flight
  no_wait.skip_wait = true;
  const std::string in_flight = launch_error(no_wait, map);
  EXPECT_TRUE(contains(in_flight, "still in flight")) << in_flight;

  Plan misaligned = ok;  // a swizzled box must start on the pattern's 1024-byte period
  misaligned.dst_offset = 128;
  const std::string align = launch_error(misaligned, map);
  EXPECT_TRUE(contains(align, "1024-byte aligned")) << align;

  alignas(64) TmaMap blank{};  // never encoded
  const std::string unencoded = launch_error(ok, blank);
  EXPECT_TRUE(contains(unencoded, "never encoded")) << unencoded;
}

__global__ void wait_uninitialised() {
  uint64_t* bar = reinterpret_cast<uint64_t*>(dynamic_smem());
  mbarrier_wait(bar, 0);
}

TEST(CudaTma, MbarrierBeforeInitFailsTheLaunch) {
  try {
    FMLA_LAUNCH(wait_uninitialised, dim3(1), dim3(32), 64, nullptr);
    ADD_FAILURE() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("before init"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace harness
}  // namespace flashmla::cuda
