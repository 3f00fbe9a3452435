// test_gpu_ops: the GPU suite's device is the current CUDA device, reached through the
// library's own GPU backend (the build's nvcc kernels). Kernels::portable sets
// FLASHMLA_CUDA_PORTABLE=1, which the backend reads on every call.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "gpu/gpu_device.h"

namespace flashmla::gpu_testing {
namespace {

cudaStream_t g_stream = nullptr;
// FLASHMLA_CUDA_PORTABLE as the process started: Kernels::picked restores it.
bool g_portable_env_set = false;
std::string g_portable_env;

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorName(status) + " (" +
                             cudaGetErrorString(status) + ")");
  }
}

}  // namespace

bool open_device(std::string* why) {
  int count = 0;
  if (const cudaError_t status = cudaGetDeviceCount(&count); status != cudaSuccess) {
    *why = std::string("cudaGetDeviceCount: ") + cudaGetErrorString(status);
    return false;
  }
  if (count == 0) {
    *why = "cudaGetDeviceCount: no CUDA device";
    return false;
  }
  int device = 0, major = 0, minor = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device),
        "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device),
        "cudaDeviceGetAttribute");
  if (major < 8) {  // no SASS or PTX of this build runs there
    *why = "device " + std::to_string(device) + " has compute capability " +
           std::to_string(major) + "." + std::to_string(minor) + "; the kernels need 8.0 or newer";
    return false;
  }
  if (const char* env = std::getenv("FLASHMLA_CUDA_PORTABLE")) {
    g_portable_env_set = true;
    g_portable_env = env;
  }
  check(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking), "cudaStreamCreate");
  return true;
}

std::string device_description() {
  int device = 0;
  cudaDeviceProp prop{};
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  return std::string(prop.name) + " (compute capability " + std::to_string(prop.major) + "." +
         std::to_string(prop.minor) + ", " + std::to_string(prop.multiProcessorCount) + " SMs)";
}

bool is_gpu() { return true; }

void select_kernels(Kernels kernels) {
  if (kernels == Kernels::portable) {
    setenv("FLASHMLA_CUDA_PORTABLE", "1", 1);
  } else if (g_portable_env_set) {  // the library's choice, with the user's setting
    setenv("FLASHMLA_CUDA_PORTABLE", g_portable_env.c_str(), 1);
  } else {
    unsetenv("FLASHMLA_CUDA_PORTABLE");
  }
}

void* stream() { return g_stream; }

void* allocate(size_t bytes) {
  void* p = nullptr;
  check(cudaMalloc(&p, bytes), "cudaMalloc");
  return p;
}

void release(void* ptr) { (void)cudaFree(ptr); }

void copy_to_device(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g_stream), "cudaMemcpyAsync");
  check(cudaStreamSynchronize(g_stream), "cudaStreamSynchronize (after an upload)");
}

void copy_to_host(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g_stream), "cudaMemcpyAsync");
  // Also where a kernel's failure queued before the copy surfaces.
  check(cudaStreamSynchronize(g_stream), "cudaStreamSynchronize (after the calls)");
}

void run_as_graph(void (*queue)(void*), void* arg, int launches) {
  check(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeGlobal), "cudaStreamBeginCapture");
  try {
    queue(arg);
  } catch (...) {
    cudaGraph_t broken = nullptr;
    (void)cudaStreamEndCapture(g_stream, &broken);
    if (broken != nullptr) (void)cudaGraphDestroy(broken);
    throw;
  }
  cudaGraph_t graph = nullptr;
  check(cudaStreamEndCapture(g_stream, &graph), "cudaStreamEndCapture");
  cudaGraphExec_t exec = nullptr;
  const cudaError_t instantiated = cudaGraphInstantiate(&exec, graph, 0);
  (void)cudaGraphDestroy(graph);
  check(instantiated, "cudaGraphInstantiate");
  cudaError_t status = cudaSuccess;
  for (int i = 0; i < launches && status == cudaSuccess; ++i) {
    status = cudaGraphLaunch(exec, g_stream);
  }
  if (status == cudaSuccess) status = cudaStreamSynchronize(g_stream);
  (void)cudaGraphExecDestroy(exec);
  check(status, "cudaGraphLaunch / cudaStreamSynchronize");
}

double time_on_device(void (*queue)(void*), void* arg) {
  static cudaEvent_t start = nullptr, stop = nullptr;
  if (start == nullptr) {
    check(cudaEventCreate(&start), "cudaEventCreate");
    check(cudaEventCreate(&stop), "cudaEventCreate");
  }
  check(cudaEventRecord(start, g_stream), "cudaEventRecord");
  queue(arg);
  check(cudaEventRecord(stop, g_stream), "cudaEventRecord");
  check(cudaEventSynchronize(stop), "cudaEventSynchronize (after the timed calls)");
  float ms = 0;
  check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  return ms * 1e-3;
}

void flush_l2() {
  static void* buffer = nullptr;
  static size_t bytes = 0;
  if (buffer == nullptr) {
    int device = 0, l2 = 0;
    check(cudaGetDevice(&device), "cudaGetDevice");
    check(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device), "cudaDeviceGetAttribute");
    bytes = std::max<size_t>(size_t{4} * l2, size_t{64} << 20);
    buffer = allocate(bytes);
  }
  // Not waited for: the timed call's start event follows it on the stream, and the host queues
  // the call meanwhile, so its host-side work is not in the measured time.
  check(cudaMemsetAsync(buffer, 0, bytes, g_stream), "cudaMemsetAsync (L2 flush)");
}

void copy_on_device(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, g_stream), "cudaMemcpyAsync");
}

DeviceLimits device_limits() {
  int device = 0, major = 0, minor = 0, sms = 0, clock_khz = 0, mem_khz = 0, bus_bits = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  const auto attr = [&](cudaDeviceAttr a, int* v) {
    if (cudaDeviceGetAttribute(v, a, device) != cudaSuccess) *v = 0;
  };
  attr(cudaDevAttrComputeCapabilityMajor, &major);
  attr(cudaDevAttrComputeCapabilityMinor, &minor);
  attr(cudaDevAttrMultiProcessorCount, &sms);
  attr(cudaDevAttrClockRate, &clock_khz);
  attr(cudaDevAttrMemoryClockRate, &mem_khz);
  attr(cudaDevAttrGlobalMemoryBusWidth, &bus_bits);
  DeviceLimits l;
  l.dram_bytes_per_s = 2.0 * mem_khz * 1e3 * bus_bits / 8;
  // NVIDIA's dense bf16 figures (fp32 accumulation, no sparsity) for the parts this library is
  // tuned for, by product name (most specific first: "H200" also contains "H20").
  struct Known {
    const char* name;
    double flops;
  };
  static constexpr Known kKnown[] = {
      {"H100 NVL", 835e12}, {"H100 PCIe", 756e12}, {"H100", 989e12}, {"H200", 989e12},
      {"H800", 989e12},     {"H20", 148e12},       {"A100", 312e12}, {"A800", 312e12},
      {"B200", 2250e12},
  };
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  const std::string name = prop.name;
  for (const Known& k : kKnown) {
    if (name.find(k.name) != std::string::npos) {
      l.bf16_flops_per_s = k.flops;
      l.flops_basis = std::string(k.name) + " (NVIDIA: " + std::to_string(int(k.flops / 1e12)) +
                      " TFLOP/s)";
      return l;
    }
  }
  const int per_clk = major == 8 && minor == 0 ? 2048 : major == 9 ? 4096 : major == 10 ? 8192 : 0;
  l.bf16_flops_per_s = double(sms) * clock_khz * 1e3 * per_clk;
  l.flops_basis = per_clk ? "an upper bound: " + std::to_string(sms) + " SMs x " +
                                std::to_string(clock_khz / 1000) + " MHz x " +
                                std::to_string(per_clk) + " FLOP/clk"
                          : "unknown for compute capability " + std::to_string(major) + "." +
                                std::to_string(minor);
  return l;
}

}  // namespace flashmla::gpu_testing
