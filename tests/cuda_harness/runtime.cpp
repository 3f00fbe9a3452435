// The harness's scheduler: fibers per CUDA thread, block and warp barriers, random schedules.
#include "cuda_harness/runtime.h"

#include <algorithm>
#include <cstdio>
#include <atomic>
#include <bit>
#include <cstdlib>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <boost/context/fiber.hpp>
#include <boost/context/protected_fixedsize_stack.hpp>

#if defined(__SANITIZE_ADDRESS__)
#define FMLA_HARNESS_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FMLA_HARNESS_ASAN 1
#endif
#endif
#if defined(FMLA_HARNESS_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace flashmla::cuda_harness {
namespace ctx = boost::context;

// Every fiber's stack; guarded by a protection page so an overflow faults instead of
// corrupting a neighbour. Sanitizer builds need more room.
#if defined(FMLA_HARNESS_ASAN)
constexpr size_t kStackBytes = 512 * 1024;
#else
constexpr size_t kStackBytes = 128 * 1024;
#endif

namespace {

enum class State { runnable, at_block_barrier, at_warp_collective, parked, done };

// One pending warp collective: the lanes of `mask` meet, each with its payload.
struct Collective {
  unsigned mask = 0;
  const char* op = nullptr;
  unsigned arrived = 0;
  unsigned char payload[32][64];
};

struct Block;

struct Thread {
  uint3 idx{};
  int linear = 0;
  State state = State::runnable;
  ctx::fiber fiber;      // this thread's fiber while it is suspended
  ctx::fiber scheduler;  // the scheduler, while this thread runs
  std::shared_ptr<Collective> collective;  // the one this thread waits at or last left
  const void* park_key = nullptr;  // while parked: what it waits for (park)
  const char* park_what = nullptr;
  // cp.async: copies not yet performed, in issue order, with their group (-1 = uncommitted).
  struct Copy { void* dst; const void* src; int cp_bytes, src_bytes; int64_t group; };
  std::vector<Copy> copies;
  int64_t next_group = 0;
  // The block's proxy_updates at this thread's last fence.proxy.async (~0: none yet).
  uint64_t fenced_at_update = ~uint64_t{0};
  std::unique_ptr<ThreadState> extension;  // thread_state_slot()
#if defined(FMLA_HARNESS_ASAN)
  const void* stack_bottom = nullptr;
  size_t stack_size = 0;
#endif
};

struct Block {
  dim3 grid, dim;
  uint3 idx{};
  std::unique_ptr<unsigned char[]> smem;
  size_t smem_bytes = 0;
  // Shared memory as the async proxy sees it (async_proxy_smem); whether a thread has executed
  // fence.proxy.async since it was last brought up to date; how many times it has been.
  std::unique_ptr<unsigned char[]> async_view;
  bool proxy_fenced = false;
  uint64_t proxy_updates = 0;
  std::vector<Thread> threads;
  std::vector<uint32_t> runnable;  // per warp, the lanes whose state is runnable (set_state)
  int at_barrier = 0;
  // Per warp, the pending collectives (one per distinct mask).
  std::vector<std::vector<std::shared_ptr<Collective>>> pending;
  std::unique_ptr<ThreadState> extension;  // block_state_slot()
  std::unique_ptr<ThreadState> tma_extension;  // block_tma_state_slot()
  std::unique_ptr<ThreadState> tcgen05_extension;  // block_tcgen05_state_slot()
  std::string error;  // first error raised by a thread
  bool aborting = false;  // after an error: every barrier throws BlockAborted
  uint64_t switches = 0;
  const char* policy = "";  // the schedule run_block drew for this block
#if defined(FMLA_HARNESS_ASAN)
  const void* main_stack_bottom = nullptr;
  size_t main_stack_size = 0;
#endif
};

// Thrown at a barrier of a block that is being aborted, so every fiber ends by returning (no
// forced unwinding of suspended fibers, which sanitizers cannot follow).
struct BlockAborted {};

// Every change of a thread's state goes through here, which keeps the block's runnable masks.
void set_state(Block& b, Thread& t, State s) {
  t.state = s;
  const uint32_t bit = 1u << (t.linear & 31);
  uint32_t& lanes = b.runnable[t.linear >> 5];
  lanes = s == State::runnable ? lanes | bit : lanes & ~bit;
}

thread_local Block* tl_block = nullptr;
thread_local Thread* tl_thread = nullptr;

// The fiber stacks of the calling OS thread's finished fibers, for the next ones: mapping,
// guarding and unmapping a stack per CUDA thread per block was a third of the harness's time
// (and each unmapping a TLB shootdown on the other cores).
struct StackPool {
  ctx::protected_fixedsize_stack stacks{kStackBytes};
  std::vector<ctx::stack_context> free;
  ~StackPool() {
    for (ctx::stack_context& sc : free) stacks.deallocate(sc);
  }
};
thread_local StackPool tl_stacks;

// A stack from the pool that remembers where the stack lies (for ASan's fiber switches).
struct RecordingStack {
  Thread* thread;
  ctx::stack_context allocate() {
    ctx::stack_context sc;
    if (tl_stacks.free.empty()) {
      sc = tl_stacks.stacks.allocate();
    } else {
      sc = tl_stacks.free.back();
      tl_stacks.free.pop_back();
    }
#if defined(FMLA_HARNESS_ASAN)
    thread->stack_bottom = static_cast<const char*>(sc.sp) - sc.size;
    thread->stack_size = sc.size;
    // The shadow of a reused stack may still hold an earlier fiber's stack redzones.
    __asan_unpoison_memory_region(thread->stack_bottom, sc.size);
#endif
    return sc;
  }
  void deallocate(ctx::stack_context& sc) noexcept {
#if defined(FMLA_HARNESS_ASAN)
    __asan_unpoison_memory_region(static_cast<char*>(sc.sp) - sc.size, sc.size);
#endif
    try {
      tl_stacks.free.push_back(sc);
    } catch (...) {  // no memory to keep it: unmap it
      tl_stacks.stacks.deallocate(sc);
    }
  }
};

std::string describe(const Block& b, const Thread& t) {
  return "block (" + std::to_string(b.idx.x) + "," + std::to_string(b.idx.y) + "," +
         std::to_string(b.idx.z) + ") thread (" + std::to_string(t.idx.x) + "," +
         std::to_string(t.idx.y) + "," + std::to_string(t.idx.z) + ")";
}

Thread& current() {
  if (!tl_thread) throw std::logic_error("CUDA builtin called outside a harness launch");
  return *tl_thread;
}

// Suspends the running thread's fiber and returns to the block's scheduler.
void yield_to_scheduler() {
  Thread& t = current();
#if defined(FMLA_HARNESS_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, tl_block->main_stack_bottom, tl_block->main_stack_size);
#endif
  t.scheduler = std::move(t.scheduler).resume();
#if defined(FMLA_HARNESS_ASAN)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  if (tl_block->aborting) throw BlockAborted{};
}

void perform_copies(Thread& t, int64_t up_to_group) {
  auto keep = t.copies.begin();
  for (auto it = t.copies.begin(); it != t.copies.end(); ++it) {
    if (it->group >= 0 && it->group <= up_to_group) {
      if (it->src_bytes > 0) std::memcpy(it->dst, it->src, static_cast<size_t>(it->src_bytes));
      std::memset(static_cast<unsigned char*>(it->dst) + it->src_bytes, 0,
                  static_cast<size_t>(it->cp_bytes - it->src_bytes));
    } else {
      *keep++ = *it;
    }
  }
  t.copies.erase(keep, t.copies.end());
}

unsigned warp_lanes_mask(const Block& b, int warp) {
  const int n = static_cast<int>(b.threads.size()) - warp * 32;
  return n >= 32 ? 0xffffffffu : ((1u << n) - 1u);
}

}  // namespace

const uint3& thread_idx() { return current().idx; }
const uint3& block_idx() { current(); return tl_block->idx; }
const dim3& block_dim() { current(); return tl_block->dim; }
const dim3& grid_dim() { current(); return tl_block->grid; }

void* dynamic_smem() {
  current();
  return tl_block->smem.get();
}

size_t dynamic_smem_bytes() {
  current();
  return tl_block->smem_bytes;
}

int thread_linear() { return current().linear; }

std::unique_ptr<ThreadState>& thread_state_slot() { return current().extension; }

std::unique_ptr<ThreadState>& block_state_slot() {
  current();
  return tl_block->extension;
}

std::unique_ptr<ThreadState>& block_tma_state_slot() {
  current();
  return tl_block->tma_extension;
}

std::unique_ptr<ThreadState>& block_tcgen05_state_slot() {
  current();
  return tl_block->tcgen05_extension;
}

[[noreturn]] void fail(const char* what) { throw std::logic_error(what); }

void park(const void* key, const char* what) {
  Thread& t = current();
  t.park_key = key;
  t.park_what = what;
  set_state(*tl_block, t, State::parked);
  yield_to_scheduler();
}

void unpark(const void* key) {
  current();
  Block& b = *tl_block;
  for (Thread& o : b.threads) {
    if (o.state == State::parked && o.park_key == key) {
      o.park_key = nullptr;
      set_state(b, o, State::runnable);
    }
  }
}

void fence_proxy_async() {
  Thread& t = current();
  t.fenced_at_update = tl_block->proxy_updates;
  tl_block->proxy_fenced = true;
}

void proxy_sync_point() {
  current();
  Block& b = *tl_block;
  if (!b.proxy_fenced) return;
  std::memcpy(b.async_view.get(), b.smem.get(), b.smem_bytes);
  b.proxy_fenced = false;
  ++b.proxy_updates;
}

const unsigned char* async_proxy_smem() {
  const Thread& t = current();
  // The caller's own fence since the last update orders what reached it (through the barriers
  // before the fence) for its async-proxy reads.
  if (t.fenced_at_update == tl_block->proxy_updates) proxy_sync_point();
  return tl_block->async_view.get();
}

void async_proxy_wrote(const void* smem_ptr, size_t bytes) {
  current();
  Block& b = *tl_block;
  const auto* p = static_cast<const unsigned char*>(smem_ptr);
  if (p < b.smem.get() || p + bytes > b.smem.get() + b.smem_bytes) {
    fail("async-proxy write outside the block's shared memory");
  }
  const size_t off = static_cast<size_t>(p - b.smem.get());
  std::memcpy(b.async_view.get() + off, p, bytes);
}

void sync_threads() {
  Thread& t = current();
  Block& b = *tl_block;
  set_state(b, t, State::at_block_barrier);
  if (++b.at_barrier == static_cast<int>(b.threads.size())) {
    b.at_barrier = 0;
    proxy_sync_point();
    for (Thread& o : b.threads) set_state(b, o, State::runnable);
  }
  yield_to_scheduler();
}

const unsigned char* warp_exchange(unsigned mask, const void* payload, size_t bytes,
                                   const char* op) {
  Thread& t = current();
  Block& b = *tl_block;
  const int lane = t.linear & 31, warp = t.linear >> 5;
  if (!((mask >> lane) & 1u)) fail("warp collective with a mask that excludes the calling lane");
  if (mask & ~warp_lanes_mask(b, warp)) fail("warp collective mask names lanes the block lacks");
  if (bytes > 64) fail("warp collective payload over 64 bytes");
  auto& pend = b.pending[warp];
  std::shared_ptr<Collective> c;
  for (auto& p : pend) {
    if (p->mask == mask) c = p;
    else if (p->mask & mask) fail("warp collectives with overlapping, different masks");
  }
  if (!c) {
    c = std::make_shared<Collective>();
    std::memset(c->payload, 0xff, sizeof(c->payload));
    c->mask = mask;
    c->op = op;
    pend.push_back(c);
  } else if (std::strcmp(c->op, op) != 0) {
    fail("lanes of a warp meet at different collectives");
  }
  if (bytes) std::memcpy(c->payload[lane], payload, bytes);
  c->arrived |= 1u << lane;
  t.collective = c;
  set_state(b, t, State::at_warp_collective);
  if (c->arrived == mask) {
    for (int l = 0; l < 32; ++l) {
      if ((mask >> l) & 1u) set_state(b, b.threads[warp * 32 + l], State::runnable);
    }
    pend.erase(std::find(pend.begin(), pend.end(), c));
  }
  yield_to_scheduler();
  return &t.collective->payload[0][0];
}

void cp_async(void* smem_dst, const void* gmem_src, int cp_bytes, int src_bytes) {
  Thread& t = current();
  const Block& b = *tl_block;
  const auto* d = static_cast<const unsigned char*>(smem_dst);
  if (cp_bytes != 4 && cp_bytes != 8 && cp_bytes != 16) fail("cp.async size not 4, 8 or 16");
  if (src_bytes < 0 || src_bytes > cp_bytes) fail("cp.async src-size outside [0, cp-size]");
  if (reinterpret_cast<uintptr_t>(smem_dst) % cp_bytes ||
      (src_bytes > 0 && reinterpret_cast<uintptr_t>(gmem_src) % cp_bytes)) {
    fail("cp.async address not aligned to its size");
  }
  if (d < b.smem.get() || d + cp_bytes > b.smem.get() + b.smem_bytes) {
    fail("cp.async destination outside the block's shared memory");
  }
  t.copies.push_back({smem_dst, gmem_src, cp_bytes, src_bytes, -1});
}

void cp_async_commit() {
  Thread& t = current();
  for (auto& c : t.copies) {
    if (c.group < 0) c.group = t.next_group;
  }
  ++t.next_group;
}

void cp_async_wait(int pending) {
  Thread& t = current();
  perform_copies(t, t.next_group - 1 - pending);
}

uint64_t next_seed() {
  static std::atomic<uint64_t> counter{0};
  if (const char* s = std::getenv("FLASHMLA_HARNESS_SEED")) return std::strtoull(s, nullptr, 0);
  return 0x9e3779b97f4a7c15ull * (counter.fetch_add(1) + 1);
}

namespace {

// Runs one block to completion on the calling OS thread.
void run_block(Block& b, const std::function<void()>& body, std::mt19937_64& rng) {
  const int n = static_cast<int>(b.threads.size());
  b.runnable.assign((n + 31) / 32, 0u);
  for (int i = 0; i < n; ++i) {
    Thread& t = b.threads[i];
    t.linear = i;
    b.runnable[i >> 5] |= 1u << (i & 31);
    t.idx = uint3{static_cast<unsigned>(i % b.dim.x),
                  static_cast<unsigned>((i / b.dim.x) % b.dim.y),
                  static_cast<unsigned>(i / (b.dim.x * b.dim.y))};
    t.fiber = ctx::fiber(std::allocator_arg, RecordingStack{&t},
                         [&b, &t, &body](ctx::fiber&& sched) {
#if defined(FMLA_HARNESS_ASAN)
                           __sanitizer_finish_switch_fiber(nullptr, &b.main_stack_bottom,
                                                           &b.main_stack_size);
#endif
                           t.scheduler = std::move(sched);
                           try {
                             if (!b.aborting) {
                               body();
                               perform_copies(t, INT64_MAX);  // in flight at exit: land anyway
                             }
                           } catch (const BlockAborted&) {
                           } catch (const std::exception& e) {
                             if (b.error.empty()) b.error = describe(b, t) + ": " + e.what();
                           }
                           set_state(b, t, State::done);
#if defined(FMLA_HARNESS_ASAN)
                           __sanitizer_start_switch_fiber(nullptr, b.main_stack_bottom,
                                                          b.main_stack_size);
#endif
                           return std::move(t.scheduler);
                         });
  }
  auto resume = [&b](Thread& t) {
    tl_thread = &t;
#if defined(FMLA_HARNESS_ASAN)
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, t.stack_bottom, t.stack_size);
#endif
    t.fiber = std::move(t.fiber).resume();
#if defined(FMLA_HARNESS_ASAN)
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    tl_thread = nullptr;
    ++b.switches;
  };
  // The block's schedule, drawn from its seeded generator (so the seed reproduces it):
  //  - rounds: every runnable thread once per round, in a shuffled order. Segments of all
  //    threads interleave as finely as possible, but warps move in step.
  //  - random walk: each step a random warp that can run, then a random runnable lane of it.
  //    Warps drift apart, one running a segment or more ahead of another.
  //  - warp priority: warps in a random priority order; each step runs the highest one that
  //    can, so a warp reaches its next __syncthreads (passing every warp collective on the way)
  //    before a lower one moves at all.
  // The last two expose a barrier missing between two warp collectives, which rounds hide.
  enum class Policy { rounds, random_walk, warp_priority };
  const auto policy = static_cast<Policy>(rng() % 3);
  b.policy = policy == Policy::rounds        ? "rounds"
             : policy == Policy::random_walk ? "random walk"
                                             : "warp priority";
  const int warps = (n + 31) / 32;
  std::vector<int> order(n), warp_rank(warps), lanes;
  for (int w = 0; w < warps; ++w) warp_rank[w] = w;
  std::shuffle(warp_rank.begin(), warp_rank.end(), rng);
  // The runnable threads of warp w, in `lanes`; false if none.
  auto runnable_lanes = [&](int w) {
    lanes.clear();
    for (uint32_t m = b.runnable[w]; m != 0; m &= m - 1) {
      lanes.push_back(w * 32 + std::countr_zero(m));
    }
    return !lanes.empty();
  };
  auto pick = [&](const std::vector<int>& from) {
    return from[static_cast<size_t>(rng() % from.size())];
  };
  if (policy == Policy::rounds) {
    for (;;) {
      order.clear();
      for (int i = 0; i < n; ++i) {
        if (b.threads[i].state == State::runnable) order.push_back(i);
      }
      if (order.empty() || !b.error.empty()) break;
      std::shuffle(order.begin(), order.end(), rng);
      for (int i : order) {
        Thread& t = b.threads[i];
        if (t.state != State::runnable) continue;
        resume(t);
        if (!b.error.empty()) break;
      }
    }
  } else {
    while (b.error.empty()) {
      int next = -1;
      if (policy == Policy::warp_priority) {
        for (int w : warp_rank) {
          if (b.runnable[w] != 0) {
            runnable_lanes(w);
            next = pick(lanes);
            break;
          }
        }
      } else {
        order.clear();  // here: the warps that can run
        for (int w = 0; w < warps; ++w) {
          if (b.runnable[w] != 0) order.push_back(w);
        }
        if (!order.empty()) {
          runnable_lanes(pick(order));
          next = pick(lanes);
        }
      }
      if (next < 0) break;
      resume(b.threads[next]);
    }
  }
  if (b.error.empty()) {
    int done = 0, at_barrier = 0;
    std::string stuck;
    for (const Thread& t : b.threads) {
      done += t.state == State::done;
      at_barrier += t.state == State::at_block_barrier;
      if (t.state == State::parked && stuck.empty()) {
        stuck = describe(b, t) + " waits at " + t.park_what + " for a phase that never completes";
      }
      if (t.state == State::at_warp_collective && stuck.empty()) {
        stuck = describe(b, t) + " waits at " + t.collective->op + " (mask 0x" +
                [](unsigned m) { char s[16]; snprintf(s, sizeof s, "%08x", m); return std::string(s); }(
                    t.collective->mask) + ") for lanes that never arrive";
      }
    }
    if (done != n) {
      b.error = !stuck.empty() ? stuck
                : "block (" + std::to_string(b.idx.x) + "," + std::to_string(b.idx.y) + "," +
                      std::to_string(b.idx.z) + "): divergent __syncthreads: " +
                      std::to_string(at_barrier) + " threads wait at a barrier, " +
                      std::to_string(done) + " exited";
    }
  }
  if (b.error.empty()) {
    for (const ThreadState* ext :
         {b.extension.get(), b.tcgen05_extension.get(), b.tma_extension.get()}) {
      const std::string left = ext ? ext->unfinished() : std::string();
      if (!left.empty() && b.error.empty()) {
        b.error = "block (" + std::to_string(b.idx.x) + "," + std::to_string(b.idx.y) + "," +
                  std::to_string(b.idx.z) + ") exited with " + left;
      }
    }
  }
  // After an error, every unfinished fiber is resumed once more: it throws BlockAborted from
  // its barrier (or skips the body if it never started) and returns.
  b.aborting = true;
  for (Thread& t : b.threads) {
    if (t.state != State::done) resume(t);
  }
}

}  // namespace

LaunchStats launch_blocks(const char* name, dim3 grid, dim3 block, size_t smem_bytes,
                          const std::function<void()>& body) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  const std::string who = std::string("harness launch of ") + name;
  if (threads == 0 || threads > 1024 || block.z > 64) {
    throw std::runtime_error(who + ": block of " + std::to_string(threads) +
                             " threads (1..1024, z <= 64)");
  }
  if (blocks == 0 || grid.y > 65535 || grid.z > 65535) {
    throw std::runtime_error(who + ": grid (" + std::to_string(grid.x) + "," +
                             std::to_string(grid.y) + "," + std::to_string(grid.z) +
                             ") is empty or past the y/z limit 65535");
  }
  if (smem_bytes > 227 * 1024) {
    throw std::runtime_error(who + ": " + std::to_string(smem_bytes) +
                             " bytes of dynamic shared memory (227 KiB at most)");
  }
  LaunchStats stats;
  stats.seed = next_seed();
  stats.blocks = blocks;
  std::string error, error_policy;
  std::atomic<uint64_t> switches{0};
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t bi = 0; bi < static_cast<int64_t>(blocks); ++bi) {
    Block b;
    b.grid = grid;
    b.dim = block;
    b.idx = uint3{static_cast<unsigned>(bi % grid.x),
                  static_cast<unsigned>((bi / grid.x) % grid.y),
                  static_cast<unsigned>(bi / (uint64_t{grid.x} * grid.y))};
    b.smem_bytes = smem_bytes;
    b.smem.reset(new unsigned char[smem_bytes ? smem_bytes : 1]);
    std::memset(b.smem.get(), 0xff, smem_bytes);
    b.async_view.reset(new unsigned char[smem_bytes ? smem_bytes : 1]);
    std::memset(b.async_view.get(), 0xff, smem_bytes);
    b.threads.resize(threads);
    b.pending.resize((threads + 31) / 32);
    std::mt19937_64 rng(stats.seed ^ (0xbf58476d1ce4e5b9ull * static_cast<uint64_t>(bi + 1)));
    Block* saved = tl_block;
    tl_block = &b;
    try {
      run_block(b, body, rng);
    } catch (const std::exception& e) {
      if (b.error.empty()) b.error = e.what();
    }
    tl_block = saved;
    switches += b.switches;
    if (!b.error.empty()) {
#pragma omp critical(flashmla_harness_error)
      if (error.empty()) {
        error = b.error;
        error_policy = b.policy;
      }
    }
  }
  stats.fiber_switches = switches;
  if (!error.empty()) {
    char seed[32];
    snprintf(seed, sizeof seed, "0x%016llx", static_cast<unsigned long long>(stats.seed));
    throw std::runtime_error(who + ": " + error + " (seed " + seed + ", " +
                             error_policy + " schedule; FLASHMLA_HARNESS_SEED reproduces it)");
  }
  return stats;
}

}  // namespace flashmla::cuda_harness

unsigned __ballot_sync(unsigned mask, int predicate) {
  const int p = predicate != 0;
  const unsigned char* slots =
      ::flashmla::cuda_harness::warp_exchange(mask, &p, sizeof p, "__ballot_sync");
  unsigned r = 0;
  for (int l = 0; l < 32; ++l) {
    int v;
    std::memcpy(&v, slots + 64 * l, sizeof v);
    if (((mask >> l) & 1u) && v) r |= 1u << l;
  }
  return r;
}
int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
int __all_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) == mask; }
