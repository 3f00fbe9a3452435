// Run-time choice of the CPU microkernel: what the CPU (and the OS, for the wide registers)
// supports, capped by the environment variable FLASHMLA_ISA.
#pragma once

#include <optional>
#include <string_view>

namespace flashmla::cpu {

// In increasing order of capability; a cap admits every level up to it.
enum class Isa {
  portable,    // plain C++ for the baseline x86-64 (or any other CPU)
  avx2,        // AVX2 + FMA (256-bit): fp32 products
  avx512,      // AVX-512 F/BW/VL/DQ: fp32 products
  avx512bf16,  // + AVX512-BF16: bf16 products (vdpbf16ps), fp32 accumulation
  amx,         // + AMX-TILE/AMX-BF16 with the OS's permission: bf16 products on tiles (tdpbf16ps)
};

const char* isa_name(Isa isa);
std::optional<Isa> isa_from_name(std::string_view name);

// The best level this CPU supports. For amx, Linux must also grant the process the tile data
// state (arch_prctl ARCH_REQ_XCOMP_PERM, requested here); if it refuses, avx512bf16.
Isa detected_isa();

// min(detected_isa(), cap), with cap from FLASHMLA_ISA (unset, empty or "native": no cap). An
// unknown value is ignored with a warning on stderr (the library never exits).
// FLASHMLA_ISA=amx-emulated selects the amx level on a software model of the tile instructions
// (amx_emulated_microkernel(): slow, for testing the AMX kernel on CPUs without AMX); it needs
// the avx512bf16 level and is ignored with a warning without it.
Isa active_isa();

// Whether the amx level runs on the tile emulation (FLASHMLA_ISA=amx-emulated).
bool amx_emulated();

}  // namespace flashmla::cpu
