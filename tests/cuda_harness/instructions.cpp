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

struct MmaPayload {
  uint32_t a[4];
  uint32_t b[2];
  float c[4];
};

}  // namespace

float mma_element(uint16_t bits, MmaType type) {
  if (type == MmaType::bf16) {
    const uint32_t w = uint32_t{bits} << 16;
    float f;
    std::memcpy(&f, &w, 4);
    return f;
  }
  __half_raw raw;
  raw.x = bits;
  return __half2float(__half(raw));
}

void mma_m16n8k16(MmaType type, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                  const float (&c)[4]) {
  MmaPayload mine;
  std::memcpy(mine.a, a, sizeof mine.a);
  std::memcpy(mine.b, b, sizeof mine.b);
  std::memcpy(mine.c, c, sizeof mine.c);
  const unsigned char* slots = warp_exchange(0xffffffffu, &mine, sizeof mine, "mma.sync.m16n8k16");
  // Assemble A (16x16), B (16x8, k x n) and C (16x8) from the fragments.
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    MmaPayload p;
    std::memcpy(&p, slots + 64 * l, sizeof p);
    const int g = l >> 2, t = l & 3;
    for (int r = 0; r < 4; ++r) {
      const int row = g + ((r & 1) ? 8 : 0), col = 2 * t + ((r & 2) ? 8 : 0);
      A[row][col] = mma_element(lo16(p.a[r]), type);
      A[row][col + 1] = mma_element(hi16(p.a[r]), type);
    }
    for (int r = 0; r < 2; ++r) {
      const int k = 2 * t + (r ? 8 : 0);
      B[k][g] = mma_element(lo16(p.b[r]), type);
      B[k + 1][g] = mma_element(hi16(p.b[r]), type);
    }
    for (int r = 0; r < 4; ++r) C[g + (r >= 2 ? 8 : 0)][2 * t + (r & 1)] = p.c[r];
  }
  // Products of 16-bit floats are exact in fp32; the sum of the 16 products and C is rounded
  // once to fp32 (hardware rounds in between in an unspecified way; tests use tolerances).
  const int me = static_cast<int>(thread_idx().x + block_dim().x *
                                   (thread_idx().y + block_dim().y * thread_idx().z)) & 31;
  const int g = me >> 2, t = me & 3;
  for (int r = 0; r < 4; ++r) {
    const int row = g + (r >= 2 ? 8 : 0), col = 2 * t + (r & 1);
    double s = C[row][col];
    for (int k = 0; k < 16; ++k) s += static_cast<double>(A[row][k]) * B[k][col];
    d[r] = static_cast<float>(s);
  }
}

void ldmatrix(uint32_t* r, int num, bool trans, const void* row) {
  const unsigned char* smem = static_cast<const unsigned char*>(dynamic_smem());
  const void* mine = row;
  const unsigned char* slots = warp_exchange(0xffffffffu, &mine, sizeof mine,
                                             trans ? "ldmatrix.trans" : "ldmatrix");
  const void* addr[32];
  for (int l = 0; l < 32; ++l) std::memcpy(&addr[l], slots + 64 * l, sizeof(void*));
  for (int l = 0; l < 8 * num; ++l) {
    const auto* a = static_cast<const unsigned char*>(addr[l]);
    if (reinterpret_cast<uintptr_t>(a) % 16) fail("ldmatrix row address not 16-byte aligned");
    if (a < smem || a + 16 > smem + dynamic_smem_bytes()) {
      fail("ldmatrix row address outside the block's shared memory");
    }
  }
  const int me = static_cast<int>(thread_idx().x + block_dim().x *
                                   (thread_idx().y + block_dim().y * thread_idx().z)) & 31;
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
