// The instruction peak of the products' arithmetic, register-resident: every thread runs a
// loop of independent multiply-adds on 24 zmm accumulators (enough to cover latency x issue
// width on current x86 cores), no memory traffic. This is the machine's compute ceiling that
// run_bench.py puts in the roofline (the microkernels' own qk peak, peak.matrix_qk_*, is
// reported beside it: what a packed, L1-resident product reaches).
//
// peak.insn_fma_fp32   vfmadd231ps zmm: 32 FLOP per instruction (AVX-512 level and above)
// peak.insn_dpbf16     vdpbf16ps zmm: 64 FLOP per instruction (AVX512-BF16 level)
// Each is registered only where the process's ISA level (FLASHMLA_ISA caps it) has it.
#include <immintrin.h>
#include <omp.h>

#include "bench_cases.h"
#include "bench_util.h"
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

void add_insn_peak(const char* name, float (*loop)(long, float), double flops_per_insn) {
  add(name, [loop, flops_per_insn](benchmark::State& st) {
    guarded(st, [&] {
      const int threads = resolved_threads();
      for (auto _ : st) {
        float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        sink += loop(kSteps, 1e-3f * omp_get_thread_num());
        benchmark::DoNotOptimize(sink);
      }
      report(st, flops_per_insn * kAcc * kSteps * threads, 0.0, 1);
    });
  });
}

}  // namespace

#pragma GCC diagnostic pop

void add_insn_peaks() {
  const cpu::Isa isa = cpu::active_isa();
  if (isa >= cpu::Isa::avx512) add_insn_peak("peak.insn_fma_fp32", fma_loop, 32);
  if (isa >= cpu::Isa::avx512bf16) add_insn_peak("peak.insn_dpbf16", dpbf16_loop, 64);
}

}  // namespace flashmla::bench
