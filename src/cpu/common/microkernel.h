// The matrix-product seam of the CPU attention kernels. The kernel drivers (gather, online
// softmax, scheduling, epilogue) are written once; the two products and the packing of their
// operands go through this table, so ISA-specific microkernels (AMX, AVX-512) plug in without
// touching the drivers.
#pragma once

#include <cstddef>
#include <cstdint>

#include "flashmla/tensor.h"

namespace flashmla::cpu {

inline constexpr int kKvTile = 64;  // tokens per KV tile (= the scheduler's block)
// Most query rows of the token-major product (pack_qt / qk_tokens): one vector of 16 fp32 lanes.
inline constexpr int kSmallRows = 16;

struct AttnMicrokernel {
  const char* name;  // "portable", ...

  // Scratch sizes for m query rows of d channels / one KV tile of kKvTile tokens.
  size_t (*packed_q_bytes)(int m, int d);
  size_t (*packed_k_bytes)(int d);
  size_t (*packed_v_bytes)(int d);
  size_t (*packed_rows_bytes)(int m, int d);

  // Packs m query rows (row i starts at rows[i], `dtype` elements, d of them) as the left
  // operand of qk.
  void (*pack_q)(const void* const* rows, int m, DType dtype, int d, void* packed_q);
  // Packs n <= kKvTile tokens (token j starts at tokens[j]) once for both products: K over
  // d_qk channels and V = the first d_v channels. Slots n..kKvTile-1 are zero-filled so that
  // they never carry NaN into the products.
  void (*pack_kv)(const void* const* tokens, int n, DType dtype, int d_qk, int d_v,
                  void* packed_k, void* packed_v);
  // The same for separate tensors: n <= kKvTile tokens of d channels as the right operand of
  // qk (pack_k) or of pv (pack_v); slots n..kKvTile-1 zero-filled.
  void (*pack_k)(const void* const* tokens, int n, DType dtype, int d, void* packed_k);
  void (*pack_v)(const void* const* tokens, int n, DType dtype, int d, void* packed_v);
  // Packs m rows of d channels as the right operand of pt.
  void (*pack_rows)(const void* const* rows, int m, DType dtype, int d, void* packed_rows);

  // s[i * kKvTile + j] = scale * <q_i, k_j> for i < m, j < kKvTile.
  void (*qk)(const void* packed_q, int m, const void* packed_k, int d, float scale, float* s);
  // o[i * d + c] += sum_{j < n} p[i * kKvTile + j] * v_j[c] for i < m.
  void (*pv)(const float* p, int m, int n, const void* packed_v, int d, float* o);
  // acc[j * d + c] += sum_{i < m} p[i * kKvTile + j] * row_i[c] for j < kKvTile: the transposed
  // probabilities times rows (the backward pass's dV += P^T dO and dK += dS^T Q).
  void (*pt)(const float* p, int m, const void* packed_rows, int d, float* acc);

  // Optional (nullptr where a kernel does not provide them; the drivers then use pack_kv / pack_k
  // and qk): the token-major qk for few rows, which reads K straight from the tokens instead of
  // packing the tile. With m <= kSmallRows rows per KV tile, packing K costs about as much as the
  // product itself, because so few rows share the packed tile.
  //
  // Scratch size and packing of m <= kSmallRows query rows (as pack_q) as the operand of
  // qk_tokens.
  size_t (*packed_qt_bytes)(int m, int d);
  void (*pack_qt)(const void* const* rows, int m, DType dtype, int d, void* packed_qt);
  // s[i * kKvTile + j] = scale * <q_i, k_j> for i < m, j < kKvTile, as qk, where k_j is the first
  // d channels of the bf16 token tokens[j] (bf16 only; rows need only 2-byte alignment, and no
  // element past d channels is read). Slots j >= n are exactly 0 and tokens[j] for j >= n is
  // never read (it may be null).
  void (*qk_tokens)(const void* packed_qt, int m, const void* const* tokens, int n, int d,
                    float scale, float* s);
};

// The portable microkernel: fp32 operands, plain loops that any compiler vectorises.
const AttnMicrokernel& portable_microkernel();
// AVX2/FMA fp32 microkernel, register-blocked (for CPUs without AVX-512). Call only where the
// CPU has AVX2 and FMA.
const AttnMicrokernel& avx2_microkernel();
// AVX-512 (F/BW/VL/DQ) fp32 microkernel, register-blocked. Call only where the CPU has it.
const AttnMicrokernel& avx512_microkernel();
// AVX512-BF16 microkernel: bf16 operands and P, fp32 accumulation. Also needs AVX512_BF16.
const AttnMicrokernel& avx512bf16_microkernel();

// AMX-BF16 microkernel: both products on AMX tiles (TDPBF16PS), numerics and packing of
// avx512bf16. Call only where CPUID has AMX-TILE, AMX-BF16 and the avx512bf16 level and the OS
// has granted this process the tile state (isa.cpp does both).
const AttnMicrokernel& amx_microkernel();
// The same kernel source on a software model of the tile instructions (amx_tiles.h), for
// testing it on CPUs without AMX (needs the avx512bf16 level). Slow: for tests only.
const AttnMicrokernel& amx_emulated_microkernel();

// The microkernel of this process for operands of `operands` (bf16, or FP8 dequantised to bf16;
// fp16): chosen from the ISA level picked once from CPUID and capped by FLASHMLA_ISA
// (src/cpu/common/isa.cpp). Every driver uses it.
const AttnMicrokernel& active_microkernel(DType operands = DType::bf16);

}  // namespace flashmla::cpu
