// AVX-512 fp32 microkernel: the portable kernel's layouts and semantics (fp32 operands, fp32
// accumulation), register-blocked with 512-bit FMAs. Compiled for AVX-512F/BW/VL/DQ through a
// target pragma so that the rest of the library stays portable; the dispatcher calls these
// functions only where CPUID reports those features (avx512_microkernel() itself executes no
// AVX-512 instruction).
//
// Packed layouts (private to this file; always pass the pointer that was packed into):
//   packed_q     m rows x d fp32, row-major, unpadded (qk only broadcasts its elements).
//   packed_k     header, then K transposed: [d][kKvTile] fp32 (256-byte rows, 64-byte aligned).
//   packed_v     header, then V: [kKvTile][ld] fp32, ld = d rounded up to 16, 64-byte aligned.
//   packed_rows  header, then m rows x ld fp32 (ld as for V), 64-byte aligned.
// The header stores the offset of the aligned data from the buffer's start (so that a buffer
// copied elsewhere stays readable) and, for V and rows, whether any packed value is not finite.
// Token slots n..kKvTile-1 and channel padding d..ld-1 are zero-filled.
//
// NaN safety. The portable pv/pt skip terms with p == 0, so a non-finite V (or row) value whose
// probability is 0 never reaches the output. Here:
//   - pv loops only j < n and pt only over rows i < m, and skips every KV token (pv: per block of
//     rows) or group of keys (pt: per block of keys, and the rows outside the first..last row
//     with a non-zero p) whose probabilities are all zero;
//   - inside a block, plain FMAs add p * v for every token; with p == 0 that is exactly +-0
//     whenever v is finite. Packing records whether the tile holds any inf or NaN; if it does,
//     pv/pt take an exact path that skips each p == 0 term like the portable kernel. So the
//     result never depends on the drivers keeping V and the rows finite.
// p == 0 is tested with an unordered compare, so a NaN probability is a non-zero one (as in the
// portable kernel, where `p == 0.0f` is false for NaN).
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

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

inline int padded(int d) { return (d + 15) & ~15; }

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

FLASHMLA_TARGET_BEGIN("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")

namespace {

// ---- conversion ----

inline __mmask16 lane_mask(int count) {  // the first min(max(count, 0), 16) lanes
  return count >= 16 ? __mmask16(0xffff) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1);
}

// 16 (or, under k, fewer) elements of `Dt` at src + c as fp32; lanes outside k read as 0 and
// touch no memory.
template <DType Dt>
inline __m512 load_cvt(const void* src, int c, __mmask16 k) {
  if constexpr (Dt == DType::bf16) {
    const __m256i h = _mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(src) + c);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else if constexpr (Dt == DType::fp16) {
    const __m256i h = _mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(src) + c);
    return _mm512_cvtph_ps(h);  // exact, subnormals included
  } else {
    return _mm512_maskz_loadu_ps(k, static_cast<const float*>(src) + c);
  }
}

// Running maximum of |bits| to detect inf / NaN (exponent all ones) in packed values.
inline __m512i track_finite(__m512i mx, __m512 v) {
  return _mm512_max_epu32(mx,
                          _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff)));
}
inline bool any_nonfinite(__m512i mx) { return _mm512_reduce_max_epu32(mx) >= 0x7f800000u; }

// One row of d elements to fp32 at 64-byte aligned dst, zero-padded to ld (a multiple of 16).
template <DType Dt>
inline __m512i convert_row_padded(const void* src, int d, int ld, float* dst, __m512i mx) {
  for (int c = 0; c < ld; c += 16) {
    const __m512 v = load_cvt<Dt>(src, c, lane_mask(d - c));
    mx = track_finite(mx, v);
    _mm512_store_ps(dst + c, v);
  }
  return mx;
}

// ---- K transposition: 16 tokens x 16 channels at a time ----

// r[j] (token j, channels c..c+15) -> r[c] (channel c, tokens j..j+15).
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int k = 0; k < 8; ++k) {
    t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
  }
  // Within each 128-bit lane l, r[4k + q] then holds channel 4l + q of tokens 4k..4k+3.
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) {
    r[4 * k + 0] = _mm512_shuffle_ps(t[4 * k], t[4 * k + 2], 0x44);
    r[4 * k + 1] = _mm512_shuffle_ps(t[4 * k], t[4 * k + 2], 0xee);
    r[4 * k + 2] = _mm512_shuffle_ps(t[4 * k + 1], t[4 * k + 3], 0x44);
    r[4 * k + 3] = _mm512_shuffle_ps(t[4 * k + 1], t[4 * k + 3], 0xee);
  }
  // Channel 4l + q gathers lane l of r[q], r[4 + q], r[8 + q], r[12 + q].
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    const __m512 u0 = _mm512_shuffle_f32x4(r[q], r[4 + q], 0x88);
    const __m512 u1 = _mm512_shuffle_f32x4(r[q], r[4 + q], 0xdd);
    const __m512 w0 = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0x88);
    const __m512 w1 = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0xdd);
    t[q] = _mm512_shuffle_f32x4(u0, w0, 0x88);
    t[8 + q] = _mm512_shuffle_f32x4(u0, w0, 0xdd);
    t[4 + q] = _mm512_shuffle_f32x4(u1, w1, 0x88);
    t[12 + q] = _mm512_shuffle_f32x4(u1, w1, 0xdd);
  }
#pragma GCC unroll 16
  for (int k = 0; k < 16; ++k) r[k] = t[k];
}

// Stores the transposed block r (channels c..c+cnt-1, tokens j0..j0+15) into kt [d][kKvTile].
inline void store_kt(__m512 r[16], int cnt, int j0, int c, float* kt) {
  transpose16(r);
  for (int cc = 0; cc < cnt; ++cc)
    _mm512_store_ps(kt + static_cast<size_t>(c + cc) * kKvTile + j0, r[cc]);
}

// Channels [c_begin, c_end) of kt from the n tokens (source dtype), token slots >= n zero.
template <DType Dt>
void transpose_tokens(const void* const* tokens, int n, int c_begin, int c_end, float* kt) {
  for (int j0 = 0; j0 < kKvTile; j0 += 16) {
    if (j0 >= n) {
      for (int c = c_begin; c < c_end; ++c) {
        _mm512_store_ps(kt + static_cast<size_t>(c) * kKvTile + j0, _mm512_setzero_ps());
      }
      continue;
    }
    for (int c = c_begin; c < c_end; c += 16) {
      const int cnt = std::min(16, c_end - c);
      const __mmask16 k = lane_mask(cnt);
      __m512 r[16];
      for (int jj = 0; jj < 16; ++jj) {
        r[jj] = j0 + jj < n ? load_cvt<Dt>(tokens[j0 + jj], c, k) : _mm512_setzero_ps();
      }
      store_kt(r, cnt, j0, c, kt);
    }
  }
}

// Channels [0, c_end) (c_end a multiple of 16) of kt from packed V rows ([kKvTile][ld], slots
// >= n already zero).
void transpose_packed(const float* v, int ld, int c_end, float* kt) {
  for (int j0 = 0; j0 < kKvTile; j0 += 16) {
    for (int c = 0; c < c_end; c += 16) {
      __m512 r[16];
#pragma GCC unroll 16
      for (int jj = 0; jj < 16; ++jj)
        r[jj] = _mm512_load_ps(v + static_cast<size_t>(j0 + jj) * ld + c);
      store_kt(r, 16, j0, c, kt);
    }
  }
}

// ---- packing ----

template <DType Dt>
void pack_q_t(const void* const* rows, int m, int d, float* q) {
  for (int i = 0; i < m; ++i) {
    float* qi = q + static_cast<size_t>(i) * d;
    for (int c = 0; c < d; c += 16) {
      const __mmask16 k = lane_mask(d - c);
      _mm512_mask_storeu_ps(qi + c, k, load_cvt<Dt>(rows[i], c, k));
    }
  }
}

// m rows (tokens) of d channels into [m][padded(d)] at data, followed by `zero_rows` zero rows.
// Returns whether any value is not finite.
template <DType Dt>
bool pack_rows_t(const void* const* rows, int m, int d, int zero_rows, float* data) {
  const int ld = padded(d);
  __m512i mx = _mm512_setzero_si512();
  for (int i = 0; i < m; ++i)
    mx = convert_row_padded<Dt>(rows[i], d, ld, data + static_cast<size_t>(i) * ld, mx);
  float* z = data + static_cast<size_t>(m) * ld;
  for (size_t e = 0; e < static_cast<size_t>(zero_rows) * ld; e += 16)
    _mm512_store_ps(z + e, _mm512_setzero_ps());
  return any_nonfinite(mx);
}

template <DType Dt>
void pack_kv_t(const void* const* tokens, int n, int d_qk, int d_v, void* packed_k,
               void* packed_v) {
  float* kt = begin_packing(packed_k);
  float* v = begin_packing(packed_v);
  set_nonfinite(packed_v, pack_rows_t<Dt>(tokens, n, d_v, kKvTile - n, v));
  // K's first channels are V's: transpose them from the packed (converted, zero-slotted) V.
  const int shared = std::min(d_v & ~15, d_qk);
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

// ---- qk: s = scale * Q K^T, 4 rows x 64 keys (16 accumulators) per block ----

// Channels are processed in chunks so that the chunk of K (kQkChunk x 256 bytes) stays in L1
// while every block of rows passes over it; partial sums go through s (exactly, in fp32).
constexpr int kQkChunk = 128;

template <int R>
inline void qk_block(const float* q, int ldq, const float* kt, int c0, int c1, bool first,
                     bool last, float scale, float* s) {
  __m512 acc[R][4];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      acc[r][v] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(s + r * kKvTile + 16 * v);
    }
  }
  for (int c = c0; c < c1; ++c) {
    const float* kc = kt + static_cast<size_t>(c) * kKvTile;
    const __m512 k0 = _mm512_load_ps(kc), k1 = _mm512_load_ps(kc + 16);
    const __m512 k2 = _mm512_load_ps(kc + 32), k3 = _mm512_load_ps(kc + 48);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 b = _mm512_set1_ps(q[static_cast<size_t>(r) * ldq + c]);
      acc[r][0] = _mm512_fmadd_ps(b, k0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(b, k1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(b, k2, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(b, k3, acc[r][3]);
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
    for (; i + 4 <= m; i += 4) {
      qk_block<4>(q + static_cast<size_t>(i) * d, d, kt, c0, c1, first, last, scale,
                  s + static_cast<size_t>(i) * kKvTile);
    }
    const float* qi = q + static_cast<size_t>(i) * d;
    float* si = s + static_cast<size_t>(i) * kKvTile;
    switch (m - i) {
      case 3:
        qk_block<3>(qi, d, kt, c0, c1, first, last, scale, si);
        break;
      case 2:
        qk_block<2>(qi, d, kt, c0, c1, first, last, scale, si);
        break;
      case 1:
        qk_block<1>(qi, d, kt, c0, c1, first, last, scale, si);
        break;
      default:
        break;
    }
  }
}

// Bit j set where any of rows 0..r-1 of p (stride kKvTile) has p[.][j] != 0 (NaN included).
inline uint64_t nonzero_keys(const float* p, int rows) {
  const __m512 zero = _mm512_setzero_ps();
  __mmask16 k[4] = {0, 0, 0, 0};
  for (int r = 0; r < rows; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      k[v] |= _mm512_cmp_ps_mask(_mm512_loadu_ps(p + r * kKvTile + 16 * v), zero, _CMP_NEQ_UQ);
    }
  }
  return uint64_t{k[0]} | uint64_t{k[1]} << 16 | uint64_t{k[2]} << 32 | uint64_t{k[3]} << 48;
}

// ---- pv: o += P V, R rows x NV*16 channels per block, over the tokens in `keys` ----

template <int R, int NV>
inline void pv_block(const float* p, uint64_t keys, const float* v, int ldv, __mmask16 tail,
                     float* o, int ldo) {
  __m512 acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int x = 0; x < NV; ++x) {
      acc[r][x] = x < NV - 1 ? _mm512_loadu_ps(o + r * ldo + 16 * x)
                             : _mm512_maskz_loadu_ps(tail, o + r * ldo + 16 * x);
    }
  }
  while (keys) {
    const int j = __builtin_ctzll(keys);
    keys &= keys - 1;
    const float* vj = v + static_cast<size_t>(j) * ldv;
    __m512 vx[NV];
#pragma GCC unroll 4
    for (int x = 0; x < NV; ++x) vx[x] = _mm512_load_ps(vj + 16 * x);  // padding lanes are 0
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 b = _mm512_set1_ps(p[r * kKvTile + j]);
#pragma GCC unroll 4
      for (int x = 0; x < NV; ++x) acc[r][x] = _mm512_fmadd_ps(b, vx[x], acc[r][x]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int x = 0; x < NV; ++x) {
      if (x < NV - 1) {
        _mm512_storeu_ps(o + r * ldo + 16 * x, acc[r][x]);
      } else {
        _mm512_mask_storeu_ps(o + r * ldo + 16 * x, tail, acc[r][x]);
      }
    }
  }
}

template <int NV>
void pv_cols(const float* p, int m, uint64_t valid, const float* v, int ldv, __mmask16 tail,
             float* o, int d) {
  constexpr int kRows = NV >= 3 ? 4 : 8;  // at most 16 accumulators
  for (int i0 = 0; i0 < m; i0 += kRows) {
    const int rows = std::min(kRows, m - i0);
    const float* pi = p + static_cast<size_t>(i0) * kKvTile;
    const uint64_t keys = nonzero_keys(pi, rows) & valid;
    if (keys == 0) continue;  // every term is skipped
    float* oi = o + static_cast<size_t>(i0) * d;
    switch (rows) {
      case 8:
        if constexpr (kRows >= 8) pv_block<8, NV>(pi, keys, v, ldv, tail, oi, d);
        break;
      case 7:
        if constexpr (kRows >= 7) pv_block<7, NV>(pi, keys, v, ldv, tail, oi, d);
        break;
      case 6:
        if constexpr (kRows >= 6) pv_block<6, NV>(pi, keys, v, ldv, tail, oi, d);
        break;
      case 5:
        if constexpr (kRows >= 5) pv_block<5, NV>(pi, keys, v, ldv, tail, oi, d);
        break;
      case 4:
        pv_block<4, NV>(pi, keys, v, ldv, tail, oi, d);
        break;
      case 3:
        pv_block<3, NV>(pi, keys, v, ldv, tail, oi, d);
        break;
      case 2:
        pv_block<2, NV>(pi, keys, v, ldv, tail, oi, d);
        break;
      default:
        pv_block<1, NV>(pi, keys, v, ldv, tail, oi, d);
        break;
    }
  }
}

// The portable kernel's loop, term by term skipping p == 0: for tiles with inf or NaN.
void pv_exact(const float* p, int m, int n, const float* v, int ldv, int d, float* o) {
  for (int i = 0; i < m; ++i) {
    float* oi = o + static_cast<size_t>(i) * d;
    for (int j = 0; j < n; ++j) {
      const float pj = p[static_cast<size_t>(i) * kKvTile + j];
      if (pj == 0.0f) continue;
      const __m512 b = _mm512_set1_ps(pj);
      const float* vj = v + static_cast<size_t>(j) * ldv;
      for (int c = 0; c < d; c += 16) {
        const __mmask16 k = lane_mask(d - c);
        const __m512 acc = _mm512_maskz_loadu_ps(k, oi + c);
        _mm512_mask_storeu_ps(oi + c, k, _mm512_fmadd_ps(b, _mm512_load_ps(vj + c), acc));
      }
    }
  }
}

void pv(const float* p, int m, int n, const void* packed_v, int d, float* o) {
  const PackHeader h = header_of(packed_v);
  const float* v = data_of(packed_v, h);
  const int ldv = padded(d);
  n = std::min(n, kKvTile);
  if (n <= 0 || m <= 0 || d <= 0) return;
  if (h.nonfinite) return pv_exact(p, m, n, v, ldv, d, o);
  const uint64_t valid = n >= 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1;
  // Channel blocks outermost: a block of V (kKvTile x 64 channels, 16 KiB) stays in L1 while
  // every block of rows passes over it.
  for (int c0 = 0; c0 < d; c0 += 64) {
    const int rem = std::min(64, d - c0);
    const __mmask16 tail = lane_mask(rem % 16 == 0 ? 16 : rem % 16);
    switch ((rem + 15) / 16) {
      case 4:
        pv_cols<4>(p, m, valid, v + c0, ldv, tail, o + c0, d);
        break;
      case 3:
        pv_cols<3>(p, m, valid, v + c0, ldv, tail, o + c0, d);
        break;
      case 2:
        pv_cols<2>(p, m, valid, v + c0, ldv, tail, o + c0, d);
        break;
      default:
        pv_cols<1>(p, m, valid, v + c0, ldv, tail, o + c0, d);
        break;
    }
  }
}

// ---- pt: acc += P^T rows, J keys x NV*16 channels per block, over rows [i0, i1) ----

template <int J, int NV>
inline void pt_block(const float* p, int i0, int i1, const float* rows, int ldr, __mmask16 tail,
                     float* acc, int lda) {
  __m512 a[J][NV];
#pragma GCC unroll 8
  for (int jj = 0; jj < J; ++jj) {
#pragma GCC unroll 4
    for (int x = 0; x < NV; ++x) {
      a[jj][x] = x < NV - 1 ? _mm512_loadu_ps(acc + jj * lda + 16 * x)
                            : _mm512_maskz_loadu_ps(tail, acc + jj * lda + 16 * x);
    }
  }
  for (int i = i0; i < i1; ++i) {
    const float* ri = rows + static_cast<size_t>(i) * ldr;
    const float* pi = p + static_cast<size_t>(i) * kKvTile;
    __m512 rx[NV];
#pragma GCC unroll 4
    for (int x = 0; x < NV; ++x) rx[x] = _mm512_load_ps(ri + 16 * x);  // padding lanes are 0
#pragma GCC unroll 8
    for (int jj = 0; jj < J; ++jj) {
      const __m512 b = _mm512_set1_ps(pi[jj]);
#pragma GCC unroll 4
      for (int x = 0; x < NV; ++x) a[jj][x] = _mm512_fmadd_ps(b, rx[x], a[jj][x]);
    }
  }
#pragma GCC unroll 8
  for (int jj = 0; jj < J; ++jj) {
#pragma GCC unroll 4
    for (int x = 0; x < NV; ++x) {
      if (x < NV - 1) {
        _mm512_storeu_ps(acc + jj * lda + 16 * x, a[jj][x]);
      } else {
        _mm512_mask_storeu_ps(acc + jj * lda + 16 * x, tail, a[jj][x]);
      }
    }
  }
}

// first[g]..last[g]: the rows with a non-zero p in keys 4g..4g+3 (first >= last: none).
struct KeyGroups {
  int first[kKvTile / 4], last[kKvTile / 4];
};

template <int NV>
void pt_cols(const float* p, const KeyGroups& kg, const float* rows, int ldr, __mmask16 tail,
             float* acc, int d) {
  constexpr int kKeys = NV >= 3 ? 4 : 8;  // at most 16 accumulators
  constexpr int kGroups = kKeys / 4;
  for (int j0 = 0; j0 < kKvTile; j0 += kKeys) {
    int i0 = kg.first[j0 / 4], i1 = kg.last[j0 / 4];
    for (int g = 1; g < kGroups; ++g) {
      i0 = std::min(i0, kg.first[j0 / 4 + g]);
      i1 = std::max(i1, kg.last[j0 / 4 + g]);
    }
    if (i0 >= i1) continue;  // every term is skipped
    pt_block<kKeys, NV>(p + j0, i0, i1, rows, ldr, tail, acc + static_cast<size_t>(j0) * d, d);
  }
}

void pt_exact(const float* p, int m, const float* rows, int ldr, int d, float* acc) {
  for (int i = 0; i < m; ++i) {
    const float* ri = rows + static_cast<size_t>(i) * ldr;
    for (int j = 0; j < kKvTile; ++j) {
      const float pij = p[static_cast<size_t>(i) * kKvTile + j];
      if (pij == 0.0f) continue;
      const __m512 b = _mm512_set1_ps(pij);
      float* aj = acc + static_cast<size_t>(j) * d;
      for (int c = 0; c < d; c += 16) {
        const __mmask16 k = lane_mask(d - c);
        const __m512 a = _mm512_maskz_loadu_ps(k, aj + c);
        _mm512_mask_storeu_ps(aj + c, k, _mm512_fmadd_ps(b, _mm512_load_ps(ri + c), a));
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
  // The first and last row with a non-zero p of each group: scan down until every group seen
  // has its first row, and up for the last rows (each group's bit is handled once).
  KeyGroups kg;
  std::fill(std::begin(kg.first), std::end(kg.first), m);
  std::fill(std::begin(kg.last), std::end(kg.last), 0);
  const auto group_bits = [](uint64_t keys) {  // bit 4g set where a key of group g is set
    return (keys | keys >> 1 | keys >> 2 | keys >> 3) & 0x1111111111111111ull;
  };
  uint64_t seen = 0;
  for (int i = 0; i < m; ++i) {
    for (uint64_t g = group_bits(nonzero_keys(p + static_cast<size_t>(i) * kKvTile, 1)) & ~seen; g;
         g &= g - 1) {
      kg.first[__builtin_ctzll(g) / 4] = i;
      seen |= g & -g;
    }
  }
  uint64_t all = seen;
  seen = 0;
  for (int i = m - 1; i >= 0 && seen != all; --i) {
    for (uint64_t g = group_bits(nonzero_keys(p + static_cast<size_t>(i) * kKvTile, 1)) & ~seen; g;
         g &= g - 1) {
      kg.last[__builtin_ctzll(g) / 4] = i + 1;
      seen |= g & -g;
    }
  }
  for (int c0 = 0; c0 < d; c0 += 64) {
    const int rem = std::min(64, d - c0);
    const __mmask16 tail = lane_mask(rem % 16 == 0 ? 16 : rem % 16);
    switch ((rem + 15) / 16) {
      case 4:
        pt_cols<4>(p, kg, rows + c0, ldr, tail, acc + c0, d);
        break;
      case 3:
        pt_cols<3>(p, kg, rows + c0, ldr, tail, acc + c0, d);
        break;
      case 2:
        pt_cols<2>(p, kg, rows + c0, ldr, tail, acc + c0, d);
        break;
      default:
        pt_cols<1>(p, kg, rows + c0, ldr, tail, acc + c0, d);
        break;
    }
  }
}

}  // namespace

FLASHMLA_TARGET_END

const AttnMicrokernel& avx512_microkernel() {
  static const AttnMicrokernel k{
      .name = "avx512",
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
