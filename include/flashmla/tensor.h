// Framework-free tensor description: a pointer, a dtype, a shape and strides in elements.
// A TensorView never owns memory; the caller keeps the buffer alive for the call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

namespace flashmla {

enum class DType : uint8_t { bf16, fp16, fp32, fp8_e4m3, int32, uint8 };

enum class Device : uint8_t { cpu, cuda };

// Size in bytes of one element.
size_t dtype_size(DType dtype);
// Lower-case name as used in error messages ("bf16", "fp8_e4m3", ...).
const char* dtype_name(DType dtype);

inline constexpr int kMaxRank = 6;

struct TensorView {
  void* data = nullptr;                // may be null only where an argument is optional
  DType dtype = DType::fp32;
  int rank = 0;                        // 0 <= rank <= kMaxRank
  int64_t shape[kMaxRank] = {};
  int64_t strides[kMaxRank] = {};      // in elements, not bytes
  Device device = Device::cpu;

  // A row-major contiguous view of `data` with the given shape.
  static TensorView contiguous(const void* data, DType dtype, std::initializer_list<int64_t> shape,
                               Device device = Device::cpu);
  // Any shape and strides (both in elements); rank taken from `shape`.
  static TensorView strided(const void* data, DType dtype, std::initializer_list<int64_t> shape,
                            std::initializer_list<int64_t> strides, Device device = Device::cpu);

  bool defined() const { return data != nullptr; }
  int64_t size(int dim) const { return shape[dim]; }
  int64_t stride(int dim) const { return strides[dim]; }
  int64_t numel() const;
  bool is_contiguous() const;
  // "(2, 3, 576)" and "(1728, 576, 1)".
  std::string shape_string() const;
  std::string strides_string() const;

  template <class T>
  T* ptr() const { return static_cast<T*>(data); }
};

}  // namespace flashmla
