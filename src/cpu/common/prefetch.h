// Software prefetch of a gathered KV token (or any byte range) into L2 ahead of its use.
#pragma once

#include <cstdint>

namespace flashmla::cpu {

// Asks for bytes [p, p + bytes) in L2. One real load first: a software prefetch that misses the
// TLB may be dropped, and KV tokens in a large cache (4 KiB pages) often do; the load walks the
// page table. The last byte is asked for too: token rows are not line-aligned.
inline void prefetch_to_l2(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  (void)*static_cast<const volatile char*>(c);
  for (int64_t b = 64; b < bytes; b += 64) __builtin_prefetch(c + b, 0, 2);
  __builtin_prefetch(c + bytes - 1, 0, 2);
}

}  // namespace flashmla::cpu
