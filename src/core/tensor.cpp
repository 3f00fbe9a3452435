#include "flashmla/tensor.h"

#include <sstream>

#include "flashmla/error.h"

namespace flashmla {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::bf16:
    case DType::fp16: return 2;
    case DType::fp32:
    case DType::int32: return 4;
    case DType::fp8_e4m3:
    case DType::uint8: return 1;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::bf16: return "bf16";
    case DType::fp16: return "fp16";
    case DType::fp32: return "fp32";
    case DType::fp8_e4m3: return "fp8_e4m3";
    case DType::int32: return "int32";
    case DType::uint8: return "uint8";
  }
  return "unknown";
}

// A view of `data` with the given shape; strides left to the caller.
static TensorView with_shape(const void* data, DType dtype, std::initializer_list<int64_t> shape,
                             Device device) {
  if (shape.size() > static_cast<size_t>(kMaxRank)) {
    throw Error(ErrorKind::value, "TensorView", "shape",
                "at most " + std::to_string(kMaxRank) + " dimensions",
                std::to_string(shape.size()) + " dimensions");
  }
  TensorView t;
  t.data = const_cast<void*>(data);
  t.dtype = dtype;
  t.device = device;
  t.rank = static_cast<int>(shape.size());
  int d = 0;
  for (int64_t s : shape) t.shape[d++] = s;
  return t;
}

TensorView TensorView::contiguous(const void* data, DType dtype,
                                  std::initializer_list<int64_t> shape, Device device) {
  TensorView t = with_shape(data, dtype, shape, device);
  int64_t stride = 1;
  for (int d = t.rank - 1; d >= 0; --d) {
    t.strides[d] = stride;
    stride *= t.shape[d];
  }
  return t;
}

TensorView TensorView::strided(const void* data, DType dtype, std::initializer_list<int64_t> shape,
                               std::initializer_list<int64_t> strides, Device device) {
  TensorView t = with_shape(data, dtype, shape, device);
  if (strides.size() != shape.size()) {
    throw Error(ErrorKind::value, "TensorView", "strides",
                std::to_string(shape.size()) + " strides (one per dimension)",
                std::to_string(strides.size()));
  }
  int d = 0;
  for (int64_t s : strides) t.strides[d++] = s;
  return t;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int d = 0; d < rank; ++d) n *= shape[d];
  return n;
}

bool TensorView::is_contiguous() const {
  int64_t expected = 1;
  for (int d = rank - 1; d >= 0; --d) {
    if (shape[d] != 1 && strides[d] != expected) return false;
    expected *= shape[d];
  }
  return true;
}

static std::string join(const int64_t* v, int n) {
  std::ostringstream os;
  os << '(';
  for (int d = 0; d < n; ++d) os << (d ? ", " : "") << v[d];
  if (n == 1) os << ',';
  os << ')';
  return os.str();
}

std::string TensorView::shape_string() const { return join(shape, rank); }
std::string TensorView::strides_string() const { return join(strides, rank); }

}  // namespace flashmla
