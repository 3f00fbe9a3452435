// The backend table (core::CudaBackend) over this build's kernels. Under nvcc: the current
// device's multiprocessor count and stream-ordered allocation (cudaMallocFromPoolAsync from the
// library's pool / cudaFreeAsync) on the call's stream. In the
// CPU harness: host memory (the harness's "device" memory is the host's) and a fixed SM count.
#include "cuda/backend.h"

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string_view>

#include "cuda/common/portable.h"
#include "cuda/decode/combine.h"
#include "cuda/decode/dense_decode.h"
#include "cuda/decode/dense_token_slots.h"
#include "cuda/decode/scheduler.h"
#include "cuda/decode/sparse_decode.h"
#include "cuda/prefill/sparse_prefill.h"
#include "flashmla/error.h"

FMLA_CUDA_NS_BEGIN

namespace {

// FLASHMLA_LOG=debug: the backend says which kernels it runs.
bool debug_log() {
  const char* log = std::getenv("FLASHMLA_LOG");
  return log && std::string_view(log) == "debug";
}

#if defined(__CUDACC__)
constexpr const char* kName = "nvcc";

void check(cudaError_t status, const char* step) {
  if (status != cudaSuccess) {
    throw Error(ErrorKind::unsupported, "flashmla CUDA backend", step, "a successful CUDA call",
                cudaGetErrorString(status));
  }
}

int sm_count(void*) {
  int device = 0, count = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device),
        "cudaDeviceGetAttribute(MultiProcessorCount)");
  return count;
}

// The library's own stream-ordered memory pool per device, which keeps what is freed for the
// next call (release threshold: unlimited) instead of returning it to the driver at every
// synchronisation, as the device's default pool does with its threshold of 0; without it every
// decode call without a schedule would map its split buffers again. The default pool, which
// the application may have configured, is left alone. Holds at most the largest scratch of a
// call (the split accumulators) per device, for the life of the process.
cudaMemPool_t pool_of(int device) {
  static std::mutex mutex;
  static std::map<int, cudaMemPool_t> pools;
  std::lock_guard<std::mutex> lock(mutex);
  if (const auto it = pools.find(device); it != pools.end()) return it->second;
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device;
  cudaMemPool_t pool = nullptr;
  check(cudaMemPoolCreate(&pool, &props), "cudaMemPoolCreate");
  uint64_t threshold = UINT64_MAX;
  check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold),
        "cudaMemPoolSetAttribute(ReleaseThreshold)");
  pools.emplace(device, pool);
  return pool;
}

void* allocate(size_t bytes, void* stream) {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  void* p = nullptr;
  check(cudaMallocFromPoolAsync(&p, bytes, pool_of(device), static_cast<cudaStream_t>(stream)),
        "cudaMallocFromPoolAsync");
  return p;
}

void release(void* p, void* stream) {
  (void)cudaFreeAsync(p, static_cast<cudaStream_t>(stream));  // never throws: a destructor's
}

// The kernel generation for the current device: SM90 (wgmma) on compute capability 9.0 and
// SM100 (tcgen05) on 10.0 (their sm_90a / sm_100a code runs there only) when this build has that
// code (FLASHMLA_CUDA_SM90A / FLASHMLA_CUDA_SM100A, cmake/cuda.cmake) and FLASHMLA_CUDA_PORTABLE
// is not set to something other than 0 (which keeps every GPU on the portable SM80 kernels);
// SM80 otherwise. FLASHMLA_LOG=debug prints the choice once per device.
KernelGeneration generation() {
  int device = 0, major = 0, minor = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device),
        "cudaDeviceGetAttribute(ComputeCapabilityMajor)");
  check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device),
        "cudaDeviceGetAttribute(ComputeCapabilityMinor)");
  const char* env = std::getenv("FLASHMLA_CUDA_PORTABLE");
  const bool opted_out = env && *env && std::string_view(env) != "0";
#if defined(FLASHMLA_CUDA_SM90A)
  const bool built90 = true;
#else
  const bool built90 = false;
#endif
#if defined(FLASHMLA_CUDA_SM100A)
  const bool built100 = true;
#else
  const bool built100 = false;
#endif
  const bool hopper = major == 9 && minor == 0, blackwell = major == 10 && minor == 0;
  KernelGeneration g = KernelGeneration::sm80;
  if (!opted_out && hopper && built90) g = KernelGeneration::sm90;
  if (!opted_out && blackwell && built100) g = KernelGeneration::sm100;
  static std::atomic<uint64_t> logged{0};
  if (debug_log() && device >= 0 && device < 64 && !(logged.fetch_or(uint64_t{1} << device) >> device & 1)) {
    const char* why = g != KernelGeneration::sm80 || !(hopper || blackwell) ? ""
                      : opted_out ? " (FLASHMLA_CUDA_PORTABLE)"
                      : hopper    ? " (no sm_90a in this build)"
                                  : " (no sm_100a in this build)";
    std::fprintf(stderr, "flashmla: CUDA device %d (compute capability %d.%d): %s kernels%s\n",
                 device, major, minor, generation_name(g), why);
  }
  return g;
}
#else
constexpr const char* kName = "harness";
constexpr int kHarnessSmCount = 8;  // a small GPU: several parts, so requests split

int sm_count(void*) { return kHarnessSmCount; }

void* allocate(size_t bytes, void*) {
  void* p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);  // cudaMalloc's alignment
  if (p == nullptr) {
    throw Error(ErrorKind::unsupported, "flashmla CUDA backend", "allocate",
                "host memory for the harness's device buffers", "an allocation failure");
  }
  return p;
}

void release(void* p, void*) { std::free(p); }

// The harness's table runs the portable kernels; tests run the SM90 and SM100 ones directly.
KernelGeneration generation() { return KernelGeneration::sm80; }
#endif

void dense_decode(const core::DenseDecodeParams& p, void* stream) {
  const KernelGeneration picked = generation();
  const KernelGeneration ran = run_dense_decode(p, stream, picked);
  // The SM90 and SM100 kernels read the cache by TMA; a layout they cannot map runs the SM80
  // one (once said under FLASHMLA_LOG=debug, as the choice of kernels is).
  static std::atomic<bool> said{false};
  if (ran != picked && !said.exchange(true)) {
    if (debug_log()) {
      std::fprintf(stderr,
                   "flashmla: dense decode on the sm80 kernel: the %s one reads the cache "
                   "through a TMA tensor map, which needs page_block_size a multiple of 8 (got "
                   "%lld), k_cache and its strides 16-byte aligned, at most 2^31-1 blocks, and a "
                   "driver that encodes the map\n",
                   generation_name(picked), static_cast<long long>(p.page_block_size));
    }
  }
}

void sparse_decode(const core::SparseDecodeParams& p, void* stream) {
  run_sparse_decode(p, stream, generation());
}

void sparse_prefill(const core::SparsePrefillParams& p, void* stream) {
  run_sparse_prefill(p, stream, generation());
}

}  // namespace

const core::CudaBackend& backend() {
  static const core::CudaBackend table{
      .name = kName,
      .sm_count = sm_count,
      .allocate = allocate,
      .release = release,
      .get_mla_metadata = run_get_mla_metadata,
      .get_mla_metadata_sparse = run_get_mla_metadata_sparse,
      .dense_decode = dense_decode,
      .dense_token_slots = run_dense_token_slots,
      .sparse_decode = sparse_decode,
      .sparse_prefill = sparse_prefill,
      .combine = run_combine,
  };
  return table;
}

FMLA_CUDA_NS_END
