// FlashMLA's comparison rule (tests/kernelkit/compare.py::check_is_allclose, reference §6.1),
// for host TensorViews of any strides and rank.
#pragma once

#include <string>

#include "flashmla/tensor.h"

namespace flashmla::testing {

struct CompareResult {
  bool ok = false;
  std::string message;      // why it failed, or a one-line summary when it passed
  double max_abs_err = 0;   // over the elements that are finite in both tensors
  double cos_diff = 0;      // 1 - 2·Σ(a·r) / Σ(a² + r²)
};

// Compares `ans` against `ref` (both on the host, same shape and dtype):
//  1. +inf, -inf and NaN positions must coincide exactly (each class separately); those
//     positions then count as 0;
//  2. an element fails when abs_err >= abs_tol AND abs_err / (|r| + 1e-6) >= rel_tol;
//  3. |cos_diff| <= cos_diff_tol, with cos_diff = 0 when Σ r² < 1e-12.
// Use in GoogleTest as `EXPECT_TRUE(r.ok) << r.message`.
CompareResult check_is_allclose(const std::string& name, const TensorView& ans,
                                const TensorView& ref, double abs_tol = 1e-5,
                                double rel_tol = 1e-2, double cos_diff_tol = 1e-7);

}  // namespace flashmla::testing
