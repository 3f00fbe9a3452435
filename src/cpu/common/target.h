// Compiling a region of a file for an instruction set extension, so that the rest of the
// library stays baseline x86-64 and the extension's code runs only where CPUID says it may:
//
//   FLASHMLA_TARGET_BEGIN("avx512f,avx512bw")
//   ... functions using AVX-512 intrinsics ...
//   FLASHMLA_TARGET_END
//
// GCC: #pragma GCC push_options / target / pop_options; Clang (the fuzzing and ThreadSanitizer
// builds): the same target attribute applied to every function of the region. Under GCC the
// region also silences -W(maybe-)uninitialized: GCC 12 reports its own intrinsics'
// `_mm*_undefined_*()` (self-initialised) operands when they are inlined into the region; the
// warnings are about the headers, not the region's code.
#pragma once

#define FLASHMLA_PRAGMA(x) _Pragma(#x)

#if defined(__clang__)
#define FLASHMLA_TARGET_BEGIN(features) \
  FLASHMLA_PRAGMA(clang attribute push(__attribute__((target(features))), apply_to = function))
#define FLASHMLA_TARGET_END FLASHMLA_PRAGMA(clang attribute pop)
#else
#define FLASHMLA_TARGET_BEGIN(features)                              \
  FLASHMLA_PRAGMA(GCC push_options) FLASHMLA_PRAGMA(GCC target(features)) \
  FLASHMLA_PRAGMA(GCC diagnostic push)                                \
  FLASHMLA_PRAGMA(GCC diagnostic ignored "-Wmaybe-uninitialized")     \
  FLASHMLA_PRAGMA(GCC diagnostic ignored "-Wuninitialized")
#define FLASHMLA_TARGET_END FLASHMLA_PRAGMA(GCC diagnostic pop) FLASHMLA_PRAGMA(GCC pop_options)
#endif
