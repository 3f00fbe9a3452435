// The per-call execution context, separate from each operation's arguments.
#pragma once

namespace flashmla {

inline constexpr int kMaxThreads = 4096;      // upper bound of Context::num_threads
inline constexpr int kMaxSmParts = 1 << 20;   // upper bound of a schedule's num_sm_parts

// Per-call execution context, separate from the operation's arguments.
struct Context {
  int num_threads = 0;          // CPU worker threads in [0, kMaxThreads]; 0 = default
                                // (FLASHMLA_NUM_THREADS, else OpenMP's default)
  void* cuda_stream = nullptr;  // cudaStream_t of calls on CUDA tensors; null = default stream
};

// Whether calls on CUDA tensors can run: the library was built with its CUDA backend (nvcc).
// Says nothing about a GPU being present; a call without one fails with the CUDA error.
bool has_cuda_backend();

// Number of CPU worker threads a call with this context uses.
int resolved_num_threads(const Context& ctx);

// The CPU microkernel bf16 (and FP8) operands use in this process ("avx512bf16", "avx512",
// "avx2" or "portable"): the best one CPUID and the OS support, capped by the environment
// variable FLASHMLA_ISA ("portable", "avx2", "avx512", "avx512bf16"; unset or "native" = no
// cap). Chosen once, on first use. fp16 operands never use "avx512bf16" (docs/conventions.md
// §11).
const char* cpu_microkernel_name();

}  // namespace flashmla
