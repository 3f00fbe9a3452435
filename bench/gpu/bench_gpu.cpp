// flashmla_bench_gpu: the MLA operations on a CUDA device, timed with CUDA events, with
// FlashMLA's FLOP and byte counts (reference §7.2, testing/work.h), next to the device's limits
// (gpu_testing::device_limits: memory bandwidth from the memory clock and bus width, NVIDIA's
// dense bf16 tensor figure) and a measured device-to-device copy. bench/run_bench.py runs it
// after the CPU benchmark and reports TFLOP/s, GB/s and % of roofline per case.
//
//   build/flashmla_bench_gpu [--reps N] [--min-time S] [Google Benchmark flags]
//
// Each case runs twice: with the kernels the library picks for the device ("picked": Hopper's
// on compute capability 9.0) and with the portable ones ("portable"). Per timed call: the L2
// cache is flushed first (as FlashMLA's benchmarks do), then events bracket the call on the
// stream. A decode call's time includes its combine step (FlashMLA's sparse decode counts it
// too); the schedule is computed once on the device and given, as a model's layers share it.
// The data are the tests' generated cases, made on the host once per case and uploaded.
//
// Exit status: 0, 1 when a case failed, 3 when there is no device (nothing measured; the reason
// on stderr). Built a second time on the CPU harness (flashmla_bench_gpu_harness: tiny shapes,
// wall-clock time), which tests/python/test_bench.py runs through run_bench.py, so that this
// code is exercised without a GPU.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "bench_util.h"
#include "flashmla/flashmla.h"
#include "flashmla/kv_format.h"
#include "gpu/gpu_device.h"
#include "gpu/mirror.h"
#include "testing/decode_case.h"
#include "testing/host_tensor.h"
#include "testing/prefill_case.h"
#include "testing/sparse_decode_case.h"
#include "testing/work.h"

namespace flashmla::bench_gpu {
namespace {

namespace dev = gpu_testing;
using bench::guarded;
using bench::options;
using testing::HostTensor;

using dev::sized;

Context context() { return {.num_threads = 1, .cuda_stream = dev::stream()}; }

// One case's data: the host copies (kept for the Mirror), the device copies, and the call. Kept
// by bench::cached_as while its case runs, so one case's data are on the device at a time.
struct Run : bench::CaseData {
  std::shared_ptr<void> host;  // the generated case
  std::vector<HostTensor> extra;  // schedule, FP8 cache
  std::unique_ptr<dev::Mirror> mirror = std::make_unique<dev::Mirror>(/*check_inputs=*/false);
  std::function<void()> call;  // queues the call on the device's stream
  double flops = 0, bytes = 0;
};

// The schedule of a decode call, computed on the device once and given to every call.
void attach_schedule(Run& r, MlaDecodeArgs& da, MlaMetadataArgs m) {
  const int parts = mla_num_sm_parts({.batch = da.q.size(0), .q_len = da.q.size(1),
                                      .num_heads_q = da.q.size(2),
                                      .num_heads_kv = da.k_cache.size(2)},
                                     context(), Device::cuda);
  r.extra.push_back(HostTensor::empty(DType::int32, {parts, 8}));
  r.extra.push_back(HostTensor::empty(DType::int32, {da.q.size(0) + 1}));
  m.num_sm_parts = parts;
  m.tile_scheduler_metadata = (*r.mirror)(r.extra[r.extra.size() - 2].view(), true);
  m.num_splits = (*r.mirror)(r.extra.back().view(), true);
  get_mla_metadata(m, context());
  da.tile_scheduler_metadata = m.tile_scheduler_metadata;
  da.num_splits = m.num_splits;
}

std::unique_ptr<Run> dense_run(const testing::DenseDecodeCase& c, bool fp8) {
  auto r = std::make_unique<Run>();
  auto d = std::make_shared<testing::DenseDecodeData>(testing::make_dense_decode_data(c));
  r->host = d;
  const testing::Work w = testing::dense_decode_work(c, *d, fp8);
  r->flops = w.flops;
  r->bytes = w.bytes;
  MlaDecodeArgs a = d->args();
  if (fp8) {
    const int64_t nb = d->k_cache.size(0), page = d->k_cache.size(1);
    r->extra.push_back(HostTensor::empty(DType::uint8, {nb, page, 1, 656}));
    quantize_kv_cache({.format = KvFormat::v32, .k = d->k_cache.view(),
                       .cache = r->extra.back().view()});
    a.k_cache = r->extra.back().view();
  }
  MlaDecodeArgs da = (*r->mirror)(a);
  attach_schedule(*r, da, {.cache_seqlens = da.cache_seqlens});
  r->call = [da] { flash_mla_with_kvcache(da, context()); };
  return r;
}

std::unique_ptr<Run> sparse_decode_run(const testing::SparseDecodeCase& c) {
  auto r = std::make_unique<Run>();
  auto d = std::make_shared<testing::SparseDecodeData>(testing::make_sparse_decode_data(c));
  r->host = d;
  const MlaDecodeArgs a = d->args();
  const testing::Work w = testing::sparse_decode_work(c, a);
  r->flops = w.flops;
  r->bytes = w.bytes;
  MlaDecodeArgs da = (*r->mirror)(a);
  attach_schedule(*r, da,
                  {.batch = c.batch, .topk = a.indices.size(2), .topk_length = da.topk_length,
                   .extra_topk = a.extra_indices_in_kvcache.defined()
                                     ? a.extra_indices_in_kvcache.size(2) : 0,
                   .extra_topk_length = da.extra_topk_length});
  r->call = [da] { flash_mla_with_kvcache(da, context()); };
  return r;
}

std::unique_ptr<Run> sparse_prefill_run(const testing::SparsePrefillCase& c) {
  auto r = std::make_unique<Run>();
  auto d = std::make_shared<testing::SparsePrefillData>(testing::make_sparse_prefill_data(c));
  r->host = d;
  const testing::Work w = testing::sparse_prefill_work(c, *d);
  r->flops = w.flops;
  r->bytes = w.bytes;
  const SparsePrefillArgs da = (*r->mirror)(d->args());
  r->call = [da] { flash_mla_sparse_fwd(da, context()); };
  return r;
}

void register_case(const std::string& name, std::function<std::unique_ptr<Run>()> make) {
  static std::set<std::string> names;  // a case's data are cached by its name
  if (!names.insert(name).second) {
    std::fprintf(stderr, "flashmla_bench_gpu: case %s registered twice\n", name.c_str());
    std::abort();
  }
  for (dev::Kernels k : {dev::Kernels::picked, dev::Kernels::portable}) {
    const std::string full = name + "." + dev::kernels_name(k);
    benchmark::RegisterBenchmark(full.c_str(), [name, make, k](benchmark::State& st) {
      guarded(st, [&] {
        Run& r = bench::cached_as<Run>(name, make);
        dev::select_kernels(k);
        r.call();  // warm-up, outside the timing (and where a failure shows first)
        (void)dev::time_on_device([](void*) {}, nullptr);  // waits for it
        for (auto _ : st) {
          dev::flush_l2();
          st.SetIterationTime(dev::time_on_device(
              [](void* p) { static_cast<Run*>(p)->call(); }, &r));
        }
        st.SetLabel(dev::kernels_name(k));
        st.counters["flops"] = r.flops;
        st.counters["bytes"] = r.bytes;
      });
      dev::select_kernels(dev::Kernels::picked);
    })
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond)
        ->Repetitions(options().repetitions)
        ->ReportAggregatesOnly(true)
        ->MinTime(options().min_time);
  }
}

// peak.device_copy: a device-to-device copy (bytes = read + written), the measured memory
// ceiling beside the formula's.
void register_copy_peak() {
  const size_t bytes = static_cast<size_t>(sized(int64_t{1} << 30, int64_t{16} << 20));
  benchmark::RegisterBenchmark("peak.device_copy", [bytes](benchmark::State& st) {
    guarded(st, [&] {
      struct Buffers {
        void* src = nullptr;
        void* dst = nullptr;
        size_t bytes = 0;
        ~Buffers() {
          dev::release(src);
          dev::release(dst);
        }
      } b;
      b.bytes = bytes;
      b.src = dev::allocate(bytes);
      b.dst = dev::allocate(bytes);
      for (auto _ : st) {
        st.SetIterationTime(dev::time_on_device(
            [](void* p) {
              auto* b = static_cast<Buffers*>(p);
              dev::copy_on_device(b->dst, b->src, b->bytes);
            },
            &b));
      }
      st.counters["bytes"] = 2.0 * static_cast<double>(bytes);
    });
  })
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond)
      ->Repetitions(options().repetitions)
      ->ReportAggregatesOnly(true)
      ->MinTime(options().min_time)
      ->ComputeStatistics("min", [](const std::vector<double>& v) {
        return v.empty() ? 0.0 : *std::min_element(v.begin(), v.end());
      });
}

// The case's name: `name` on a GPU; on the harness, whose shapes are tiny, the op and the shape
// actually run.
template <class Case>
std::string case_name(const std::string& name, const Case& c) {
  return dev::is_gpu() ? name : name.substr(0, name.find('.')) + ".harness_" + c.name();
}

void register_cases() {
  register_copy_peak();
  // DeepSeek-V3 dense decode, FlashMLA's benchmark shape (b 128, h_q 128, one KV head, page
  // 64), at 4096 tokens; MTP (s_q 2, causal); a TP8 rank's 16 heads (memory-bound); FP8 V32.
  const auto v3 = [](int64_t b, int64_t sq, int64_t sk, int64_t hq) {
    return testing::DenseDecodeCase{.batch = sized(b, 2), .q_len = sq, .kv_len = sized(sk, 130),
                                    .num_heads_q = sized(hq, hq / 8), .num_heads_kv = 1,
                                    .page_block_size = 64, .causal = sq > 1, .seed = 1};
  };
  const auto dense = [&](const std::string& name, testing::DenseDecodeCase c, bool fp8) {
    register_case(case_name(name, c) + (fp8 && !dev::is_gpu() ? "_fp8" : ""),
                  [=] { return dense_run(c, fp8); });
  };
  dense("dense_decode.v3_b128_sq1_sk4096_hq128", v3(128, 1, 4096, 128), false);
  dense("dense_decode.v3_mtp_b128_sq2_sk4096_hq128_causal", v3(128, 2, 4096, 128), false);
  dense("dense_decode.v3_tp8_b128_sq1_sk4096_hq16", v3(128, 1, 4096, 16), false);
  dense("dense_decode.v3_fp8_b128_sq1_sk4096_hq128", v3(128, 1, 4096, 128), true);
  // DeepSeek-V3.2 sparse decode (FlashMLA's perf shape: h_q 128, s_q 2, topk 2048, sink), V32
  // and MODEL1 caches of 16384 tokens per request.
  const auto v32 = [](int64_t d_qk) {
    return testing::SparseDecodeCase{.batch = sized(64, 1), .q_len = 2,
                                     .num_heads_q = sized(128, 16), .d_qk = d_qk,
                                     .kv_len = sized(16384, 200), .topk = sized(2048, 64),
                                     .sink = true, .seed = 2};
  };
  for (const auto& [name, c] : {std::pair{"sparse_decode.v32_fp8_b64_sq2_hq128_sk16384_k2048",
                                          v32(576)},
                                std::pair{"sparse_decode.model1_fp8_b64_sq2_hq128_sk16384_k2048",
                                          v32(512)}}) {
    register_case(case_name(name, c), [c = c] { return sparse_decode_run(c); });
  }
  // Sparse prefill, FlashMLA's shape: 4096 query tokens, 128 heads, topk 2048 of 32768.
  const auto v32p = [](int64_t d_qk, int64_t hq) {
    return testing::SparsePrefillCase{.q_len = sized(4096, 2), .kv_len = sized(32768, 200),
                                      .num_heads_q = sized(hq, 16), .d_qk = d_qk,
                                      .topk = sized(2048, 64), .seed = 3};
  };
  for (const auto& [name, c] : {std::pair{"sparse_prefill.v32_sq4096_sk32768_hq128_k2048",
                                          v32p(576, 128)},
                                std::pair{"sparse_prefill.model1_sq4096_sk32768_hq64_k2048",
                                          v32p(512, 64)}}) {
    register_case(case_name(name, c), [c = c] { return sparse_prefill_run(c); });
  }
}

bool take_flag(int& argc, char** argv, const char* flag, std::string& value) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], flag) == 0) {
      value = argv[i + 1];
      for (int j = i; j + 2 <= argc; ++j) argv[j] = argv[j + 2];
      argc -= 2;
      return true;
    }
  }
  return false;
}

}  // namespace
}  // namespace flashmla::bench_gpu

int main(int argc, char** argv) {
  using namespace flashmla::bench_gpu;
  options().min_time = 0.2;  // this benchmark's default
  std::string v;
  if (take_flag(argc, argv, "--reps", v)) options().repetitions = std::max(1, std::atoi(v.c_str()));
  if (take_flag(argc, argv, "--min-time", v)) {
    options().min_time = std::strtod(v.c_str(), nullptr);
    if (!(options().min_time > 0)) {
      std::fprintf(stderr, "flashmla_bench_gpu: --min-time expects seconds > 0, got '%s'\n",
                   v.c_str());
      return 2;
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  std::string why;
  if (!dev::open_device(&why)) {
    std::fprintf(stderr, "flashmla_bench_gpu: no device (%s): nothing measured\n", why.c_str());
    return 3;
  }
  const dev::DeviceLimits limits = dev::device_limits();
  benchmark::AddCustomContext("flashmla_version", flashmla::kVersion);
  benchmark::AddCustomContext("flashmla_gpu", dev::device_description());
  benchmark::AddCustomContext("flashmla_gpu_dram_bytes_per_s",
                              std::to_string(limits.dram_bytes_per_s));
  benchmark::AddCustomContext("flashmla_gpu_bf16_flops_per_s",
                              std::to_string(limits.bf16_flops_per_s));
  benchmark::AddCustomContext("flashmla_gpu_flops_basis", limits.flops_basis);
  register_cases();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return flashmla::bench::any_case_failed() ? 1 : 0;
}
