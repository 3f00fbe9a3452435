#include "bench_util.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include "flashmla/tensor.h"

namespace flashmla::bench {
namespace {

// Size in bytes of the first cache of `level` (and `type`: "Data", "Unified", or any) listed in
// sysfs for cpu0; 0 if none.
int64_t sysfs_cache_bytes(int level, bool data_only) {
  for (int i = 0; i < 16; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::ifstream lv(dir + "level"), ty(dir + "type"), sz(dir + "size");
    int l = 0;
    std::string type, size;
    if (!(lv >> l) || !(ty >> type) || !(sz >> size)) {
      if (!lv.is_open()) break;
      continue;
    }
    if (l != level || (data_only && type == "Instruction")) continue;
    int64_t v = 0;
    size_t pos = 0;
    while (pos < size.size() && std::isdigit(static_cast<unsigned char>(size[pos]))) {
      v = v * 10 + (size[pos++] - '0');
    }
    const char unit = pos < size.size() ? size[pos] : 'B';
    if (unit == 'K') v <<= 10;
    if (unit == 'M') v <<= 20;
    if (unit == 'G') v <<= 30;
    return v;
  }
  return 0;
}

int64_t cache_bytes(int level, int sysconf_name, int64_t fallback) {
  if (int64_t v = sysfs_cache_bytes(level, true); v > 0) return v;
  if (long v = sysconf(sysconf_name); v > 0) return v;
  return fallback;
}

}  // namespace

Options& options() {
  static Options o;
  return o;
}

Context context() { return Context{.num_threads = options().threads}; }

int resolved_threads() { return resolved_num_threads(context()); }

int64_t l1d_bytes() {
  static const int64_t v = cache_bytes(1, _SC_LEVEL1_DCACHE_SIZE, 32 << 10);
  return v;
}

int64_t llc_bytes() {
  static const int64_t v = [] {
    for (int level : {4, 3, 2}) {  // sysfs first: glibc's sysconf can be wrong in VMs
      if (int64_t b = sysfs_cache_bytes(level, true); b > 0) return b;
    }
    if (long b = sysconf(_SC_LEVEL3_CACHE_SIZE); b > 0) return static_cast<int64_t>(b);
    return int64_t{32} << 20;
  }();
  return v;
}

double tensor_bytes(const testing::HostTensor& t) {
  return t.view().defined() ? static_cast<double>(t.numel()) * dtype_size(t.dtype()) : 0.0;
}

CaseData& cached(const std::string& key, const std::function<std::unique_ptr<CaseData>()>& make) {
  static std::string current_key;
  static std::unique_ptr<CaseData> current;
  if (!current || key != current_key) {
    current.reset();  // free the previous case's data before generating the next
    current_key.clear();
    current = make();
    current_key = key;
  }
  return *current;
}

int rotation_copies(double bytes_per_call, double copy_bytes) {
  const double target = 2.5 * static_cast<double>(llc_bytes());
  double n = std::ceil(target / std::max(bytes_per_call, 1.0));
  n = std::min(n, 256.0);
  n = std::min(n, std::floor(2.0 * (1 << 30) / std::max(copy_bytes, 1.0)));
  return static_cast<int>(std::max(n, 1.0));
}

bool& any_case_failed() {
  static bool failed = false;
  return failed;
}

void report(benchmark::State& state, double flops, double bytes, int copies, const char* kernel) {
  state.SetLabel(kernel != nullptr ? kernel : cpu_microkernel_name());
  state.counters["flops"] = flops;
  state.counters["bytes"] = bytes;
  state.counters["threads_used"] = resolved_threads();
  state.counters["copies"] = copies;
  state.counters["cold"] = copies * bytes >= 2.0 * static_cast<double>(llc_bytes()) ? 1 : 0;
}

benchmark::internal::Benchmark* add(const std::string& name,
                                    std::function<void(benchmark::State&)> fn) {
  return benchmark::RegisterBenchmark(name.c_str(),
                                      [fn](benchmark::State& st) { fn(st); })
      ->UseRealTime()
      ->Unit(benchmark::kMicrosecond)
      ->Repetitions(options().repetitions)
      ->ReportAggregatesOnly(true)
      ->MinTime(options().min_time)
      ->MinWarmUpTime(options().min_time / 4)
      // The fastest repetition too: run_bench.py takes it for the machine limits (a ceiling is
      // the best rate observed), the median for the kernels.
      ->ComputeStatistics("min", [](const std::vector<double>& v) {
        return v.empty() ? 0.0 : *std::min_element(v.begin(), v.end());
      });
}

}  // namespace flashmla::bench
