// An owning host tensor for tests and tools: a byte buffer plus a TensorView onto it, with
// element access converting through the dtype. Optional padding gives a non-contiguous layout
// (like FlashMLA's test helper non_contiguousify) so kernels are exercised on strided inputs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <random>
#include <vector>

#include "flashmla/tensor.h"

namespace flashmla::testing {

// Extra elements allocated per dimension; the view is the leading slice of the allocation, so
// the strides are those of the padded shape and the last dimension stays contiguous.
struct Padding {
  int64_t last = 0;   // added to the last dimension
  int64_t other = 0;  // added to every other dimension

  // The layout the tests use for "non-contiguous" inputs: rows padded by 8 elements (keeps
  // 16-byte alignment for 2- and 4-byte dtypes), every outer dimension by 1.
  static Padding non_contiguous() { return {.last = 8, .other = 1}; }
};

// Reads element `offset` (in elements from view.data) of a bf16 / fp16 / fp32 / int32 / uint8
// view as a float; throws flashmla::Error for other dtypes.
float load_float(const TensorView& view, int64_t offset);
// Writes `value` rounded to the view's dtype (round to nearest even; integers truncate).
void store_float(const TensorView& view, int64_t offset, float value);
// Element offset of a multi-index (one entry per dimension) through the view's strides.
int64_t element_offset(const TensorView& view, std::initializer_list<int64_t> index);

// Calls f(index, offset) for every element of `view` in row-major order, where `index` points to
// view.rank coordinates and `offset` is the element offset through the strides.
template <class F>
void for_each_element(const TensorView& view, F&& f) {
  if (view.numel() == 0) return;
  int64_t index[kMaxRank] = {};
  int64_t offset = 0;
  while (true) {
    f(static_cast<const int64_t*>(index), offset);
    int d = view.rank - 1;
    for (; d >= 0; --d) {  // odometer increment of the multi-index
      offset += view.strides[d];
      if (++index[d] < view.shape[d]) break;
      offset -= view.strides[d] * view.shape[d];
      index[d] = 0;
    }
    if (d < 0) return;
  }
}

class HostTensor {
 public:
  HostTensor() = default;
  HostTensor(const HostTensor& other);
  HostTensor& operator=(const HostTensor& other);
  HostTensor(HostTensor&& other) noexcept;
  HostTensor& operator=(HostTensor&& other) noexcept;

  // Allocates `shape` (rank <= kMaxRank) with optional padding. The whole allocation, padding
  // included, starts as NaN for floating dtypes and as 0 for integer dtypes.
  static HostTensor empty(DType dtype, std::vector<int64_t> shape, Padding pad = {});

  const TensorView& view() const { return view_; }
  DType dtype() const { return view_.dtype; }
  int rank() const { return view_.rank; }
  int64_t size(int dim) const { return view_.shape[dim]; }
  int64_t numel() const { return view_.numel(); }

  float get(std::initializer_list<int64_t> index) const;
  void set(std::initializer_list<int64_t> index, float value);
  int32_t& i32(std::initializer_list<int64_t> index);  // int32 tensors only
  int32_t i32(std::initializer_list<int64_t> index) const;

  // Sets every element of the view (padding untouched) to `value`, rounded to the dtype.
  void fill(float value);
  // Sets every element of the view to clamp(stddev * N(0, 1), -clamp, clamp), rounded to the
  // dtype, drawing in row-major order of the view.
  void fill_randn(std::mt19937_64& rng, float stddev, float clamp);

 private:
  std::vector<std::byte> bytes_;
  TensorView view_;
};

}  // namespace flashmla::testing
