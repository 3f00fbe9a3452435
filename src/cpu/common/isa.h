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
};

const char* isa_name(Isa isa);
std::optional<Isa> isa_from_name(std::string_view name);

// The best level this CPU supports.
Isa detected_isa();

// min(detected_isa(), cap), with cap from FLASHMLA_ISA (unset, empty or "native": no cap). An
// unknown value is ignored with a warning on stderr (the library never exits).
Isa active_isa();

}  // namespace flashmla::cpu
