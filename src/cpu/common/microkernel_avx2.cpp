// AVX2/FMA fp32 microkernel, for x86-64 CPUs without AVX-512: the portable kernel's semantics
// (fp32 operands, fp32 accumulation) with 256-bit FMAs, register-blocked to use the 16 ymm
// registers. Compiled for AVX2/FMA/F16C through a target pragma so that the rest of the library
// stays portable; the dispatcher calls these functions only where CPUID reports AVX2 and FMA
// (avx2_microkernel() itself executes no AVX instruction). F16C comes with every AVX2 CPU.
//
// Packed layouts (private to this file; always pass the pointer that was packed into):
//   packed_q     m rows x d fp32, row-major, unpadded (qk only broadcasts its elements).
//   packed_k     header, then K transposed: [d][kKvTile] fp32 (256-byte rows, 64-byte aligned).
//   packed_v     header, then V: [kKvTile][ld] fp32, ld = d rounded up to 8, 64-byte aligned.
//   packed_rows  header, then m rows x ld fp32 (ld as for V), 64-byte aligned.
// The header stores the offset of the aligned data from the buffer's start (so that a buffer
// copied elsewhere stays readable) and, for V and rows, whether any packed value is not finite.
// Token slots n..kKvTile-1 and channel padding d..ld-1 are zero-filled.
//
// Conversion is exact: bf16 by shifting, fp16 by F16C (VCVTPH2PS converts subnormals exactly
// and ignores MXCSR.DAZ) except that VCVTPH2PS quiets signalling NaNs, so inf/NaN lanes are
// rebuilt bit for bit as fp16_to_float (src/cpu/common/half.h) does. No element past d channels
// of a row or token is ever read (tails go through masked or scalar loads).
//
// NaN safety, as in the AVX-512 kernel. The portable pv/pt skip terms with p == 0, so a
// non-finite V (or row) value whose probability is 0 never reaches the output. Here:
//   - pv loops only j < n and pt only over rows i < m, and skips every KV token (pv: per block of
//     rows) or group of keys (pt: per group of 4 keys, and the rows outside the first..last row
//     with a non-zero p) whose probabilities are all zero;
//   - inside a block, plain FMAs add p * v for every token; with p == 0 that is exactly +-0
//     whenever v is finite. Packing records whether the tile holds any inf or NaN; if it does,
//     pv/pt take an exact path that skips each p == 0 term like the portable kernel.
// p == 0 is tested with an unordered compare, so a NaN probability is a non-zero one (as in the
// portable kernel, where `p == 0.0f` is false for NaN).
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>

#include "cpu/common/microkernel.h"
#include "cpu/common/target.h"

namespace flashmla::cpu {
namespace {

// ---- packed buffers: header and sizes (plain C++, callable on any machine) ----

struct PackHeader {
  uint32_t offset;     // bytes from the buffer's start to the 64-byte aligned data
  uint32_t nonfinite;  // V / rows: some packed value is inf or NaN
};
constexpr size_t kHeaderBytes = 128;  // the header plus up to 63 bytes of alignment
constexpr uintptr_t kAlign = 64;

inline int padded(int d) { return (d + 7) & ~7; }

size_t packed_q_bytes(int m, int d) { return sizeof(float) * static_cast<size_t>(m) * d; }
size_t packed_k_bytes(int d) {
  return kHeaderBytes + sizeof(float) * static_cast<size_t>(d) * kKvTile;
}
size_t packed_v_bytes(int d) {
  return kHeaderBytes + sizeof(float) * static_cast<size_t>(kKvTile) * padded(d);
}
size_t packed_rows_bytes(int m, int d) {
  return kHeaderBytes + sizeof(float) * static_cast<size_t>(m) * padded(d);
}

// Writes the header of a buffer being packed (non-finite flag cleared) and returns its data.
float* begin_packing(void* base) {
  const auto addr = reinterpret_cast<uintptr_t>(base);
  const uintptr_t data = (addr + sizeof(PackHeader) + kAlign - 1) & ~(kAlign - 1);
  const PackHeader h{static_cast<uint32_t>(data - addr), 0};
  std::memcpy(base, &h, sizeof h);
  return reinterpret_cast<float*>(data);
}

void set_nonfinite(void* base, bool nonfinite) {
  const uint32_t flag = nonfinite ? 1u : 0u;
  std::memcpy(static_cast<char*>(base) + offsetof(PackHeader, nonfinite), &flag, sizeof flag);
}

PackHeader header_of(const void* base) {
  PackHeader h;
  std::memcpy(&h, base, sizeof h);
  return h;
}

const float* data_of(const void* base, const PackHeader& h) {
  return reinterpret_cast<const float*>(static_cast<const char*>(base) + h.offset);
}

}  // namespace

FLASHMLA_TARGET_BEGIN("avx2,fma,f16c")

namespace {

// ---- conversion ----

// Lanes 0..count-1 set (count clamped to [0, 8]): the mask of vmaskmovps.
inline __m256i lane_mask(int count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// 8 16-bit values at src (all 8 when count >= 8; else the first count, the rest 0, reading no
// memory past them).
inline __m128i load_u16x8(const uint16_t* src, int count) {
  if (count >= 8) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
  alignas(16) uint16_t tmp[8] = {};
  for (int e = 0; e < count; ++e) tmp[e] = src[e];
  return _mm_load_si128(reinterpret_cast<const __m128i*>(tmp));
}

// fp16 -> fp32 bit for bit as fp16_to_float: F16C, with inf / NaN lanes rebuilt (VCVTPH2PS
// sets the quiet bit of signalling NaNs; fp16_to_float keeps the payload as it is).
inline __m256 fp16x8_to_fp32(__m128i h) {
  const __m256 f = _mm256_cvtph_ps(h);
  const __m256i w = _mm256_cvtepu16_epi32(h);
  const __m256i exp = _mm256_set1_epi32(0x7c00);
  const __m256i special = _mm256_cmpeq_epi32(_mm256_and_si256(w, exp), exp);
  if (_mm256_movemask_ps(_mm256_castsi256_ps(special)) == 0) return f;
  const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(w, _mm256_set1_epi32(0x8000)), 16);
  const __m256i man = _mm256_slli_epi32(_mm256_and_si256(w, _mm256_set1_epi32(0x3ff)), 13);
  const __m256i bits =
      _mm256_or_si256(_mm256_or_si256(sign, man), _mm256_set1_epi32(0x7f800000));
  return _mm256_blendv_ps(f, _mm256_castsi256_ps(bits), _mm256_castsi256_ps(special));
}

// 8 (or, if count < 8, the first count; the others 0) elements of `Dt` at src + c as fp32.
template <DType Dt>
inline __m256 load_cvt(const void* src, int c, int count) {
  if constexpr (Dt == DType::bf16) {
    const __m128i h = load_u16x8(static_cast<const uint16_t*>(src) + c, count);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else if constexpr (Dt == DType::fp16) {
    return fp16x8_to_fp32(load_u16x8(static_cast<const uint16_t*>(src) + c, count));
  } else {
    const float* f = static_cast<const float*>(src) + c;
    return count >= 8 ? _mm256_loadu_ps(f) : _mm256_maskload_ps(f, lane_mask(count));
  }
}

// Running maximum of |bits| to detect inf / NaN (exponent all ones) in packed values.
inline __m256i track_finite(__m256i mx, __m256 v) {
  return _mm256_max_epu32(
      mx, _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7fffffff)));
}
inline bool any_nonfinite(__m256i mx) {
  // Unsigned >= 0x7f800000 as a signed compare of values in [0, 2^31).
  const __m256i big = _mm256_cmpgt_epi32(mx, _mm256_set1_epi32(0x7f7fffff));
  return _mm256_movemask_ps(_mm256_castsi256_ps(big)) != 0;
}

// One row of d elements to fp32 at 32-byte aligned dst, zero-padded to ld (a multiple of 8).
template <DType Dt>
inline __m256i convert_row_padded(const void* src, int d, int ld, float* dst, __m256i mx) {
  for (int c = 0; c < ld; c += 8) {
    const __m256 v = load_cvt<Dt>(src, c, d - c);
    mx = track_finite(mx, v);
    _mm256_store_ps(dst + c, v);
  }
  return mx;
}

// ---- K transposition: 8 tokens x 8 channels at a time ----

// r[j] (token j, channels c..c+7) -> r[c] (channel c, tokens j..j+7).
inline void transpose8(__m256 r[8]) {
  __m256 t[8];
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) {
    t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
  }
  // Within each 128-bit half h, r[4k + q] then holds channel 4h + q of tokens 4k..4k+3.
#pragma GCC unroll 2
  for (int k = 0; k < 2; ++k) {
    r[4 * k + 0] = _mm256_shuffle_ps(t[4 * k], t[4 * k + 2], 0x44);
    r[4 * k + 1] = _mm256_shuffle_ps(t[4 * k], t[4 * k + 2], 0xee);
    r[4 * k + 2] = _mm256_shuffle_ps(t[4 * k + 1], t[4 * k + 3], 0x44);
    r[4 * k + 3] = _mm256_shuffle_ps(t[4 * k + 1], t[4 * k + 3], 0xee);
  }
  // Channel q joins the low halves of r[q] and r[4 + q]; channel 4 + q their high halves.
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    t[q] = _mm256_permute2f128_ps(r[q], r[4 + q], 0x20);
    t[4 + q] = _mm256_permute2f128_ps(r[q], r[4 + q], 0x31);
  }
#pragma GCC unroll 8
  for (int k = 0; k < 8; ++k) r[k] = t[k];
}

// Stores the transposed block r (channels c..c+cnt-1, tokens j0..j0+7) into kt [d][kKvTile].
inline void store_kt(__m256 r[8], int cnt, int j0, int c, float* kt) {
  transpose8(r);
  for (int cc = 0; cc < cnt; ++cc)
    _mm256_store_ps(kt + static_cast<size_t>(c + cc) * kKvTile + j0, r[cc]);
}

// Channels [c_begin, c_end) of kt from the n tokens (source dtype), token slots >= n zero.
template <DType Dt>
void transpose_tokens(const void* const* tokens, int n, int c_begin, int c_end, float* kt) {
  for (int j0 = 0; j0 < kKvTile; j0 += 8) {
    if (j0 >= n) {
      for (int c = c_begin; c < c_end; ++c) {
        _mm256_store_ps(kt + static_cast<size_t>(c) * kKvTile + j0, _mm256_setzero_ps());
      }
      continue;
    }
    for (int c = c_begin; c < c_end; c += 8) {
      const int cnt = std::min(8, c_end - c);
      __m256 r[8];
      for (int jj = 0; jj < 8; ++jj) {
        r[jj] = j0 + jj < n ? load_cvt<Dt>(tokens[j0 + jj], c, cnt) : _mm256_setzero_ps();
      }
      store_kt(r, cnt, j0, c, kt);
    }
  }
}

// Channels [0, c_end) (c_end a multiple of 8) of kt from packed V rows ([kKvTile][ld], slots
// >= n already zero).
void transpose_packed(const float* v, int ld, int c_end, float* kt) {
  for (int j0 = 0; j0 < kKvTile; j0 += 8) {
    for (int c = 0; c < c_end; c += 8) {
      __m256 r[8];
#pragma GCC unroll 8
      for (int jj = 0; jj < 8; ++jj)
        r[jj] = _mm256_load_ps(v + static_cast<size_t>(j0 + jj) * ld + c);
      store_kt(r, 8, j0, c, kt);
    }
  }
}

// ---- packing ----

template <DType Dt>
void pack_q_t(const void* const* rows, int m, int d, float* q) {
  for (int i = 0; i < m; ++i) {
    float* qi = q + static_cast<size_t>(i) * d;
    int c = 0;
    for (; c + 8 <= d; c += 8) _mm256_storeu_ps(qi + c, load_cvt<Dt>(rows[i], c, 8));
    if (c < d) _mm256_maskstore_ps(qi + c, lane_mask(d - c), load_cvt<Dt>(rows[i], c, d - c));
  }
}

// m rows (tokens) of d channels into [m][padded(d)] at data, followed by `zero_rows` zero rows.
// Returns whether any value is not finite.
template <DType Dt>
bool pack_rows_t(const void* const* rows, int m, int d, int zero_rows, float* data) {
  const int ld = padded(d);
  __m256i mx = _mm256_setzero_si256();
  for (int i = 0; i < m; ++i)
    mx = convert_row_padded<Dt>(rows[i], d, ld, data + static_cast<size_t>(i) * ld, mx);
  float* z = data + static_cast<size_t>(m) * ld;
  for (size_t e = 0; e < static_cast<size_t>(zero_rows) * ld; e += 8)
    _mm256_store_ps(z + e, _mm256_setzero_ps());
  return any_nonfinite(mx);
}

template <DType Dt>
void pack_kv_t(const void* const* tokens, int n, int d_qk, int d_v, void* packed_k,
               void* packed_v) {
  float* kt = begin_packing(packed_k);
  float* v = begin_packing(packed_v);
  set_nonfinite(packed_v, pack_rows_t<Dt>(tokens, n, d_v, kKvTile - n, v));
  // K's first channels are V's: transpose them from the packed (converted, zero-slotted) V.
  const int shared = std::min(d_v & ~7, d_qk);
  transpose_packed(v, padded(d_v), shared, kt);
  transpose_tokens<Dt>(tokens, n, shared, d_qk, kt);
}

void pack_q(const void* const* rows, int m, DType dtype, int d, void* packed_q) {
  auto* q = static_cast<float*>(packed_q);
  switch (dtype) {
    case DType::bf16:
      return pack_q_t<DType::bf16>(rows, m, d, q);
    case DType::fp16:
      return pack_q_t<DType::fp16>(rows, m, d, q);
    case DType::fp32:
      return pack_q_t<DType::fp32>(rows, m, d, q);
    default:
      std::fill(q, q + static_cast<size_t>(m) * d, 0.0f);  // unreachable: float dtypes only
  }
}

void pack_rows(const void* const* rows, int m, DType dtype, int d, void* packed_rows) {
  float* data = begin_packing(packed_rows);
  bool nonfinite = false;
  switch (dtype) {
    case DType::bf16:
      nonfinite = pack_rows_t<DType::bf16>(rows, m, d, 0, data);
      break;
    case DType::fp16:
      nonfinite = pack_rows_t<DType::fp16>(rows, m, d, 0, data);
      break;
    case DType::fp32:
      nonfinite = pack_rows_t<DType::fp32>(rows, m, d, 0, data);
      break;
    default:
      std::fill(data, data + static_cast<size_t>(m) * padded(d), 0.0f);
  }
  set_nonfinite(packed_rows, nonfinite);
}

void pack_v(const void* const* tokens, int n, DType dtype, int d, void* packed_v) {
  float* data = begin_packing(packed_v);
  bool nonfinite = false;
  switch (dtype) {
    case DType::bf16:
      nonfinite = pack_rows_t<DType::bf16>(tokens, n, d, kKvTile - n, data);
      break;
    case DType::fp16:
      nonfinite = pack_rows_t<DType::fp16>(tokens, n, d, kKvTile - n, data);
      break;
    case DType::fp32:
      nonfinite = pack_rows_t<DType::fp32>(tokens, n, d, kKvTile - n, data);
      break;
    default:
      std::fill(data, data + static_cast<size_t>(kKvTile) * padded(d), 0.0f);
  }
  set_nonfinite(packed_v, nonfinite);
}

void pack_k(const void* const* tokens, int n, DType dtype, int d, void* packed_k) {
  float* kt = begin_packing(packed_k);
  switch (dtype) {
    case DType::bf16:
      return transpose_tokens<DType::bf16>(tokens, n, 0, d, kt);
    case DType::fp16:
      return transpose_tokens<DType::fp16>(tokens, n, 0, d, kt);
    case DType::fp32:
      return transpose_tokens<DType::fp32>(tokens, n, 0, d, kt);
    default:
      std::fill(kt, kt + static_cast<size_t>(d) * kKvTile, 0.0f);
  }
}

void pack_kv(const void* const* tokens, int n, DType dtype, int d_qk, int d_v, void* packed_k,
             void* packed_v) {
  switch (dtype) {
    case DType::bf16:
      return pack_kv_t<DType::bf16>(tokens, n, d_qk, d_v, packed_k, packed_v);
    case DType::fp16:
      return pack_kv_t<DType::fp16>(tokens, n, d_qk, d_v, packed_k, packed_v);
    case DType::fp32:
      return pack_kv_t<DType::fp32>(tokens, n, d_qk, d_v, packed_k, packed_v);
    default: {
      float* kt = begin_packing(packed_k);
      float* v = begin_packing(packed_v);
      std::fill(kt, kt + static_cast<size_t>(d_qk) * kKvTile, 0.0f);
      std::fill(v, v + static_cast<size_t>(kKvTile) * padded(d_v), 0.0f);
    }
  }
}

// ---- qk: s = scale * Q K^T, 6 rows x 16 keys (12 accumulators) per block ----

// Channels are processed in chunks so that the chunk of K (kQkChunk x 256 bytes) stays in L1
// while every block of rows passes over it; partial sums go through s (exactly, in fp32).
constexpr int kQkChunk = 128;
constexpr int kQkRows = 6;
constexpr int kQkKeys = 16;

template <int R>
inline void qk_block(const float* q, int ldq, const float* kt, int c0, int c1, bool first,
                     bool last, float scale, float* s) {
  __m256 acc[R][2];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    acc[r][0] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(s + r * kKvTile);
    acc[r][1] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(s + r * kKvTile + 8);
  }
  for (int c = c0; c < c1; ++c) {
    const float* kc = kt + static_cast<size_t>(c) * kKvTile;
    const __m256 k0 = _mm256_load_ps(kc), k1 = _mm256_load_ps(kc + 8);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 b = _mm256_broadcast_ss(q + static_cast<size_t>(r) * ldq + c);
      acc[r][0] = _mm256_fmadd_ps(b, k0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(b, k1, acc[r][1]);
    }
  }
  const __m256 sc = _mm256_set1_ps(scale);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    _mm256_storeu_ps(s + r * kKvTile, last ? _mm256_mul_ps(acc[r][0], sc) : acc[r][0]);
    _mm256_storeu_ps(s + r * kKvTile + 8, last ? _mm256_mul_ps(acc[r][1], sc) : acc[r][1]);
  }
}

template <int R>
inline void qk_rows(const float* q, int ldq, const float* kt, int c0, int c1, bool first,
                    bool last, float scale, float* s) {
  for (int j0 = 0; j0 < kKvTile; j0 += kQkKeys) {
    qk_block<R>(q, ldq, kt + j0, c0, c1, first, last, scale, s + j0);
  }
}

void qk(const void* packed_q, int m, const void* packed_k, int d, float scale, float* s) {
  const auto* q = static_cast<const float*>(packed_q);
  const float* kt = data_of(packed_k, header_of(packed_k));
  if (d <= 0) {
    std::fill(s, s + static_cast<size_t>(std::max(m, 0)) * kKvTile, 0.0f);
    return;
  }
  for (int c0 = 0; c0 < d; c0 += kQkChunk) {
    const int c1 = std::min(d, c0 + kQkChunk);
    const bool first = c0 == 0, last = c1 == d;
    int i = 0;
    for (; i + kQkRows <= m; i += kQkRows) {
      qk_rows<kQkRows>(q + static_cast<size_t>(i) * d, d, kt, c0, c1, first, last, scale,
                       s + static_cast<size_t>(i) * kKvTile);
    }
    const float* qi = q + static_cast<size_t>(i) * d;
    float* si = s + static_cast<size_t>(i) * kKvTile;
    switch (m - i) {
      case 5:
        qk_rows<5>(qi, d, kt, c0, c1, first, last, scale, si);
        break;
      case 4:
        qk_rows<4>(qi, d, kt, c0, c1, first, last, scale, si);
        break;
      case 3:
        qk_rows<3>(qi, d, kt, c0, c1, first, last, scale, si);
        break;
      case 2:
        qk_rows<2>(qi, d, kt, c0, c1, first, last, scale, si);
        break;
      case 1:
        qk_rows<1>(qi, d, kt, c0, c1, first, last, scale, si);
        break;
      default:
        break;
    }
  }
}

// Bit j set where any of rows 0..rows-1 of p (stride kKvTile) has p[.][j] != 0 (NaN included).
inline uint64_t nonzero_keys(const float* p, int rows) {
  const __m256 zero = _mm256_setzero_ps();
  __m256 k[8];
#pragma GCC unroll 8
  for (int v = 0; v < 8; ++v) k[v] = _mm256_setzero_ps();
  for (int r = 0; r < rows; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < 8; ++v) {
      k[v] = _mm256_or_ps(k[v],
                          _mm256_cmp_ps(_mm256_loadu_ps(p + r * kKvTile + 8 * v), zero, _CMP_NEQ_UQ));
    }
  }
  uint64_t keys = 0;
#pragma GCC unroll 8
  for (int v = 0; v < 8; ++v) {
    keys |= uint64_t{static_cast<uint32_t>(_mm256_movemask_ps(k[v]))} << (8 * v);
  }
  return keys;
}

// ---- pv: o += P V, R rows x NV*8 channels per block, over the tokens in `keys` ----

// Loads / stores vector x of NV at dst: the last one under `tail` unless the block is full.
template <int NV>
inline __m256 load_acc(const float* src, int x, bool full, __m256i tail) {
  return x < NV - 1 || full ? _mm256_loadu_ps(src + 8 * x) : _mm256_maskload_ps(src + 8 * x, tail);
}
template <int NV>
inline void store_acc(float* dst, int x, bool full, __m256i tail, __m256 v) {
  if (x < NV - 1 || full) {
    _mm256_storeu_ps(dst + 8 * x, v);
  } else {
    _mm256_maskstore_ps(dst + 8 * x, tail, v);
  }
}

template <int R, int NV>
inline void pv_block(const float* p, uint64_t keys, const float* v, int ldv, bool full,
                     __m256i tail, float* o, int ldo) {
  __m256 acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int x = 0; x < NV; ++x) acc[r][x] = load_acc<NV>(o + r * ldo, x, full, tail);
  }
  // A counted loop testing each bit runs at the FMA bound where a ctz / clear-lowest-bit loop
  // over `keys` measured about 40% slower (Zen 5).
  const int j_end = 64 - __builtin_clzll(keys);  // keys != 0
  for (int j = __builtin_ctzll(keys); j < j_end; ++j) {
    if (!(keys >> j & 1)) continue;
    const float* vj = v + static_cast<size_t>(j) * ldv;
    __m256 vx[NV];
#pragma GCC unroll 4
    for (int x = 0; x < NV; ++x) vx[x] = _mm256_load_ps(vj + 8 * x);  // padding lanes are 0
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 b = _mm256_broadcast_ss(p + r * kKvTile + j);
#pragma GCC unroll 4
      for (int x = 0; x < NV; ++x) acc[r][x] = _mm256_fmadd_ps(b, vx[x], acc[r][x]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int x = 0; x < NV; ++x) store_acc<NV>(o + r * ldo, x, full, tail, acc[r][x]);
  }
}

template <int NV>
void pv_rows(const float* p, int rows, uint64_t keys, const float* v, int ldv, bool full,
             __m256i tail, float* o, int d) {
  switch (rows) {
    case 4:
      return pv_block<4, NV>(p, keys, v, ldv, full, tail, o, d);
    case 3:
      return pv_block<3, NV>(p, keys, v, ldv, full, tail, o, d);
    case 2:
      return pv_block<2, NV>(p, keys, v, ldv, full, tail, o, d);
    default:
      return pv_block<1, NV>(p, keys, v, ldv, full, tail, o, d);
  }
}

// The portable kernel's loop, term by term skipping p == 0: for tiles with inf or NaN.
void pv_exact(const float* p, int m, int n, const float* v, int ldv, int d, float* o) {
  for (int i = 0; i < m; ++i) {
    float* oi = o + static_cast<size_t>(i) * d;
    for (int j = 0; j < n; ++j) {
      const float pj = p[static_cast<size_t>(i) * kKvTile + j];
      if (pj == 0.0f) continue;
      const __m256 b = _mm256_set1_ps(pj);
      const float* vj = v + static_cast<size_t>(j) * ldv;
      int c = 0;
      for (; c + 8 <= d; c += 8) {
        _mm256_storeu_ps(oi + c,
                         _mm256_fmadd_ps(b, _mm256_load_ps(vj + c), _mm256_loadu_ps(oi + c)));
      }
      if (c < d) {
        const __m256i k = lane_mask(d - c);
        const __m256 acc = _mm256_maskload_ps(oi + c, k);
        _mm256_maskstore_ps(oi + c, k, _mm256_fmadd_ps(b, _mm256_load_ps(vj + c), acc));
      }
    }
  }
}

constexpr int kPvRows = 4;        // rows per block
constexpr int kPvChannels = 24;   // channels per block (3 vectors): 12 accumulators
constexpr int kPvGroupBlocks = 8;  // row blocks whose keys are found once for all channels

void pv(const float* p, int m, int n, const void* packed_v, int d, float* o) {
  const PackHeader h = header_of(packed_v);
  const float* v = data_of(packed_v, h);
  const int ldv = padded(d);
  n = std::min(n, kKvTile);
  if (n <= 0 || m <= 0 || d <= 0) return;
  if (h.nonfinite) return pv_exact(p, m, n, v, ldv, d, o);
  const uint64_t valid = n >= 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1;
  for (int g0 = 0; g0 < m; g0 += kPvRows * kPvGroupBlocks) {
    const int g1 = std::min(m, g0 + kPvRows * kPvGroupBlocks);
    uint64_t keys[kPvGroupBlocks];
    bool any = false;
    for (int i0 = g0, b = 0; i0 < g1; i0 += kPvRows, ++b) {
      keys[b] = nonzero_keys(p + static_cast<size_t>(i0) * kKvTile, std::min(kPvRows, g1 - i0)) &
                valid;
      any |= keys[b] != 0;
    }
    if (!any) continue;  // every term is skipped
    // Channel blocks outside the row blocks: a block of V (kKvTile x 24 channels, 6 KiB)
    // stays in L1 while the group's rows pass over it.
    for (int c0 = 0; c0 < d; c0 += kPvChannels) {
      const int rem = std::min(kPvChannels, d - c0);
      const bool full = rem % 8 == 0;
      const __m256i tail = lane_mask(rem % 8);
      for (int i0 = g0, b = 0; i0 < g1; i0 += kPvRows, ++b) {
        if (keys[b] == 0) continue;
        const int rows = std::min(kPvRows, g1 - i0);
        const float* pi = p + static_cast<size_t>(i0) * kKvTile;
        float* oi = o + static_cast<size_t>(i0) * d + c0;
        switch ((rem + 7) / 8) {
          case 3:
            pv_rows<3>(pi, rows, keys[b], v + c0, ldv, full, tail, oi, d);
            break;
          case 2:
            pv_rows<2>(pi, rows, keys[b], v + c0, ldv, full, tail, oi, d);
            break;
          default:
            pv_rows<1>(pi, rows, keys[b], v + c0, ldv, full, tail, oi, d);
            break;
        }
      }
    }
  }
}

// ---- pt: acc += P^T rows, 4 keys x NV*8 channels per block, over rows [i0, i1) ----

constexpr int kPtKeys = 4;
constexpr int kPtChannels = 24;

template <int NV>
inline void pt_block(const float* p, int i0, int i1, const float* rows, int ldr, bool full,
                     __m256i tail, float* acc, int lda) {
  __m256 a[kPtKeys][NV];
#pragma GCC unroll 4
  for (int jj = 0; jj < kPtKeys; ++jj) {
#pragma GCC unroll 4
    for (int x = 0; x < NV; ++x) a[jj][x] = load_acc<NV>(acc + jj * lda, x, full, tail);
  }
  for (int i = i0; i < i1; ++i) {
    const float* ri = rows + static_cast<size_t>(i) * ldr;
    const float* pi = p + static_cast<size_t>(i) * kKvTile;
    __m256 rx[NV];
#pragma GCC unroll 4
    for (int x = 0; x < NV; ++x) rx[x] = _mm256_load_ps(ri + 8 * x);  // padding lanes are 0
#pragma GCC unroll 4
    for (int jj = 0; jj < kPtKeys; ++jj) {
      const __m256 b = _mm256_broadcast_ss(pi + jj);
#pragma GCC unroll 4
      for (int x = 0; x < NV; ++x) a[jj][x] = _mm256_fmadd_ps(b, rx[x], a[jj][x]);
    }
  }
#pragma GCC unroll 4
  for (int jj = 0; jj < kPtKeys; ++jj) {
#pragma GCC unroll 4
    for (int x = 0; x < NV; ++x) store_acc<NV>(acc + jj * lda, x, full, tail, a[jj][x]);
  }
}

void pt_exact(const float* p, int m, const float* rows, int ldr, int d, float* acc) {
  for (int i = 0; i < m; ++i) {
    const float* ri = rows + static_cast<size_t>(i) * ldr;
    for (int j = 0; j < kKvTile; ++j) {
      const float pij = p[static_cast<size_t>(i) * kKvTile + j];
      if (pij == 0.0f) continue;
      const __m256 b = _mm256_set1_ps(pij);
      float* aj = acc + static_cast<size_t>(j) * d;
      int c = 0;
      for (; c + 8 <= d; c += 8) {
        _mm256_storeu_ps(aj + c,
                         _mm256_fmadd_ps(b, _mm256_load_ps(ri + c), _mm256_loadu_ps(aj + c)));
      }
      if (c < d) {
        const __m256i k = lane_mask(d - c);
        const __m256 a = _mm256_maskload_ps(aj + c, k);
        _mm256_maskstore_ps(aj + c, k, _mm256_fmadd_ps(b, _mm256_load_ps(ri + c), a));
      }
    }
  }
}

void pt(const float* p, int m, const void* packed_rows, int d, float* acc) {
  const PackHeader h = header_of(packed_rows);
  const float* rows = data_of(packed_rows, h);
  const int ldr = padded(d);
  if (m <= 0 || d <= 0) return;
  if (h.nonfinite) return pt_exact(p, m, rows, ldr, d, acc);
  // first[g]..last[g]: the rows with a non-zero p in keys 4g..4g+3 (first >= last: none). Scan
  // down until every group seen has its first row, and up for the last rows.
  constexpr int kGroups = kKvTile / kPtKeys;
  int first[kGroups], last[kGroups];
  std::fill(std::begin(first), std::end(first), m);
  std::fill(std::begin(last), std::end(last), 0);
  const auto group_bits = [](uint64_t keys) {  // bit 4g set where a key of group g is set
    return (keys | keys >> 1 | keys >> 2 | keys >> 3) & 0x1111111111111111ull;
  };
  uint64_t seen = 0;
  for (int i = 0; i < m; ++i) {
    for (uint64_t g = group_bits(nonzero_keys(p + static_cast<size_t>(i) * kKvTile, 1)) & ~seen; g;
         g &= g - 1) {
      first[__builtin_ctzll(g) / 4] = i;
      seen |= g & -g;
    }
  }
  const uint64_t all = seen;
  seen = 0;
  for (int i = m - 1; i >= 0 && seen != all; --i) {
    for (uint64_t g = group_bits(nonzero_keys(p + static_cast<size_t>(i) * kKvTile, 1)) & ~seen; g;
         g &= g - 1) {
      last[__builtin_ctzll(g) / 4] = i + 1;
      seen |= g & -g;
    }
  }
  // Channel blocks outermost: the block of rows (m x 24 channels) stays in L1 while every
  // group of keys passes over it.
  for (int c0 = 0; c0 < d; c0 += kPtChannels) {
    const int rem = std::min(kPtChannels, d - c0);
    const bool full = rem % 8 == 0;
    const __m256i tail = lane_mask(rem % 8);
    for (int g = 0; g < kGroups; ++g) {
      if (first[g] >= last[g]) continue;  // every term is skipped
      const int j0 = g * kPtKeys;
      float* aj = acc + static_cast<size_t>(j0) * d + c0;
      switch ((rem + 7) / 8) {
        case 3:
          pt_block<3>(p + j0, first[g], last[g], rows + c0, ldr, full, tail, aj, d);
          break;
        case 2:
          pt_block<2>(p + j0, first[g], last[g], rows + c0, ldr, full, tail, aj, d);
          break;
        default:
          pt_block<1>(p + j0, first[g], last[g], rows + c0, ldr, full, tail, aj, d);
          break;
      }
    }
  }
}

}  // namespace

FLASHMLA_TARGET_END

const AttnMicrokernel& avx2_microkernel() {
  static const AttnMicrokernel k{
      .name = "avx2",
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
      .packed_qt_bytes = nullptr,  // no token-major qk: the drivers pack K
      .pack_qt = nullptr,
      .qk_tokens = nullptr,
  };
  return k;
}

}  // namespace flashmla::cpu
