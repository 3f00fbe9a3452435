// A matrix operand in shared memory as the tensor-core instructions read it through a matrix
// descriptor (wgmma.cpp: wgmma.mma_async; tcgen05.cpp: tcgen05.mma). Both descriptor formats
// describe the same layouts of 16-bit elements (PTX ISA, "Shared Memory Matrix Layout" /
// "Shared memory descriptor"): core matrices of 8 rows x 16 bytes. K-major without swizzling:
// the 8 rows of a core matrix 16 bytes apart, the next core matrix along K at LBO, along M/N at
// SBO. K-major with 128-byte swizzling: 8 rows of 128 bytes (64 elements of K) form a swizzle
// atom, the next 8 rows along M/N at SBO (LBO unused). MN-major with 128-byte swizzling: 64
// elements of M/N contiguous (128 bytes), 8 such rows for consecutive k, the next 64 elements
// of M/N at LBO, the next 8 k at SBO. 128-byte swizzling permutes the 16-byte chunks of each
// 128-byte row: address bits 4-6 are XORed with bits 7-9 (the row within the 1024-byte
// pattern). Emulated: K-major unswizzled and 128-byte swizzled, MN-major 128-byte swizzled,
// with the pattern's 1024-byte alignment (base offset 0, start address in the first 128 bytes
// of an aligned 1024-byte block); anything else fails the launch rather than guessing.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "cuda_harness/runtime.h"

namespace flashmla::cuda_harness {

// A descriptor decoded: byte addresses and offsets, and whether 128-byte swizzling is on.
struct SmemDesc {
  uint32_t start, lbo, sbo;
  bool swizzle128;
};

inline constexpr int kMmaK = 16;  // K of one 16-bit wgmma / tcgen05.mma

// An operand's addressing in the block's shared memory, its layout checked once per operation.
// `instr` and `which` name the instruction and operand in error messages.
class SmemOperand {
 public:
  // at_issue: also checks that the async proxy sees what shared memory holds.
  SmemOperand(const SmemDesc& d, bool mn_major, const char* instr, const char* which,
              bool at_issue)
      : base_(static_cast<const unsigned char*>(dynamic_smem())),
        async_view_(at_issue ? async_proxy_smem() : nullptr),
        bytes_(dynamic_smem_bytes()),
        d_(d),
        mn_major_(mn_major),
        instr_(instr),
        which_(which) {
    if (!d_.swizzle128 && mn_major) fail_with(" is MN-major without swizzling (not emulated)");
    if (d_.swizzle128 && d_.start % 1024 >= 128) {
      fail_with(" starts past the first row of its 1024-byte swizzle pattern (needs a base "
                "offset; not emulated)");
    }
  }

  // The bits of elements (mn, 0 .. 15) (mn: row of A or column of B). K-major, each run of 8
  // is the 16 bytes of one row of a core matrix (unswizzled, or one 16-byte chunk of a swizzled
  // 128-byte row); MN-major, element by element.
  void k_step(int mn, uint16_t (&out)[kMmaK]) const {
    for (int k0 = 0; k0 < kMmaK; k0 += 8) {
      if (!mn_major_) {
        std::memcpy(&out[k0], at(offset(mn, k0), 16), 16);
        continue;
      }
      for (int k = k0; k < k0 + 8; ++k) std::memcpy(&out[k], at(offset(mn, k), 2), 2);
    }
  }

 private:
  [[noreturn]] void fail_with(const char* what) const {
    fail((std::string(instr_) + ": " + which_ + what).c_str());
  }
  uint32_t offset(int mn, int k) const {
    uint32_t a = 0;
    if (!d_.swizzle128) {
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
    if (a + n > bytes_) fail_with(" reads outside the block's shared memory");
    if (async_view_ && std::memcmp(base_ + a, async_view_ + a, n) != 0) {
      fail_with(" reads shared memory the async proxy does not see as written (a generic-proxy "
                "write, e.g. a store or cp.async, with no fence.proxy.async before the barrier "
                "that ordered it before the MMA)");
    }
    return base_ + a;
  }

  const unsigned char* base_;
  const unsigned char* async_view_;
  size_t bytes_;
  SmemDesc d_;
  bool mn_major_;
  const char* instr_;
  const char* which_;
};

}  // namespace flashmla::cuda_harness
