// Emulated Blackwell tensor memory and tcgen05 MMA, written from the PTX ISA's descriptions
// (section "TensorCore 5th Generation Family Instructions"):
//  - Tensor memory: 128 lanes x 512 columns of 32-bit cells per CTA, addressed (lane << 16) |
//    column. tcgen05.alloc (a whole warp, the same column count in every lane) takes a power of
//    two of 32..512 columns and writes their address to shared memory; tcgen05.dealloc frees
//    exactly an allocation; after tcgen05.relinquish_alloc_permit the CTA may not allocate.
//    Cells hold 0xFFFFFFFF (NaN) until written, and again once freed. A block that exits with
//    columns allocated fails the launch (the PTX ISA requires the kernel to free them), as does
//    an allocation that does not fit (on the GPU it would wait for another CTA's dealloc; the
//    harness runs one CTA per tensor memory).
//  - tcgen05.mma.cta_group::1.kind::f16 with A and B in shared memory (smem_operand.h; the
//    descriptor: bits 0-13 start >> 4, 16-29 LBO >> 4, 32-45 SBO >> 4, 46-48 the fixed 0b001,
//    49-51 base offset, 52 LBO mode, 61-63 swizzle: 0 none, 2 128-byte) and the instruction
//    descriptor (D type bits 4-5, A / B type 7-9 / 10-12, negate 13 / 14, transpose A / B
//    15 / 16, N >> 3 in 17-22, M >> 4 in 24-28). Emulated: M = 128, N a multiple of 16 in
//    16..256, f32 D, bf16 or f16 A and B (the same), A K-major, B either; base offset 0,
//    relative LBO. D (row i in lane i, column j in column d + j) = A B, or D + A B: exact
//    double products summed over k in order, then one rounding (as the wgmma emulation).
//  - Asynchrony: an MMA reads its operands at the issue (through the async proxy: runtime.h)
//    and again when it completes, and fails the launch if they changed in between.
//    tcgen05.commit makes an mbarrier arrival once the thread's earlier MMAs complete; they
//    complete, in issue order, when a thread waits on that mbarrier. Until then their D columns
//    are in flight: a tcgen05.ld or .st of them fails the launch, as does an MMA issued over
//    columns with a tcgen05.st not yet completed.
//  - tcgen05.ld / .st .32x32b.xN (a whole warp, the same address in every lane): lane l of the
//    warp reaches TMEM lane (address lane + l), N columns from the address column; warp w may
//    only reach lanes 32 (w % 4) .. +31 ("Access restrictions"). A load fills the registers
//    with NaN and delivers its values at tcgen05.wait::ld; a store writes at tcgen05.wait::st.
//    So a kernel that uses loaded registers before the wait, or lets an MMA read a store before
//    it completes, gets a wrong answer or a failed launch instead of passing by luck.
//  - tcgen05.fence::before_thread_sync / ::after_thread_sync are accepted and do nothing: the
//    harness orders tensor memory by its barriers and mbarrier waits (not emulated: a missing
//    tcgen05 fence passes).
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "cuda_harness/runtime.h"
#include "cuda_harness/smem_operand.h"

namespace flashmla::cuda_harness {
namespace {

constexpr int kLanes = 128, kCols = 512;
constexpr uint32_t kPoison = 0xffffffffu;

struct UmmaOp {
  MmaType type;
  uint32_t d_col;
  int n;
  bool b_mn_major, accumulate;
  SmemDesc a, b;
  std::vector<uint16_t> issued;  // A (128 x 16) then B (n x 16), row by row, at the issue
};

struct Group {  // one tcgen05.commit
  std::vector<UmmaOp> ops;
  void* bar;
  bool done = false;
};

struct Pending {  // a tcgen05.ld or .st of one thread
  uint32_t* regs;                 // ld: where the values go at the wait
  uint32_t lane, col;             // st: where they go
  std::vector<uint32_t> values;
};

struct Tcgen05State final : ThreadState {
  std::vector<uint32_t> tmem = std::vector<uint32_t>(size_t{kLanes} * kCols, kPoison);
  std::vector<std::pair<uint32_t, uint32_t>> allocs;  // (first column, columns)
  bool relinquished = false;
  std::vector<int> in_flight = std::vector<int>(kCols, 0);  // MMAs writing each column
  std::map<int, std::vector<UmmaOp>> uncommitted;            // by issuing thread
  std::vector<Group> groups;                                 // in commit order
  std::map<int, std::vector<Pending>> loads, stores;         // by thread

  std::string unfinished() const override {
    if (!allocs.empty()) {
      return std::to_string(allocs.front().second) + " columns of tensor memory still allocated "
             "(no tcgen05.dealloc before the exit)";
    }
    for (const auto& [t, ops] : uncommitted) {
      if (!ops.empty()) return "a tcgen05.mma never committed (thread " + std::to_string(t) + ")";
    }
    for (const auto& [t, v] : loads) {
      if (!v.empty()) return "a tcgen05.ld never waited for (thread " + std::to_string(t) + ")";
    }
    for (const auto& [t, v] : stores) {
      if (!v.empty()) return "a tcgen05.st never waited for (thread " + std::to_string(t) + ")";
    }
    return {};
  }
};

Tcgen05State& state() {
  std::unique_ptr<ThreadState>& slot = block_tcgen05_state_slot();
  if (!slot) slot = std::make_unique<Tcgen05State>();
  return static_cast<Tcgen05State&>(*slot);
}

[[noreturn]] void failf(const std::string& what) { fail(what.c_str()); }

// Every lane of the warp passes the same `value`; `op` names the instruction.
template <class T>
void warp_uniform(const T& value, const char* op) {
  const unsigned char* slots = warp_exchange(0xffffffffu, &value, sizeof value, op);
  for (int l = 0; l < 32; ++l) {
    if (std::memcmp(slots + 64 * l, &value, sizeof value) != 0) {
      failf(std::string(op) + ": the lanes of the warp pass different operands");
    }
  }
}

// The allocation holding columns [col, col + n), or a failed launch naming `op`.
void check_allocated(const Tcgen05State& st, uint32_t col, uint32_t n, const char* op) {
  for (const auto& [c0, cn] : st.allocs) {
    if (col >= c0 && col + n <= c0 + cn) return;
  }
  failf(std::string(op) + ": columns " + std::to_string(col) + ".." + std::to_string(col + n - 1) +
        " are not inside one allocation of tensor memory");
}

SmemDesc decode(uint64_t v, const char* which) {
  const std::string name = std::string("tcgen05.mma: ") + which + " descriptor";
  if (((v >> 46) & 7u) != 1u) failf(name + " lacks the fixed 0b001 in bits 46-48");
  if ((v >> 49) & 7u) failf(name + " has a base offset (not emulated)");
  if ((v >> 52) & 1u) failf(name + " uses the absolute LBO mode (not emulated)");
  if ((v & ((uint64_t{3} << 14) | (uint64_t{3} << 30))) || ((v >> 53) & 0xffu)) {
    failf(name + " has reserved bits set");
  }
  const uint32_t swizzle = static_cast<uint32_t>(v >> 61);
  if (swizzle != 0 && swizzle != 2) failf(name + " uses a swizzle other than none / 128B "
                                                 "(not emulated)");
  const auto field = [&](int lo) { return static_cast<uint32_t>((v >> lo) & 0x3fffu) << 4; };
  return {field(0), field(16), field(32), swizzle == 2};
}

// A (128 rows) then B (n columns), 16 elements of K each, as shared memory holds them now.
std::vector<uint16_t> operands(const UmmaOp& op, bool at_issue) {
  const SmemOperand a(op.a, false, "tcgen05.mma", "A", at_issue),
      b(op.b, op.b_mn_major, "tcgen05.mma", "B", at_issue);
  std::vector<uint16_t> v(static_cast<size_t>(kLanes + op.n) * kMmaK);
  uint16_t e[kMmaK];
  for (int i = 0; i < kLanes; ++i) {
    a.k_step(i, e);
    std::memcpy(&v[static_cast<size_t>(i) * kMmaK], e, sizeof e);
  }
  for (int j = 0; j < op.n; ++j) {
    b.k_step(j, e);
    std::memcpy(&v[static_cast<size_t>(kLanes + j) * kMmaK], e, sizeof e);
  }
  return v;
}

void perform(Tcgen05State& st, const UmmaOp& op) {
  if (operands(op, false) != op.issued) {
    fail("tcgen05.mma: its shared-memory operands changed between the issue and the completion "
         "(a missing barrier before the issue, or an overwrite before the commit's mbarrier "
         "was waited on)");
  }
  std::vector<double> b(static_cast<size_t>(op.n) * kMmaK);
  for (size_t i = 0; i < b.size(); ++i) {
    b[i] = mma_element(op.issued[size_t{kLanes} * kMmaK + i], op.type);
  }
  for (int i = 0; i < kLanes; ++i) {
    double a[kMmaK];
    for (int k = 0; k < kMmaK; ++k) a[k] = mma_element(op.issued[size_t(i) * kMmaK + k], op.type);
    uint32_t* row = &st.tmem[size_t(i) * kCols + op.d_col];
    for (int j = 0; j < op.n; ++j) {
      const double* bj = &b[size_t(j) * kMmaK];
      double p = 0.0;
      for (int k = 0; k < kMmaK; ++k) p += a[k] * bj[k];
      float c = 0.0f;
      if (op.accumulate) std::memcpy(&c, &row[j], 4);
      const float d = static_cast<float>((op.accumulate ? double{c} : 0.0) + p);
      std::memcpy(&row[j], &d, 4);
    }
  }
  for (int j = 0; j < op.n; ++j) --st.in_flight[op.d_col + j];
}

// Completes the commit groups up to `last` in order, each arriving on its mbarrier.
void complete_through(size_t last) {
  Tcgen05State& st = state();
  for (size_t g = 0; g <= last && g < st.groups.size(); ++g) {
    if (st.groups[g].done) continue;
    st.groups[g].done = true;
    for (const UmmaOp& op : st.groups[g].ops) perform(st, op);
    st.groups[g].ops.clear();
    mbarrier_arrive(st.groups[g].bar);
  }
}

// The warp's TMEM lane range and the address's checks for ld / st of n columns.
void check_access(const Tcgen05State& st, uint32_t taddr, int n, const char* op) {
  const uint32_t lane0 = taddr >> 16, col = taddr & 0xffffu;
  const uint32_t warp = static_cast<uint32_t>(thread_linear() / 32) % 4;
  if (lane0 != 32 * warp) {
    failf(std::string(op) + ": warp " + std::to_string(thread_linear() / 32) +
          " addresses tensor-memory lane " + std::to_string(lane0) + ", but may only reach lanes " +
          std::to_string(32 * warp) + ".." + std::to_string(32 * warp + 31));
  }
  check_allocated(st, col, static_cast<uint32_t>(n), op);
  for (int j = 0; j < n; ++j) {
    if (st.in_flight[col + j] > 0) {
      failf(std::string(op) + ": column " + std::to_string(col + j) +
            " is written by a tcgen05.mma still in flight (wait on its commit's mbarrier first)");
    }
  }
}

// Whether a store of some thread not yet waited for covers any of [col, col + n) in `lanes`.
bool store_pending(const Tcgen05State& st, uint32_t lane_lo, uint32_t lane_hi, uint32_t col,
                   uint32_t n) {
  for (const auto& [t, v] : st.stores) {
    for (const Pending& p : v) {
      const uint32_t pn = static_cast<uint32_t>(p.values.size());
      if (p.lane >= lane_lo && p.lane < lane_hi && p.col < col + n && col < p.col + pn) {
        return true;
      }
    }
  }
  return false;
}

}  // namespace

void tmem_alloc(uint32_t* dst, uint32_t ncols) {
  warp_uniform(ncols, "tcgen05.alloc");
  if ((thread_linear() & 31) != 0) return;
  Tcgen05State& st = state();
  if (st.relinquished) fail("tcgen05.alloc after tcgen05.relinquish_alloc_permit");
  if (ncols < 32 || ncols > kCols || (ncols & (ncols - 1)) != 0) {
    failf("tcgen05.alloc of " + std::to_string(ncols) +
          " columns: must be a power of two in 32..512");
  }
  std::vector<bool> used(kCols, false);
  for (const auto& [c0, cn] : st.allocs) {
    for (uint32_t c = c0; c < c0 + cn; ++c) used[c] = true;
  }
  for (uint32_t c0 = 0; c0 + ncols <= kCols; c0 += 32) {
    bool free = true;
    for (uint32_t c = c0; c < c0 + ncols && free; ++c) free = !used[c];
    if (!free) continue;
    st.allocs.emplace_back(c0, ncols);
    smem_offset(dst);  // inside shared memory
    *dst = c0;         // lane 0, column c0
    async_proxy_wrote(dst, 4);
    return;
  }
  failf("tcgen05.alloc of " + std::to_string(ncols) +
        " columns does not fit in what this CTA left free (it would wait forever)");
}

void tmem_relinquish_alloc_permit() {
  warp_uniform(0, "tcgen05.relinquish_alloc_permit");
  state().relinquished = true;
}

void tmem_dealloc(uint32_t taddr, uint32_t ncols) {
  warp_uniform(std::make_pair(taddr, ncols), "tcgen05.dealloc");
  if ((thread_linear() & 31) != 0) return;
  Tcgen05State& st = state();
  const uint32_t col = taddr & 0xffffu;
  for (size_t i = 0; i < st.allocs.size(); ++i) {
    if ((taddr >> 16) == 0 && st.allocs[i] == std::make_pair(col, ncols)) {
      for (uint32_t c = col; c < col + ncols; ++c) {
        if (st.in_flight[c] > 0) fail("tcgen05.dealloc of columns an MMA in flight writes");
        for (int l = 0; l < kLanes; ++l) st.tmem[size_t(l) * kCols + c] = kPoison;
      }
      st.allocs.erase(st.allocs.begin() + static_cast<std::ptrdiff_t>(i));
      return;
    }
  }
  failf("tcgen05.dealloc of " + std::to_string(ncols) + " columns at address " +
        std::to_string(taddr) + ": not an allocation");
}

void tcgen05_fence_before_sync() {}
void tcgen05_fence_after_sync() {}

void umma_f16(uint32_t d_tmem, uint64_t desc_a, uint64_t desc_b, uint32_t idesc,
              bool accumulate) {
  if (idesc & ((0xfu << 0) | (1u << 6) | (3u << 13) | (1u << 23) | (7u << 29))) {
    fail("tcgen05.mma: the instruction descriptor sets sparsity, saturation, negation, the "
         "B-reuse shift or a reserved bit (not emulated)");
  }
  if (((idesc >> 4) & 3u) != 1u) fail("tcgen05.mma: D type other than f32 (not emulated)");
  const uint32_t at = (idesc >> 7) & 7u, bt = (idesc >> 10) & 7u;
  if (at > 1 || at != bt) fail("tcgen05.mma.kind::f16: A and B must both be f16 or both bf16");
  if ((idesc >> 15) & 1u) fail("tcgen05.mma: MN-major A (not emulated)");
  const int n = static_cast<int>((idesc >> 17) & 63u) << 3, m = static_cast<int>((idesc >> 24) & 31u) << 4;
  if (m != kLanes) fail("tcgen05.mma: M other than 128 (not emulated)");
  if (n < 16 || n > 256 || n % 16 != 0) fail("tcgen05.mma: N must be a multiple of 16 in 16..256");
  if ((d_tmem >> 16) != 0) fail("tcgen05.mma: D of M = 128 must start at lane 0");
  Tcgen05State& st = state();
  const uint32_t col = d_tmem & 0xffffu;
  check_allocated(st, col, static_cast<uint32_t>(n), "tcgen05.mma");
  if (store_pending(st, 0, kLanes, col, static_cast<uint32_t>(n))) {
    fail("tcgen05.mma over tensor memory a tcgen05.st has not completed (no tcgen05.wait::st "
         "before the barrier)");
  }
  UmmaOp op{at == 0 ? MmaType::f16 : MmaType::bf16, col, n, ((idesc >> 16) & 1u) != 0,
            accumulate, decode(desc_a, "A"), decode(desc_b, "B"), {}};
  op.issued = operands(op, true);
  for (int j = 0; j < n; ++j) ++st.in_flight[col + j];
  st.uncommitted[thread_linear()].push_back(std::move(op));
}

void umma_commit(void* bar) {
  Tcgen05State& st = state();
  Group g;
  g.bar = bar;
  g.ops.swap(st.uncommitted[thread_linear()]);
  st.groups.push_back(std::move(g));
  const size_t index = st.groups.size() - 1;
  mbarrier_arrive_when_waited(bar, [index] { complete_through(index); });
}

void tmem_ld(uint32_t taddr, uint32_t* r, int n) {
  warp_uniform(taddr, "tcgen05.ld");
  Tcgen05State& st = state();
  check_access(st, taddr, n, "tcgen05.ld");
  const uint32_t lane = (taddr >> 16) + static_cast<uint32_t>(thread_linear() & 31);
  const uint32_t col = taddr & 0xffffu;
  if (store_pending(st, lane, lane + 1, col, static_cast<uint32_t>(n))) {
    fail("tcgen05.ld of tensor memory a tcgen05.st has not completed");
  }
  Pending p{r, lane, col, {}};
  p.values.assign(&st.tmem[size_t(lane) * kCols + col], &st.tmem[size_t(lane) * kCols + col] + n);
  for (int j = 0; j < n; ++j) r[j] = 0x7fffffffu;  // NaN until tcgen05.wait::ld
  st.loads[thread_linear()].push_back(std::move(p));
}

void tmem_st(uint32_t taddr, const uint32_t* r, int n) {
  warp_uniform(taddr, "tcgen05.st");
  Tcgen05State& st = state();
  check_access(st, taddr, n, "tcgen05.st");
  const uint32_t lane = (taddr >> 16) + static_cast<uint32_t>(thread_linear() & 31);
  st.stores[thread_linear()].push_back(Pending{nullptr, lane, taddr & 0xffffu, {r, r + n}});
}

void tmem_wait_ld() {
  warp_exchange(0xffffffffu, nullptr, 0, "tcgen05.wait::ld");
  std::vector<Pending> done;
  done.swap(state().loads[thread_linear()]);
  for (const Pending& p : done) std::memcpy(p.regs, p.values.data(), p.values.size() * 4);
}

void tmem_wait_st() {
  warp_exchange(0xffffffffu, nullptr, 0, "tcgen05.wait::st");
  Tcgen05State& st = state();
  std::vector<Pending> done;
  done.swap(st.stores[thread_linear()]);
  for (const Pending& p : done) {
    std::memcpy(&st.tmem[size_t(p.lane) * kCols + p.col], p.values.data(), p.values.size() * 4);
  }
}

}  // namespace flashmla::cuda_harness
