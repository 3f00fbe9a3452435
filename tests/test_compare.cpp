// The comparison rule itself (FlashMLA's check_is_allclose, reference §6.1).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "testing/compare.h"
#include "testing/host_tensor.h"

namespace flashmla::testing {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

HostTensor ramp(DType dtype, std::vector<int64_t> shape, Padding pad = {}) {
  HostTensor t = HostTensor::empty(dtype, std::move(shape), pad);
  float v = 0.25f;
  for_each_element(t.view(), [&](const int64_t*, int64_t offset) {
    store_float(t.view(), offset, v);
    v = -v * 1.0625f;
  });
  return t;
}

TEST(Compare, IdenticalTensorsPass) {
  for (DType dtype : {DType::bf16, DType::fp16, DType::fp32}) {
    const HostTensor a = ramp(dtype, {3, 4, 5});
    const CompareResult r = check_is_allclose("same", a.view(), a.view());
    EXPECT_TRUE(r.ok) << r.message;
    EXPECT_EQ(r.max_abs_err, 0.0);
    EXPECT_NEAR(r.cos_diff, 0.0, 1e-15);
  }
}

TEST(Compare, AllZeroTensorsPassWithZeroCosDiff) {
  HostTensor a = HostTensor::empty(DType::fp32, {8});
  a.fill(0);
  const CompareResult r = check_is_allclose("zeros", a.view(), a.view());
  EXPECT_TRUE(r.ok) << r.message;
  EXPECT_EQ(r.cos_diff, 0.0);
}

TEST(Compare, MatchingAnomaliesPass) {
  HostTensor a = ramp(DType::fp32, {6});
  a.set({1}, kInf);
  a.set({2}, -kInf);
  a.set({3}, kNaN);
  const HostTensor b = a;
  const CompareResult r = check_is_allclose("anomalies", a.view(), b.view());
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(Compare, MismatchedAnomaliesFail) {
  const HostTensor ref = ramp(DType::fp32, {6});
  // Each class separately, and swapped classes (+inf vs -inf, inf vs NaN).
  const std::vector<std::pair<float, float>> pairs = {
      {kInf, 1.0f}, {-kInf, 1.0f}, {kNaN, 1.0f}, {kInf, -kInf}, {kInf, kNaN}, {-kInf, kNaN}};
  for (auto [x, y] : pairs) {
    HostTensor a = ref, b = ref;
    a.set({4}, x);
    b.set({4}, y);
    const CompareResult r = check_is_allclose("anomaly", a.view(), b.view());
    EXPECT_FALSE(r.ok) << x << " vs " << y;
    EXPECT_NE(r.message.find("(4)"), std::string::npos) << r.message;
    EXPECT_FALSE(check_is_allclose("anomaly", b.view(), a.view()).ok) << y << " vs " << x;
  }
}

// An element fails only when both the absolute and the relative error reach their tolerances.
TEST(Compare, ElementFailsOnlyWhenAbsAndRelBothExceed) {
  struct Case {
    float ans, ref;
    bool ok;
  };
  const Case cases[] = {
      {100.5f, 100.0f, true},    // abs 0.5 >= 1e-5 but rel 0.005 < 1e-2
      {102.0f, 100.0f, false},   // abs 2, rel 0.02: both exceed
      {1e-6f, 0.0f, true},       // rel huge but abs 1e-6 < 1e-5
      {2e-5f, 0.0f, false},      // abs 2e-5 and rel 20: both exceed
  };
  for (const Case& c : cases) {
    HostTensor a = HostTensor::empty(DType::fp32, {1}), b = HostTensor::empty(DType::fp32, {1});
    a.set({0}, c.ans);
    b.set({0}, c.ref);
    // A huge cos tolerance isolates the element rule.
    const CompareResult r = check_is_allclose("elem", a.view(), b.view(), 1e-5, 1e-2, 1.0);
    EXPECT_EQ(r.ok, c.ok) << c.ans << " vs " << c.ref << ": " << r.message;
  }
}

TEST(Compare, FailureMessageNamesIndexAndCount) {
  const HostTensor ref = ramp(DType::fp32, {2, 3});
  HostTensor ans = ref;
  ans.set({1, 2}, 7.0f);
  const CompareResult r = check_is_allclose("msg", ans.view(), ref.view());
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.message.find("msg"), std::string::npos) << r.message;
  EXPECT_NE(r.message.find("(1, 2)"), std::string::npos) << r.message;
  EXPECT_NE(r.message.find("1 of 6"), std::string::npos) << r.message;
  EXPECT_NEAR(r.max_abs_err, 7.0 - ref.get({1, 2}), 1e-6);
}

// A 0.5% systematic scale error passes the element rule but not the cosine rule.
TEST(Compare, CosDiffCatchesSmallSystematicError) {
  const HostTensor ref = ramp(DType::fp32, {64});
  HostTensor ans = ref;
  for (int64_t i = 0; i < 64; ++i) ans.set({i}, ref.get({i}) * 1.005f);
  const CompareResult strict = check_is_allclose("cos", ans.view(), ref.view());
  EXPECT_FALSE(strict.ok) << strict.message;
  EXPECT_GT(strict.cos_diff, 1e-7);
  const CompareResult loose = check_is_allclose("cos", ans.view(), ref.view(), 1e-5, 1e-2, 1e-4);
  EXPECT_TRUE(loose.ok) << loose.message;
}

TEST(Compare, ShapeOrDtypeMismatchFails) {
  const HostTensor a = ramp(DType::fp32, {2, 3});
  const HostTensor b = ramp(DType::fp32, {3, 2});
  const HostTensor c = ramp(DType::fp32, {2, 3, 1});
  const HostTensor d = ramp(DType::bf16, {2, 3});
  EXPECT_FALSE(check_is_allclose("shape", a.view(), b.view()).ok);
  EXPECT_FALSE(check_is_allclose("rank", a.view(), c.view()).ok);
  const CompareResult r = check_is_allclose("dtype", a.view(), d.view());
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.message.find("bf16"), std::string::npos) << r.message;
}

// Padded (non-contiguous) views compare by logical index, never reading the NaN padding.
TEST(Compare, StridedViewsCompareLogically) {
  const HostTensor dense = ramp(DType::bf16, {2, 3, 4, 5, 6, 7});
  const HostTensor padded = ramp(DType::bf16, {2, 3, 4, 5, 6, 7}, Padding::non_contiguous());
  ASSERT_FALSE(padded.view().is_contiguous());
  const CompareResult r = check_is_allclose("strided", padded.view(), dense.view());
  EXPECT_TRUE(r.ok) << r.message;

  HostTensor changed = padded;
  changed.set({1, 2, 3, 4, 5, 6}, 3.0f);
  const CompareResult last = check_is_allclose("strided", changed.view(), dense.view());
  EXPECT_FALSE(last.ok);
  EXPECT_NE(last.message.find("(1, 2, 3, 4, 5, 6)"), std::string::npos) << last.message;
}

TEST(HostTensor, PaddingIsNaN) {
  const HostTensor t = HostTensor::empty(DType::bf16, {2, 3}, {.last = 2, .other = 1});
  EXPECT_EQ(t.view().strides[0], 5);
  EXPECT_EQ(t.view().strides[1], 1);
  // Element (0, 3) lies in the padding of row 0.
  EXPECT_TRUE(std::isnan(load_float(t.view(), 3)));
}

}  // namespace
}  // namespace flashmla::testing
