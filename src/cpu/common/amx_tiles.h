// Intel AMX tiles (palette 1: eight tiles of 16 rows x 64 bytes) for the amx microkernel: the
// 64-byte tile configuration that LDTILECFG loads, and two implementations of the same tile
// operations, selected by the kernel's template parameter:
//   - HardwareTiles (microkernel_amx.cpp): the AMX instructions themselves;
//   - EmulatedTiles (here, amx_emulator.cpp): a software model of them, written from the
//     instructions' documented semantics (Intel SDM: LDTILECFG, TILELOADD, TILESTORED, TILEZERO,
//     TILERELEASE, TDPBF16PS), which raises std::logic_error where the CPU would fault (#GP, #UD).
// The emulation lets the kernel's tiling, operand layouts and bounds be tested on CPUs without
// AMX (FLASHMLA_ISA=amx-emulated): the same kernel source runs on either.
#pragma once

#include <cstddef>
#include <cstdint>

namespace flashmla::cpu::amx {

inline constexpr int kTiles = 8;        // palette 1: tmm0..tmm7
inline constexpr int kMaxRows = 16;     // rows per tile
inline constexpr int kMaxColsb = 64;    // bytes per tile row

// LDTILECFG's memory operand (Intel SDM, "LDTILECFG"): byte 0 palette, byte 1 start_row, bytes
// 16-47 colsb of tiles 0-15 (16-bit), bytes 48-63 rows of tiles 0-15; everything else, and the
// entries of tiles palette 1 does not have (8-15), must be zero.
struct alignas(64) TileConfig {
  uint8_t palette = 0;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64);
static_assert(offsetof(TileConfig, colsb) == 16 && offsetof(TileConfig, rows) == 48);

// Palette 1 with every tile of `tiles` configured as 16 rows x 64 bytes.
inline TileConfig full_tile_config(int tiles = kTiles) {
  TileConfig c;
  c.palette = 1;
  for (int t = 0; t < tiles && t < kTiles; ++t) {
    c.colsb[t] = kMaxColsb;
    c.rows[t] = kMaxRows;
  }
  return c;
}

// The software model. State is per thread, as the tile registers are. Numerics of TDPBF16PS as
// the SDM's pseudocode gives them: for each element of the destination, the even and the odd
// products of the bf16 pairs are accumulated in two fp32 chains that start at zero (fused
// multiply-add, round to nearest even), their sum is added to the destination; bf16 inputs and
// the destination are read with denormals as zero and every fp32 result is flushed to zero if
// denormal. A CPU may round differently inside a row (the order of additions is not
// architectural), so tests compare the emulated and the hardware products with tolerances.
namespace emulated {
void load_config(const TileConfig& cfg);  // LDTILECFG (palette 0: release)
void release();                           // TILERELEASE
void load(int tile, const void* base, size_t stride);  // TILELOADD
void store(int tile, void* base, size_t stride);       // TILESTORED
void zero(int tile);                                   // TILEZERO
void dpbf16ps(int dst, int src1, int src2);            // TDPBF16PS dst, src1, src2
bool configured();
}  // namespace emulated

struct EmulatedTiles {
  static void config(const TileConfig& c) { emulated::load_config(c); }
  static void release() { emulated::release(); }
  template <int T>
  static void load(const void* base, size_t stride) { emulated::load(T, base, stride); }
  template <int T>
  static void store(void* base, size_t stride) { emulated::store(T, base, stride); }
  template <int T>
  static void zero() { emulated::zero(T); }
  template <int C, int A, int B>
  static void dpbf16ps() { emulated::dpbf16ps(C, A, B); }
};

}  // namespace flashmla::cpu::amx
