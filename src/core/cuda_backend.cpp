#include "core/cuda_backend.h"

#include <atomic>
#include <string>

#include "core/check.h"

#if FLASHMLA_WITH_CUDA
#include "cuda/backend.h"
#endif

namespace flashmla::core {
namespace {

std::atomic<const CudaBackend*> g_installed{nullptr};

}  // namespace

const CudaBackend* cuda_backend() {
  if (const CudaBackend* b = g_installed.load(std::memory_order_acquire)) return b;
#if FLASHMLA_WITH_CUDA
  return &cuda::device::backend();
#else
  return nullptr;
#endif
}

const CudaBackend* set_cuda_backend(const CudaBackend* backend) {
  return g_installed.exchange(backend, std::memory_order_acq_rel);
}

const CudaBackend& required_cuda_backend(const Checker& c, const char* arg) {
  const CudaBackend* b = cuda_backend();
  if (b == nullptr) {
    c.fail(ErrorKind::unsupported, arg,
           "a CPU tensor (this build of flashmla has no CUDA backend: it was built without nvcc "
           "or with FLASHMLA_CUDA=OFF)",
           "a CUDA tensor");
  }
  return *b;
}

int cuda_num_sm_parts(int sm_count, int64_t q_len, int64_t num_heads_q, int64_t num_heads_kv) {
  const int64_t rows = q_len * (num_heads_q / num_heads_kv);
  const int64_t parts = sm_count / num_heads_kv / ((rows + 63) / 64);
  return static_cast<int>(parts < 1 ? 1 : parts);
}

void DeviceBuffer::allocate(const CudaBackend& backend, size_t bytes, void* stream) {
  if (ptr_ != nullptr) backend_->release(ptr_, stream_);
  ptr_ = nullptr;
  backend_ = &backend;
  stream_ = stream;
  if (bytes > 0) ptr_ = backend.allocate(bytes, stream);
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) backend_->release(ptr_, stream_);
}

}  // namespace flashmla::core

namespace flashmla {

bool has_cuda_backend() { return core::cuda_backend() != nullptr; }

}  // namespace flashmla
