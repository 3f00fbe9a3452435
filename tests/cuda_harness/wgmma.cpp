// Emulated Hopper warpgroup MMA, written from the PTX ISA's descriptions (section "Asynchronous
// Warpgroup Level Matrix Multiply-Accumulate"):
//  - wgmma.mma_async.sync.aligned.m64nNk16.f32.{bf16,f16}.{bf16,f16} with A and B in shared
//    memory, each given by a 64-bit matrix descriptor ("Matrix Descriptor Format"): bits 0-13
//    start address >> 4, 16-29 leading dimension byte offset (LBO) >> 4, 32-45 stride dimension
//    byte offset (SBO) >> 4, 49-51 base offset, 62-63 swizzle mode (0 none, 1 128B, 2 64B,
//    3 32B); every other bit 0.
//  - Shared memory layouts ("Shared Memory Matrix Layout"), for 16-bit elements: a matrix is made
//    of core matrices of 8 rows x 16 bytes. K-major without swizzling: the 8 rows of a core
//    matrix 16 bytes apart, the next core matrix along K at LBO, along M/N at SBO. K-major with
//    128-byte swizzling: 8 rows of 128 bytes (64 elements of K) form a swizzle atom, the next 8
//    rows along M/N at SBO (LBO unused). MN-major with 128-byte swizzling: 64 elements of M/N
//    contiguous (128 bytes), 8 such rows for consecutive k, the next 64 elements of M/N at LBO,
//    the next 8 k at SBO. 128-byte swizzling permutes the 16-byte chunks of each 128-byte row:
//    address bits 4-6 are XORed with bits 7-9 (the row within the 1024-byte pattern).
//    Emulated here: K-major unswizzled and 128-byte swizzled, MN-major 128-byte swizzled, with
//    the pattern's 1024-byte alignment (base offset 0, start address in the first 128 bytes of
//    an aligned 1024-byte block); anything else fails the launch rather than guessing.
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

struct Desc {
  uint32_t start, lbo, sbo;
  int swizzle;
};

constexpr uint64_t kReservedBits = (uint64_t{3} << 14) | (uint64_t{3} << 30) |
                                   (((uint64_t{1} << 16) - 1) << 46);

Desc decode(uint64_t v, const char* which) {
  if (v & kReservedBits) {
    fail((std::string("wgmma: ") + which +
          " descriptor has reserved bits or a base offset set (emulated: base offset 0)")
             .c_str());
  }
  const auto field = [&](int lo) { return static_cast<uint32_t>((v >> lo) & 0x3fffu) << 4; };
  return {field(0), field(16), field(32), static_cast<int>(v >> 62)};
}

constexpr int kK = 16;  // K of one wgmma

// An operand's addressing in the block's shared memory: its descriptor decoded, and the layout
// checked, once per operation.
class Operand {
 public:
  // at_issue: also checks that the async proxy sees what shared memory holds.
  Operand(uint64_t desc, bool mn_major, const char* which, bool at_issue)
      : base_(static_cast<const unsigned char*>(dynamic_smem())),
        async_view_(at_issue ? async_proxy_smem() : nullptr),
        bytes_(dynamic_smem_bytes()),
        d_(decode(desc, which)),
        mn_major_(mn_major),
        which_(which) {
    if (d_.swizzle == 0 && mn_major) {
      fail((std::string("wgmma: ") + which + " is MN-major without swizzling (not emulated)")
               .c_str());
    }
    if (d_.swizzle > 1) {
      fail((std::string("wgmma: ") + which + " uses 64- or 32-byte swizzling (not emulated)")
               .c_str());
    }
    if (d_.swizzle == 1 && d_.start % 1024 >= 128) {
      fail((std::string("wgmma: ") + which +
            " starts past the first row of its 1024-byte swizzle pattern (needs a base offset; "
            "not emulated)")
               .c_str());
    }
  }

  // The bits of elements (mn, 0 .. 15) (mn: row of A or column of B). K-major, each run of 8
  // is the 16 bytes of one row of a core matrix (unswizzled, or one 16-byte chunk of a swizzled
  // 128-byte row); MN-major, element by element.
  void k_step(int mn, uint16_t (&out)[kK]) const {
    for (int k0 = 0; k0 < kK; k0 += 8) {
      if (!mn_major_) {
        std::memcpy(&out[k0], at(offset(mn, k0), 16), 16);
        continue;
      }
      for (int k = k0; k < k0 + 8; ++k) std::memcpy(&out[k], at(offset(mn, k), 2), 2);
    }
  }

 private:
  uint32_t offset(int mn, int k) const {
    uint32_t a = 0;
    if (d_.swizzle == 0) {
      a = d_.start + (mn / 8) * d_.sbo + (k / 8) * d_.lbo + (mn % 8) * 16 + (k % 8) * 2;
    } else {
      a = mn_major_
              ? d_.start + (mn / 64) * d_.lbo + (k / 8) * d_.sbo + (k % 8) * 128 + (mn % 64) * 2
              : d_.start + (mn / 8) * d_.sbo + (mn % 8) * 128 + k * 2;
      a ^= ((a >> 7) & 7u) << 4;
    }
    return a;
  }
  const unsigned char* at(uint32_t a, uint32_t n) const {
    if (a + n > bytes_) {
      fail((std::string("wgmma: ") + which_ + " reads outside the block's shared memory").c_str());
    }
    if (async_view_ && std::memcmp(base_ + a, async_view_ + a, n) != 0) {
      fail((std::string("wgmma: ") + which_ +
            " reads shared memory the async proxy does not see as written (a generic-proxy "
            "write, e.g. a store or cp.async, with no fence.proxy.async before the barrier that "
            "ordered it before the wgmma)")
               .c_str());
    }
    return base_ + a;
  }

  const unsigned char* base_;
  const unsigned char* async_view_;
  size_t bytes_;
  Desc d_;
  bool mn_major_;
  const char* which_;
};

// The elements of A and B this thread's accumulators need, from shared memory as it is now.
// Accumulator i of the thread is row 16 warp + lane / 4 + 8 ((i % 4) / 2), column
// 8 (i / 4) + 2 (lane % 4) + i % 2: two rows of A (the first 2 x 16 elements), then n / 4
// columns of B, k-major (element k of column j = 2 (i / 4) + i % 2 at 32 + k (n / 4) + j).
std::vector<uint16_t> operands(const WgmmaOp& op, bool at_issue) {
  const Operand a(op.desc_a, op.trans_a, "A", at_issue), b(op.desc_b, op.trans_b, "B", at_issue);
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
