// Where test_gpu_ops runs: device memory, copies and the stream of one CUDA device, behind the
// same functions whether that device is a GPU (gpu_device_cuda.cpp, CUDA runtime; the library's
// own GPU backend) or the CPU harness (gpu_device_harness.cpp: host memory, the harness build of
// the backend installed in its place), so the suite that runs on a GPU runs in CI as well.
#pragma once

#include <cstddef>
#include <ostream>
#include <string>

namespace flashmla::gpu_testing {

// Which attention kernels the device runs: those the library picks for it (the Hopper ones on a
// compute capability 9.0 GPU; in the harness, the Hopper ones through the wgmma emulation), or
// the portable SM80 ones (FLASHMLA_CUDA_PORTABLE=1).
enum class Kernels { picked, portable };
inline const char* kernels_name(Kernels k) { return k == Kernels::picked ? "picked" : "portable"; }
// (GoogleTest prints a parameter with this.)
inline void PrintTo(Kernels k, std::ostream* os) { *os << kernels_name(k); }

// Opens the device for the process; false with `why` when there is none (no GPU, no driver).
bool open_device(std::string* why);
// "NVIDIA H100 80GB HBM3 (compute capability 9.0, 132 SMs)" or "CPU harness".
std::string device_description();
// Whether the device is a GPU: test shapes are then those of the models, else small ones.
bool is_gpu();
void select_kernels(Kernels kernels);

// The stream every call of the suite runs on (Context::cuda_stream).
void* stream();
void* allocate(size_t bytes);  // device memory, 256-byte aligned
void release(void* ptr);
// Copies on stream(); copy_to_host returns once the stream has drained into `dst`.
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);

}  // namespace flashmla::gpu_testing
