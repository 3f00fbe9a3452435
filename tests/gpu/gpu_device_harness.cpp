// test_gpu_ops_harness: the GPU suite's device is the CPU harness. Host memory stands in for
// device memory, and the harness build of the backend table is installed with the attention
// kernels of the selected generation (Kernels::picked: the Hopper ones, through the wgmma
// emulation, as a compute capability 9.0 GPU gets them).
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>

#include "core/cuda_backend.h"
#include "cuda/backend.h"
#include "cuda/common/generation.h"
#include "cuda/decode/dense_decode.h"
#include "cuda/decode/sparse_decode.h"
#include "cuda/prefill/sparse_prefill.h"
#include "gpu/gpu_device.h"

namespace flashmla::gpu_testing {
namespace {

cuda::KernelGeneration g_generation = cuda::KernelGeneration::sm90;

core::CudaBackend make_table() {
  core::CudaBackend t = cuda::harness::backend();
  t.name = "harness (test_gpu_ops)";
  t.dense_decode = [](const core::DenseDecodeParams& p, void* s) {
    cuda::harness::run_dense_decode(p, s, g_generation);
  };
  t.sparse_decode = [](const core::SparseDecodeParams& p, void* s) {
    cuda::harness::run_sparse_decode(p, s, g_generation);
  };
  t.sparse_prefill = [](const core::SparsePrefillParams& p, void* s) {
    cuda::harness::run_sparse_prefill(p, s, g_generation);
  };
  return t;
}

}  // namespace

bool open_device(std::string*) {
  static const core::CudaBackend table = make_table();
  core::set_cuda_backend(&table);
  return true;
}

std::string device_description() { return "CPU harness"; }
bool is_gpu() { return false; }

void select_kernels(Kernels kernels) {
  g_generation = kernels == Kernels::picked ? cuda::KernelGeneration::sm90
                                            : cuda::KernelGeneration::sm80;
}

void* stream() { return nullptr; }

void* allocate(size_t bytes) {
  void* p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

void release(void* ptr) { std::free(ptr); }

void copy_to_device(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void copy_to_host(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }

void run_as_graph(void (*queue)(void*), void* arg, int launches) {
  for (int i = 0; i < launches; ++i) queue(arg);
}

double time_on_device(void (*queue)(void*), void* arg) {
  const auto start = std::chrono::steady_clock::now();
  queue(arg);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void flush_l2() {}

void copy_on_device(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }

DeviceLimits device_limits() { return {.flops_basis = "none (CPU harness)"}; }

}  // namespace flashmla::gpu_testing
