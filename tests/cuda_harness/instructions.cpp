// Emulated warp-level matrix instructions, written from the PTX ISA's descriptions:
//  - mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 ("Matrix Fragments for
//    mma.m16n8k16 with floating point type"): groupID = lane >> 2, threadID_in_group = lane % 4;
//    A: a0,a1 row groupID, a2,a3 row groupID+8, a4..a7 the same rows 8 columns on, columns
//    threadID_in_group*2 + (i & 1) (+8); B: b0,b1 rows threadID_in_group*2 + (i & 1), b2,b3 the
//    same +8, column groupID; C/D: c0,c1 row groupID, c2,c3 row groupID+8, columns
//    threadID_in_group*2 + (i & 1). Two 16-bit elements per 32-bit register, lower index in
//    the lower half.
//  - ldmatrix.sync.aligned.m8n8.{x1,x2,x4}[.trans].shared.b16: lanes 8i..8i+7 give the row
//    addresses of matrix i; lane l receives row l/4, elements 2(l%4) and 2(l%4)+1 of each
//    matrix (with .trans: the transposed matrix), matrix i into register i.
#include <cstring>
#include <string>

#include "cuda_harness/runtime.h"

namespace flashmla::cuda_harness {
namespace {

uint16_t lo16(uint32_t r) { return static_cast<uint16_t>(r & 0xffffu); }
uint16_t hi16(uint32_t r) { return static_cast<uint16_t>(r >> 16); }

struct MmaPayload {  // what the other lanes need of a lane's fragments (C stays with its lane)
  uint32_t a[4];
  uint32_t b[2];
};

}  // namespace

void mma_m16n8k16(MmaType type, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                  const float (&c)[4]) {
  MmaPayload mine;
  std::memcpy(mine.a, a, sizeof mine.a);
  std::memcpy(mine.b, b, sizeof mine.b);
  float c_mine[4];  // (d may alias c)
  std::memcpy(c_mine, c, sizeof c_mine);
  const unsigned char* slots = warp_exchange(0xffffffffu, &mine, sizeof mine, "mma.sync.m16n8k16");
  // This lane's D elements are rows g and g+8, columns 2t and 2t+1 (d[r]: row g + 8 (r >= 2),
  // column 2t + (r & 1), where C's c[r] is too). Those rows of A come from the lanes of group g
  // (lane 4g + t' holds columns 2t', 2t'+1 and 2t'+8, 2t'+9), those columns of B from the lanes
  // of groups 2t and 2t+1 (lane 4n + t' holds rows 2t', 2t'+1, 2t'+8 and 2t'+9 of column n).
  const int me = thread_linear() & 31;
  const int g = me >> 2, t = me & 3;
  float A[2][16], B[2][16];  // A[i]: row g + 8i; B[j]: column 2t + j (both indexed by k)
  for (int tp = 0; tp < 4; ++tp) {
    MmaPayload p;
    std::memcpy(&p, slots + 64 * (4 * g + tp), sizeof p);
    for (int r = 0; r < 4; ++r) {
      const int col = 2 * tp + ((r & 2) ? 8 : 0);
      A[r & 1][col] = mma_element(lo16(p.a[r]), type);
      A[r & 1][col + 1] = mma_element(hi16(p.a[r]), type);
    }
    for (int j = 0; j < 2; ++j) {
      std::memcpy(&p, slots + 64 * (4 * (2 * t + j) + tp), sizeof p);
      for (int r = 0; r < 2; ++r) {
        const int k = 2 * tp + (r ? 8 : 0);
        B[j][k] = mma_element(lo16(p.b[r]), type);
        B[j][k + 1] = mma_element(hi16(p.b[r]), type);
      }
    }
  }
  // Products of 16-bit floats are exact in fp32; the sum of the 16 products and C is rounded
  // once to fp32 (hardware rounds in between in an unspecified way; tests use tolerances).
  for (int r = 0; r < 4; ++r) {
    double s = c_mine[r];
    for (int k = 0; k < 16; ++k) s += static_cast<double>(A[r >> 1][k]) * B[r & 1][k];
    d[r] = static_cast<float>(s);
  }
}

void ldmatrix(uint32_t* r, int num, bool trans, const void* row) {
  const unsigned char* smem = static_cast<const unsigned char*>(dynamic_smem());
  const size_t smem_bytes = dynamic_smem_bytes();
  const void* mine = row;
  const unsigned char* slots = warp_exchange(0xffffffffu, &mine, sizeof mine,
                                             trans ? "ldmatrix.trans" : "ldmatrix");
  const void* addr[32];
  for (int l = 0; l < 32; ++l) std::memcpy(&addr[l], slots + 64 * l, sizeof(void*));
  for (int l = 0; l < 8 * num; ++l) {
    const auto* a = static_cast<const unsigned char*>(addr[l]);
    if (reinterpret_cast<uintptr_t>(a) % 16) fail("ldmatrix row address not 16-byte aligned");
    if (a < smem || a + 16 > smem + smem_bytes) {
      fail("ldmatrix row address outside the block's shared memory");
    }
  }
  const int me = thread_linear() & 31;
  auto element = [&](int matrix, int rr, int cc) {
    uint16_t v;
    std::memcpy(&v, static_cast<const unsigned char*>(addr[8 * matrix + rr]) + 2 * cc, 2);
    return uint32_t{v};
  };
  for (int i = 0; i < num; ++i) {
    const int q = me >> 2, p = 2 * (me & 3);
    if (!trans) {
      r[i] = element(i, q, p) | element(i, q, p + 1) << 16;
    } else {
      r[i] = element(i, p, q) | element(i, p + 1, q) << 16;
    }
  }
}

}  // namespace flashmla::cuda_harness
