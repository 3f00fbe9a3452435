// Shared pieces of the benchmark (build/flashmla_bench, run by bench/run_bench.py): options,
// cache sizes, the one-slot cache of generated case data, rotation over copies of the inputs,
// and the counters every case reports.
//
// Every case reports, per call (one benchmark iteration):
//   label         the CPU microkernel the case runs on (flashmla::cpu_microkernel_name(), or
//                 the fp32 one for fp16 operands)
//   flops         FlashMLA's FLOP count of the call (shared/design/performance.md)
//   bytes         FlashMLA's byte count of the call
//   threads_used  worker threads the library used ("threads" is Google Benchmark's own key)
//   copies        input sets rotated over (consecutive calls read different copies)
//   cold          1 if copies x bytes >= 2 x LLC: the inputs come from DRAM, not the cache
// and run_bench.py turns them into TFLOP/s, GB/s and % of roofline. Times are wall-clock
// (UseRealTime); run_bench.py reads the median repetition of a kernel and the fastest of a
// machine limit.
#pragma once

#include <benchmark/benchmark.h>

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <string>

#include "flashmla/context.h"
#include "testing/host_tensor.h"

namespace flashmla::bench {

struct Options {
  int threads = 0;         // --threads: worker threads (0 = the library default, all cores)
  int repetitions = 5;     // --reps: repetitions per case (the median is reported)
  double min_time = 0.1;   // --min-time: seconds per repetition (at least one call)
};
Options& options();

// The context every call uses, and the number of threads it resolves to.
Context context();
int resolved_threads();

// Per-core L1 data cache and last-level cache sizes in bytes (sysfs, then sysconf, then a
// default of 32 KiB / 32 MiB).
int64_t l1d_bytes();
int64_t llc_bytes();

// Bytes of a tensor's view (elements x element size).
double tensor_bytes(const testing::HostTensor& t);

// Generated data of the case being run. Google Benchmark calls a case's function several times
// (warm-up, iteration-count estimate, repetitions); the data is generated on the first call and
// kept until a case with another key asks (cases run one after another), so at most one case's
// data is in memory.
struct CaseData {
  virtual ~CaseData() = default;
};
CaseData& cached(const std::string& key, const std::function<std::unique_ptr<CaseData>()>& make);
template <class T, class F>
T& cached_as(const std::string& key, F&& make) {
  return static_cast<T&>(cached(key, [&]() -> std::unique_ptr<CaseData> { return make(); }));
}

// How many copies of a case's inputs to rotate over so that consecutive calls together touch at
// least 2.5 x LLC (the numbers are DRAM numbers): ceil(2.5 LLC / bytes_per_call), at most 256
// and at most 2 GiB of copies (copy_bytes each), at least 1.
int rotation_copies(double bytes_per_call, double copy_bytes);

// Set when a case failed (a library error skips it with the message); main() then exits with 1,
// so a smoke test of a filtered run fails on it.
bool& any_case_failed();

// Runs a case body, turning an exception (a library error, std::bad_alloc) into a skipped case
// with its message; the run goes on with the other cases.
template <class F>
void guarded(benchmark::State& st, F&& body) {
  try {
    body();
  } catch (const std::exception& e) {
    st.SkipWithError(e.what());
    any_case_failed() = true;
  }
}

// The per-call counters and label described above (`kernel`: the microkernel the case runs on,
// where it is not the process's bf16 one, e.g. fp16 operands).
void report(benchmark::State& state, double flops, double bytes, int copies,
            const char* kernel = nullptr);

// Registers `fn` under `name` with the common settings: wall-clock time in µs, Options'
// repetitions and minimum time, aggregates only (mean, median, stddev, cv and min; run_bench.py
// reads the median of a kernel and the min of a machine limit).
benchmark::internal::Benchmark* add(const std::string& name,
                                    std::function<void(benchmark::State&)> fn);

}  // namespace flashmla::bench
