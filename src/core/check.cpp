#include "core/check.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cmath>
#include <utility>
#include <sstream>

#include "core/cuda_backend.h"

namespace flashmla::core {

std::string dtype_list(std::initializer_list<DType> allowed) {
  std::string s;
  size_t i = 0;
  for (DType d : allowed) {
    if (i) s += (i + 1 == allowed.size()) ? " or " : ", ";
    s += dtype_name(d);
    ++i;
  }
  return s;
}

const int32_t* checked_lengths(const Checker& c, const TensorView& t, const char* arg,
                               int64_t batch, int64_t max) {
  if (!t.defined()) return nullptr;
  c.tensor(t, arg, {DType::int32}, {batch}, true);
  const auto* len = t.ptr<const int32_t>();
  if (c.on_cuda()) return len;
  for (int64_t i = 0; i < batch; ++i) {
    if (len[i] < 0 || len[i] > max) {
      c.fail(ErrorKind::value, arg, "values in [0, " + std::to_string(max) + "]",
             std::string(arg) + "[" + std::to_string(i) + "] = " + std::to_string(len[i]));
    }
  }
  return len;
}

float checked_scale_log2(const Checker& c, float scale, const char* arg) {
  const float scale_log2 = scale * static_cast<float>(M_LOG2E);
  if (!std::isfinite(scale_log2)) {
    c.fail(ErrorKind::value, arg,
           std::string("a finite number with |") + arg + "| * log2(e) < 3.4e38",
           std::to_string(scale));
  }
  return scale_log2;
}

int checked_num_threads(const Checker& c, const Context& ctx) {
  if (ctx.num_threads < 0 || ctx.num_threads > kMaxThreads) {
    c.fail(ErrorKind::value, "ctx.num_threads",
           "a thread count in [0, " + std::to_string(kMaxThreads) + "] (0 = default)",
           std::to_string(ctx.num_threads));
  }
  return resolved_num_threads(ctx);
}

void Checker::fail(ErrorKind kind, const std::string& argument, const std::string& expected,
                   const std::string& got) const {
  throw Error(kind, function_, argument, expected, got);
}

void Checker::present(const TensorView& t, const char* arg) const {
  if (t.rank < 0 || t.rank > kMaxRank) {
    fail(ErrorKind::value, arg, "a rank between 0 and " + std::to_string(kMaxRank),
         "rank " + std::to_string(t.rank));
  }
  for (int d = 0; d < t.rank; ++d) {
    if (t.shape[d] < 0) fail(ErrorKind::value, arg, "non-negative sizes", t.shape_string());
  }
  // An empty tensor (a size of 0) needs no data. The product of the non-zero sizes is bounded
  // even then, so that no product of sizes computed later can overflow (found by
  // fuzz/fuzz_kv_codec: an empty view with a size of 2^62 overflowed the overlap check).
  bool empty = false;
  int64_t count = 1;
  for (int d = 0; d < t.rank; ++d) {
    empty = empty || t.shape[d] == 0;
    if (t.shape[d] > 0 &&
        (__builtin_mul_overflow(count, t.shape[d], &count) || count > kMaxTensorBytes)) {
      fail(ErrorKind::value, arg, "sizes whose product (of the non-zero ones) is at most 2^47",
           t.shape_string());
    }
  }
  if (t.data == nullptr && !empty) {
    fail(ErrorKind::value, arg, "a non-null data pointer", "null");
  }
  // The bytes from the lowest to the highest addressed element must fit in a user address
  // space (2^47 bytes on x86-64 and AArch64): a larger view cannot describe real memory, and
  // index arithmetic over it could overflow.
  if (!empty) {
    int64_t span = 1;  // elements from the lowest to the highest addressed one
    bool overflow = false;
    for (int d = 0; d < t.rank; ++d) {
      int64_t reach = 0;
      const int64_t stride = t.strides[d] < 0 ? -t.strides[d] : t.strides[d];
      overflow = overflow || t.strides[d] == INT64_MIN ||
                 __builtin_mul_overflow(t.shape[d] - 1, stride, &reach) ||
                 __builtin_add_overflow(span, reach, &span);
    }
    int64_t bytes = 0;
    overflow = overflow || __builtin_mul_overflow(span, static_cast<int64_t>(dtype_size(t.dtype)),
                                                  &bytes);
    if (overflow || bytes > kMaxTensorBytes) {
      fail(ErrorKind::value, arg,
           "a view of at most 2^47 bytes from its first to its last element",
           "shape " + t.shape_string() + " with strides " + t.strides_string() + " of " +
               dtype_name(t.dtype));
    }
  }
  if (t.device != device_) {
    const auto where = [](Device d) { return d == Device::cuda ? "a CUDA tensor" : "a CPU tensor"; };
    if (device_arg_ == nullptr) {
      fail(ErrorKind::unsupported, arg,
           std::string("a CPU tensor (") + function_ + " has no CUDA kernel)", where(t.device));
    }
    fail(ErrorKind::value, arg,
         std::string(where(device_)) + ", on the device of '" + device_arg_ + "'",
         where(t.device));
  }
}

const CudaBackend* Checker::use_device_of(const TensorView& t, const char* arg) {
  device_ = t.device;
  device_arg_ = arg;
  return t.device == Device::cuda ? &required_cuda_backend(*this, arg) : nullptr;
}

void Checker::dtype(const TensorView& t, const char* arg,
                    std::initializer_list<DType> allowed) const {
  if (std::find(allowed.begin(), allowed.end(), t.dtype) == allowed.end()) {
    fail(ErrorKind::type, arg, "dtype " + dtype_list(allowed), dtype_name(t.dtype));
  }
}

void Checker::rank(const TensorView& t, const char* arg, int expected) const {
  if (t.rank != expected) {
    fail(ErrorKind::value, arg, std::to_string(expected) + " dimensions",
         std::to_string(t.rank) + " dimensions with shape " + t.shape_string());
  }
}

void Checker::shape(const TensorView& t, const char* arg,
                    std::initializer_list<int64_t> expected) const {
  rank(t, arg, static_cast<int>(expected.size()));
  int d = 0;
  bool ok = true;
  for (int64_t e : expected) {
    if (e != kAnySize && t.shape[d] != e) ok = false;
    ++d;
  }
  if (!ok) {
    std::ostringstream os;
    os << "shape (";
    d = 0;
    for (int64_t e : expected) {
      os << (d++ ? ", " : "");
      if (e == kAnySize) os << '*'; else os << e;
    }
    os << (expected.size() == 1 ? ",)" : ")");
    fail(ErrorKind::value, arg, os.str(), t.shape_string());
  }
}

void Checker::last_dim_contiguous(const TensorView& t, const char* arg) const {
  if (t.rank > 0 && t.shape[t.rank - 1] > 1 && t.strides[t.rank - 1] != 1) {
    fail(ErrorKind::value, arg, "a contiguous last dimension (stride 1)",
         "strides " + t.strides_string());
  }
}

void Checker::contiguous(const TensorView& t, const char* arg) const {
  if (!t.is_contiguous()) {
    fail(ErrorKind::value, arg, "a contiguous tensor", "strides " + t.strides_string() +
                                                          " for shape " + t.shape_string());
  }
}

void Checker::non_overlapping(const TensorView& t, const char* arg) const {
  // Sort the dimensions of size > 1 by stride; each stride must reach past the whole extent
  // of the dimensions with smaller strides.
  std::array<int, kMaxRank> dims{};
  int n = 0;
  for (int d = 0; d < t.rank; ++d) {
    if (t.shape[d] > 1) dims[n++] = d;
  }
  for (int i = 1; i < n; ++i) {  // insertion sort: at most kMaxRank entries
    for (int j = i; j > 0 && t.strides[dims[j]] < t.strides[dims[j - 1]]; --j) {
      std::swap(dims[j], dims[j - 1]);
    }
  }
  for (int d = 0; d < t.rank; ++d) {
    if (t.shape[d] == 0) return;  // no elements, nothing to overlap
  }
  int64_t extent = 1;  // elements spanned by the dimensions seen so far
  for (int i = 0; i < n; ++i) {
    const int64_t s = t.strides[dims[i]];
    int64_t reach = 0;
    if (s < extent || __builtin_mul_overflow(s, t.shape[dims[i]] - 1, &reach) ||
        __builtin_add_overflow(reach, extent, &extent)) {
      fail(ErrorKind::value, arg, "a writable layout with no overlapping elements",
           "strides " + t.strides_string() + " for shape " + t.shape_string());
    }
  }
}

void Checker::tensor(const TensorView& t, const char* arg, std::initializer_list<DType> allowed,
                     std::initializer_list<int64_t> expected_shape,
                     bool require_last_dim_contiguous) const {
  present(t, arg);
  rank(t, arg, static_cast<int>(expected_shape.size()));
  dtype(t, arg, allowed);
  shape(t, arg, expected_shape);
  if (require_last_dim_contiguous) last_dim_contiguous(t, arg);
}

}  // namespace flashmla::core
