// test_gpu_ops: the GPU suite's device is the current CUDA device, reached through the
// library's own GPU backend (the build's nvcc kernels). Kernels::portable sets
// FLASHMLA_CUDA_PORTABLE=1, which the backend reads on every call.
#include <cuda_runtime.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "gpu/gpu_device.h"

namespace flashmla::gpu_testing {
namespace {

cudaStream_t g_stream = nullptr;

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

}  // namespace flashmla::gpu_testing
