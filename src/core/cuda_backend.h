// The CUDA backend as the public API reaches it: a table of entry points (kernels, the device
// scheduler, stream-ordered allocation). A build with nvcc links the real one (src/cuda/
// backend.cu compiled for the GPU); tests register the same source compiled for the CPU harness,
// so the API's CUDA path runs in CI with host memory standing in for device memory.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/combine_params.h"
#include "core/decode_params.h"
#include "core/scheduler.h"
#include "core/sparse_decode_params.h"
#include "core/sparse_prefill_params.h"

namespace flashmla::core {

class Checker;

// Every function takes the call's stream (Context::cuda_stream, a cudaStream_t; null = the
// default stream) and throws flashmla::Error on a CUDA failure. Pointers are device pointers.
struct CudaBackend {
  const char* name;  // "nvcc" (the GPU build) or "harness" (the CPU harness)
  // Multiprocessors of the current device.
  int (*sm_count)(void* stream);
  // Stream-ordered allocation (cudaMallocFromPoolAsync / cudaFreeAsync): the memory may be
  // released as soon as the kernels queued before the release have run.
  void* (*allocate)(size_t bytes, void* stream);
  void (*release)(void* ptr, void* stream);  // never throws (called from destructors)
  // get_mla_metadata on the device (cuda/decode/scheduler.h).
  void (*get_mla_metadata)(const int32_t* seqlens_k, int64_t batch, int block_size,
                           int fixed_overhead, int num_parts, SchedRecord* records,
                           int32_t* num_splits, void* stream);
  void (*get_mla_metadata_sparse)(int64_t batch, int64_t topk, const int32_t* topk_length,
                                  int64_t extra_topk, const int32_t* extra_topk_length,
                                  int block_size, int fixed_overhead, int num_parts,
                                  SchedRecord* records, int32_t* num_splits, void* stream);
  void (*dense_decode)(const DenseDecodeParams& p, void* stream);
  // The index lists that run a dense call over an FP8 V32 cache on the sparse kernel
  // (cuda/decode/dense_token_slots.h).
  void (*dense_token_slots)(const int32_t* block_table, int64_t block_table_stride,
                            int64_t max_blocks_per_seq, const int32_t* cache_seqlens,
                            int64_t page_block_size, int64_t num_blocks, int64_t batch,
                            int64_t q_len, bool causal, int32_t* indices, void* stream);
  void (*sparse_decode)(const SparseDecodeParams& p, void* stream);
  void (*sparse_prefill)(const SparsePrefillParams& p, void* stream);
  void (*combine)(const CombineParams& p, void* stream);
};

// The backend CUDA tensors go to: the one set_cuda_backend installed, else the GPU build linked
// into this library (FLASHMLA_WITH_CUDA), else null.
const CudaBackend* cuda_backend();

// Installs `backend` (null: back to the built-in one) and returns the previous setting. For
// tests, which run the API's CUDA path on the CPU harness; not thread-safe against calls.
const CudaBackend* set_cuda_backend(const CudaBackend* backend);

// cuda_backend(), or an Error (unsupported) naming `arg`, a CUDA tensor, when there is none.
const CudaBackend& required_cuda_backend(const Checker& c, const char* arg);

// Scheduler parts for the CUDA kernels: FlashMLA's dense SM90 rule (reference §5.1),
// max(S / h_kv / ceil(q_len * h_q / h_kv / 64), 1) with S = sm_count.
int cuda_num_sm_parts(int sm_count, int64_t q_len, int64_t num_heads_q, int64_t num_heads_kv);

// A stream-ordered device allocation released when it goes out of scope.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();
  // Releases what the buffer holds, then allocates `bytes` (none for 0) on `stream`.
  void allocate(const CudaBackend& backend, size_t bytes, void* stream);
  template <class T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  const CudaBackend* backend_ = nullptr;
  void* stream_ = nullptr;
  void* ptr_ = nullptr;
};

}  // namespace flashmla::core
