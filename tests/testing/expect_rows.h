// For tests that corrupt some requests of a call: out / lse of the requests from `first` on
// (dim 0) must still match the reference, with the decode tolerances.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>

#include "flashmla/tensor.h"
#include "testing/compare.h"

namespace flashmla::testing {

// The view without its first `n` rows (dim 0).
inline TensorView rows_from(TensorView v, int64_t n) {
  const int64_t bytes = n * v.strides[0] * static_cast<int64_t>(dtype_size(v.dtype));
  v.data = static_cast<char*>(v.data) + bytes;
  v.shape[0] -= n;
  return v;
}

// Every element of out / lse from row `first` on matches the reference.
inline void expect_rows_match(const TensorView& out, const TensorView& ref_out,
                              const TensorView& lse, const TensorView& ref_lse, int64_t first) {
  const auto o = check_is_allclose("out", rows_from(out, first), rows_from(ref_out, first), 1e-3,
                                   2.01 / 128, 5e-6);
  EXPECT_TRUE(o.ok) << o.message;
  const auto l = check_is_allclose("lse", rows_from(lse, first), rows_from(ref_lse, first), 1e-6,
                                   8.01 / 65536);
  EXPECT_TRUE(l.ok) << l.message;
}

}  // namespace flashmla::testing
