// Where test_gpu_ops runs: device memory, copies and the stream of one CUDA device, behind the
// same functions whether that device is a GPU (gpu_device_cuda.cpp, CUDA runtime; the library's
// own GPU backend) or the CPU harness (gpu_device_harness.cpp: host memory, the harness build of
// the backend installed in its place), so the suite that runs on a GPU runs in CI as well.
#pragma once

#include <cstddef>
#include <cstdint>
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

// Opens the device for the process; false with `why` when there is none (no GPU, no driver, a
// GPU older than compute capability 8.0, a build without CUDA).
bool open_device(std::string* why);
// "NVIDIA H100 80GB HBM3 (compute capability 9.0, 132 SMs)" or "CPU harness".
std::string device_description();
// Whether the device is a GPU: test shapes are then those of the models, else small ones.
bool is_gpu();
// `gpu` on a GPU, `harness` on the CPU harness (which emulates every CUDA thread: tiny shapes).
inline int64_t sized(int64_t gpu, int64_t harness) { return is_gpu() ? gpu : harness; }
void select_kernels(Kernels kernels);

// The stream every call of the suite runs on (Context::cuda_stream).
void* stream();
void* allocate(size_t bytes);  // device memory, 256-byte aligned
void release(void* ptr);
// Copies on stream(); copy_to_host returns once the stream has drained into `dst`.
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
// Queues `queue`'s calls as a CUDA graph: captures them from stream() (global capture mode, so
// a call that is not capturable fails the capture), instantiates the graph, launches it
// `launches` times on stream() and waits. The harness, which has no graphs, runs `queue`
// `launches` times. Throws with CUDA's message when capturing or launching fails.
void run_as_graph(void (*queue)(void*), void* arg, int launches);

// ---- for the benchmark (bench/gpu/bench_gpu.cpp) ----

// Seconds the work that `queue` puts on stream() takes on the device: events recorded on the
// stream around it, waited for (GPU); the wall-clock time of the call (harness).
double time_on_device(void (*queue)(void*), void* arg);
// Evicts the device's L2 cache (a memset of max(4 x its size, 64 MiB) on stream(), not waited
// for), as FlashMLA's benchmarks do between timed calls; nothing in the harness.
void flush_l2();
// Device-to-device copy of `bytes` on stream(), not waited for.
void copy_on_device(void* dst, const void* src, size_t bytes);

// The device's limits for the roofline. Memory: 2 x memory clock x bus width (double data
// rate). Tensor cores (dense bf16 in, fp32 accumulate): NVIDIA's published figure for the
// data-centre parts it knows by name (A100/A800, H100 SXM/PCIe/NVL, H200, H800, H20, B200),
// else an upper bound, SMs x clock x the architecture's dense FLOP/clk per SM (8.0: 2048, 9.0:
// 4096, 10.0: 8192), else 0 (unknown: consumer parts' fp32-accumulate rate varies by product).
struct DeviceLimits {
  double dram_bytes_per_s = 0;
  double bf16_flops_per_s = 0;
  std::string flops_basis;  // where bf16_flops_per_s comes from
};
DeviceLimits device_limits();

}  // namespace flashmla::gpu_testing
