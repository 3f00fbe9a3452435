// Run-time choice of the CPU microkernel (src/cpu/common/isa.h).
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "cpu/common/isa.h"
#include "cpu/common/microkernel.h"
#include "flashmla/context.h"

namespace flashmla::cpu {
namespace {

TEST(Isa, NamesRoundTrip) {
  for (Isa isa : {Isa::portable, Isa::avx2, Isa::avx512, Isa::avx512bf16, Isa::amx}) {
    EXPECT_EQ(isa_from_name(isa_name(isa)), isa);
  }
  EXPECT_STREQ(isa_name(Isa::avx2), "avx2");
  EXPECT_FALSE(isa_from_name("avx1024").has_value());
  EXPECT_FALSE(isa_from_name("").has_value());
}

TEST(Isa, DetectionMatchesCpuid) {
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  const bool bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  // amx also needs the OS's permission, which CPUID cannot tell.
  const bool amx = bf16 && __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16");
  const Isa got = detected_isa();
  if (amx && got == Isa::amx) return;
  EXPECT_NE(got, Isa::amx) << "amx detected where libgcc's CPUID probe finds no AMX";
  EXPECT_EQ(got, bf16     ? Isa::avx512bf16
                 : avx512 ? Isa::avx512
                 : avx2   ? Isa::avx2
                          : Isa::portable);
}

// The active level is the detected one capped by FLASHMLA_ISA (ctest runs this suite with and
// without the cap), and every driver's microkernel carries its name.
// FLASHMLA_ISA=amx-emulated selects the AMX kernel on the tile emulation where the CPU has
// AVX512-BF16 (and is ignored otherwise).
TEST(Isa, ActiveIsDetectedCappedByEnvironment) {
  const char* env = std::getenv("FLASHMLA_ISA");
  Isa want = detected_isa();
  bool emulated = false;
  if (env != nullptr && std::string(env) == "amx-emulated") {
    emulated = want >= Isa::avx512bf16;
    if (emulated) want = Isa::amx;
  } else if (env != nullptr) {
    if (auto cap = isa_from_name(env); cap && *cap < want) want = *cap;
  }
  const std::string name = std::string(isa_name(want)) + (emulated ? "-emulated" : "");
  EXPECT_EQ(active_isa(), want);
  EXPECT_EQ(amx_emulated(), emulated);
  EXPECT_EQ(std::string(active_microkernel().name), name);
  EXPECT_EQ(std::string(active_microkernel(DType::bf16).name), name);
  EXPECT_EQ(std::string(cpu_microkernel_name()), name);
}

// fp16 operands never go through bf16 products (they would lose mantissa bits).
TEST(Isa, Fp16OperandsKeepFp32Products) {
  const std::string name = active_microkernel(DType::fp16).name;
  EXPECT_NE(name, "avx512bf16");
  EXPECT_EQ(name.rfind("amx", 0), std::string::npos);
  EXPECT_EQ(name, active_isa() >= Isa::avx512 ? "avx512"
                  : active_isa() == Isa::avx2 ? "avx2"
                                              : "portable");
}

}  // namespace
}  // namespace flashmla::cpu
