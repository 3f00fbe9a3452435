// Emulated Hopper warpgroup MMA, written from the PTX ISA's descriptions (section "Asynchronous
// Warpgroup Level Matrix Multiply-Accumulate"):
//  - wgmma.mma_async.sync.aligned.m64nNk16.f32.{bf16,f16}.{bf16,f16} with A and B in shared
//    memory, each given by a 64-bit matrix descriptor ("Matrix Descriptor Format"): bits 0-13
//    start address >> 4, 16-29 leading dimension byte offset (LBO) >> 4, 32-45 stride dimension
//    byte offset (SBO) >> 4, 49-51 base offset, 62-63 swizzle mode (0 none, 1 128B, 2 64B,
//    3 32B); every other bit 0.
//  - Shared memory layouts: cuda_harness/smem_operand.h.
//  - Accumulator D of m64nN (f32): the warpgroup's warp w holds rows 16w..16w+15; register i of
//    lane l is row 16w + l/4 + 8 ((i % 4) / 2), column 8 (i / 4) + 2 (l % 4) + i % 2.
//  - Asynchrony: wgmma.mma_async reads A and B from shared memory at the issue and again when
//    wgmma.wait_group N performs its group (every group but the N newest), and fails the launch
//    if they differ: the operands changed while the wgmma was in flight — written by another
//    thread without a barrier before the issue, or overwritten before the wait. C is read from
//    the accumulator registers at the wait, so a kernel that reads or writes its accumulators
//    between the issue and the wait gets a wrong answer here, as it may on the GPU.
//    An mma_async needs a wgmma.fence since the thread's last wait_group (the registers were
//    accessed in between), and every lane of the warpgroup must pass the same descriptors and
//    flags to its n-th mma_async ("the contents of a matrix descriptor must be same across all
//    the warps in the warpgroup").
//  - Operands are read through the async proxy (runtime.h): at the issue, each must be the same
//    in the async proxy's view of shared memory as in shared memory, else a generic-proxy write
//    reached it without a fence.proxy.async before the barrier that ordered it.
#include <cstring>
#include <map>
#include <utility>
#include <string>
#include <vector>

#include "cuda_harness/runtime.h"
#include "cuda_harness/smem_operand.h"

namespace flashmla::cuda_harness {
namespace {

struct WgmmaOp {
  MmaType type;
  float* d;
  int n;
  uint64_t desc_a, desc_b;
  bool accumulate, trans_a, trans_b;
  int64_t group;                // -1: not committed yet
  std::vector<uint16_t> issued;  // this thread's A and B elements, read at the issue
};

struct WgmmaState final : ThreadState {
  std::vector<WgmmaOp> ops;
  int64_t next_group = 0;
  int64_t issued = 0;  // mma_async so far
  bool fenced = false;
};

// What an mma_async passes; the same in every lane of a warpgroup.
struct Uniform {
  uint64_t a, b;
  int n, flags;
  bool operator==(const Uniform&) const = default;
};

// Per block: the n-th mma_async of each warpgroup as its first warp passed it, until all four
// warps have compared theirs.
struct WarpgroupIssues final : ThreadState {
  struct Entry {
    Uniform u;
    int warps;
  };
  std::map<std::pair<int, int64_t>, Entry> pending;  // (warpgroup, n) -> entry
};

WgmmaState& state() {
  std::unique_ptr<ThreadState>& slot = thread_state_slot();
  if (!slot) slot = std::make_unique<WgmmaState>();
  return static_cast<WgmmaState&>(*slot);
}

constexpr uint64_t kReservedBits = (uint64_t{3} << 14) | (uint64_t{3} << 30) |
                                   (((uint64_t{1} << 16) - 1) << 46);

// The wgmma descriptor: swizzle mode in bits 62-63 (0 none, 1 128B; 64B and 32B not emulated).
SmemDesc decode(uint64_t v, const char* which) {
  if (v & kReservedBits) {
    fail((std::string("wgmma: ") + which +
          " descriptor has reserved bits or a base offset set (emulated: base offset 0)")
             .c_str());
  }
  const int swizzle = static_cast<int>(v >> 62);
  if (swizzle > 1) {
    fail((std::string("wgmma: ") + which + " uses 64- or 32-byte swizzling (not emulated)")
             .c_str());
  }
  const auto field = [&](int lo) { return static_cast<uint32_t>((v >> lo) & 0x3fffu) << 4; };
  return {field(0), field(16), field(32), swizzle == 1};
}

constexpr int kK = kMmaK;

// The elements of A and B this thread's accumulators need, from shared memory as it is now.
// Accumulator i of the thread is row 16 warp + lane / 4 + 8 ((i % 4) / 2), column
// 8 (i / 4) + 2 (lane % 4) + i % 2: two rows of A (the first 2 x 16 elements), then n / 4
// columns of B, k-major (element k of column j = 2 (i / 4) + i % 2 at 32 + k (n / 4) + j).
std::vector<uint16_t> operands(const WgmmaOp& op, bool at_issue) {
  const SmemOperand a(decode(op.desc_a, "A"), op.trans_a, "wgmma", "A", at_issue),
      b(decode(op.desc_b, "B"), op.trans_b, "wgmma", "B", at_issue);
  const int linear = thread_linear(), lane = linear & 31, warp = (linear >> 5) & 3;
  const int cols = op.n / 4;
  std::vector<uint16_t> v(static_cast<size_t>(2 + cols) * kK);
  uint16_t e[kK];
  for (int h = 0; h < 2; ++h) {
    a.k_step(16 * warp + lane / 4 + 8 * h, e);
    std::memcpy(&v[h * kK], e, sizeof e);
  }
  for (int j = 0; j < cols; ++j) {
    b.k_step(8 * (j / 2) + 2 * (lane % 4) + j % 2, e);
    for (int k = 0; k < kK; ++k) v[static_cast<size_t>(2 * kK + k * cols + j)] = e[k];
  }
  return v;
}

void perform(const WgmmaOp& op) {
  const std::vector<uint16_t> now = operands(op, false);
  if (now != op.issued) {
    fail("wgmma: its shared-memory operands changed between wgmma.mma_async and the "
         "wgmma.wait_group that completed it (a missing barrier before the issue, or an "
         "overwrite before the wait)");
  }
  // A B at the accumulators: products of 16-bit floats and their sums are exact in double
  // (summed in order of k), then one rounding of C + A B (as the mma.sync emulation).
  const int cols = op.n / 4;
  double rows[2][kK];
  for (int h = 0; h < 2; ++h) {
    for (int k = 0; k < kK; ++k) rows[h][k] = mma_element(now[h * kK + k], op.type);
  }
  double ab[2][64] = {};  // [row][column j]
  double col[64];
  for (int k = 0; k < kK; ++k) {
    for (int j = 0; j < cols; ++j) {
      col[j] = mma_element(now[static_cast<size_t>(2 * kK + k * cols + j)], op.type);
    }
    for (int h = 0; h < 2; ++h) {
      for (int j = 0; j < cols; ++j) ab[h][j] += rows[h][k] * col[j];
    }
  }
  for (int i = 0; i < op.n / 2; ++i) {
    const double p = ab[(i % 4) / 2][2 * (i / 4) + i % 2];
    op.d[i] = static_cast<float>((op.accumulate ? op.d[i] : 0.0) + p);
  }
}

void warp_sync(const char* op) { warp_exchange(0xffffffffu, nullptr, 0, op); }

}  // namespace

uint32_t smem_offset(const void* p) {
  const auto* base = static_cast<const unsigned char*>(dynamic_smem());
  const auto* q = static_cast<const unsigned char*>(p);
  if (q < base || q > base + dynamic_smem_bytes()) {
    fail("shared-memory address of a pointer outside the block's shared memory");
  }
  return static_cast<uint32_t>(q - base);
}

void wgmma_fence() {
  warp_sync("wgmma.fence");
  state().fenced = true;
}

void wgmma_mma_async(MmaType type, float* d, int n, uint64_t desc_a, uint64_t desc_b,
                     bool accumulate, bool trans_a, bool trans_b) {
  const dim3& dim = block_dim();
  if ((dim.x * dim.y * dim.z) % 128 != 0) fail("wgmma in a block that is not whole warpgroups");
  if (n < 8 || n > 256 || n % 8 != 0) fail("wgmma: N must be a multiple of 8 in [8, 256]");
  WgmmaState& st = state();
  if (!st.fenced) fail("wgmma.mma_async without a wgmma.fence since the last wgmma.wait_group");
  const Uniform mine{desc_a, desc_b, n, (accumulate ? 1 : 0) | (trans_a ? 2 : 0) |
                                            (trans_b ? 4 : 0) | (type == MmaType::f16 ? 8 : 0)};
  const unsigned char* slots = warp_exchange(0xffffffffu, &mine, sizeof mine, "wgmma.mma_async");
  for (int l = 0; l < 32; ++l) {
    if (std::memcmp(slots + 64 * l, &mine, sizeof mine) != 0) {
      fail("wgmma.mma_async: the lanes of a warp pass different descriptors, shapes or flags");
    }
  }
  // Lane 0 of each warp compares with the warpgroup's other warps.
  const int linear = thread_linear();
  if ((linear & 31) == 0) {
    std::unique_ptr<ThreadState>& slot = block_state_slot();
    if (!slot) slot = std::make_unique<WarpgroupIssues>();
    auto& pending = static_cast<WarpgroupIssues&>(*slot).pending;
    const auto key = std::make_pair(linear / 128, st.issued);
    auto it = pending.find(key);
    if (it == pending.end()) {
      pending.emplace(key, WarpgroupIssues::Entry{mine, 1});
    } else if (!(it->second.u == mine)) {
      fail("wgmma.mma_async: the warps of a warpgroup pass different descriptors, shapes or "
           "flags");
    } else if (++it->second.warps == 4) {
      pending.erase(it);
    }
  }
  ++st.issued;
  WgmmaOp op{type, d, n, desc_a, desc_b, accumulate, trans_a, trans_b, -1, {}};
  op.issued = operands(op, true);
  st.ops.push_back(std::move(op));
}

void wgmma_commit() {
  warp_sync("wgmma.commit_group");
  WgmmaState& st = state();
  for (auto& op : st.ops) {
    if (op.group < 0) op.group = st.next_group;
  }
  ++st.next_group;
}

void wgmma_wait(int pending) {
  warp_sync("wgmma.wait_group");
  WgmmaState& st = state();
  const int64_t last = st.next_group - 1 - pending;
  std::vector<WgmmaOp> keep;
  for (const auto& op : st.ops) {
    if (op.group >= 0 && op.group <= last) {
      perform(op);
    } else {
      keep.push_back(op);
    }
  }
  st.ops = std::move(keep);
  st.fenced = false;
}

}  // namespace flashmla::cuda_harness
