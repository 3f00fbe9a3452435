// The instruction peak of the products' arithmetic, register-resident: every thread runs a
// loop of independent multiply-adds on 24 zmm accumulators (enough to cover latency x issue
// width on current x86 cores), no memory traffic. This is the machine's compute ceiling that
// run_bench.py puts in the roofline (the microkernels' own qk peak, peak.matrix_qk_*, is
// reported beside it: what a packed, L1-resident product reaches).
//
// peak.insn_fma_fp32   vfmadd231ps zmm: 32 FLOP per instruction (AVX-512 level and above)
// peak.insn_dpbf16     vdpbf16ps zmm: 64 FLOP per instruction (AVX512-BF16 level)
// peak.insn_tdpbf16ps  tdpbf16ps on 16 x 64-byte tiles: 16 x 16 x 32 x 2 = 16384 FLOP per
//                      instruction, four independent accumulator tiles (amx level, on the real
//                      instructions only: the emulation, FLASHMLA_ISA=amx-emulated, is no peak)
// Each is registered only where the process's ISA level (FLASHMLA_ISA caps it) has it.
#include <immintrin.h>
#include <omp.h>

#include "bench_cases.h"
#include "bench_util.h"
#include "cpu/common/amx_tiles.h"
#include "cpu/common/isa.h"

// GCC 12 reports its own intrinsics' `_mm512_undefined_*()` operands as uninitialised when they
// are inlined (as in src/cpu/common/microkernel_avx512.cpp).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace flashmla::bench {
namespace {

constexpr int kAcc = 24;
constexpr long kSteps = 1 << 20;  // per thread per iteration: 24 Mi instructions

__attribute__((target("avx512f"))) float fma_loop(long steps, float seed) {
  __m512 acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_set1_ps(seed * i);
  __m512 a = _mm512_set1_ps(1.0000001f), b = _mm512_set1_ps(0.9999999f);
  for (long k = 0; k < steps; ++k) {
#pragma GCC unroll 24
    for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_fmadd_ps(a, b, acc[i]);
    asm volatile("" : "+v"(a), "+v"(b));  // the operands stay loop-variant for the compiler
  }
  __m512 s = acc[0];
  for (int i = 1; i < kAcc; ++i) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx512f,avx512bf16"))) float dpbf16_loop(long steps, float seed) {
  __m512 acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_set1_ps(seed * i);
  __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3f00);
  for (long k = 0; k < steps; ++k) {
#pragma GCC unroll 24
    for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
    asm volatile("" : "+v"(a), "+v"(b));
  }
  __m512 s = acc[0];
  for (int i = 1; i < kAcc; ++i) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}

// tmm0-3 accumulate the products of tmm4/tmm5 (rows) with tmm6/tmm7 (pairs): four independent
// chains, each fed by operands that stay in the tiles. The operands are small bf16 values so the
// sums stay finite; the first accumulator is stored so the work is observable.
constexpr int kTdpPerStep = 4;
constexpr long kTdpSteps = 1 << 16;  // 256 Ki tdpbf16ps per thread per iteration
constexpr double kTdpFlops = 16.0 * 16 * 32 * 2;

float tdpbf16ps_loop(long steps, float seed) {
  alignas(64) static const cpu::amx::TileConfig cfg = cpu::amx::full_tile_config();
  alignas(64) uint16_t operand[16 * 32];
  for (uint16_t& v : operand) v = 0x3a80;  // bf16 ~0.000977
  alignas(64) float out[16 * 16];
  asm volatile("ldtilecfg %0" ::"m"(cfg));
  asm volatile(
      "tilezero %%tmm0\n\ttilezero %%tmm1\n\ttilezero %%tmm2\n\ttilezero %%tmm3\n\t"
      "tileloadd (%0,%1,1), %%tmm4\n\ttileloadd (%0,%1,1), %%tmm5\n\t"
      "tileloadd (%0,%1,1), %%tmm6\n\ttileloadd (%0,%1,1), %%tmm7" ::"r"(operand),
      "r"(size_t{64})
      : "memory");
  for (long k = 0; k < steps; ++k) {
    asm volatile(
        "tdpbf16ps %%tmm6, %%tmm4, %%tmm0\n\ttdpbf16ps %%tmm7, %%tmm4, %%tmm1\n\t"
        "tdpbf16ps %%tmm6, %%tmm5, %%tmm2\n\ttdpbf16ps %%tmm7, %%tmm5, %%tmm3" ::
            : "memory");
  }
  asm volatile("tilestored %%tmm0, (%0,%1,1)\n\ttilerelease" ::"r"(out), "r"(size_t{64})
               : "memory");
  return out[0] + seed;
}

// `loop(steps, seed)` runs `steps` steps of `flops_per_step` FLOP on every thread.
void add_insn_peak(const char* name, float (*loop)(long, float), long steps,
                   double flops_per_step) {
  add(name, [loop, steps, flops_per_step](benchmark::State& st) {
    guarded(st, [&] {
      const int threads = resolved_threads();
      for (auto _ : st) {
        float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        sink += loop(steps, 1e-3f * omp_get_thread_num());
        benchmark::DoNotOptimize(sink);
      }
      report(st, flops_per_step * steps * threads, 0.0, 1);
    });
  });
}

}  // namespace

#pragma GCC diagnostic pop

void add_insn_peaks() {
  const cpu::Isa isa = cpu::active_isa();
  if (isa >= cpu::Isa::avx512) add_insn_peak("peak.insn_fma_fp32", fma_loop, kSteps, 32.0 * kAcc);
  if (isa >= cpu::Isa::avx512bf16)
    add_insn_peak("peak.insn_dpbf16", dpbf16_loop, kSteps, 64.0 * kAcc);
  if (isa >= cpu::Isa::amx && !cpu::amx_emulated())
    add_insn_peak("peak.insn_tdpbf16ps", tdpbf16ps_loop, kTdpSteps, kTdpFlops * kTdpPerStep);
}

}  // namespace flashmla::bench
