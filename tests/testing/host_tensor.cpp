#include "testing/host_tensor.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "cpu/common/half.h"
#include "flashmla/error.h"
#include "testing/random_data.h"

namespace flashmla::testing {

namespace {

[[noreturn]] void unsupported_dtype(const char* function, DType dtype) {
  throw Error(ErrorKind::type, function, "dtype", "bf16, fp16, fp32, int32 or uint8",
              dtype_name(dtype));
}

// The byte pattern every element of a fresh allocation starts with.
std::vector<std::byte> initial_element(DType dtype) {
  std::vector<std::byte> e(dtype_size(dtype), std::byte{0});
  auto put = [&e](auto bits) { std::memcpy(e.data(), &bits, sizeof(bits)); };
  switch (dtype) {
    case DType::bf16: put(uint16_t{0x7fc0}); break;  // quiet NaN
    case DType::fp16: put(uint16_t{0x7e00}); break;  // quiet NaN
    case DType::fp32: put(std::numeric_limits<float>::quiet_NaN()); break;
    case DType::fp8_e4m3: put(uint8_t{0x7f}); break;  // NaN of e4m3fn
    case DType::int32:
    case DType::uint8: break;
  }
  return e;
}

}  // namespace

float load_float(const TensorView& view, int64_t offset) {
  switch (view.dtype) {
    case DType::bf16: return cpu::bf16_to_float(view.ptr<const uint16_t>()[offset]);
    case DType::fp16: return cpu::fp16_to_float(view.ptr<const uint16_t>()[offset]);
    case DType::fp32: return view.ptr<const float>()[offset];
    case DType::int32: return static_cast<float>(view.ptr<const int32_t>()[offset]);
    case DType::uint8: return static_cast<float>(view.ptr<const uint8_t>()[offset]);
    default: unsupported_dtype("load_float", view.dtype);
  }
}

void store_float(const TensorView& view, int64_t offset, float value) {
  switch (view.dtype) {
    case DType::bf16: view.ptr<uint16_t>()[offset] = cpu::float_to_bf16(value); return;
    case DType::fp16: view.ptr<uint16_t>()[offset] = cpu::float_to_fp16(value); return;
    case DType::fp32: view.ptr<float>()[offset] = value; return;
    case DType::int32: view.ptr<int32_t>()[offset] = static_cast<int32_t>(value); return;
    case DType::uint8: view.ptr<uint8_t>()[offset] = static_cast<uint8_t>(value); return;
    default: unsupported_dtype("store_float", view.dtype);
  }
}

int64_t element_offset(const TensorView& view, std::initializer_list<int64_t> index) {
  if (static_cast<int>(index.size()) != view.rank) {
    throw Error(ErrorKind::value, "element_offset", "index",
                std::to_string(view.rank) + " coordinates", std::to_string(index.size()));
  }
  int64_t offset = 0;
  int d = 0;
  for (int64_t i : index) offset += i * view.strides[d++];
  return offset;
}

HostTensor::HostTensor(const HostTensor& other) : bytes_(other.bytes_), view_(other.view_) {
  view_.data = bytes_.data();
}

HostTensor& HostTensor::operator=(const HostTensor& other) {
  if (this != &other) {
    bytes_ = other.bytes_;
    view_ = other.view_;
    view_.data = bytes_.data();
  }
  return *this;
}

HostTensor::HostTensor(HostTensor&& other) noexcept
    : bytes_(std::move(other.bytes_)), view_(std::exchange(other.view_, TensorView{})) {
  view_.data = bytes_.data();
}

HostTensor& HostTensor::operator=(HostTensor&& other) noexcept {
  if (this != &other) {
    bytes_ = std::move(other.bytes_);
    view_ = std::exchange(other.view_, TensorView{});
    view_.data = bytes_.data();
  }
  return *this;
}

HostTensor HostTensor::empty(DType dtype, std::vector<int64_t> shape, Padding pad) {
  if (shape.size() > static_cast<size_t>(kMaxRank)) {
    throw Error(ErrorKind::value, "HostTensor::empty", "shape",
                "at most " + std::to_string(kMaxRank) + " dimensions",
                std::to_string(shape.size()) + " dimensions");
  }
  HostTensor t;
  t.view_.dtype = dtype;
  t.view_.rank = static_cast<int>(shape.size());
  // Strides of the padded allocation, innermost first.
  int64_t allocated = 1;
  for (int d = t.view_.rank - 1; d >= 0; --d) {
    t.view_.shape[d] = shape[d];
    t.view_.strides[d] = allocated;
    allocated *= shape[d] + (d == t.view_.rank - 1 ? pad.last : pad.other);
  }
  // At least one element so that data is never null, even for an empty shape.
  const std::vector<std::byte> init = initial_element(dtype);
  const size_t total = static_cast<size_t>(std::max<int64_t>(allocated, 1)) * init.size();
  t.bytes_.resize(total);
  std::memcpy(t.bytes_.data(), init.data(), init.size());
  for (size_t filled = init.size(); filled < total; filled *= 2) {  // replicate by doubling
    std::memcpy(t.bytes_.data() + filled, t.bytes_.data(), std::min(filled, total - filled));
  }
  t.view_.data = t.bytes_.data();
  return t;
}

float HostTensor::get(std::initializer_list<int64_t> index) const {
  return load_float(view_, element_offset(view_, index));
}

void HostTensor::set(std::initializer_list<int64_t> index, float value) {
  store_float(view_, element_offset(view_, index), value);
}

int32_t& HostTensor::i32(std::initializer_list<int64_t> index) {
  if (view_.dtype != DType::int32) unsupported_dtype("HostTensor::i32", view_.dtype);
  return view_.ptr<int32_t>()[element_offset(view_, index)];
}

int32_t HostTensor::i32(std::initializer_list<int64_t> index) const {
  return const_cast<HostTensor*>(this)->i32(index);
}

void HostTensor::fill(float value) {
  for_each_element(view_,
                   [&](const int64_t*, int64_t offset) { store_float(view_, offset, value); });
}

void HostTensor::fill_randn(std::mt19937_64& rng, float stddev, float clamp) {
  FastNormal normal(rng);
  for_each_element(view_, [&](const int64_t*, int64_t offset) {
    store_float(view_, offset, std::clamp(stddev * normal(), -clamp, clamp));
  });
}

}  // namespace flashmla::testing
