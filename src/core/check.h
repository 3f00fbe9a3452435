// Argument validation shared by every host API function. Each check throws flashmla::Error
// naming the function, the argument, what was expected and what was given.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "flashmla/error.h"
#include "flashmla/flashmla.h"
#include "flashmla/tensor.h"

namespace flashmla::core {

inline constexpr int64_t kAnySize = -1;  // wildcard in Checker::shape
// Largest byte extent of a view (first to last addressed element): a user address space.
inline constexpr int64_t kMaxTensorBytes = int64_t{1} << 47;

struct CudaBackend;

class Checker {
 public:
  explicit Checker(const char* function) : function_(function) {}

  // The device of the call: every tensor must be on the device of `t` (its leading tensor,
  // named `arg`). Returns the CUDA backend for a CUDA tensor (an Error when this build has
  // none), null for a CPU one. Operations that never call this are CPU-only: a CUDA tensor
  // there is reported as unsupported.
  const CudaBackend* use_device_of(const TensorView& t, const char* arg);
  // The call runs on the GPU: values inside its tensors cannot be read on the host.
  bool on_cuda() const { return device_ == Device::cuda; }

  [[noreturn]] void fail(ErrorKind kind, const std::string& argument, const std::string& expected,
                         const std::string& got) const;

  // The view is usable at all: non-null data (unless the tensor is empty), a rank in
  // [0, kMaxRank], non-negative sizes, a byte extent of at most kMaxTensorBytes, on the call's
  // device (use_device_of; else the CPU).
  void present(const TensorView& t, const char* arg) const;
  void dtype(const TensorView& t, const char* arg, std::initializer_list<DType> allowed) const;
  void rank(const TensorView& t, const char* arg, int expected) const;
  // Rank and every size; kAnySize matches any size.
  void shape(const TensorView& t, const char* arg, std::initializer_list<int64_t> expected) const;
  void last_dim_contiguous(const TensorView& t, const char* arg) const;
  void contiguous(const TensorView& t, const char* arg) const;
  // For outputs: no two elements share an address (no zero or overlapping strides).
  void non_overlapping(const TensorView& t, const char* arg) const;
  // A whole tensor check in one: present + dtype + shape (+ last-dim contiguity).
  void tensor(const TensorView& t, const char* arg, std::initializer_list<DType> allowed,
              std::initializer_list<int64_t> expected_shape, bool last_dim_contiguous) const;

  const char* function() const { return function_; }

 private:
  const char* function_;
  Device device_ = Device::cpu;
  const char* device_arg_ = nullptr;  // the tensor use_device_of took the device from
};

std::string dtype_list(std::initializer_list<DType> allowed);

// An optional (batch,) int32 contiguous tensor of lengths in [0, max]; null when not given. On
// the GPU (c.on_cuda()) only its layout is checked: the kernels clamp lengths to [0, max].
const int32_t* checked_lengths(const Checker& c, const TensorView& t, const char* arg,
                               int64_t batch, int64_t max);

// The softmax scale in log2 units (scale * log2(e)), which must be a finite fp32 number: the
// kernels keep logits in log2 units. `arg` names the scale argument in the error.
float checked_scale_log2(const Checker& c, float scale, const char* arg);

// ctx.num_threads in [0, kMaxThreads]. Returns the number of worker threads the call uses.
int checked_num_threads(const Checker& c, const Context& ctx);

}  // namespace flashmla::core
