// The GPU device of a build without the CUDA backend: there is none. open_device says why; the
// other functions are never reached after it (they throw if they are).
#include <stdexcept>

#include "gpu/gpu_device.h"

namespace flashmla::gpu_testing {
namespace {

[[noreturn]] void none() {
  throw std::logic_error("gpu_testing: no CUDA device in a build without the CUDA backend");
}

}  // namespace

bool open_device(std::string* why) {
  *why = "this build has no CUDA backend (nvcc was not found when it was configured)";
  return false;
}
std::string device_description() { return "none"; }
bool is_gpu() { return false; }
void select_kernels(Kernels) {}
void* stream() { return nullptr; }
void* allocate(size_t) { none(); }
void release(void*) {}
void copy_to_device(void*, const void*, size_t) { none(); }
void copy_to_host(void*, const void*, size_t) { none(); }
void run_as_graph(void (*)(void*), void*, int) { none(); }
double time_on_device(void (*)(void*), void*) { none(); }
void flush_l2() { none(); }
void copy_on_device(void*, const void*, size_t) { none(); }
DeviceLimits device_limits() { return {}; }

}  // namespace flashmla::gpu_testing
