// The packed operand layouts of the bf16-pair microkernels (avx512bf16, and amx, which reads the
// avx512bf16 kernel's packed buffers as its tile operands): plain C++, no vector instructions.
// The layouts themselves are described at the top of microkernel_avx512bf16.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "cpu/common/microkernel.h"

namespace flashmla::cpu::bf16_pairs {

// Leads every packed K / V / rows / Q^T buffer.
struct PackHeader {
  uint32_t offset;     // bytes from the buffer's start to the 64-byte aligned data
  uint32_t nonfinite;  // V / rows: some packed value is inf or NaN
};
inline constexpr size_t kHeaderBytes = 128;  // the header plus up to 63 bytes of alignment
inline constexpr uintptr_t kAlign = 64;
inline constexpr int kTokenPairs = kKvTile / 2;

// Channel (or token, or row) pairs of d values; a row of d channels padded to 16 lanes.
inline int pairs(int d) { return (d + 1) / 2; }
inline int padded(int d) { return (d + 15) & ~15; }

inline PackHeader header_of(const void* base) {
  PackHeader h;
  std::memcpy(&h, base, sizeof h);
  return h;
}

inline const uint32_t* data_of(const void* base, const PackHeader& h) {
  return reinterpret_cast<const uint32_t*>(static_cast<const char*>(base) + h.offset);
}

}  // namespace flashmla::cpu::bf16_pairs
