// The AVX-512 online softmax update against the portable one (online_softmax.h): same running
// max, probabilities and sum within a few ulp (exp2 by polynomial, another summation order), the
// same rescaled output, zeros beyond the visible keys, and the same -inf / NaN behaviour; and
// the run-time choice follows FLASHMLA_ISA.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cpu/common/isa.h"
#include "cpu/common/online_softmax.h"

namespace flashmla::cpu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

bool has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

// Relative closeness for probabilities (exp2 within 3 ulp) and sums.
void expect_near_rel(float got, float want, double rel, const std::string& what) {
  if (std::isnan(want)) {
    EXPECT_TRUE(std::isnan(got)) << what << ": got " << got << ", want NaN";
    return;
  }
  EXPECT_LE(std::fabs(double(got) - want), rel * std::fabs(double(want)) + 1e-38)
      << what << ": got " << got << ", want " << want;
}

struct Case {
  std::vector<float> s;  // kKvTile scores
  int visible;
  float m, l;
  std::vector<float> o;
};

void run_both(const Case& c, const std::string& what) {
  const int d_v = static_cast<int>(c.o.size());
  Case a = c, b = c;
  online_softmax_update(a.s.data(), a.visible, a.m, a.l, a.o.data(), d_v);
  online_softmax_update_avx512(b.s.data(), b.visible, b.m, b.l, b.o.data(), d_v);
  EXPECT_EQ(b.m, a.m) << what;
  // l: each order of summing up to 64 positive terms is within 63 u of the exact sum.
  expect_near_rel(b.l, a.l, 2 * 66 * 0x1p-24, what + " l");
  for (int j = 0; j < kKvTile; ++j) {
    if (j >= c.visible) {
      EXPECT_EQ(b.s[j], 0.0f) << what << " slot " << j;
    } else {
      expect_near_rel(b.s[j], a.s[j], 3 * 0x1p-24, what + " p[" + std::to_string(j) + "]");
    }
  }
  for (int k = 0; k < d_v; ++k) {
    EXPECT_TRUE(b.o[k] == a.o[k] || (std::isnan(b.o[k]) && std::isnan(a.o[k])))
        << what << " o[" << k << "]: " << b.o[k] << " vs " << a.o[k];
  }
}

TEST(OnlineSoftmaxAvx512, MatchesPortable) {
  if (!has_avx512()) GTEST_SKIP() << "no AVX-512F/BW/VL/DQ on this CPU";
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 8.0f);
  for (int trial = 0; trial < 400; ++trial) {
    Case c;
    c.visible = trial % (kKvTile + 1);
    for (int j = 0; j < kKvTile; ++j) c.s.push_back(j < c.visible ? normal(rng) : kNaN);
    const int kind = trial % 4;  // first tile; running max below, above, equal to the tile's
    c.m = kind == 0 ? -kInf : normal(rng) + (kind == 2 ? 40.0f : 0.0f);
    c.l = kind == 0 ? 0.0f : 3.5f;
    const int d_v = (trial % 3 == 0) ? 512 : (trial % 3 == 1) ? 128 : 72;  // 72: a masked tail
    for (int k = 0; k < d_v; ++k) c.o.push_back(normal(rng));
    run_both(c, "trial " + std::to_string(trial));
  }
}

TEST(OnlineSoftmaxAvx512, ExtremesAndNonFinite) {
  if (!has_avx512()) GTEST_SKIP() << "no AVX-512F/BW/VL/DQ on this CPU";
  std::vector<float> o(40, 1.25f);
  auto tile = [](std::initializer_list<float> v) {
    std::vector<float> s(kKvTile, kNaN);
    std::copy(v.begin(), v.end(), s.begin());
    return s;
  };
  // Scores far below the max (exp2 underflows to exactly 0, subnormal results), -inf scores,
  // a NaN score (ignored by the max, propagated into p and l), nothing visible.
  run_both({tile({0.0f, -100.0f, -126.5f, -140.0f, -149.5f, -200.0f, -kInf, 3.0f}), 8, -kInf, 0,
            o}, "underflow");
  run_both({tile({1.0f, kNaN, 2.0f}), 3, -kInf, 0, o}, "nan score");
  run_both({tile({-kInf, -kInf}), 2, -kInf, 0, o}, "all -inf");
  run_both({tile({}), 0, 5.0f, 2.0f, o}, "nothing visible");
  run_both({tile({1e30f, -1e30f, 0.0f}), 3, 1e29f, 1.0f, o}, "huge");
}

// The backward row: P = exp2(min(s - lse2, 0)) and dS = P (dP - d) within a few ulp of the
// portable row, zeros past `visible`, NaN where the logit or dP is NaN.
TEST(SoftmaxGradRowAvx512, MatchesPortable) {
  if (!has_avx512()) GTEST_SKIP() << "no AVX-512F/BW/VL/DQ on this CPU";
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 6.0f);
  for (int trial = 0; trial < 300; ++trial) {
    const int visible = trial % (kKvTile + 1);
    std::vector<float> s(kKvTile, kNaN), dp(kKvTile, kNaN);
    for (int j = 0; j < visible; ++j) s[j] = normal(rng), dp[j] = normal(rng);
    if (trial % 7 == 1 && visible > 2) s[1] = kNaN, dp[2] = kNaN;
    if (trial % 5 == 2 && visible > 3) s[3] = 1e30f;  // above lse2: P clamped to 1
    const float lse2 = 4.0f + normal(rng) / 4, d = normal(rng) / 8;
    std::vector<float> sa = s, da = dp, sb = s, db = dp;
    softmax_grad_row(sa.data(), da.data(), visible, lse2, d);
    softmax_grad_row_avx512(sb.data(), db.data(), visible, lse2, d);
    const std::string what = "trial " + std::to_string(trial);
    for (int j = 0; j < kKvTile; ++j) {
      if (j >= visible) {
        EXPECT_EQ(sb[j], 0.0f) << what << " p slot " << j;
        EXPECT_EQ(db[j], 0.0f) << what << " ds slot " << j;
        continue;
      }
      expect_near_rel(sb[j], sa[j], 3 * 0x1p-24, what + " p[" + std::to_string(j) + "]");
      // dS = P (dP - d): P's error plus one rounding of the product.
      expect_near_rel(db[j], da[j], 5 * 0x1p-24, what + " ds[" + std::to_string(j) + "]");
    }
  }
}

TEST(OnlineSoftmax, ActiveUpdateFollowsTheIsaChoice) {
  const SoftmaxUpdateFn want =
      active_isa() >= Isa::avx512 ? &online_softmax_update_avx512 : &online_softmax_update;
  EXPECT_EQ(active_softmax_update(), want);
  EXPECT_EQ(active_softmax_grad_row(),
            active_isa() >= Isa::avx512 ? &softmax_grad_row_avx512 : &softmax_grad_row);
  const char* env = std::getenv("FLASHMLA_ISA");
  if (env != nullptr && std::string(env) == "portable") {
    EXPECT_EQ(active_softmax_update(), &online_softmax_update);
  }
}

}  // namespace
}  // namespace flashmla::cpu
