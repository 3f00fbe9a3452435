// Software model of the AMX tile instructions (see amx_tiles.h). Plain C++: runs on any CPU.
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "cpu/common/amx_tiles.h"

namespace flashmla::cpu::amx::emulated {
namespace {

struct State {
  bool configured = false;
  TileConfig cfg;
  alignas(64) unsigned char data[kTiles][kMaxRows][kMaxColsb];
};

thread_local State state;

[[noreturn]] void fault(const std::string& what) {
  throw std::logic_error("AMX emulation: " + what);
}

// The configured tile t (#UD if tiles are not configured, t is not a tile of palette 1, or t
// has no rows).
void check_tile(int t, const char* insn) {
  if (!state.configured) fault(std::string(insn) + " with tiles not configured");
  if (t < 0 || t >= kTiles) fault(std::string(insn) + ": no tile tmm" + std::to_string(t));
  if (state.cfg.rows[t] == 0 || state.cfg.colsb[t] == 0) {
    fault(std::string(insn) + ": tmm" + std::to_string(t) + " is not configured");
  }
}

// The arithmetic of TDPBF16PS (from here to dot_rows) reads and writes only the emulator's own
// tile arrays, within bounds that dpbf16ps has checked against the tile configuration, so the
// sanitizers leave it uninstrumented: instrumented, it was most of the time of the AMX-emulated
// runs of the sanitized kernel suites. TILELOADD and TILESTORED, which touch the caller's memory,
// stay instrumented. Every function inlined into dot_rows_body carries the attribute, and it
// uses compiler builtins rather than std::fma, std::fabs or std::bit_cast: GCC does not inline
// across differing sanitizer attributes, and an out-of-line call per element stops the loops
// from being vectorised.
#define FLASHMLA_TILE_ARITHMETIC __attribute__((no_sanitize("address", "undefined")))

FLASHMLA_TILE_ARITHMETIC float daz(float x) {  // denormal inputs as (signed) zero
  return __builtin_fabsf(x) < std::numeric_limits<float>::min() ? __builtin_copysignf(0.0f, x)
                                                                 : x;
}
// Denormal results flushed to (signed) zero.
FLASHMLA_TILE_ARITHMETIC float ftz(float x) { return daz(x); }

// make_fp32: the bf16 in the upper half.
FLASHMLA_TILE_ARITHMETIC float bf16_at(const unsigned char* row, int index) {
  uint16_t h;
  std::memcpy(&h, row + 2 * index, 2);
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float x;
  std::memcpy(&x, &bits, 4);
  return daz(x);
}


// The operands as fp32 (denormals as zero): a row of bf16 pairs split into even and odd halves.
FLASHMLA_TILE_ARITHMETIC void split_pairs(const unsigned char* row, int count, float* even,
                                          float* odd) {
  for (int i = 0; i < count; ++i) {
    even[i] = bf16_at(row, 2 * i);
    odd[i] = bf16_at(row, 2 * i + 1);
  }
}

// The arithmetic of TDPBF16PS on tile data (rows of dst / src1, k_pairs bf16 pairs per src1 row
// = rows of src2, n_out fp32 per dst row). Inlined into a plain and an AVX-512 copy (dot_rows
// picks one), since the emulation runs whole kernel test suites. (Not target_clones: its ifunc
// resolver runs before the sanitizers' runtimes are up.)
FLASHMLA_TILE_ARITHMETIC __attribute__((always_inline)) inline void dot_rows_body(
    int rows, int k_pairs, int n_out, const unsigned char (*a)[kMaxColsb],
    const unsigned char (*b)[kMaxColsb], unsigned char (*c)[kMaxColsb]) {
  float b_even[kMaxRows][16] = {}, b_odd[kMaxRows][16] = {};
  for (int k = 0; k < k_pairs; ++k) split_pairs(b[k], n_out, b_even[k], b_odd[k]);
  for (int m = 0; m < rows; ++m) {
    float a_even[16], a_odd[16];
    split_pairs(a[m], k_pairs, a_even, a_odd);
    float even[16] = {}, odd[16] = {};
    for (int k = 0; k < k_pairs; ++k) {
      for (int n = 0; n < 16; ++n) {  // all 16 lanes (vectorised); lanes >= n_out unused
        even[n] = ftz(__builtin_fmaf(a_even[k], b_even[k][n], even[n]));
        odd[n] = ftz(__builtin_fmaf(a_odd[k], b_odd[k][n], odd[n]));
      }
    }
    for (int n = 0; n < n_out; ++n) {
      float acc;
      std::memcpy(&acc, c[m] + 4 * n, 4);
      acc = ftz(daz(acc) + ftz(even[n] + odd[n]));
      std::memcpy(c[m] + 4 * n, &acc, 4);
    }
  }
}

FLASHMLA_TILE_ARITHMETIC __attribute__((target("avx512f"))) void dot_rows_avx512(
    int rows, int k_pairs, int n_out, const unsigned char (*a)[kMaxColsb],
    const unsigned char (*b)[kMaxColsb], unsigned char (*c)[kMaxColsb]) {
  dot_rows_body(rows, k_pairs, n_out, a, b, c);
}

FLASHMLA_TILE_ARITHMETIC void dot_rows_plain(
    int rows, int k_pairs, int n_out, const unsigned char (*a)[kMaxColsb],
    const unsigned char (*b)[kMaxColsb], unsigned char (*c)[kMaxColsb]) {
  dot_rows_body(rows, k_pairs, n_out, a, b, c);
}

void dot_rows(int rows, int k_pairs, int n_out, const unsigned char (*a)[kMaxColsb],
              const unsigned char (*b)[kMaxColsb], unsigned char (*c)[kMaxColsb]) {
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  (avx512 ? dot_rows_avx512 : dot_rows_plain)(rows, k_pairs, n_out, a, b, c);
}

}  // namespace

bool configured() { return state.configured; }

void release() {
  state.configured = false;
  state.cfg = TileConfig{};
  std::memset(state.data, 0, sizeof state.data);
}

void load_config(const TileConfig& cfg) {
  if (cfg.palette == 0) return release();
  if (cfg.palette != 1) fault("LDTILECFG: palette " + std::to_string(cfg.palette) + " (only 1)");
  for (unsigned char b : cfg.reserved) {
    if (b != 0) fault("LDTILECFG: reserved bytes 2-15 must be zero");
  }
  for (int t = 0; t < 16; ++t) {
    const bool exists = t < kTiles;
    if (!exists && (cfg.colsb[t] != 0 || cfg.rows[t] != 0)) {
      fault("LDTILECFG: palette 1 has no tile " + std::to_string(t));
    }
    if (cfg.rows[t] > kMaxRows || cfg.colsb[t] > kMaxColsb) {
      fault("LDTILECFG: tile " + std::to_string(t) + " larger than 16 rows x 64 bytes");
    }
    if ((cfg.rows[t] == 0) != (cfg.colsb[t] == 0)) {
      fault("LDTILECFG: tile " + std::to_string(t) + " has rows or bytes per row but not both");
    }
  }
  if (cfg.start_row != 0) fault("LDTILECFG: start_row must be 0 here");
  state.cfg = cfg;
  state.configured = true;
  std::memset(state.data, 0, sizeof state.data);  // LDTILECFG zeroes the tile data
}

void load(int t, const void* base, size_t stride) {
  check_tile(t, "TILELOADD");
  const int rows = state.cfg.rows[t], colsb = state.cfg.colsb[t];
  std::memset(state.data[t], 0, sizeof state.data[t]);  // bytes past colsb / rows read as zero
  for (int r = 0; r < rows; ++r) {
    std::memcpy(state.data[t][r], static_cast<const unsigned char*>(base) + r * stride, colsb);
  }
}

void store(int t, void* base, size_t stride) {
  check_tile(t, "TILESTORED");
  const int rows = state.cfg.rows[t], colsb = state.cfg.colsb[t];
  for (int r = 0; r < rows; ++r) {
    std::memcpy(static_cast<unsigned char*>(base) + r * stride, state.data[t][r], colsb);
  }
}

void zero(int t) {
  check_tile(t, "TILEZERO");
  std::memset(state.data[t], 0, sizeof state.data[t]);
}

void dpbf16ps(int c, int a, int b) {
  check_tile(c, "TDPBF16PS");
  check_tile(a, "TDPBF16PS");
  check_tile(b, "TDPBF16PS");
  if (c == a || c == b || a == b) fault("TDPBF16PS: the three tiles must differ");
  const TileConfig& g = state.cfg;
  if (g.colsb[c] % 4 != 0 || g.colsb[a] % 4 != 0 || g.colsb[b] % 4 != 0) {
    fault("TDPBF16PS: bytes per row must be a multiple of 4");
  }
  if (g.rows[a] != g.rows[c]) fault("TDPBF16PS: src1 rows != dst rows");
  if (g.colsb[b] != g.colsb[c]) fault("TDPBF16PS: src2 bytes per row != dst bytes per row");
  if (g.rows[b] != g.colsb[a] / 4) fault("TDPBF16PS: src2 rows != src1 pairs per row");
  dot_rows(g.rows[c], g.colsb[a] / 4, g.colsb[c] / 4, state.data[a], state.data[b],
           state.data[c]);
}

}  // namespace flashmla::cpu::amx::emulated
