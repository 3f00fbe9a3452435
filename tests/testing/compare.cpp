#include "testing/compare.h"

#include <cmath>
#include <cstdint>
#include <sstream>

#include "testing/host_tensor.h"

namespace flashmla::testing {

namespace {

std::string index_string(const int64_t* index, int rank) {
  std::ostringstream os;
  os << '(';
  for (int d = 0; d < rank; ++d) os << (d ? ", " : "") << index[d];
  os << ')';
  return os.str();
}

int64_t offset_of(const TensorView& view, const int64_t* index) {
  int64_t offset = 0;
  for (int d = 0; d < view.rank; ++d) offset += index[d] * view.strides[d];
  return offset;
}

// The anomaly classes whose positions must coincide.
enum class Anomaly { none, pos_inf, neg_inf, nan };

Anomaly classify(double v) {
  if (std::isnan(v)) return Anomaly::nan;
  if (std::isinf(v)) return v > 0 ? Anomaly::pos_inf : Anomaly::neg_inf;
  return Anomaly::none;
}

const char* anomaly_name(Anomaly a) {
  switch (a) {
    case Anomaly::pos_inf: return "+inf";
    case Anomaly::neg_inf: return "-inf";
    case Anomaly::nan: return "NaN";
    case Anomaly::none: break;
  }
  return "finite";
}

CompareResult fail(std::string message) { return {.ok = false, .message = std::move(message)}; }

// Step 1: the first position where ans and ref differ in anomaly class, if any.
std::string anomaly_mismatch(const std::string& name, const TensorView& ans,
                             const TensorView& ref) {
  std::string first;
  int64_t count = 0;
  for_each_element(ans, [&](const int64_t* index, int64_t ans_offset) {
    const double a = load_float(ans, ans_offset);
    const double r = load_float(ref, offset_of(ref, index));
    if (classify(a) == classify(r)) return;
    if (count++ == 0) {
      std::ostringstream os;
      os << index_string(index, ans.rank) << ": ans=" << a << " (" << anomaly_name(classify(a))
         << "), ref=" << r << " (" << anomaly_name(classify(r)) << ")";
      first = os.str();
    }
  });
  if (count == 0) return {};
  return name + ": inf/NaN positions differ at " + std::to_string(count) +
         " elements; first at " + first;
}

}  // namespace

CompareResult check_is_allclose(const std::string& name, const TensorView& ans,
                                const TensorView& ref, double abs_tol, double rel_tol,
                                double cos_diff_tol) {
  if (ans.device != Device::cpu || ref.device != Device::cpu) {
    return fail(name + ": both tensors must be on the host");
  }
  if (ans.dtype != ref.dtype) {
    return fail(name + ": dtype differs: ans " + dtype_name(ans.dtype) + ", ref " +
                dtype_name(ref.dtype));
  }
  if (ans.shape_string() != ref.shape_string()) {
    return fail(name + ": shape differs: ans " + ans.shape_string() + ", ref " +
                ref.shape_string());
  }
  if (std::string mismatch = anomaly_mismatch(name, ans, ref); !mismatch.empty()) {
    return fail(std::move(mismatch));
  }

  // Steps 2 and 3, with anomalies (now known to coincide) counted as 0.
  CompareResult result;
  int64_t failures = 0;
  std::string first_failure;
  double sum_ar = 0, sum_a2_r2 = 0, sum_r2 = 0;
  for_each_element(ans, [&](const int64_t* index, int64_t ans_offset) {
    double a = load_float(ans, ans_offset);
    double r = load_float(ref, offset_of(ref, index));
    if (classify(a) != Anomaly::none) a = r = 0;
    const double abs_err = std::fabs(a - r);
    const double rel_err = abs_err / (std::fabs(r) + 1e-6);
    result.max_abs_err = std::fmax(result.max_abs_err, abs_err);
    if (abs_err >= abs_tol && rel_err >= rel_tol && failures++ == 0) {
      std::ostringstream os;
      os << index_string(index, ans.rank) << ": ans=" << a << ", ref=" << r
         << ", abs_err=" << abs_err << ", rel_err=" << rel_err;
      first_failure = os.str();
    }
    sum_ar += a * r;
    sum_a2_r2 += a * a + r * r;
    sum_r2 += r * r;
  });
  result.cos_diff = sum_r2 < 1e-12 ? 0.0 : 1.0 - 2.0 * sum_ar / sum_a2_r2;

  std::ostringstream os;
  os << name << ": " << failures << " of " << ans.numel()
     << " elements out of tolerance (abs_tol=" << abs_tol << ", rel_tol=" << rel_tol << ")";
  if (failures > 0) os << "; first at " << first_failure;
  os << "; max_abs_err=" << result.max_abs_err << "; cos_diff=" << result.cos_diff
     << " (tol " << cos_diff_tol << ")";
  result.ok = failures == 0 && std::fabs(result.cos_diff) <= cos_diff_tol;
  result.message = os.str();
  return result;
}

}  // namespace flashmla::testing
