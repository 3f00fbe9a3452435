// Emulated mbarriers and tiled bulk tensor copies (Hopper's TMA), written from the PTX ISA's
// descriptions ("mbarrier", "cp.async.bulk.tensor") and the driver's cuTensorMapEncodeTiled:
//  - mbarrier (a 64-bit object in shared memory): mbarrier.init sets the expected arrival count
//    of every phase; arrive.expect_tx raises the phase's transaction count by the given bytes,
//    then arrives; a bulk copy's complete_tx lowers it by the bytes it wrote. A phase completes
//    when all arrivals are in and the transaction count is back at zero; the next phase starts
//    with the same arrival count. try_wait.parity P is true once the phase of parity P has
//    completed (the current phase's parity differs from P).
//  - cp.async.bulk.tensor.Nd.shared.global.tile.mbarrier::complete_tx::bytes: the box at the
//    given coordinates (element units, signed) of the tensor map, written to shared memory with
//    the box's dimensions in order (dimension 0 fastest); elements outside the tensor are zeros
//    (and count as bytes written). 128-byte swizzling permutes the 16-byte chunks of each
//    128-byte row: address bits 4-6 are XORed with bits 7-9.
//    Emulated: boxes whose inner dimension is exactly the 128 bytes of the swizzle, or any
//    unswizzled box; a swizzled destination must start on a 1024-byte boundary (the pattern's
//    period), any destination on 128 bytes. Anything else fails the launch rather than guessing.
//  - Asynchrony: the copy fills its destination with 0xFF (NaN) at the issue and writes the data
//    when a thread waits on its mbarrier, so a thread that reads the buffer without waiting, or a
//    copy issued into a buffer still being read, gets NaN instead of passing by luck. A wait on
//    a phase that never completes ends the launch with an error naming it, and so does a block
//    that exits with a copy still in flight.
//  - mbarrier_arrive_when_waited (tcgen05.commit) defers an arrival to the next wait on the
//    barrier, as the copies' data, so that its MMAs complete only when awaited.
//  - The copies write through the async proxy (runtime.h: both views of shared memory take
//    their bytes). fence.mbarrier_init does nothing.
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "cuda_harness/runtime.h"

namespace flashmla::cuda_harness {
namespace {

struct PendingCopy {
  unsigned char* dst;
  TensorMap map;
  int32_t coords[5];
  uint32_t bytes;
};

struct MBarrier {
  uint32_t count = 0, pending = 0;  // arrivals per phase; still expected in this one
  int64_t tx = 0;                   // transaction bytes still expected in this phase
  uint64_t phase = 0;               // phases completed
  std::vector<PendingCopy> copies;
  std::vector<std::function<void()>> on_wait;  // mbarrier_arrive_when_waited
};

struct TmaState final : ThreadState {
  std::map<uint32_t, MBarrier> barriers;  // by shared-memory offset
  std::string unfinished() const override {
    for (const auto& [offset, bar] : barriers) {
      if (!bar.copies.empty() || bar.tx > 0) {
        return "a bulk tensor copy still in flight (its mbarrier at shared offset " +
               std::to_string(offset) + " never waited for)";
      }
      if (!bar.on_wait.empty()) {
        return "a tcgen05.commit whose mbarrier (shared offset " + std::to_string(offset) +
               ") was never waited on";
      }
    }
    return {};
  }
};

TmaState& state() {
  std::unique_ptr<ThreadState>& slot = block_tma_state_slot();
  if (!slot) slot = std::make_unique<TmaState>();
  return static_cast<TmaState&>(*slot);
}

uint32_t checked_offset(const void* p, size_t bytes, size_t align, const char* what) {
  const uint32_t off = smem_offset(p);
  if (off % align != 0) fail(what);
  if (off + bytes > dynamic_smem_bytes()) fail("mbarrier or bulk copy outside shared memory");
  return off;
}

MBarrier& barrier(void* bar) {
  const uint32_t off = checked_offset(bar, 8, 8, "mbarrier not 8-byte aligned");
  auto it = state().barriers.find(off);
  if (it == state().barriers.end() || it->second.count == 0) fail("mbarrier used before init");
  return it->second;
}

// (The transaction count may dip below zero while arrivals are missing: a copy may complete
// before the expect_tx that accounts for it.)
void complete_if_done(MBarrier& b, void* key) {
  if (b.pending == 0 && b.tx < 0) fail("mbarrier phase got more bytes than its expect_tx");
  if (b.pending == 0 && b.tx == 0) {
    ++b.phase;
    b.pending = b.count;
    proxy_sync_point();
    unpark(key);
  }
}

void perform(const PendingCopy& c) {
  const TensorMap& m = c.map;
  const auto* base = static_cast<const unsigned char*>(m.base);
  uint32_t box[5] = {1, 1, 1, 1, 1};
  for (int d = 0; d < m.rank; ++d) box[d] = m.box[d];
  const uint32_t eb = static_cast<uint32_t>(m.elem_bytes);
  uint32_t linear = 0;  // byte offset within the box, unswizzled
  for (uint32_t i4 = 0; i4 < box[4]; ++i4)
    for (uint32_t i3 = 0; i3 < box[3]; ++i3)
      for (uint32_t i2 = 0; i2 < box[2]; ++i2)
        for (uint32_t i1 = 0; i1 < box[1]; ++i1)
          for (uint32_t i0 = 0; i0 < box[0]; ++i0, linear += eb) {
            const uint32_t idx[5] = {i0, i1, i2, i3, i4};
            bool inside = true;
            uint64_t src = 0;
            for (int d = 0; d < m.rank; ++d) {
              const int64_t x = int64_t{c.coords[d]} + idx[d];
              inside = inside && x >= 0 && static_cast<uint64_t>(x) < m.dims[d];
              if (inside) src += static_cast<uint64_t>(x) * m.strides[d];
            }
            const uint32_t at =
                m.swizzle_bytes == 128 ? (linear ^ (((linear >> 7) & 7u) << 4)) : linear;
            if (inside) {
              std::memcpy(c.dst + at, base + src, eb);
            } else {
              std::memset(c.dst + at, 0, eb);
            }
          }
  async_proxy_wrote(c.dst, c.bytes);
}

}  // namespace

std::string encode_tensor_map(TensorMap* map, int elem_bytes, int rank, const void* base,
                              const uint64_t* dims, const uint64_t* strides_bytes,
                              const uint32_t* box, int swizzle_bytes) {
  if (reinterpret_cast<uintptr_t>(map) % 64) return "tensorMap not 64-byte aligned";
  if (rank < 1 || rank > 5) return "tensorRank outside 1..5";
  if (elem_bytes != 1 && elem_bytes != 2 && elem_bytes != 4 && elem_bytes != 8) {
    return "element size not 1, 2, 4 or 8 bytes";
  }
  if (reinterpret_cast<uintptr_t>(base) % 16) return "globalAddress not 16-byte aligned";
  for (int d = 0; d < rank; ++d) {
    if (dims[d] == 0 || dims[d] > (uint64_t{1} << 32)) return "globalDim outside 1..2^32";
    if (box[d] == 0 || box[d] > 256) return "boxDim outside 1..256";
  }
  for (int d = 0; d + 1 < rank; ++d) {
    if (strides_bytes[d] % 16 || strides_bytes[d] >= (uint64_t{1} << 40)) {
      return "globalStrides not a multiple of 16 below 2^40";
    }
  }
  if ((box[0] * static_cast<uint32_t>(elem_bytes)) % 16) return "boxDim[0] not 16 bytes' worth";
  if (swizzle_bytes != 0 && swizzle_bytes != 128) return "swizzle other than none / 128B";
  if (swizzle_bytes && box[0] * static_cast<uint32_t>(elem_bytes) > 128) {
    return "box inner dimension over the 128-byte swizzle span";
  }
  *map = TensorMap{};
  map->magic = kTensorMapMagic;
  map->base = base;
  map->rank = rank;
  map->elem_bytes = elem_bytes;
  map->swizzle_bytes = swizzle_bytes;
  map->strides[0] = static_cast<uint64_t>(elem_bytes);
  for (int d = 0; d < rank; ++d) {
    map->dims[d] = dims[d];
    map->box[d] = box[d];
    if (d > 0) map->strides[d] = strides_bytes[d - 1];
  }
  return {};
}

void mbarrier_init(void* bar, unsigned count) {
  const uint32_t off = checked_offset(bar, 8, 8, "mbarrier not 8-byte aligned");
  if (count == 0 || count >= (1u << 20)) fail("mbarrier.init count outside 1..2^20-1");
  MBarrier& b = state().barriers[off];
  if (!b.copies.empty() || b.tx != 0) fail("mbarrier.init on a barrier with a copy in flight");
  b = MBarrier{};
  b.count = b.pending = count;
}

void mbarrier_arrive_expect_tx(void* bar, unsigned tx_bytes) {
  MBarrier& b = barrier(bar);
  if (tx_bytes >= (1u << 20)) fail("mbarrier expect_tx over 2^20-1 bytes");
  b.tx += tx_bytes;
  mbarrier_arrive(bar);
}

void mbarrier_arrive(void* bar) {
  MBarrier& b = barrier(bar);
  if (b.pending == 0) fail("mbarrier arrival past the phase's count (its bytes still due)");
  --b.pending;
  complete_if_done(b, bar);
}

bool mbarrier_try_wait_parity(void* bar, unsigned parity) {
  if (parity > 1) fail("mbarrier.try_wait.parity with a parity other than 0 or 1");
  for (;;) {
    MBarrier& b = barrier(bar);
    if ((b.phase & 1u) != parity) return true;
    // The copies land now; the phase completes if every arrival is in too.
    std::vector<PendingCopy> copies;
    copies.swap(b.copies);
    for (const PendingCopy& c : copies) {
      perform(c);
      b.tx -= c.bytes;
    }
    if (!copies.empty()) complete_if_done(b, bar);
    if ((b.phase & 1u) != parity) return true;
    // Deferred arrivals (tcgen05.commit) happen now; each may also arrive on other barriers.
    std::vector<std::function<void()>> deferred;
    deferred.swap(b.on_wait);
    for (const auto& complete : deferred) complete();
    if ((barrier(bar).phase & 1u) != parity) return true;
    park(bar, "mbarrier.try_wait.parity");
  }
}

void mbarrier_arrive_when_waited(void* bar, std::function<void()> complete) {
  barrier(bar).on_wait.push_back(std::move(complete));
}

void tma_load_tile(void* smem_dst, const TensorMap* map, const int32_t* coords, void* bar) {
  if (map->magic != kTensorMapMagic) fail("bulk tensor copy with a tensor map never encoded");
  uint32_t bytes = static_cast<uint32_t>(map->elem_bytes);
  for (int d = 0; d < map->rank; ++d) bytes *= map->box[d];
  if (map->swizzle_bytes == 128 && map->box[0] * static_cast<uint32_t>(map->elem_bytes) != 128) {
    fail("128B-swizzled bulk tensor copy with a box row other than 128 bytes (not emulated)");
  }
  checked_offset(smem_dst, bytes, map->swizzle_bytes == 128 ? 1024 : 128,
                 map->swizzle_bytes == 128
                     ? "128B-swizzled bulk tensor copy to shared memory not 1024-byte aligned"
                     : "bulk tensor copy to shared memory not 128-byte aligned");
  MBarrier& b = barrier(bar);
  PendingCopy c{static_cast<unsigned char*>(smem_dst), *map, {0, 0, 0, 0, 0}, bytes};
  for (int d = 0; d < map->rank; ++d) c.coords[d] = coords[d];
  std::memset(c.dst, 0xff, bytes);  // in flight: nothing valid there until the wait
  async_proxy_wrote(c.dst, bytes);
  b.copies.push_back(c);
}

}  // namespace flashmla::cuda_harness
