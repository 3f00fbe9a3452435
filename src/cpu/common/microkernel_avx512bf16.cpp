// AVX512-BF16 microkernel: bf16 operands, fp32 accumulation with VDPBF16PS, which adds to each
// fp32 lane the dot product of one pair of bf16 values with another (acc += a0*b0 + a1*b1).
// Compiled for AVX-512F/BW/VL/DQ + AVX512_BF16 through a target pragma so that the rest of the
// library stays portable; call these functions only where CPUID reports those features
// (avx512bf16_microkernel() itself executes no AVX-512 instruction).
//
// Numerics (as FlashMLA's GPU kernels: bf16 tensor-core products, fp32 accumulation):
//   - every operand (Q, K, V, the rows of pt) is packed as bf16: bf16 inputs are copied exactly,
//     fp16 and fp32 inputs are rounded to nearest even (VCVTNEPS2BF16; fp16 goes through fp32,
//     exactly). The probabilities P of pv and pt (dS in the backward pass) are rounded to bf16
//     the same way inside pv / pt.
//   - the product of two bf16 values is exact in fp32; VDPBF16PS adds the two products of a pair
//     to the fp32 accumulator one after the other, each addition rounded to nearest even, so the
//     sums carry fp32 accumulation error only (as the fp32 kernels).
//   - subnormals: VCVTNE(2)PS2BF16 and VDPBF16PS ignore MXCSR and treat subnormal inputs as zero
//     and flush subnormal results to zero. So bf16 / fp32 subnormal operands and probabilities
//     count as (signed) zero, as do products or sums that fall below 2^-126, and a subnormal
//     value already in o / acc (the += operand of pv / pt) is flushed when it is accumulated.
//     fp16 subnormals are normal bf16 values and survive.
//
// Packed layouts (private to this file; always pass the pointer that was packed into). A "pair"
// is one uint32 holding two bf16 values, the first in the low half:
//   packed_q     m rows of ceil(d/2) channel pairs (q[2c], q[2c+1]), row-major, unpadded (qk
//                only broadcasts them); an odd d leaves the last pair's high half 0.
//   packed_k     header, then K as channel pairs: [ceil(d/2)][kKvTile] pairs, pair row c2 holding
//                (k_j[2c2], k_j[2c2+1]) for the 64 tokens j (256 bytes = 4 zmm, 64-byte aligned).
//   packed_v     header, then V as token pairs: [kKvTile/2][ld] pairs, ld = d rounded up to 16,
//                entry (t2, c) = (v_{2t2}[c], v_{2t2+1}[c]), 64-byte aligned.
//   packed_rows  header, then the rows as row pairs: [ceil(m/2)][ld] pairs (ld as for V), entry
//                (i2, c) = (row_{2i2}[c], row_{2i2+1}[c]), 64-byte aligned.
//   packed_qt    header, then Q (m <= kSmallRows rows) by channel quads: [ceil(d/4)][2][16]
//                pairs, 64-byte aligned; in half h of quad k, lane 2r + e holds the pair
//                (q_i[4k+2e], q_i[4k+2e+1]) of row i = 8h + r, so that one 64-bit broadcast of a
//                token's channels 4k..4k+3 multiplies 8 rows per zmm. Rows m..15 and channels
//                >= d are zero.
// The header stores the offset of the aligned data from the buffer's start (so that a buffer
// copied elsewhere stays readable) and, for V and rows, whether any packed value is not finite.
// Token slots n..kKvTile-1, the row after an odd m, channel padding and the odd channel of an
// odd d are zero-filled.
//
// NaN safety. The portable pv/pt skip terms with p == 0, so a non-finite V (or row) value whose
// probability is 0 never reaches the output. Here:
//   - pv rounds P to bf16 with p[j] for j >= n forced to 0 (whatever the caller left there, so
//     also in the pair (n-1, n) of an odd n), and pt reads only rows i < m;
//   - pv skips the token pairs whose probabilities are all zero for a block of rows, pt the row
//     pairs whose probabilities are all zero for a block of keys;
//   - inside a block, VDPBF16PS adds p * v for every term; with p == 0 that is exactly +-0
//     whenever v is finite. Packing records whether the tile holds any inf or NaN; if it does,
//     pv/pt take an exact path that clears, for each pair, the operand half whose probability is
//     zero, so a zero probability contributes exactly 0 (never 0 * inf). So the result never
//     depends on the drivers keeping V and the rows finite.
// qk_tokens (token-major qk for m <= 16 rows) reads K straight from the bf16 token rows: it
// multiplies the quad vectors of Q by each token's channel quad, broadcast, giving S^T (token:
// 16 row lanes), then transposes. Tokens j >= n are never read, and a d that is not a multiple
// of 4 reads its last d % 4 channels alone (zero-extended), so no element past d is touched.
//
// "Zero" means zero after rounding to bf16 (a probability below 2^-126 is flushed, see above);
// a NaN probability is a non-zero one (as in the portable kernel, where `p == 0.0f` is false
// for NaN).
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "cpu/common/bf16_pair_layout.h"
#include "cpu/common/microkernel.h"
#include "cpu/common/target.h"

namespace flashmla::cpu {
namespace {

// ---- packed buffers: header and sizes (plain C++, callable on any machine) ----

using namespace bf16_pairs;  // PackHeader, pairs(), padded(), ...

size_t packed_q_bytes(int m, int d) {
  return sizeof(uint32_t) * static_cast<size_t>(m) * pairs(d);
}
size_t packed_k_bytes(int d) {
  return kHeaderBytes + sizeof(uint32_t) * static_cast<size_t>(pairs(d)) * kKvTile;
}
size_t packed_v_bytes(int d) {
  return kHeaderBytes + sizeof(uint32_t) * static_cast<size_t>(kTokenPairs) * padded(d);
}
size_t packed_rows_bytes(int m, int d) {
  return kHeaderBytes + sizeof(uint32_t) * static_cast<size_t>(pairs(m)) * padded(d);
}
inline int quads(int d) { return (d + 3) / 4; }
size_t packed_qt_bytes(int /*m*/, int d) {  // always 16 row lanes
  return kHeaderBytes + sizeof(uint32_t) * static_cast<size_t>(quads(d)) * 2 * kSmallRows;
}

// Writes the header of a buffer being packed (non-finite flag cleared) and returns its data.
uint32_t* begin_packing(void* base) {
  const auto addr = reinterpret_cast<uintptr_t>(base);
  const uintptr_t data = (addr + sizeof(PackHeader) + kAlign - 1) & ~(kAlign - 1);
  const PackHeader h{static_cast<uint32_t>(data - addr), 0};
  std::memcpy(base, &h, sizeof h);
  return reinterpret_cast<uint32_t*>(data);
}

void set_nonfinite(void* base, bool nonfinite) {
  const uint32_t flag = nonfinite ? 1u : 0u;
  std::memcpy(static_cast<char*>(base) + offsetof(PackHeader, nonfinite), &flag, sizeof flag);
}

}  // namespace

FLASHMLA_TARGET_BEGIN("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")

namespace {

// ---- conversion ----

inline __mmask16 lane_mask(int count) {  // the first min(max(count, 0), 16) lanes
  return count >= 16 ? __mmask16(0xffff) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1);
}
inline __mmask32 lane_mask32(int count) {  // the first min(max(count, 0), 32) lanes
  return count >= 32 ? __mmask32(0xffffffffu)
         : count <= 0 ? __mmask32(0)
                      : __mmask32((1u << count) - 1);
}

// acc[l] += a.bf16[2l] * b.bf16[2l] + a.bf16[2l+1] * b.bf16[2l+1] (VDPBF16PS).
inline __m512 dot2(__m512 acc, __m512i a, __m512i b) {
  return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(a), reinterpret_cast<__m512bh>(b));
}

// 16 fp32 lanes to 16 bf16 (round to nearest even, subnormals to zero).
inline __m256i to_bf16(__m512 f) { return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(f)); }

// 16 (or, for count < 16, fewer) elements of `Dt` at src + c as bf16; lanes >= count read as 0
// and touch no memory.
template <DType Dt>
inline __m256i load16(const void* src, int c, int count) {
  const __mmask16 k = lane_mask(count);
  if constexpr (Dt == DType::bf16) {
    return _mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(src) + c);
  } else if constexpr (Dt == DType::fp16) {
    const __m256i h = _mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(src) + c);
    return to_bf16(_mm512_cvtph_ps(h));  // fp16 -> fp32 is exact
  } else {
    return to_bf16(_mm512_maskz_loadu_ps(k, static_cast<const float*>(src) + c));
  }
}

// The same for 32 elements: 16 channel pairs.
template <DType Dt>
inline __m512i load32(const void* src, int c, int count) {
  if constexpr (Dt == DType::bf16) {
    return _mm512_maskz_loadu_epi16(lane_mask32(count), static_cast<const uint16_t*>(src) + c);
  } else {
    return _mm512_inserti64x4(_mm512_castsi256_si512(load16<Dt>(src, c, count)),
                              load16<Dt>(src, c + 16, count - 16), 1);
  }
}

// Pairs (a[l], b[l]) of two vectors of 16 bf16.
inline __m512i pair16(__m256i a, __m256i b) {
  return _mm512_or_si512(_mm512_cvtepu16_epi32(a), _mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
}

// Whether any of the 32 bf16 values is inf or NaN (exponent all ones).
inline bool any_nonfinite(__m512i x) {
  const __m512i mag = _mm512_and_si512(x, _mm512_set1_epi16(0x7fff));
  return _mm512_cmpge_epu16_mask(mag, _mm512_set1_epi16(0x7f80)) != 0;
}

// Lanes whose pair has a non-zero half (NaN included; +-0 halves are zero).
inline __mmask16 nonzero_pairs(__m512i x) {
  return _mm512_test_epi32_mask(x, _mm512_set1_epi32(0x7fff7fff));
}

// The halves of the operand pair to keep for the probability pair b: those whose bf16
// probability is not +-0 (the exact paths).
inline uint32_t keep_mask(uint32_t b) {
  return ((b & 0x7fffu) != 0 ? 0xffffu : 0u) | ((b & 0x7fff0000u) != 0 ? 0xffff0000u : 0u);
}

// ---- K: 16 tokens x 16 channel pairs transposed at a time ----

// r[j] (token j, pairs p..p+15) -> r[p] (pair p, tokens j..j+15); 32-bit elements.
inline void transpose16(__m512i r[16]) {
  __m512i t[16];
#pragma GCC unroll 8
  for (int k = 0; k < 8; ++k) {
    t[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
  }
  // In 128-bit lane l, r[4k + q] then holds element 4l + q of rows 4k..4k+3.
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) {
    r[4 * k + 0] = _mm512_unpacklo_epi64(t[4 * k], t[4 * k + 2]);
    r[4 * k + 1] = _mm512_unpackhi_epi64(t[4 * k], t[4 * k + 2]);
    r[4 * k + 2] = _mm512_unpacklo_epi64(t[4 * k + 1], t[4 * k + 3]);
    r[4 * k + 3] = _mm512_unpackhi_epi64(t[4 * k + 1], t[4 * k + 3]);
  }
  // Element 4l + q gathers lane l of r[q], r[4 + q], r[8 + q], r[12 + q].
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    const __m512i a = _mm512_shuffle_i32x4(r[q], r[4 + q], 0x88);  // lanes 0, 2 of each
    const __m512i b = _mm512_shuffle_i32x4(r[q], r[4 + q], 0xdd);  // lanes 1, 3 of each
    const __m512i c = _mm512_shuffle_i32x4(r[8 + q], r[12 + q], 0x88);
    const __m512i e = _mm512_shuffle_i32x4(r[8 + q], r[12 + q], 0xdd);
    t[q] = _mm512_shuffle_i32x4(a, c, 0x88);
    t[8 + q] = _mm512_shuffle_i32x4(a, c, 0xdd);
    t[4 + q] = _mm512_shuffle_i32x4(b, e, 0x88);
    t[12 + q] = _mm512_shuffle_i32x4(b, e, 0xdd);
  }
#pragma GCC unroll 16
  for (int k = 0; k < 16; ++k) r[k] = t[k];
}

// ---- packing ----

template <DType Dt>
void pack_q_t(const void* const* rows, int m, int d, uint32_t* q) {
  const int ldq = pairs(d);
  for (int i = 0; i < m; ++i) {
    uint32_t* qi = q + static_cast<size_t>(i) * ldq;
    for (int c = 0; c < d; c += 32) {
      _mm512_mask_storeu_epi32(qi + c / 2, lane_mask((d - c + 1) / 2),
                               load32<Dt>(rows[i], c, d - c));
    }
  }
}

// 16 rows of d channels (rows >= n zero) as channel pairs: pair p of row jj to dst[p * ld + jj]
// (ld = kKvTile for 16 of K's 64 tokens, 16 for Q in pack_qt).
template <DType Dt>
void pack_pairs16_t(const void* const* rows, int n, int d, uint32_t* dst, int ld) {
  for (int c = 0; c < d; c += 32) {
    const int cnt = std::min(16, (d - c + 1) / 2);
    __m512i r[16];
    for (int jj = 0; jj < 16; ++jj) {
      r[jj] = jj < n ? load32<Dt>(rows[jj], c, d - c) : _mm512_setzero_si512();
    }
    transpose16(r);
    for (int p = 0; p < cnt; ++p) {
      _mm512_store_si512(dst + static_cast<size_t>(c / 2 + p) * ld, r[p]);
    }
  }
}

// K channel pairs [pairs(d)][kKvTile] from n tokens, token slots >= n zero.
template <DType Dt>
void pack_k_t(const void* const* tokens, int n, int d, uint32_t* kt) {
  const int dk2 = pairs(d);
  for (int j0 = 0; j0 < kKvTile; j0 += 16) {
    if (j0 >= n) {
      for (int c2 = 0; c2 < dk2; ++c2) {
        _mm512_store_si512(kt + static_cast<size_t>(c2) * kKvTile + j0, _mm512_setzero_si512());
      }
      continue;
    }
    pack_pairs16_t<Dt>(tokens + j0, n - j0, d, kt + j0, kKvTile);
  }
}

// `count` rows of d channels as npairs row pairs [npairs][padded(d)] (rows >= count zero).
// Returns whether any value is not finite.
template <DType Dt>
bool pack_pairs_t(const void* const* rows, int count, int npairs, int d, uint32_t* data) {
  const int ld = padded(d);
  bool nonfinite = false;
  for (int t2 = 0; t2 < npairs; ++t2) {
    const void* a = 2 * t2 < count ? rows[2 * t2] : nullptr;
    const void* b = 2 * t2 + 1 < count ? rows[2 * t2 + 1] : nullptr;
    uint32_t* dst = data + static_cast<size_t>(t2) * ld;
    for (int c = 0; c < ld; c += 16) {
      const __m256i va = a != nullptr ? load16<Dt>(a, c, d - c) : _mm256_setzero_si256();
      const __m256i vb = b != nullptr ? load16<Dt>(b, c, d - c) : _mm256_setzero_si256();
      const __m512i x = pair16(va, vb);
      nonfinite |= any_nonfinite(x);
      _mm512_store_si512(dst + c, x);
    }
  }
  return nonfinite;
}

template <DType Dt>
void pack_v_t(const void* const* tokens, int n, int d, void* packed_v) {
  uint32_t* data = begin_packing(packed_v);
  set_nonfinite(packed_v, pack_pairs_t<Dt>(tokens, n, kTokenPairs, d, data));
}

void pack_q(const void* const* rows, int m, DType dtype, int d, void* packed_q) {
  auto* q = static_cast<uint32_t*>(packed_q);
  switch (dtype) {
    case DType::bf16:
      return pack_q_t<DType::bf16>(rows, m, d, q);
    case DType::fp16:
      return pack_q_t<DType::fp16>(rows, m, d, q);
    case DType::fp32:
      return pack_q_t<DType::fp32>(rows, m, d, q);
    default:
      std::fill(q, q + static_cast<size_t>(m) * pairs(d), 0u);  // unreachable: float dtypes only
  }
}

void pack_k(const void* const* tokens, int n, DType dtype, int d, void* packed_k) {
  uint32_t* kt = begin_packing(packed_k);
  switch (dtype) {
    case DType::bf16:
      return pack_k_t<DType::bf16>(tokens, n, d, kt);
    case DType::fp16:
      return pack_k_t<DType::fp16>(tokens, n, d, kt);
    case DType::fp32:
      return pack_k_t<DType::fp32>(tokens, n, d, kt);
    default:
      std::fill(kt, kt + static_cast<size_t>(pairs(d)) * kKvTile, 0u);
  }
}

void pack_v(const void* const* tokens, int n, DType dtype, int d, void* packed_v) {
  switch (dtype) {
    case DType::bf16:
      return pack_v_t<DType::bf16>(tokens, n, d, packed_v);
    case DType::fp16:
      return pack_v_t<DType::fp16>(tokens, n, d, packed_v);
    case DType::fp32:
      return pack_v_t<DType::fp32>(tokens, n, d, packed_v);
    default: {
      uint32_t* data = begin_packing(packed_v);
      std::fill(data, data + static_cast<size_t>(kTokenPairs) * padded(d), 0u);
    }
  }
}

// K and V have different pair layouts (channel pairs / token pairs), so pack_kv converts the
// tokens once for each; both read the same (cache-resident) token rows.
void pack_kv(const void* const* tokens, int n, DType dtype, int d_qk, int d_v, void* packed_k,
             void* packed_v) {
  pack_k(tokens, n, dtype, d_qk, packed_k);
  pack_v(tokens, n, dtype, d_v, packed_v);
}

void pack_rows(const void* const* rows, int m, DType dtype, int d, void* packed_rows) {
  uint32_t* data = begin_packing(packed_rows);
  bool nonfinite = false;
  switch (dtype) {
    case DType::bf16:
      nonfinite = pack_pairs_t<DType::bf16>(rows, m, pairs(m), d, data);
      break;
    case DType::fp16:
      nonfinite = pack_pairs_t<DType::fp16>(rows, m, pairs(m), d, data);
      break;
    case DType::fp32:
      nonfinite = pack_pairs_t<DType::fp32>(rows, m, pairs(m), d, data);
      break;
    default:
      std::fill(data, data + static_cast<size_t>(pairs(m)) * padded(d), 0u);
  }
  set_nonfinite(packed_rows, nonfinite);
}

// Q for qk_tokens: the rows as channel pairs [pairs(d)][16] (one vector of 16 rows per pair,
// as K's pair rows), then each two pair rows (2k, 2k+1) interleaved in place into the halves of
// quad k: half h, lane 2r + e = pair 2k + e of row 8h + r.
void pack_qt(const void* const* rows, int m, DType dtype, int d, void* packed_qt) {
  uint32_t* qt = begin_packing(packed_qt);
  const int nq = quads(d);
  std::fill(qt, qt + static_cast<size_t>(nq) * 2 * kSmallRows, 0u);  // pair rows past pairs(d)
  m = std::clamp(m, 0, kSmallRows);
  switch (dtype) {
    case DType::bf16:
      pack_pairs16_t<DType::bf16>(rows, m, d, qt, kSmallRows);
      break;
    case DType::fp16:
      pack_pairs16_t<DType::fp16>(rows, m, d, qt, kSmallRows);
      break;
    case DType::fp32:
      pack_pairs16_t<DType::fp32>(rows, m, d, qt, kSmallRows);
      break;
    default:
      return;  // unreachable: float dtypes only
  }
  const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
  for (int k = 0; k < nq; ++k) {
    uint32_t* x = qt + static_cast<size_t>(k) * 2 * kSmallRows;
    const __m512i p0 = _mm512_load_si512(x), p1 = _mm512_load_si512(x + kSmallRows);
    _mm512_store_si512(x, _mm512_permutex2var_epi32(p0, lo, p1));
    _mm512_store_si512(x + kSmallRows, _mm512_permutex2var_epi32(p0, hi, p1));
  }
}

// ---- qk: s = scale * Q K^T, 6 rows x 64 keys (24 accumulators) per block ----

// Channel pairs are processed in chunks so that the chunk of K (kQkChunk x 256 bytes = 32 KiB)
// stays in L1 while every block of rows passes over it; partial sums go through s (exactly, in
// fp32). Measured on Zen 5 (m = 128, d = 576): 64 pairs ~520, 128 ~550, all 288 ~545 GFLOP/s.
constexpr int kQkChunk = 128;
constexpr int kQkRows = 6;

template <int R>
inline void qk_block(const uint32_t* q, int ldq, const uint32_t* kt, int c0, int c1, bool first,
                     bool last, float scale, float* s) {
  __m512 acc[R][4];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      acc[r][v] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(s + r * kKvTile + 16 * v);
    }
  }
  for (int c2 = c0; c2 < c1; ++c2) {
    const uint32_t* kc = kt + static_cast<size_t>(c2) * kKvTile;
    const __m512i k0 = _mm512_load_si512(kc), k1 = _mm512_load_si512(kc + 16);
    const __m512i k2 = _mm512_load_si512(kc + 32), k3 = _mm512_load_si512(kc + 48);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512i b = _mm512_set1_epi32(static_cast<int>(q[static_cast<size_t>(r) * ldq + c2]));
      acc[r][0] = dot2(acc[r][0], k0, b);
      acc[r][1] = dot2(acc[r][1], k1, b);
      acc[r][2] = dot2(acc[r][2], k2, b);
      acc[r][3] = dot2(acc[r][3], k3, b);
    }
  }
  const __m512 sc = _mm512_set1_ps(scale);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      _mm512_storeu_ps(s + r * kKvTile + 16 * v, last ? _mm512_mul_ps(acc[r][v], sc) : acc[r][v]);
    }
  }
}

void qk(const void* packed_q, int m, const void* packed_k, int d, float scale, float* s) {
  const auto* q = static_cast<const uint32_t*>(packed_q);
  const uint32_t* kt = data_of(packed_k, header_of(packed_k));
  const int dk2 = pairs(d);
  if (dk2 <= 0) {
    std::fill(s, s + static_cast<size_t>(std::max(m, 0)) * kKvTile, 0.0f);
    return;
  }
  for (int c0 = 0; c0 < dk2; c0 += kQkChunk) {
    const int c1 = std::min(dk2, c0 + kQkChunk);
    const bool first = c0 == 0, last = c1 == dk2;
    int i = 0;
    for (; i + kQkRows <= m; i += kQkRows) {
      qk_block<kQkRows>(q + static_cast<size_t>(i) * dk2, dk2, kt, c0, c1, first, last, scale,
                        s + static_cast<size_t>(i) * kKvTile);
    }
    const uint32_t* qi = q + static_cast<size_t>(i) * dk2;
    float* si = s + static_cast<size_t>(i) * kKvTile;
    switch (m - i) {
      case 5:
        qk_block<5>(qi, dk2, kt, c0, c1, first, last, scale, si);
        break;
      case 4:
        qk_block<4>(qi, dk2, kt, c0, c1, first, last, scale, si);
        break;
      case 3:
        qk_block<3>(qi, dk2, kt, c0, c1, first, last, scale, si);
        break;
      case 2:
        qk_block<2>(qi, dk2, kt, c0, c1, first, last, scale, si);
        break;
      case 1:
        qk_block<1>(qi, dk2, kt, c0, c1, first, last, scale, si);
        break;
      default:
        break;
    }
  }
}

// ---- qk_tokens: s = scale * Q K^T for m <= 16 rows, K read straight from the tokens ----

// A 32-bit broadcast of a token's channel pair for each product (VDPBF16PS's {1to16} operand)
// makes one load per product; on Zen 5 that measured ~450 GFLOP/s, apparently bound by the load
// ports (two vector loads a cycle, as many as products). Instead one 64-bit broadcast carries a
// channel quad (two pairs) of a token to both halves of Q (8 rows x 2 pairs each, see
// packed_qt), so each load feeds two products; for m <= 8 only the first half is used (half the
// products). Tokens per block: their 8 row pointers stay in general registers, and 8 tokens x 2
// accumulators are 16 independent chains, enough to hide VDPBF16PS's latency on both pipes.
// Measured on Zen 5 (d = 576, 64 tokens in L1/L2): m = 16 ~530 GFLOP/s (as qk on a packed
// tile, without packing K), m = 8 ~440.
constexpr int kQtTokens = 8;

// Channel quad k of a bf16 token row (8 bytes, only 2-byte aligned), in every 64-bit lane.
inline __m512i token_quad(const uint16_t* tok, int k) {
  uint64_t x;
  std::memcpy(&x, tok + 4 * k, sizeof x);
  return _mm512_set1_epi64(static_cast<long long>(x));
}

// The last, partial quad k = d / 4: its d % 4 channels, zero-extended (nothing past d is read).
inline __m512i token_tail(const uint16_t* tok, int k, int rem) {
  uint64_t x = 0;
  std::memcpy(&x, tok + 4 * k, sizeof(uint16_t) * rem);
  return _mm512_set1_epi64(static_cast<long long>(x));
}

// st[16 t + i] = <q_i, k_t> for the kQtTokens tokens tok[t] and the 16 row lanes i (H = 2) or
// the first 8 (H = 1; lanes 8..15 are then 0). acc[h][t], lane 2r + e, sums the products of
// pairs 2k + e of row 8h + r (H = 2); for H = 1, acc[u][t] takes the quads k = u mod 2.
template <int H>
inline void qkt_block(const uint32_t* qt, const uint16_t* const* tok, int d, float* st) {
  const uint16_t* tk[kQtTokens];
  __m512 acc[2][kQtTokens];
#pragma GCC unroll 8
  for (int t = 0; t < kQtTokens; ++t) {
    tk[t] = tok[t];
    acc[0][t] = _mm512_setzero_ps();
    acc[1][t] = _mm512_setzero_ps();
  }
  const int whole = d / 4, rem = d % 4;
  int k = 0;
  if constexpr (H == 2) {
    for (; k < whole; ++k) {
      const uint32_t* qq = qt + static_cast<size_t>(k) * 2 * kSmallRows;
      const __m512i q0 = _mm512_load_si512(qq), q1 = _mm512_load_si512(qq + kSmallRows);
#pragma GCC unroll 8
      for (int t = 0; t < kQtTokens; ++t) {
        const __m512i x = token_quad(tk[t], k);
        acc[0][t] = dot2(acc[0][t], q0, x);
        acc[1][t] = dot2(acc[1][t], q1, x);
      }
    }
  } else {
    for (; k + 2 <= whole; k += 2) {
      const uint32_t* qq = qt + static_cast<size_t>(k) * 2 * kSmallRows;
      const __m512i q0 = _mm512_load_si512(qq), q1 = _mm512_load_si512(qq + 2 * kSmallRows);
#pragma GCC unroll 8
      for (int t = 0; t < kQtTokens; ++t) {
        acc[0][t] = dot2(acc[0][t], q0, token_quad(tk[t], k));
        acc[1][t] = dot2(acc[1][t], q1, token_quad(tk[t], k + 1));
      }
    }
    if (k < whole) {
      const __m512i q0 = _mm512_load_si512(qt + static_cast<size_t>(k) * 2 * kSmallRows);
#pragma GCC unroll 8
      for (int t = 0; t < kQtTokens; ++t) acc[0][t] = dot2(acc[0][t], q0, token_quad(tk[t], k));
      ++k;
    }
  }
  if (rem != 0) {  // k == whole: the channels 4k..d-1 only
    const uint32_t* qq = qt + static_cast<size_t>(k) * 2 * kSmallRows;
    const __m512i q0 = _mm512_load_si512(qq), q1 = _mm512_load_si512(qq + kSmallRows);
#pragma GCC unroll 8
    for (int t = 0; t < kQtTokens; ++t) {
      const __m512i x = token_tail(tk[t], k, rem);
      if constexpr (H == 2) {
        acc[0][t] = dot2(acc[0][t], q0, x);
        acc[1][t] = dot2(acc[1][t], q1, x);
      } else {
        acc[1][t] = dot2(acc[1][t], q0, x);
      }
    }
  }
  // Row r's two lanes 2r, 2r+1 (of half h, or of both accumulators for H = 1) summed into lane
  // 8h + r.
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
#pragma GCC unroll 8
  for (int t = 0; t < kQtTokens; ++t) {
    __m512 sum;
    if constexpr (H == 2) {
      sum = _mm512_add_ps(_mm512_permutex2var_ps(acc[0][t], even, acc[1][t]),
                          _mm512_permutex2var_ps(acc[0][t], odd, acc[1][t]));
    } else {
      const __m512 x = _mm512_add_ps(acc[0][t], acc[1][t]);
      sum = _mm512_maskz_add_ps(0x00ff, _mm512_permutexvar_ps(even, x),
                                _mm512_permutexvar_ps(odd, x));
    }
    _mm512_store_ps(st + 16 * t, sum);
  }
}

void qk_tokens(const void* packed_qt, int m, const void* const* tokens, int n, int d,
               float scale, float* s) {
  const uint32_t* qt = data_of(packed_qt, header_of(packed_qt));
  m = std::min(m, kSmallRows);
  n = std::clamp(n, 0, kKvTile);
  d = std::max(d, 0);
  if (m <= 0) return;
  alignas(64) float st[kKvTile * kSmallRows];  // S^T: token j's 16 row lanes at st + 16 j
  const int nt = (n + 15) & ~15;                // tokens of the 16-token blocks with n in them
  for (int j0 = 0; j0 < nt; j0 += kQtTokens) {
    if (j0 >= n) {  // never stored to s, but read by the transpose
      std::fill(st + 16 * j0, st + 16 * (j0 + kQtTokens), 0.0f);
      continue;
    }
    const uint16_t* tok[kQtTokens];
    for (int t = 0; t < kQtTokens; ++t) {  // slots >= n repeat token n-1 (their sums are dropped)
      tok[t] = static_cast<const uint16_t*>(tokens[std::min(j0 + t, n - 1)]);
    }
    if (m > 8) {
      qkt_block<2>(qt, tok, d, st + 16 * j0);
    } else {
      qkt_block<1>(qt, tok, d, st + 16 * j0);
    }
  }
  // 16 x 16 transposes of S^T into the rows of s, scaled, with the slots >= n exactly 0.
  const __m512 sc = _mm512_set1_ps(scale);
  for (int j0 = 0; j0 < kKvTile; j0 += 16) {
    if (j0 >= nt) {
      for (int i = 0; i < m; ++i) _mm512_storeu_ps(s + i * kKvTile + j0, _mm512_setzero_ps());
      continue;
    }
    __m512i r[16];
#pragma GCC unroll 16
    for (int t = 0; t < 16; ++t) r[t] = _mm512_load_si512(st + 16 * (j0 + t));
    transpose16(r);
    const __mmask16 k = lane_mask(n - j0);
    for (int i = 0; i < m; ++i) {
      _mm512_storeu_ps(s + i * kKvTile + j0, _mm512_maskz_mul_ps(k, _mm512_castsi512_ps(r[i]), sc));
    }
  }
}

// ---- pv: o += P V, R rows x NV*16 channels per block, over the token pairs in `keys` ----

// P is rounded to bf16 token pairs kPvRows rows at a time into a stack buffer (12 KiB).
constexpr int kPvRows = 96;

// out[r][16x..16x+15] += sum over the set bits k of `kmask` of the pair b[r * kBRow + k * kBK]
// (broadcast) dotted with the pairs x[k * ldx + 16x ..], for R rows and NV vectors of 16
// channels (the last one masked by `tail`): P·V over token pairs (pv) and Pᵀ·rows over row pairs
// (pt) are both this block.
template <int R, int NV, int kBRow, int kBK>
inline void dot_block(const uint32_t* b, uint32_t kmask, const uint32_t* x, int ldx,
                      __mmask16 tail, float* out, int ldo) {
  __m512 acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      acc[r][v] = v < NV - 1 ? _mm512_loadu_ps(out + r * ldo + 16 * v)
                             : _mm512_maskz_loadu_ps(tail, out + r * ldo + 16 * v);
    }
  }
  while (kmask) {
    const int k = __builtin_ctz(kmask);
    kmask &= kmask - 1;
    const uint32_t* xk = x + static_cast<size_t>(k) * ldx;
    __m512i xv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) xv[v] = _mm512_load_si512(xk + 16 * v);  // padding lanes are 0
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512i bb = _mm512_set1_epi32(static_cast<int>(b[r * kBRow + k * kBK]));
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = dot2(acc[r][v], xv[v], bb);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      if (v < NV - 1) {
        _mm512_storeu_ps(out + r * ldo + 16 * v, acc[r][v]);
      } else {
        _mm512_mask_storeu_ps(out + r * ldo + 16 * v, tail, acc[r][v]);
      }
    }
  }
}

// P·V rows: pb[r * kTokenPairs + t2] is row r's pair of probabilities for token pair t2.
template <int R, int NV>
inline void pv_block(const uint32_t* pb, uint32_t keys, const uint32_t* v, int ldv,
                     __mmask16 tail, float* o, int ldo) {
  dot_block<R, NV, kTokenPairs, 1>(pb, keys, v, ldv, tail, o, ldo);
}

template <int NV>
void pv_cols(const uint32_t* pb, const uint32_t* nz, int rows, const uint32_t* v, int ldv,
             __mmask16 tail, float* o, int d) {
  constexpr int kRows = NV >= 3 ? 6 : 8;  // at most 24 accumulators
  for (int r0 = 0; r0 < rows; r0 += kRows) {
    const int rr = std::min(kRows, rows - r0);
    uint32_t keys = 0;
    for (int r = r0; r < r0 + rr; ++r) keys |= nz[r];
    if (keys == 0) continue;  // every term is skipped
    const uint32_t* pr = pb + static_cast<size_t>(r0) * kTokenPairs;
    float* orow = o + static_cast<size_t>(r0) * d;
    switch (rr) {
      case 8:
        if constexpr (kRows >= 8) pv_block<8, NV>(pr, keys, v, ldv, tail, orow, d);
        break;
      case 7:
        if constexpr (kRows >= 7) pv_block<7, NV>(pr, keys, v, ldv, tail, orow, d);
        break;
      case 6:
        pv_block<6, NV>(pr, keys, v, ldv, tail, orow, d);
        break;
      case 5:
        pv_block<5, NV>(pr, keys, v, ldv, tail, orow, d);
        break;
      case 4:
        pv_block<4, NV>(pr, keys, v, ldv, tail, orow, d);
        break;
      case 3:
        pv_block<3, NV>(pr, keys, v, ldv, tail, orow, d);
        break;
      case 2:
        pv_block<2, NV>(pr, keys, v, ldv, tail, orow, d);
        break;
      default:
        pv_block<1, NV>(pr, keys, v, ldv, tail, orow, d);
        break;
    }
  }
}

// For tiles with inf or NaN: row by row, each token pair's V halves with probability 0 cleared.
void pv_exact(const uint32_t* pb, const uint32_t* nz, int rows, const uint32_t* v, int ldv, int d,
              float* o) {
  for (int r = 0; r < rows; ++r) {
    float* orow = o + static_cast<size_t>(r) * d;
    for (int c = 0; c < d; c += 16) {
      const __mmask16 k = lane_mask(d - c);
      __m512 acc = _mm512_maskz_loadu_ps(k, orow + c);
      for (uint32_t keys = nz[r]; keys; keys &= keys - 1) {
        const int t2 = __builtin_ctz(keys);
        const uint32_t b = pb[r * kTokenPairs + t2];
        const __m512i vt = _mm512_and_si512(
            _mm512_load_si512(v + static_cast<size_t>(t2) * ldv + c),
            _mm512_set1_epi32(static_cast<int>(keep_mask(b))));
        acc = dot2(acc, vt, _mm512_set1_epi32(static_cast<int>(b)));
      }
      _mm512_mask_storeu_ps(orow + c, k, acc);
    }
  }
}

void pv(const float* p, int m, int n, const void* packed_v, int d, float* o) {
  const PackHeader h = header_of(packed_v);
  const uint32_t* v = data_of(packed_v, h);
  const int ldv = padded(d);
  n = std::min(n, kKvTile);
  if (n <= 0 || m <= 0 || d <= 0) return;
  alignas(64) uint32_t pb[kPvRows * kTokenPairs];  // P rows as bf16 token pairs
  uint32_t nz[kPvRows];                            // per row: the token pairs with p != 0
  for (int i0 = 0; i0 < m; i0 += kPvRows) {
    const int rows = std::min(kPvRows, m - i0);
    for (int r = 0; r < rows; ++r) {
      const float* pr = p + static_cast<size_t>(i0 + r) * kKvTile;
      // Masked loads: p[j] for j >= n reads as 0 (the caller may leave NaN there).
      const __m512 f0 = _mm512_maskz_loadu_ps(lane_mask(n), pr);
      const __m512 f1 = _mm512_maskz_loadu_ps(lane_mask(n - 16), pr + 16);
      const __m512 f2 = _mm512_maskz_loadu_ps(lane_mask(n - 32), pr + 32);
      const __m512 f3 = _mm512_maskz_loadu_ps(lane_mask(n - 48), pr + 48);
      const __m512i x0 = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(f1, f0));
      const __m512i x1 = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(f3, f2));
      _mm512_store_si512(pb + r * kTokenPairs, x0);
      _mm512_store_si512(pb + r * kTokenPairs + 16, x1);
      nz[r] = uint32_t{nonzero_pairs(x0)} | uint32_t{nonzero_pairs(x1)} << 16;
    }
    float* oi = o + static_cast<size_t>(i0) * d;
    if (h.nonfinite) {
      pv_exact(pb, nz, rows, v, ldv, d, oi);
      continue;
    }
    // Channel blocks outer: a block of V (32 token pairs x 64 channels, 8 KiB) stays in L1
    // while every block of rows passes over it.
    for (int c0 = 0; c0 < d; c0 += 64) {
      const int rem = std::min(64, d - c0);
      const __mmask16 tail = lane_mask(rem % 16 == 0 ? 16 : rem % 16);
      switch ((rem + 15) / 16) {
        case 4:
          pv_cols<4>(pb, nz, rows, v + c0, ldv, tail, oi + c0, d);
          break;
        case 3:
          pv_cols<3>(pb, nz, rows, v + c0, ldv, tail, oi + c0, d);
          break;
        case 2:
          pv_cols<2>(pb, nz, rows, v + c0, ldv, tail, oi + c0, d);
          break;
        default:
          pv_cols<1>(pb, nz, rows, v + c0, ldv, tail, oi + c0, d);
          break;
      }
    }
  }
}

// ---- pt: acc += P^T rows, J keys x NV*16 channels per block, over the row pairs in `rmask` ----

// P is rounded to bf16 row pairs kPtPairs row pairs at a time: pp[i2][j] = (p[2i2][j],
// p[2i2+1][j]), 8 KiB on the stack.
constexpr int kPtPairs = 32;

// Pᵀ·rows for J keys: pp[i2 * kKvTile + jj] is key jj's pair of probabilities for row pair i2.
template <int J, int NV>
inline void pt_block(const uint32_t* pp, uint32_t rmask, const uint32_t* rows, int ldr,
                     __mmask16 tail, float* acc, int lda) {
  dot_block<J, NV, 1, kKvTile>(pp, rmask, rows, ldr, tail, acc, lda);
}

// gm[g]: bit i2 set where row pair i2 has a non-zero probability for key 2g or 2g+1.
template <int NV>
void pt_cols(const uint32_t* pp, const uint32_t* gm, const uint32_t* rows, int ldr,
             __mmask16 tail, float* acc, int d) {
  constexpr int kKeys = NV == 4 ? 6 : 8;  // at most 24 accumulators; even, so whole key pairs
  for (int j0 = 0; j0 < kKvTile; j0 += kKeys) {
    const int jn = std::min(kKeys, kKvTile - j0);
    uint32_t rmask = 0;
    for (int g = j0 / 2; g < (j0 + jn) / 2; ++g) rmask |= gm[g];
    if (rmask == 0) continue;  // every term is skipped
    float* aj = acc + static_cast<size_t>(j0) * d;
    if (jn == kKeys) {
      pt_block<kKeys, NV>(pp + j0, rmask, rows, ldr, tail, aj, d);
    } else if constexpr (kKvTile % kKeys != 0) {
      pt_block<kKvTile % kKeys, NV>(pp + j0, rmask, rows, ldr, tail, aj, d);
    }
  }
}

// For row tiles with inf or NaN: key by key, each row pair's halves with probability 0 cleared.
void pt_exact(const uint32_t* pp, const uint64_t* nzk, int np2, const uint32_t* rows, int ldr,
              int d, float* acc) {
  for (int i2 = 0; i2 < np2; ++i2) {
    const uint32_t* ri = rows + static_cast<size_t>(i2) * ldr;
    for (uint64_t keys = nzk[i2]; keys; keys &= keys - 1) {
      const int j = __builtin_ctzll(keys);
      const uint32_t b = pp[i2 * kKvTile + j];
      const __m512i keep = _mm512_set1_epi32(static_cast<int>(keep_mask(b)));
      const __m512i bb = _mm512_set1_epi32(static_cast<int>(b));
      float* aj = acc + static_cast<size_t>(j) * d;
      for (int c = 0; c < d; c += 16) {
        const __mmask16 k = lane_mask(d - c);
        const __m512 a = _mm512_maskz_loadu_ps(k, aj + c);
        const __m512i rc = _mm512_and_si512(_mm512_load_si512(ri + c), keep);
        _mm512_mask_storeu_ps(aj + c, k, dot2(a, rc, bb));
      }
    }
  }
}

void pt(const float* p, int m, const void* packed_rows, int d, float* acc) {
  const PackHeader h = header_of(packed_rows);
  const uint32_t* rows = data_of(packed_rows, h);
  const int ldr = padded(d);
  if (m <= 0 || d <= 0) return;
  alignas(64) uint32_t pp[kPtPairs * kKvTile];
  uint64_t nzk[kPtPairs];        // per row pair: the keys with a non-zero probability
  uint32_t gm[kKvTile / 2];      // per key pair: the row pairs with a non-zero probability
  for (int i0 = 0; i0 < m; i0 += 2 * kPtPairs) {
    const int np2 = std::min(kPtPairs, pairs(m - i0));
    std::fill(std::begin(gm), std::end(gm), 0u);
    for (int i2 = 0; i2 < np2; ++i2) {
      const int ia = i0 + 2 * i2, ib = ia + 1;  // row ib = m (odd m) reads as zeros
      const float* pa = p + static_cast<size_t>(ia) * kKvTile;
      const float* pb = p + static_cast<size_t>(ib) * kKvTile;
      uint64_t keys = 0;
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) {
        const __m256i lo = to_bf16(_mm512_loadu_ps(pa + 16 * v));
        const __m256i hi = ib < m ? to_bf16(_mm512_loadu_ps(pb + 16 * v)) : _mm256_setzero_si256();
        const __m512i x = pair16(lo, hi);
        _mm512_store_si512(pp + i2 * kKvTile + 16 * v, x);
        keys |= uint64_t{nonzero_pairs(x)} << (16 * v);
      }
      nzk[i2] = keys;
      for (uint64_t g = (keys | keys >> 1) & 0x5555555555555555ull; g; g &= g - 1) {
        gm[__builtin_ctzll(g) / 2] |= 1u << i2;
      }
    }
    const uint32_t* ri = rows + static_cast<size_t>(i0 / 2) * ldr;
    if (h.nonfinite) {
      pt_exact(pp, nzk, np2, ri, ldr, d, acc);
      continue;
    }
    for (int c0 = 0; c0 < d; c0 += 64) {
      const int rem = std::min(64, d - c0);
      const __mmask16 tail = lane_mask(rem % 16 == 0 ? 16 : rem % 16);
      switch ((rem + 15) / 16) {
        case 4:
          pt_cols<4>(pp, gm, ri + c0, ldr, tail, acc + c0, d);
          break;
        case 3:
          pt_cols<3>(pp, gm, ri + c0, ldr, tail, acc + c0, d);
          break;
        case 2:
          pt_cols<2>(pp, gm, ri + c0, ldr, tail, acc + c0, d);
          break;
        default:
          pt_cols<1>(pp, gm, ri + c0, ldr, tail, acc + c0, d);
          break;
      }
    }
  }
}

}  // namespace

FLASHMLA_TARGET_END

const AttnMicrokernel& avx512bf16_microkernel() {
  static const AttnMicrokernel k{
      .name = "avx512bf16",
      .packed_q_bytes = packed_q_bytes,
      .packed_k_bytes = packed_k_bytes,
      .packed_v_bytes = packed_v_bytes,
      .packed_rows_bytes = packed_rows_bytes,
      .pack_q = pack_q,
      .pack_kv = pack_kv,
      .pack_k = pack_k,
      .pack_v = pack_v,
      .pack_rows = pack_rows,
      .qk = qk,
      .pv = pv,
      .pt = pt,
      .packed_qt_bytes = packed_qt_bytes,
      .pack_qt = pack_qt,
      .qk_tokens = qk_tokens,
  };
  return k;
}

}  // namespace flashmla::cpu
