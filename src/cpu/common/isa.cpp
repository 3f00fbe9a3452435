#include "cpu/common/isa.h"

#include <cstdio>
#include <cstdlib>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "cpu/common/kv_codec.h"
#include "cpu/common/microkernel.h"
#include "cpu/common/online_softmax.h"
#include "flashmla/context.h"

namespace flashmla::cpu {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::avx512bf16: return "avx512bf16";
    case Isa::amx: return "amx";
    default: return "portable";
  }
}

std::optional<Isa> isa_from_name(std::string_view name) {
  for (Isa isa : {Isa::portable, Isa::avx2, Isa::avx512, Isa::avx512bf16, Isa::amx}) {
    if (name == isa_name(isa)) return isa;
  }
  return std::nullopt;
}

namespace {

// CPUID.(EAX=7, ECX=0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE (read directly: not every compiler's
// __builtin_cpu_supports knows them).
bool cpu_has_amx_bf16() {
#if defined(__x86_64__) && defined(__GNUC__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) == 0) return false;
  return (edx >> 22 & 1u) != 0 && (edx >> 24 & 1u) != 0;
#else
  return false;
#endif
}

// Linux enables the AMX tile data state per process, on request (since 5.16): without it the
// first tile instruction faults. Returns whether the state is granted.
bool amx_permitted() {
#if defined(__linux__) && defined(__x86_64__)
  constexpr long kArchReqXcompPerm = 0x1023;  // arch_prctl ARCH_REQ_XCOMP_PERM
  constexpr long kXfeatureXtiledata = 18;     // XFEATURE_XTILEDATA
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

}  // namespace

Isa detected_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  // libgcc's CPUID probe also checks (XGETBV) that the OS saves the AVX-512 register state.
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    if (!__builtin_cpu_supports("avx512bf16")) return Isa::avx512;
    if (cpu_has_amx_bf16() && amx_permitted()) {
      return Isa::amx;
    }
    return Isa::avx512bf16;
  }
  // The same probe checks that the OS saves the AVX (ymm) state.
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
  return Isa::portable;
}

namespace {

struct Choice {
  Isa isa;
  bool emulated;  // amx on the tile emulation
};

const Choice& choice() {
  static const Choice c = [] {
    const Isa best = detected_isa();
    const char* env = std::getenv("FLASHMLA_ISA");
    Choice chosen{best, false};
    const std::string_view want = env != nullptr ? env : "";
    if (want == "amx-emulated") {
      if (best >= Isa::avx512bf16) {
        chosen = {Isa::amx, true};
      } else {
        std::fprintf(stderr, "flashmla: ignoring FLASHMLA_ISA=amx-emulated (needs AVX512-BF16; "
                             "this CPU supports %s)\n", isa_name(best));
      }
    } else if (!want.empty() && want != "native") {
      if (std::optional<Isa> cap = isa_from_name(want)) {
        chosen.isa = *cap < best ? *cap : best;
      } else {
        std::fprintf(stderr, "flashmla: ignoring FLASHMLA_ISA=%s (expected portable, avx2, "
                             "avx512, avx512bf16, amx, amx-emulated or native)\n", env);
      }
    }
    if (const char* log = std::getenv("FLASHMLA_LOG"); log && std::string_view(log) == "debug") {
      std::fprintf(stderr, "flashmla: CPU supports %s; microkernel %s%s\n", isa_name(best),
                   isa_name(chosen.isa), chosen.emulated ? "-emulated" : "");
    }
    return chosen;
  }();
  return c;
}

}  // namespace

Isa active_isa() { return choice().isa; }

bool amx_emulated() { return choice().emulated; }

const AttnMicrokernel& active_microkernel(DType operands) {
  switch (active_isa()) {
    case Isa::amx:
      if (operands == DType::fp16) return avx512_microkernel();  // as below
      return amx_emulated() ? amx_emulated_microkernel() : amx_microkernel();
    case Isa::avx512bf16:
      // fp16 operands rounded to bf16 would lose 3 of their 10 mantissa bits: they keep the
      // fp32 products (this CPU has no AVX512-FP16).
      return operands == DType::fp16 ? avx512_microkernel() : avx512bf16_microkernel();
    case Isa::avx512: return avx512_microkernel();
    case Isa::avx2: return avx2_microkernel();
    default: return portable_microkernel();
  }
}

DequantizeKvTokenFn active_kv_dequantizer() {
  return active_isa() >= Isa::avx512 ? &dequantize_kv_token_avx512 : &dequantize_kv_token;
}

SoftmaxUpdateFn active_softmax_update() {
  return active_isa() >= Isa::avx512 ? &online_softmax_update_avx512 : &online_softmax_update;
}

SoftmaxGradRowFn active_softmax_grad_row() {
  return active_isa() >= Isa::avx512 ? &softmax_grad_row_avx512 : &softmax_grad_row;
}

}  // namespace flashmla::cpu

namespace flashmla {

const char* cpu_microkernel_name() { return cpu::active_microkernel().name; }

}  // namespace flashmla
