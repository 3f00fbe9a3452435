// Shared pieces of the libFuzzer targets (fuzz/fuzz_*.cpp): tensors whose shape, strides, dtype
// and contents come from the fuzzer's bytes, always backed by a buffer that covers every element
// the view can address (so any read or write outside it is the library's fault, which
// AddressSanitizer reports), and the one rule every target checks: a call either succeeds or
// throws flashmla::Error; anything else (another exception, a crash, a sanitizer report) is a
// finding.
//
// Shapes are "mostly right": each dimension is the consistent value with high probability and
// otherwise a perturbation (off by one, zero, negative, huge), so the fuzzer spends its time
// both inside the kernels and at every validation boundary.
#pragma once

#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <memory>
#include <vector>

#include "flashmla/error.h"
#include "flashmla/tensor.h"

namespace flashmla::fuzz {

// The consistent value v, or (about one time in eight) a perturbation of it.
inline int64_t dim(FuzzedDataProvider& f, int64_t v) {
  // (An exhausted provider returns the range's minimum: that must mean "the usual".)
  if (f.ConsumeIntegralInRange<int>(0, 7) != 7) return v;
  switch (f.ConsumeIntegralInRange<int>(0, 5)) {
    case 0: return v + 1;
    case 1: return v - 1;
    case 2: return 0;
    case 3: return -1;
    case 4: return int64_t{1} << 62;  // huge: no such view fits in memory, must be rejected
    default: return f.ConsumeIntegralInRange<int64_t>(0, 80);
  }
}

// A float scale: usually ordinary, sometimes NaN, inf, zero, negative, subnormal or huge.
inline float scale(FuzzedDataProvider& f, float usual) {
  switch (f.ConsumeIntegralInRange<int>(0, 11)) {
    case 11: return std::numeric_limits<float>::quiet_NaN();
    case 10: return std::numeric_limits<float>::infinity();
    case 9: return 0.0f;
    case 8: return -usual;
    case 7: return 1e-45f;
    case 6: return 3e38f;
    default: return usual;
  }
}

// The dtype `usual`, or sometimes another one.
inline DType dtype(FuzzedDataProvider& f, DType usual) {
  if (f.ConsumeIntegralInRange<int>(0, 9) != 9) return usual;
  constexpr DType kAll[] = {DType::fp32, DType::bf16, DType::fp16, DType::int32, DType::uint8,
                            DType::fp8_e4m3};
  return kAll[f.ConsumeIntegralInRange<size_t>(0, std::size(kAll) - 1)];
}

// A tensor with its own buffer: contiguous strides for `shape` (or, sometimes, padded or
// permuted ones), the buffer spanning exactly what the strides reach. Shapes that describe no
// real memory (a negative size, or 2^62 from dim()) get a 1-byte buffer: the library must reject
// them before reading. Every other shape the targets make stays far below the 2^27-element
// limit here.
class Tensor {
 public:
  Tensor() = default;
  Tensor(FuzzedDataProvider& f, DType dt, std::initializer_list<int64_t> shape,
         bool may_be_strided = true) {
    view_.dtype = dt;
    view_.rank = static_cast<int>(shape.size());
    int d = 0;
    for (int64_t s : shape) view_.shape[d++] = s;
    int64_t stride = 1;
    bool sane = true;
    for (d = view_.rank - 1; d >= 0; --d) {
      const int64_t s = view_.shape[d];
      if (s < 0 || s > (int64_t{1} << 24)) sane = false;
      int64_t pad = 0;
      if (may_be_strided && f.ConsumeIntegralInRange<int>(0, 15) == 15) {
        pad = f.ConsumeIntegralInRange<int64_t>(1, 9);
      }
      view_.strides[d] = stride;
      if (sane) stride *= (s > 0 ? s : 1) + pad;
      if (stride > (int64_t{1} << 27)) sane = false;
    }
    if (may_be_strided && sane && view_.rank >= 2 && view_.rank <= 3 &&
        f.ConsumeIntegralInRange<int>(0, 31) == 31) {
      std::swap(view_.strides[0], view_.strides[view_.rank - 1]);  // a transposed layout
    }
    int64_t span = 1;
    for (d = 0; d < view_.rank && sane; ++d) {
      if (view_.shape[d] == 0) span = 0;
    }
    if (span != 0 && sane) {
      for (d = 0; d < view_.rank; ++d) span += (view_.shape[d] - 1) * view_.strides[d];
    }
    const size_t bytes = sane ? static_cast<size_t>(span) * dtype_size(dt) : 0;
    mem_.reset(new unsigned char[bytes + 1]);
    // Contents: a fixed pattern (0x3c bytes: about 0.0115 as bf16 or fp32), then up to 64 of
    // the fuzzer's bytes at its start.
    std::memset(mem_.get(), 0x3c, bytes + 1);
    const std::vector<uint8_t> given = f.ConsumeBytes<uint8_t>(std::min<size_t>(bytes, 64));
    if (!given.empty()) std::memcpy(mem_.get(), given.data(), given.size());
    view_.data = mem_.get();
    numel_ = sane ? span : 0;
  }

  const TensorView& view() const { return view_; }
  TensorView& view() { return view_; }
  // int32 contents: each element in [lo - 2, hi + 2], sometimes any int32.
  void fill_i32(FuzzedDataProvider& f, int64_t lo, int64_t hi) {
    if (view_.dtype != DType::int32) return;
    auto* p = reinterpret_cast<int32_t*>(mem_.get());
    for (int64_t i = 0; i < numel_; ++i) {
      p[i] = f.ConsumeIntegralInRange<int>(0, 15) == 15
                 ? f.ConsumeIntegral<int32_t>()
                 : static_cast<int32_t>(f.ConsumeIntegralInRange<int64_t>(lo - 2, hi + 2));
    }
  }
  // int32 contents as a non-decreasing prefix sum starting at 0 (cu_seqlens, num_splits) of
  // steps in [0, max_step], sometimes broken.
  void fill_prefix(FuzzedDataProvider& f, int64_t max_step) {
    if (view_.dtype != DType::int32) return;
    auto* p = reinterpret_cast<int32_t*>(mem_.get());
    int64_t acc = 0;
    for (int64_t i = 0; i < numel_; ++i) {
      p[i] = static_cast<int32_t>(acc);
      acc += f.ConsumeIntegralInRange<int64_t>(0, max_step);
      if (f.ConsumeIntegralInRange<int>(0, 31) == 31) p[i] = f.ConsumeIntegral<int32_t>();
    }
  }

 private:
  std::unique_ptr<unsigned char[]> mem_;
  TensorView view_;
  int64_t numel_ = 0;
};

// Runs the call; flashmla::Error is an accepted outcome, anything else escaping is a finding.
template <class F>
bool call(F&& f) {
  try {
    f();
    return true;
  } catch (const flashmla::Error&) {
    return false;
  }
}

}  // namespace flashmla::fuzz
