// AMX-BF16 microkernel: both products on AMX tiles (TDPBF16PS: bf16 pairs, fp32 accumulation),
// on the avx512bf16 kernel's packed operands. One kernel source, two tile implementations
// (amx_tiles.h): the AMX instructions (amx_microkernel(), for CPUs with AMX-TILE + AMX-BF16
// once Linux has granted the tile state, see isa.cpp) and their software model
// (amx_emulated_microkernel(), FLASHMLA_ISA=amx-emulated, so that this file's tiling, operand
// layouts and bounds run in the test suites on CPUs without AMX).
//
// Numerics are those of the avx512bf16 kernel (bf16 operands and probabilities rounded to
// nearest even, fp32 accumulation, subnormals flushed), so packing is that kernel's: pack_q,
// pack_k/v/kv, pack_rows and qk_tokens (few rows, token-major) are its functions.
//
// Tiles (palette 1, every tile 16 rows x 64 bytes, configured once per call and released at
// its end): tmm0-3 accumulate a 16 x 64 block of fp32 results (four 16 x 16 tiles), tmm4 holds
// the left operand (16 rows x 16 bf16 pairs), tmm6 / tmm7 alternate as the right operand (16
// pair rows x 16 columns, the "VNNI" layout the packed K / V / rows already have):
//   qk: S (16 query rows x 64 tokens) += Q (rows x channel pairs) . K (channel pairs x tokens);
//   pv: O (16 rows x 64 channels)      += P (rows x token pairs)  . V (token pairs x channels);
//   pt: acc (16 keys x 64 channels)    += Pᵀ (keys x row pairs)   . rows (row pairs x channels).
// A tile load reads whole rows of 64 bytes; where the data has fewer rows or columns (m, d or
// the number of row pairs not a multiple of 16) the operand goes through a zero-filled bounce
// buffer, so no tile access reaches past the caller's buffers.
//
// NaN safety: with a non-finite V (or rows) tile, pv / pt defer to the avx512bf16 kernel's exact
// path (a zero probability contributes exactly 0, never 0 * inf); otherwise p == 0 times a finite
// value is 0 as everywhere. Probabilities for tokens >= n are read as 0.
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/common/amx_tiles.h"
#include "cpu/common/bf16_pair_layout.h"
#include "cpu/common/microkernel.h"
#include "cpu/common/target.h"

namespace flashmla::cpu {
namespace {

using namespace bf16_pairs;
using amx::TileConfig;

constexpr int kTileRows = amx::kMaxRows;  // 16 rows per tile
constexpr int kLanes = 16;                // fp32 (or bf16 pairs) per tile row
constexpr size_t kRowBytes = amx::kMaxColsb;

// The AMX instructions, written out per tile number (each names its tiles in the opcode). The
// asm declares a memory clobber: tile loads and stores read and write memory the compiler does
// not otherwise see (the bounce buffers filled just before).
#define FLASHMLA_TILE_CASES(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)

struct HardwareTiles {
  static void config(const TileConfig& c) { asm volatile("ldtilecfg %0" ::"m"(c) : "memory"); }
  static void release() { asm volatile("tilerelease" ::: "memory"); }

  template <int T>
  static void load(const void* base, size_t stride) {
#define FLASHMLA_TILE_LOAD(t)                                                          \
  if constexpr (T == t) {                                                              \
    asm volatile("tileloadd (%0,%1,1), %%tmm" #t ::"r"(base), "r"(stride) : "memory"); \
  }
    FLASHMLA_TILE_CASES(FLASHMLA_TILE_LOAD)
#undef FLASHMLA_TILE_LOAD
  }
  template <int T>
  static void store(void* base, size_t stride) {
#define FLASHMLA_TILE_STORE(t)                                                             \
  if constexpr (T == t) {                                                                  \
    asm volatile("tilestored %%tmm" #t ", (%0,%1,1)" ::"r"(base), "r"(stride) : "memory"); \
  }
    FLASHMLA_TILE_CASES(FLASHMLA_TILE_STORE)
#undef FLASHMLA_TILE_STORE
  }
  template <int T>
  static void zero() {
#define FLASHMLA_TILE_ZERO(t) \
  if constexpr (T == t) asm volatile("tilezero %%tmm" #t ::: "memory");
    FLASHMLA_TILE_CASES(FLASHMLA_TILE_ZERO)
#undef FLASHMLA_TILE_ZERO
  }
  // tmm<C> += tmm<A> . tmm<B> for the tiles this kernel uses: C in 0-3, A = 4, B in 6-7. AT&T
  // operand order: src2, src1, dst.
  template <int C, int A, int B>
  static void dpbf16ps() {
    static_assert(A == 4 && (B == 6 || B == 7) && C >= 0 && C <= 3);
#define FLASHMLA_TILE_DP(c, b)    \
  if constexpr (C == c && B == b) \
    asm volatile("tdpbf16ps %%tmm" #b ", %%tmm4, %%tmm" #c ::: "memory");
    // clang-format off
    FLASHMLA_TILE_DP(0, 6) FLASHMLA_TILE_DP(0, 7) FLASHMLA_TILE_DP(1, 6) FLASHMLA_TILE_DP(1, 7)
    FLASHMLA_TILE_DP(2, 6) FLASHMLA_TILE_DP(2, 7) FLASHMLA_TILE_DP(3, 6) FLASHMLA_TILE_DP(3, 7)
    // clang-format on
#undef FLASHMLA_TILE_DP
  }
};
#undef FLASHMLA_TILE_CASES

// Tiles configured for the duration of one call.
template <class Tiles>
struct TileSession {
  TileSession() {
    static const TileConfig cfg = amx::full_tile_config();
    Tiles::config(cfg);
  }
  ~TileSession() { Tiles::release(); }
  TileSession(const TileSession&) = delete;
  TileSession& operator=(const TileSession&) = delete;
};

// A 16 x 64-byte operand copied from `rows` rows of `bytes` bytes (stride `stride`), the rest 0.
struct alignas(64) Bounce {
  unsigned char b[kTileRows][kRowBytes];
  const void* fill(const void* src, size_t stride, int rows, size_t bytes) {
    std::memset(b, 0, sizeof b);
    for (int r = 0; r < rows; ++r) {
      std::memcpy(b[r], static_cast<const unsigned char*>(src) + r * stride, bytes);
    }
    return b;
  }
  void drain(void* dst, size_t stride, int rows, size_t bytes) const {
    for (int r = 0; r < rows; ++r) {
      std::memcpy(static_cast<unsigned char*>(dst) + r * stride, b[r], bytes);
    }
  }
};

// Loads tile T from `rows` x `bytes` of data at src (stride): straight from memory when it is a
// whole 16 x 64-byte block, else through `bounce`.
template <class Tiles, int T>
inline void load_operand(const void* src, size_t stride, int rows, size_t bytes, Bounce& bounce) {
  if (rows == kTileRows && bytes == kRowBytes) {
    Tiles::template load<T>(src, stride);
  } else {
    Tiles::template load<T>(bounce.fill(src, stride, rows, bytes), kRowBytes);
  }
}

// The fp32 accumulator tile C (rows x cols of dst, row stride `ld` floats): load / store.
template <class Tiles, int C>
inline void load_acc(const float* dst, int ld, int rows, int cols, Bounce& bounce) {
  load_operand<Tiles, C>(dst, sizeof(float) * ld, rows, sizeof(float) * cols, bounce);
}
template <class Tiles, int C>
inline void store_acc(float* dst, int ld, int rows, int cols, Bounce& bounce) {
  if (rows == kTileRows && cols == kLanes) {
    Tiles::template store<C>(dst, sizeof(float) * ld);
  } else {
    Tiles::template store<C>(bounce.b, kRowBytes);
    bounce.drain(dst, sizeof(float) * ld, rows, sizeof(float) * cols);
  }
}

// One k-step for accumulator C: right operand from `src` (16 or `rows` pair rows x `cols`
// columns, stride in bytes) into tmm6 / tmm7 (alternating, so a load overlaps the previous
// product), times tmm4.
template <class Tiles, int C>
inline void step(const uint32_t* src, size_t stride, int rows, int cols, Bounce& bounce) {
  constexpr int B = 6 + C % 2;
  load_operand<Tiles, B>(src, stride, rows, sizeof(uint32_t) * cols, bounce);
  Tiles::template dpbf16ps<C, 4, B>();
}

// Runs f(std::integral_constant<int, G>) for the accumulator tiles G < groups (groups <= 4).
template <class F>
inline void for_groups(int groups, F&& f) {
  if (groups > 0) f(std::integral_constant<int, 0>{});
  if (groups > 1) f(std::integral_constant<int, 1>{});
  if (groups > 2) f(std::integral_constant<int, 2>{});
  if (groups > 3) f(std::integral_constant<int, 3>{});
}

FLASHMLA_TARGET_BEGIN("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")

inline __mmask16 lane_mask(int count) {  // the first min(max(count, 0), 16) lanes
  return count >= 16 ? __mmask16(0xffff) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1);
}

// 32 fp32 probabilities (lanes >= count read as 0) as 16 bf16 pairs, rounded as avx512bf16's pv.
inline __m512i bf16_pairs32(const float* p, int count) {
  const __m512 lo = _mm512_maskz_loadu_ps(lane_mask(count), p);
  const __m512 hi = _mm512_maskz_loadu_ps(lane_mask(count - 16), p + 16);
  return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));
}

// 16 fp32 as 16 bf16 (round to nearest even, subnormals to zero), as avx512bf16's pt.
inline __m256i bf16x16(const float* p) {
  return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_loadu_ps(p)));
}

// ---- qk: s = scale * Q K^T ----

template <class Tiles>
void qk_t(const void* packed_q, int m, const void* packed_k, int d, float scale, float* s) {
  const auto* q = static_cast<const uint32_t*>(packed_q);
  const uint32_t* kt = data_of(packed_k, header_of(packed_k));
  const int np = pairs(d);
  const size_t ldq = sizeof(uint32_t) * np, ldk = sizeof(uint32_t) * kKvTile;
  if (m <= 0) return;
  TileSession<Tiles> session;
  Bounce bounce;
  for (int i0 = 0; i0 < m; i0 += kTileRows) {
    const int rows = std::min(kTileRows, m - i0);
    for_groups(4, [&](auto g) { Tiles::template zero<decltype(g)::value>(); });
    for (int c0 = 0; c0 < np; c0 += kLanes) {
      const int kp = std::min(kLanes, np - c0);  // channel pairs in this step
      load_operand<Tiles, 4>(q + static_cast<size_t>(i0) * np + c0, ldq, rows,
                             sizeof(uint32_t) * kp, bounce);
      const uint32_t* kc = kt + static_cast<size_t>(c0) * kKvTile;
      for_groups(4, [&](auto g) {
        constexpr int G = decltype(g)::value;
        step<Tiles, G>(kc + kLanes * G, ldk, kp, kLanes, bounce);
      });
    }
    float* si = s + static_cast<size_t>(i0) * kKvTile;
    for_groups(4, [&](auto g) {
      constexpr int G = decltype(g)::value;
      store_acc<Tiles, G>(si + kLanes * G, kKvTile, rows, kLanes, bounce);
    });
    const __m512 sc = _mm512_set1_ps(scale);
    for (int r = 0; r < rows; ++r) {
      for (int v = 0; v < kKvTile; v += 16) {
        float* x = si + static_cast<size_t>(r) * kKvTile + v;
        _mm512_storeu_ps(x, _mm512_mul_ps(_mm512_loadu_ps(x), sc));
      }
    }
  }
}

// ---- pv: o += P V ----

template <class Tiles>
void pv_t(const float* p, int m, int n, const void* packed_v, int d, float* o) {
  const PackHeader h = header_of(packed_v);
  if (h.nonfinite) return avx512bf16_microkernel().pv(p, m, n, packed_v, d, o);
  const uint32_t* v = data_of(packed_v, h);
  const size_t ldv = sizeof(uint32_t) * padded(d);
  n = std::min(n, kKvTile);
  if (n <= 0 || m <= 0 || d <= 0) return;
  const int ksteps = n > 2 * kLanes ? 2 : 1;  // tokens 0-31, 32-63
  TileSession<Tiles> session;
  Bounce bounce;
  alignas(64) uint32_t pb[kTileRows][kTokenPairs];  // P rows as bf16 token pairs
  for (int i0 = 0; i0 < m; i0 += kTileRows) {
    const int rows = std::min(kTileRows, m - i0);
    for (int r = 0; r < kTileRows; ++r) {
      const float* pr = p + static_cast<size_t>(i0 + r) * kKvTile;
      const bool real = r < rows;
      _mm512_store_si512(pb[r], real ? bf16_pairs32(pr, n) : _mm512_setzero_si512());
      _mm512_store_si512(pb[r] + 16, real ? bf16_pairs32(pr + 32, n - 32) : _mm512_setzero_si512());
    }
    float* oi = o + static_cast<size_t>(i0) * d;
    for (int c0 = 0; c0 < d; c0 += 4 * kLanes) {
      const int groups = std::min(4, (d - c0 + kLanes - 1) / kLanes);
      auto cols = [&](int g) { return std::min(kLanes, d - c0 - kLanes * g); };
      for_groups(groups, [&](auto g) {
        constexpr int G = decltype(g)::value;
        load_acc<Tiles, G>(oi + c0 + kLanes * G, d, rows, cols(G), bounce);
      });
      for (int kb = 0; kb < ksteps; ++kb) {
        Tiles::template load<4>(&pb[0][kLanes * kb], sizeof pb[0]);
        // V's columns are padded to 16 with zeros, so whole tiles are always in bounds.
        const uint32_t* vk = v + static_cast<size_t>(kLanes * kb) * padded(d) + c0;
        for_groups(groups, [&](auto g) {
          constexpr int G = decltype(g)::value;
          step<Tiles, G>(vk + kLanes * G, ldv, kTileRows, kLanes, bounce);
        });
      }
      for_groups(groups, [&](auto g) {
        constexpr int G = decltype(g)::value;
        store_acc<Tiles, G>(oi + c0 + kLanes * G, d, rows, cols(G), bounce);
      });
    }
  }
}

// ---- pt: acc += P^T rows ----

template <class Tiles>
void pt_t(const float* p, int m, const void* packed_rows, int d, float* acc) {
  const PackHeader h = header_of(packed_rows);
  if (h.nonfinite) return avx512bf16_microkernel().pt(p, m, packed_rows, d, acc);
  const uint32_t* x = data_of(packed_rows, h);
  const size_t ldx = sizeof(uint32_t) * padded(d);
  if (m <= 0 || d <= 0) return;
  const int np = pairs(m);
  TileSession<Tiles> session;
  Bounce bounce;
  alignas(64) uint32_t pp[kTileRows][kKvTile];  // row pair i2, key j: (p[2 i2][j], p[2 i2 + 1][j])
  alignas(64) uint32_t at[kKvTile][kLanes];     // the same transposed: key j, row pair i2
  for (int r0 = 0; r0 < np; r0 += kLanes) {
    const int kp = std::min(kLanes, np - r0);  // row pairs in this step
    for (int i2 = 0; i2 < kTileRows; ++i2) {
      const int ia = 2 * (r0 + i2), ib = ia + 1;
      const float* pa = p + static_cast<size_t>(ia) * kKvTile;
      const float* pb = p + static_cast<size_t>(ib) * kKvTile;
      for (int v = 0; v < kKvTile; v += 16) {
        const __m256i lo = i2 < kp ? bf16x16(pa + v) : _mm256_setzero_si256();
        const __m256i hi = i2 < kp && ib < m ? bf16x16(pb + v) : _mm256_setzero_si256();
        _mm512_store_si512(&pp[i2][v],
                           _mm512_or_si512(_mm512_cvtepu16_epi32(lo),
                                           _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16)));
      }
    }
    for (int j = 0; j < kKvTile; ++j) {
      for (int i2 = 0; i2 < kLanes; ++i2) at[j][i2] = pp[i2][j];
    }
    const uint32_t* xr = x + static_cast<size_t>(r0) * padded(d);
    for (int j0 = 0; j0 < kKvTile; j0 += kTileRows) {
      Tiles::template load<4>(at[j0], sizeof at[0]);
      float* aj = acc + static_cast<size_t>(j0) * d;
      for (int c0 = 0; c0 < d; c0 += 4 * kLanes) {
        const int groups = std::min(4, (d - c0 + kLanes - 1) / kLanes);
        auto cols = [&](int g) { return std::min(kLanes, d - c0 - kLanes * g); };
        for_groups(groups, [&](auto g) {
          constexpr int G = decltype(g)::value;
          load_acc<Tiles, G>(aj + c0 + kLanes * G, d, kTileRows, cols(G), bounce);
        });
        // Rows' columns are padded to 16; the last step may have fewer than 16 row pairs.
        for_groups(groups, [&](auto g) {
          constexpr int G = decltype(g)::value;
          step<Tiles, G>(xr + c0 + kLanes * G, ldx, kp, kLanes, bounce);
        });
        for_groups(groups, [&](auto g) {
          constexpr int G = decltype(g)::value;
          store_acc<Tiles, G>(aj + c0 + kLanes * G, d, kTileRows, cols(G), bounce);
        });
      }
    }
  }
}

FLASHMLA_TARGET_END

template <class Tiles>
AttnMicrokernel make_kernel(const char* name) {
  AttnMicrokernel k = avx512bf16_microkernel();  // packing, sizes, qk_tokens
  k.name = name;
  k.qk = qk_t<Tiles>;
  k.pv = pv_t<Tiles>;
  k.pt = pt_t<Tiles>;
  return k;
}

}  // namespace

const AttnMicrokernel& amx_microkernel() {
  static const AttnMicrokernel k = make_kernel<HardwareTiles>("amx");
  return k;
}

const AttnMicrokernel& amx_emulated_microkernel() {
  static const AttnMicrokernel k = make_kernel<amx::EmulatedTiles>("amx-emulated");
  return k;
}

}  // namespace flashmla::cpu
