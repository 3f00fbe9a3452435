// Machine limits measured in the same process as the kernels, with the same thread count:
//
// peak.dram_read_1GiB        every thread sums its contiguous share of a 1 GiB buffer (32x a
//                            32 MiB LLC); bytes = the buffer, flops = 0.
// peak.matrix_qk_m<m>_d<d>   every thread calls the active microkernel's qk (m query rows x
//                            kKvTile tokens x d channels) in a loop on its own packed operands,
//                            small enough to stay in L1; flops = 2 m kKvTile d per call. One
//                            case per (m, d) that fits; run_bench.py takes the fastest as the
//                            matrix peak of the run.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench_cases.h"
#include "bench_util.h"
#include "cpu/common/half.h"
#include "cpu/common/microkernel.h"

namespace flashmla::bench {
namespace {

constexpr int64_t kDramBytes = int64_t{1} << 30;

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<void, AlignedFree>;

AlignedBuffer aligned_buffer(size_t bytes, size_t alignment = 4096) {
  const size_t rounded = (bytes + alignment - 1) / alignment * alignment;
  void* p = std::aligned_alloc(alignment, rounded);
  if (p == nullptr) throw std::bad_alloc();
  return AlignedBuffer(p);
}

// ---- DRAM streaming read ----

struct DramRun : CaseData {
  AlignedBuffer buffer;
  size_t words = 0;
};

// Thread t of n works on words [words * t / n, words * (t + 1) / n), the same split for the
// first touch and the reads.
size_t share_begin(size_t words, int t, int n) {
  return static_cast<size_t>(static_cast<unsigned __int128>(words) * t / n);
}

std::unique_ptr<DramRun> make_dram_run(int threads) {
  auto r = std::make_unique<DramRun>();
  r->words = kDramBytes / sizeof(uint64_t);
  r->buffer = aligned_buffer(kDramBytes);
  auto* w = static_cast<uint64_t*>(r->buffer.get());
  const size_t words = r->words;
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    const size_t end = share_begin(words, t + 1, n);
    for (size_t i = share_begin(words, t, n); i < end; ++i) w[i] = i * 0x9E3779B97F4A7C15ull;
  }
  return r;
}

// Sum of the buffer, every thread its share; eight independent accumulators per thread so the
// adds never limit the loads.
uint64_t read_sum(const uint64_t* w, size_t words, int threads) {
  uint64_t total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
  {
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    size_t i = share_begin(words, t, n);
    const size_t end = share_begin(words, t + 1, n);
    uint64_t acc[8] = {};
    for (; i + 8 <= end; i += 8) {
      for (int k = 0; k < 8; ++k) acc[k] += w[i + k];
    }
    for (; i < end; ++i) acc[0] += w[i];
    for (int k = 0; k < 8; ++k) total += acc[k];
  }
  return total;
}

void add_dram_read() {
  add("peak.dram_read_1GiB", [](benchmark::State& st) {
    guarded(st, [&] {
      const int threads = resolved_threads();
      auto& r = cached_as<DramRun>("peak.dram_read", [&] { return make_dram_run(threads); });
      const auto* w = static_cast<const uint64_t*>(r.buffer.get());
      for (auto _ : st) {
        uint64_t s = read_sum(w, r.words, threads);
        benchmark::DoNotOptimize(s);
      }
      report(st, 0.0, static_cast<double>(kDramBytes), 1);
    });
  });
}

// ---- matrix peak: the active microkernel's qk, L1-resident ----

struct MatrixRun : CaseData {
  // Per thread: packed q, packed k, scores.
  std::vector<AlignedBuffer> q, k, s;
};

std::unique_ptr<MatrixRun> make_matrix_run(const cpu::AttnMicrokernel& mk, int m, int d,
                                           int threads) {
  auto r = std::make_unique<MatrixRun>();
  r->q.resize(threads);
  r->k.resize(threads);
  r->s.resize(threads);
  constexpr int kTile = cpu::kKvTile;
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    // Random bf16 rows (q ~ N(0, 0.1) as in the tests), packed by the thread that uses them.
    std::mt19937_64 rng(1234 + t);
    std::normal_distribution<float> normal(0.0f, 0.1f);
    std::vector<uint16_t> rows(static_cast<size_t>(m + kTile) * d);
    for (auto& x : rows) x = cpu::float_to_bf16(normal(rng));
    std::vector<const void*> q_rows(m), k_rows(kTile);
    for (int i = 0; i < m; ++i) q_rows[i] = rows.data() + static_cast<size_t>(i) * d;
    for (int j = 0; j < kTile; ++j) k_rows[j] = rows.data() + static_cast<size_t>(m + j) * d;
    AlignedBuffer q = aligned_buffer(mk.packed_q_bytes(m, d), 64);
    AlignedBuffer k = aligned_buffer(mk.packed_k_bytes(d), 64);
    AlignedBuffer s = aligned_buffer(sizeof(float) * m * kTile, 64);
    mk.pack_q(q_rows.data(), m, DType::bf16, d, q.get());
    mk.pack_k(k_rows.data(), kTile, DType::bf16, d, k.get());
#pragma omp critical
    {
      r->q[t] = std::move(q);
      r->k[t] = std::move(k);
      r->s[t] = std::move(s);
    }
  }
  return r;
}

void run_matrix_peak(benchmark::State& st, const std::string& name, int m, int d) {
  const cpu::AttnMicrokernel& mk = cpu::active_microkernel();
  const int threads = resolved_threads();
  auto& r = cached_as<MatrixRun>(name, [&] { return make_matrix_run(mk, m, d, threads); });
  const double flops_per_call = 2.0 * m * cpu::kKvTile * d;
  // About 2e8 FLOP per thread per iteration: milliseconds on any microkernel, far above the
  // cost of the parallel region.
  const int calls = static_cast<int>(std::max(1.0, 2e8 / flops_per_call));
  for (auto _ : st) {
#pragma omp parallel num_threads(threads)
    {
      const int t = omp_get_thread_num();
      const void* q = r.q[t].get();
      const void* k = r.k[t].get();
      auto* s = static_cast<float*>(r.s[t].get());
      for (int c = 0; c < calls; ++c) mk.qk(q, m, k, d, 0.125f, s);
      benchmark::DoNotOptimize(s[0]);
    }
  }
  report(st, flops_per_call * calls * threads, 0.0, 1);
}

void add_matrix_peak(int m, int d) {
  const std::string name = "peak.matrix_qk_m" + std::to_string(m) + "_d" + std::to_string(d);
  add(name, [name, m, d](benchmark::State& st) {
    guarded(st, [&] { run_matrix_peak(st, name, m, d); });
  });
}

}  // namespace

void add_peaks() {
  add_dram_read();
  // Every (m, d) whose packed operands and scores fit in 80% of L1 (the microkernel's packed
  // sizes decide: fp32, bf16 or tile layouts).
  const cpu::AttnMicrokernel& mk = cpu::active_microkernel();
  const double budget = 0.8 * static_cast<double>(l1d_bytes());
  int added = 0;
  for (int m : {16, 32, 64}) {
    for (int d : {32, 64, 128}) {
      const double bytes = static_cast<double>(mk.packed_q_bytes(m, d) + mk.packed_k_bytes(d)) +
                           sizeof(float) * m * cpu::kKvTile;
      if (bytes <= budget) add_matrix_peak(m, d), ++added;
    }
  }
  if (added == 0) add_matrix_peak(16, 32);  // a tiny L1: the smallest shape anyway
}

}  // namespace flashmla::bench
