// The dense MHA reference (ref::mha_fwd / ref::mha_bwd and their core ref::mha_head_fwd /
// ref::mha_head_bwd): hand-computable forward cases (visibility, empty rows, sequence offsets,
// GQA mapping, default scale, FlashMLA's head-major lse), gradients against central finite
// differences, and the tensor-level wrappers against the core.
#include <gtest/gtest.h>
#include <omp.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <random>
#include <vector>

#include "cpu/common/half.h"
#include "ref/element.h"
#include "ref/mha_head.h"
#include "ref/ref.h"
#include "testing/host_tensor.h"
#include "testing/random_data.h"

namespace flashmla {
namespace {

using ref::MhaHeadGrads;
using ref::MhaHeadOutput;
using ref::MhaHeadProblem;
using testing::HostTensor;
using testing::Padding;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int32_t kGarbage = 2147480000;  // cu_seqlens values that must not be read

// `x` rounded once to bf16, as the reference stores it.
float bf16_of(double x) {
  uint16_t bits = 0;
  ref::store(TensorView::contiguous(&bits, DType::bf16, {1}), 0, x);
  return cpu::bf16_to_float(bits);
}

// A dense MHA call held in host tensors: bf16 q / k / v / out (NaN until written) and an fp32
// lse stored head-major as FlashMLA does: an (h_q, total_q) buffer passed as the (total_q, h_q)
// view with strides (1, total_q).
struct Mha {
  HostTensor q, k, v, cu_q, cu_k, out, lse_buf;
  std::vector<int32_t> len_q, len_k;  // per sequence
  int64_t h_q, h_kv, d_qk, d_v, total_q = 0, total_k = 0;
  std::optional<float> scale;
  bool causal = false, is_varlen = true;

  Mha(std::vector<int32_t> seq_q, std::vector<int32_t> seq_k, int64_t heads_q, int64_t heads_kv,
      int64_t dim_qk, int64_t dim_v, Padding pad = {})
      : len_q(seq_q), len_k(seq_k), h_q(heads_q), h_kv(heads_kv), d_qk(dim_qk), d_v(dim_v) {
    const int64_t b = static_cast<int64_t>(len_q.size());
    cu_q = HostTensor::empty(DType::int32, {b + 1});
    cu_k = HostTensor::empty(DType::int32, {b + 1});
    for (int64_t i = 0; i < b; ++i) {
      cu_q.i32({i}) = static_cast<int32_t>(total_q);
      cu_k.i32({i}) = static_cast<int32_t>(total_k);
      total_q += len_q[i];
      total_k += len_k[i];
    }
    cu_q.i32({b}) = static_cast<int32_t>(total_q);
    cu_k.i32({b}) = static_cast<int32_t>(total_k);
    q = HostTensor::empty(DType::bf16, {total_q, h_q, d_qk}, pad);
    k = HostTensor::empty(DType::bf16, {total_k, h_kv, d_qk}, pad);
    v = HostTensor::empty(DType::bf16, {total_k, h_kv, d_v}, pad);
    out = HostTensor::empty(DType::bf16, {total_q, h_q, d_v}, pad);
    lse_buf = HostTensor::empty(DType::fp32, {h_q, total_q});
  }

  // Equal lengths with is_varlen = false: the cu_seqlens hold garbage that must not be read.
  static Mha fixed(int64_t b, int32_t s_q, int32_t s_k, int64_t heads_q, int64_t heads_kv,
                   int64_t dim_qk, int64_t dim_v) {
    Mha m(std::vector<int32_t>(b, s_q), std::vector<int32_t>(b, s_k), heads_q, heads_kv, dim_qk,
          dim_v);
    m.is_varlen = false;
    for (int64_t i = 0; i <= b; ++i) m.cu_q.i32({i}) = m.cu_k.i32({i}) = kGarbage;
    return m;
  }

  int64_t batch() const { return static_cast<int64_t>(len_q.size()); }
  int64_t q_start(int64_t i) const {
    int64_t s = 0;
    for (int64_t j = 0; j < i; ++j) s += len_q[j];
    return s;
  }
  int64_t k_start(int64_t i) const {
    int64_t s = 0;
    for (int64_t j = 0; j < i; ++j) s += len_k[j];
    return s;
  }

  MhaFwdArgs args() const {
    return {.q = q.view(),
            .k = k.view(),
            .v = v.view(),
            .cu_seqlens_qo = cu_q.view(),
            .cu_seqlens_kv = cu_k.view(),
            .max_seqlen_qo = 1 << 20,
            .max_seqlen_kv = 1 << 20,
            .softmax_scale = scale,
            .causal = causal,
            .is_varlen = is_varlen,
            .out = out.view(),
            .lse = TensorView::strided(lse_buf.view().data, DType::fp32, {total_q, h_q},
                                       {1, total_q})};
  }
  void run() { ref::mha_fwd(args()); }
  float lse(int64_t row, int64_t h) const { return lse_buf.get({h, row}); }

  // The head problem of sequence i, query head h, read back from the tensors.
  MhaHeadProblem problem(int64_t i, int64_t h) const {
    MhaHeadProblem p{.s_q = len_q[i], .s_k = len_k[i], .d_qk = d_qk, .d_v = d_v,
                     .scale = scale ? *scale : 1.0 / std::sqrt(double(d_qk)), .causal = causal};
    const int64_t q0 = q_start(i), k0 = k_start(i), g = h / (h_q / h_kv);
    for (int64_t r = 0; r < p.s_q; ++r) {
      for (int64_t c = 0; c < d_qk; ++c) p.q.push_back(q.get({q0 + r, h, c}));
    }
    for (int64_t j = 0; j < p.s_k; ++j) {
      for (int64_t c = 0; c < d_qk; ++c) p.k.push_back(k.get({k0 + j, g, c}));
      for (int64_t c = 0; c < d_v; ++c) p.v.push_back(v.get({k0 + j, g, c}));
    }
    return p;
  }
};

// |got − want| within the rounding of `want` to bf16 (half an ulp: 2^-8 relative at most); a
// zero must be exact.
void expect_bf16(float got, double want, const char* what, int64_t row, int64_t h, int64_t c) {
  const double tol = std::ldexp(std::fabs(want), -8) * (1 + 1e-9);
  ASSERT_LE(std::fabs(got - want), tol)
      << what << " row " << row << " head " << h << " channel " << c << ": got " << got
      << ", want " << want;
}

// ---- forward: hand-computable cases --------------------------------------------------------

// Zero queries give uniform attention over the visible keys. Value row j (local index within
// its sequence) of KV head g is one-hot at channel 8 g + j, so out[row, h] is 1/n on channels
// [8 g, 8 g + n) and 0 elsewhere, and lse = ln n (-inf for n = 0): `n` per row of sequence i.
void set_uniform_problem(Mha& m) {
  m.q.fill(0.0f);
  for (int64_t i = 0; i < m.batch(); ++i) {
    const int64_t k0 = m.k_start(i);
    for (int64_t j = 0; j < m.len_k[i]; ++j) {
      for (int64_t g = 0; g < m.h_kv; ++g) {
        for (int64_t c = 0; c < m.d_qk; ++c) m.k.set({k0 + j, g, c}, 0.5f);
        for (int64_t c = 0; c < m.d_v; ++c) m.v.set({k0 + j, g, c}, c == 8 * g + j ? 1.0f : 0);
      }
    }
  }
}

void expect_uniform(const Mha& m, int64_t i, const std::vector<int64_t>& visible) {
  ASSERT_EQ(static_cast<int64_t>(visible.size()), m.len_q[i]);
  const int64_t q0 = m.q_start(i), group = m.h_q / m.h_kv;
  for (int64_t r = 0; r < m.len_q[i]; ++r) {
    const int64_t n = visible[r];
    for (int64_t h = 0; h < m.h_q; ++h) {
      SCOPED_TRACE(::testing::Message() << "sequence " << i << " row " << r << " head " << h);
      const int64_t first = 8 * (h / group);
      for (int64_t c = 0; c < m.d_v; ++c) {
        const double want = c >= first && c < first + n ? 1.0 / double(n) : 0.0;
        expect_bf16(m.out.get({q0 + r, h, c}), want, "out", q0 + r, h, c);
      }
      if (n == 0) {
        EXPECT_EQ(m.lse(q0 + r, h), -kInf);
      } else {
        EXPECT_NEAR(m.lse(q0 + r, h), std::log(double(n)), 1e-6);
      }
    }
  }
}

TEST(RefMha, OneKeyGivesItsValueAndLogit) {
  Mha m({2}, {1}, 1, 1, 8, 16);
  m.scale = 0.5f;
  for (int64_t c = 0; c < 8; ++c) {
    m.q.set({0, 0, c}, 0.5f);    // logit 0.5 * 8 * 0.5 = 2
    m.q.set({1, 0, c}, -0.25f);  // logit -1
    m.k.set({0, 0, c}, 1.0f);
  }
  for (int64_t c = 0; c < 16; ++c) m.v.set({0, 0, c}, float(c) - 4.5f);
  m.run();
  EXPECT_EQ(m.lse(0, 0), 2.0f);
  EXPECT_EQ(m.lse(1, 0), -1.0f);
  for (int64_t r = 0; r < 2; ++r) {
    for (int64_t c = 0; c < 16; ++c) EXPECT_EQ(m.out.get({r, 0, c}), float(c) - 4.5f);
  }
}

TEST(RefMha, TwoEqualKeysAverageAndAddLn2) {
  Mha m({1}, {2}, 1, 1, 8, 16);
  m.scale = 0.25f;
  for (int64_t c = 0; c < 8; ++c) {
    m.q.set({0, 0, c}, 1.5f);
    m.k.set({0, 0, c}, 1.0f);  // both logits 1.5 * 8 * 0.25 = 3
    m.k.set({1, 0, c}, 1.0f);
  }
  for (int64_t c = 0; c < 16; ++c) {
    m.v.set({0, 0, c}, float(c));
    m.v.set({1, 0, c}, float(2 * c + 1));
  }
  m.run();
  EXPECT_NEAR(m.lse(0, 0), 3.0 + std::log(2.0), 1e-6);
  for (int64_t c = 0; c < 16; ++c) EXPECT_EQ(m.out.get({0, 0, c}), (3.0f * c + 1) / 2);
}

TEST(RefMha, CausalIsBottomRightWithFewerQueries) {
  Mha m({3}, {5}, 1, 1, 8, 16);
  set_uniform_problem(m);
  m.run();
  expect_uniform(m, 0, {5, 5, 5});  // not causal: every row sees every key
  m.causal = true;
  m.run();
  expect_uniform(m, 0, {3, 4, 5});  // row r sees keys j <= r + 2
}

TEST(RefMha, CausalIsBottomRightWithMoreQueriesAndEmptyRows) {
  Mha m({5}, {3}, 1, 1, 8, 16);
  set_uniform_problem(m);
  m.causal = true;
  m.run();
  expect_uniform(m, 0, {0, 0, 1, 2, 3});  // row r sees keys j <= r - 2: rows 0, 1 are empty
  for (int64_t r = 0; r < 2; ++r) {
    for (int64_t c = 0; c < 16; ++c) EXPECT_FALSE(std::signbit(m.out.get({r, 0, c})));  // +0
  }
}

TEST(RefMha, VarlenOffsetsZeroLengthsAndGqaMapping) {
  // Sequence 0 has no keys (empty rows), sequence 1 no queries, sequence 2 more queries than
  // keys; 4 query heads on 2 KV heads (heads 0, 1 -> KV 0; 2, 3 -> KV 1).
  Mha m({2, 0, 4, 3}, {0, 3, 2, 5}, 4, 2, 8, 16, Padding::non_contiguous());
  set_uniform_problem(m);
  for (bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "causal" : "not causal");
    m.causal = causal;
    m.run();
    expect_uniform(m, 0, {0, 0});
    using Rows = std::vector<int64_t>;  // keys seen by each row
    expect_uniform(m, 2, causal ? Rows{0, 0, 1, 2} : Rows{2, 2, 2, 2});
    expect_uniform(m, 3, causal ? Rows{3, 4, 5} : Rows{5, 5, 5});
  }
}

TEST(RefMha, FixedLengthsIgnoreCuSeqlens) {
  // is_varlen = false: 2 sequences of 3 queries and 4 keys each, whatever cu_seqlens holds.
  Mha m = Mha::fixed(2, 3, 4, 2, 2, 8, 16);
  set_uniform_problem(m);
  m.causal = true;
  m.run();
  expect_uniform(m, 0, {2, 3, 4});
  expect_uniform(m, 1, {2, 3, 4});
}

TEST(RefMha, GqaHeadsUseTheirKvHeadAndLseIsHeadMajor) {
  // One key per KV head: k = g + 1 on every channel, q = 1, scale 1/8 -> logit g + 1, out = v.
  Mha m({2}, {1}, 6, 3, 8, 8);
  m.scale = 0.125f;
  m.q.fill(1.0f);
  for (int64_t g = 0; g < 3; ++g) {
    for (int64_t c = 0; c < 8; ++c) {
      m.k.set({0, g, c}, float(g + 1));
      m.v.set({0, g, c}, float(10 * g + c));
    }
  }
  m.run();
  for (int64_t r = 0; r < 2; ++r) {
    for (int64_t h = 0; h < 6; ++h) {
      // The buffer behind lse is (h_q, total_q): element [h][r] is row r, head h.
      EXPECT_EQ(m.lse_buf.get({h, r}), float(h / 2 + 1)) << "row " << r << " head " << h;
      for (int64_t c = 0; c < 8; ++c) EXPECT_EQ(m.out.get({r, h, c}), float(10 * (h / 2) + c));
    }
  }
}

TEST(RefMha, DefaultScaleIsInverseSqrtDqk) {
  // d_qk = 16: q = k0 = 1, k1 = 0 -> logits 16 * 16^-0.5 = 4 and 0.
  Mha m({1}, {2}, 1, 1, 16, 8);
  m.q.fill(1.0f);
  for (int64_t c = 0; c < 16; ++c) {
    m.k.set({0, 0, c}, 1.0f);
    m.k.set({1, 0, c}, 0.0f);
  }
  for (int64_t c = 0; c < 8; ++c) {
    m.v.set({0, 0, c}, 1.0f);
    m.v.set({1, 0, c}, 0.0f);
  }
  m.run();
  EXPECT_NEAR(m.lse(0, 0), std::log(std::exp(4.0) + 1.0), 1e-6);
  const double p0 = 1.0 / (1.0 + std::exp(-4.0));
  for (int64_t c = 0; c < 8; ++c) EXPECT_EQ(m.out.get({0, 0, c}), bf16_of(p0));
}

// ---- the core: edge cases and finite differences -------------------------------------------

MhaHeadProblem random_problem(std::mt19937_64& rng, int64_t s_q, int64_t s_k, int64_t d_qk,
                              int64_t d_v, double scale, bool causal) {
  std::normal_distribution<double> normal;
  MhaHeadProblem p{.s_q = s_q, .s_k = s_k, .d_qk = d_qk, .d_v = d_v, .scale = scale,
                   .causal = causal};
  for (int64_t e = 0; e < s_q * d_qk; ++e) p.q.push_back(normal(rng));
  for (int64_t e = 0; e < s_k * d_qk; ++e) p.k.push_back(normal(rng));
  for (int64_t e = 0; e < s_k * d_v; ++e) p.v.push_back(normal(rng));
  return p;
}

std::vector<double> random_vector(std::mt19937_64& rng, int64_t n) {
  std::normal_distribution<double> normal;
  std::vector<double> x(static_cast<size_t>(n));
  for (double& e : x) e = normal(rng);
  return x;
}

TEST(RefMhaHead, EmptySidesGiveZeros) {
  auto rng = testing::seeded_stream(1, {});
  {
    const MhaHeadProblem p = random_problem(rng, 3, 0, 8, 16, 0.3, false);  // no keys
    const MhaHeadOutput o = ref::mha_head_fwd(p);
    ASSERT_EQ(o.out.size(), 3u * 16);
    for (double x : o.out) EXPECT_EQ(x, 0.0);
    for (double l : o.lse) EXPECT_EQ(l, -std::numeric_limits<double>::infinity());
    const MhaHeadGrads g = ref::mha_head_bwd(p, random_vector(rng, 3 * 16));
    ASSERT_EQ(g.dq.size(), 3u * 8);
    for (double x : g.dq) EXPECT_EQ(x, 0.0);
    EXPECT_TRUE(g.dk.empty());
    EXPECT_TRUE(g.dv.empty());
  }
  {
    const MhaHeadProblem p = random_problem(rng, 0, 4, 8, 16, 0.3, true);  // no queries
    EXPECT_TRUE(ref::mha_head_fwd(p).out.empty());
    const MhaHeadGrads g = ref::mha_head_bwd(p, {});
    ASSERT_EQ(g.dk.size(), 4u * 8);
    ASSERT_EQ(g.dv.size(), 4u * 16);
    for (double x : g.dk) EXPECT_EQ(x, 0.0);
    for (double x : g.dv) EXPECT_EQ(x, 0.0);
  }
}

// L = Σ dout ∘ out, out from mha_head_fwd.
double loss(const MhaHeadProblem& p, const std::vector<double>& dout) {
  const MhaHeadOutput o = ref::mha_head_fwd(p);
  double sum = 0;
  for (size_t e = 0; e < o.out.size(); ++e) sum += dout[e] * o.out[e];
  return sum;
}

// Every entry of `grad` (the gradient with respect to p.*field) against the central difference
// (L(x + h) − L(x − h)) / 2h.
void expect_matches_finite_differences(MhaHeadProblem p, std::vector<double> MhaHeadProblem::*field,
                                       const std::vector<double>& grad,
                                       const std::vector<double>& dout, const char* name) {
  constexpr double kStep = 1e-5;
  std::vector<double>& x = p.*field;
  ASSERT_EQ(x.size(), grad.size()) << name;
  for (size_t e = 0; e < x.size(); ++e) {
    const double saved = x[e];
    x[e] = saved + kStep;
    const double up = loss(p, dout);
    x[e] = saved - kStep;
    const double down = loss(p, dout);
    x[e] = saved;
    const double fd = (up - down) / (2 * kStep);
    ASSERT_NEAR(grad[e], fd, 1e-6 * (std::fabs(fd) + 1e-2)) << name << "[" << e << "]";
  }
}

TEST(RefMhaHead, GradientsMatchFiniteDifferences) {
  auto rng = testing::seeded_stream(2, {});
  std::uniform_int_distribution<int64_t> len(1, 7);
  std::uniform_real_distribution<double> scale(0.2, 1.0);
  struct Shape {
    int64_t s_q, s_k;
    bool causal;
  };
  // Fixed shapes with empty rows (s_q > s_k, causal) and the other alignment, then random ones.
  std::vector<Shape> shapes = {{7, 2, true}, {5, 4, true}, {2, 7, true}, {1, 1, true},
                               {6, 3, false}};
  for (int n = 0; n < 24; ++n) shapes.push_back({len(rng), len(rng), n % 2 == 0});
  const int64_t dims[][2] = {{8, 16}, {16, 8}, {8, 8}};
  for (size_t t = 0; t < shapes.size(); ++t) {
    const Shape& s = shapes[t];
    const int64_t d_qk = dims[t % 3][0], d_v = dims[t % 3][1];
    SCOPED_TRACE(::testing::Message() << "s_q " << s.s_q << " s_k " << s.s_k << " d_qk " << d_qk
                                      << " d_v " << d_v << (s.causal ? " causal" : ""));
    const MhaHeadProblem p = random_problem(rng, s.s_q, s.s_k, d_qk, d_v, scale(rng), s.causal);
    const std::vector<double> dout = random_vector(rng, s.s_q * d_v);
    const MhaHeadGrads g = ref::mha_head_bwd(p, dout);
    expect_matches_finite_differences(p, &MhaHeadProblem::q, g.dq, dout, "dq");
    expect_matches_finite_differences(p, &MhaHeadProblem::k, g.dk, dout, "dk");
    expect_matches_finite_differences(p, &MhaHeadProblem::v, g.dv, dout, "dv");
    // Rows that see no key have exactly zero gradient.
    for (int64_t r = 0; r < s.s_q; ++r) {
      if (ref::mha_visible_keys(s.s_q, s.s_k, s.causal, r) > 0) continue;
      for (int64_t c = 0; c < d_qk; ++c) ASSERT_EQ(g.dq[r * d_qk + c], 0.0) << "row " << r;
    }
  }
}

// ---- the tensor wrappers against the core ---------------------------------------------------

void fill_random(Mha& m, uint64_t seed) {
  auto rng = testing::seeded_stream(seed, {});
  m.q.fill_randn(rng, 1.0f, 4.0f);
  m.k.fill_randn(rng, 1.0f, 4.0f);
  m.v.fill_randn(rng, 1.0f, 4.0f);
}

TEST(RefMha, ForwardMatchesCorePerSequenceAndHead) {
  Mha m({3, 0, 6, 2}, {5, 4, 2, 0}, 6, 2, 16, 8, Padding::non_contiguous());
  fill_random(m, 3);
  m.scale = 0.3f;
  for (bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "causal" : "not causal");
    m.causal = causal;
    m.run();
    for (int64_t i = 0; i < m.batch(); ++i) {
      const int64_t q0 = m.q_start(i);
      for (int64_t h = 0; h < m.h_q; ++h) {
        const MhaHeadOutput o = ref::mha_head_fwd(m.problem(i, h));
        for (int64_t r = 0; r < m.len_q[i]; ++r) {
          EXPECT_EQ(m.lse(q0 + r, h), static_cast<float>(o.lse[r]));
          for (int64_t c = 0; c < m.d_v; ++c) {
            expect_bf16(m.out.get({q0 + r, h, c}), o.out[r * m.d_v + c], "out", q0 + r, h, c);
          }
        }
      }
    }
  }
}

// The backward call of `m`, with bf16 dout / dq / dk / dv in m's layout. fwd.out and fwd.lse
// stay NaN: the reference recomputes P from q and k.
struct Bwd {
  HostTensor dout, dq, dk, dv;
  Bwd(const Mha& m, uint64_t seed) {
    const Padding pad = Padding::non_contiguous();
    dout = HostTensor::empty(DType::bf16, {m.total_q, m.h_q, m.d_v}, pad);
    dq = HostTensor::empty(DType::bf16, {m.total_q, m.h_q, m.d_qk}, pad);
    dk = HostTensor::empty(DType::bf16, {m.total_k, m.h_kv, m.d_qk}, pad);
    dv = HostTensor::empty(DType::bf16, {m.total_k, m.h_kv, m.d_v}, pad);
    auto rng = testing::seeded_stream(seed, {1});
    dout.fill_randn(rng, 1.0f, 4.0f);
  }
  void run(const Mha& m) {
    ref::mha_bwd({.fwd = m.args(), .dout = dout.view(), .dq = dq.view(), .dk = dk.view(),
                  .dv = dv.view()});
  }
};

TEST(RefMha, BackwardMatchesCoreSummedOverTheGroup) {
  // 6 query heads on 2 KV heads (groups of 3); a sequence without keys, one without queries.
  Mha m({3, 0, 6, 2, 4}, {5, 4, 2, 0, 4}, 6, 2, 16, 8, Padding::non_contiguous());
  fill_random(m, 4);
  m.scale = 0.4f;
  Bwd b(m, 4);
  const int64_t group = m.h_q / m.h_kv;
  for (bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "causal" : "not causal");
    m.causal = causal;
    b.run(m);
    for (int64_t i = 0; i < m.batch(); ++i) {
      const int64_t q0 = m.q_start(i), k0 = m.k_start(i);
      for (int64_t g = 0; g < m.h_kv; ++g) {
        std::vector<double> dk(static_cast<size_t>(m.len_k[i] * m.d_qk), 0.0);
        std::vector<double> dv(static_cast<size_t>(m.len_k[i] * m.d_v), 0.0);
        for (int64_t h = g * group; h < (g + 1) * group; ++h) {
          std::vector<double> dout;
          for (int64_t r = 0; r < m.len_q[i]; ++r) {
            for (int64_t c = 0; c < m.d_v; ++c) dout.push_back(b.dout.get({q0 + r, h, c}));
          }
          const MhaHeadGrads grads = ref::mha_head_bwd(m.problem(i, h), dout);
          for (int64_t r = 0; r < m.len_q[i]; ++r) {
            for (int64_t c = 0; c < m.d_qk; ++c) {
              expect_bf16(b.dq.get({q0 + r, h, c}), grads.dq[r * m.d_qk + c], "dq", q0 + r, h,
                          c);
            }
          }
          for (size_t e = 0; e < dk.size(); ++e) dk[e] += grads.dk[e];
          for (size_t e = 0; e < dv.size(); ++e) dv[e] += grads.dv[e];
        }
        for (int64_t j = 0; j < m.len_k[i]; ++j) {
          for (int64_t c = 0; c < m.d_qk; ++c) {
            expect_bf16(b.dk.get({k0 + j, g, c}), dk[j * m.d_qk + c], "dk", k0 + j, g, c);
          }
          for (int64_t c = 0; c < m.d_v; ++c) {
            expect_bf16(b.dv.get({k0 + j, g, c}), dv[j * m.d_v + c], "dv", k0 + j, g, c);
          }
        }
      }
    }
  }
}

std::vector<float> values(const HostTensor& t) {
  std::vector<float> v;
  testing::for_each_element(t.view(), [&](const int64_t*, int64_t offset) {
    v.push_back(testing::load_float(t.view(), offset));
  });
  return v;
}

TEST(RefMha, ResultsDoNotDependOnTheThreadCount) {
  Mha m({40, 7, 0, 33}, {50, 0, 9, 64}, 8, 2, 16, 16);
  fill_random(m, 5);
  m.causal = true;
  Bwd b(m, 5);
  const int saved = omp_get_max_threads();
  std::vector<std::vector<float>> first;
  for (int threads : {1, 3}) {
    omp_set_num_threads(threads);
    m.run();
    b.run(m);
    const std::vector<std::vector<float>> now = {values(m.out), values(m.lse_buf), values(b.dq),
                                                 values(b.dk), values(b.dv)};
    if (first.empty()) {
      first = now;
      continue;
    }
    for (size_t t = 0; t < now.size(); ++t) {
      ASSERT_EQ(now[t].size(), first[t].size());
      for (size_t e = 0; e < now[t].size(); ++e) {
        ASSERT_EQ(std::bit_cast<uint32_t>(now[t][e]), std::bit_cast<uint32_t>(first[t][e]))
            << "tensor " << t << " element " << e;
      }
    }
  }
  omp_set_num_threads(saved);
}

}  // namespace
}  // namespace flashmla
