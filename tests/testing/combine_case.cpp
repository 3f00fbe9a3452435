#include "testing/combine_case.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <random>

#include "ref/ref.h"

namespace flashmla::testing {

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Requests made entirely of empty pieces: each request with >= 2 pieces with probability 1/4,
// and always the last of them when there are two or more.
std::vector<bool> pick_empty_requests(const CombineCase& c, std::mt19937_64& rng) {
  std::bernoulli_distribution quarter(0.25);
  std::vector<bool> empty(c.pieces.size(), false);
  int64_t combined = 0, last = -1;
  for (size_t i = 0; i < c.pieces.size(); ++i) {
    if (c.pieces[i] < 2) continue;
    empty[i] = quarter(rng);
    ++combined;
    last = static_cast<int64_t>(i);
  }
  if (combined >= 2) empty[last] = true;
  return empty;
}

}  // namespace

std::string CombineCase::name() const {
  std::string n = "b" + std::to_string(batch()) + "_sq" + std::to_string(q_len) + "_hq" +
                  std::to_string(num_heads_q) + "_dv" + std::to_string(head_dim_v) + "_n";
  for (size_t i = 0; i < pieces.size(); ++i) n += (i ? "_" : "") + std::to_string(pieces[i]);
  if (sink) n += "_sink";
  return n + "_" + dtype_name(out_dtype) + "_s" + std::to_string(seed);
}

MlaCombineArgs CombineData::args() const {
  return {.lse_accum = lse_accum.view(),
          .o_accum = o_accum.view(),
          .num_splits = num_splits.view(),
          .attn_sink = attn_sink.view(),
          .out = out.view(),
          .lse = lse.view()};
}

CombineData make_combine_data(const CombineCase& c) {
  std::mt19937_64 rng(c.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::bernoulli_distribution eighth(0.125);
  const int64_t b = c.batch(), s_q = c.q_len, h_q = c.num_heads_q, d_v = c.head_dim_v;
  CombineData d;

  d.num_splits = HostTensor::empty(DType::int32, {b + 1});
  d.num_splits.i32({0}) = 0;
  for (int64_t i = 0; i < b; ++i) d.num_splits.i32({i + 1}) = d.num_splits.i32({i}) + c.pieces[i];
  const int64_t slots = d.num_splits.i32({b});

  const std::vector<bool> empty_request = pick_empty_requests(c, rng);
  d.lse_accum = HostTensor::empty(DType::fp32, {slots, s_q, h_q});
  d.o_accum = HostTensor::empty(DType::fp32, {slots, s_q, h_q, d_v});
  for (int64_t i = 0; i < b; ++i) {
    for (int64_t k = d.num_splits.i32({i}); k < d.num_splits.i32({i + 1}); ++k) {
      for (int64_t s = 0; s < s_q; ++s) {
        for (int64_t h = 0; h < h_q; ++h) {
          const bool empty = empty_request[i] || eighth(rng);
          d.lse_accum.set({k, s, h}, empty ? -kInf : 4.0f * normal(rng));
          for (int64_t ch = 0; ch < d_v; ++ch) {
            const float o = empty ? 0.0f : std::clamp(0.1f * normal(rng), -1.0f, 1.0f);
            d.o_accum.set({k, s, h, ch}, o);
          }
        }
      }
    }
  }

  if (c.sink) {
    d.attn_sink = HostTensor::empty(DType::fp32, {h_q});
    for (int64_t h = 0; h < h_q; ++h) {
      const float value = eighth(rng) ? -kInf : eighth(rng) ? kInf : 3.0f * normal(rng);
      d.attn_sink.set({h}, value);
    }
  }

  d.out = HostTensor::empty(c.out_dtype, {b, s_q, h_q, d_v});
  d.lse = HostTensor::empty(DType::fp32, {b, h_q, s_q});
  return d;
}

std::vector<CompareResult> compare_combine_with_reference(const CombineData& data) {
  CombineData expected = data;  // deep copy of the inputs; outputs NaN until the reference writes
  expected.out.fill(std::numeric_limits<float>::quiet_NaN());
  expected.lse.fill(std::numeric_limits<float>::quiet_NaN());
  ref::combine(expected.args());
  return {check_is_allclose("out", data.out.view(), expected.out.view(), 8e-4, 2.01 / 128, 5e-6),
          check_is_allclose("lse", data.lse.view(), expected.lse.view(), 1e-6, 8.01 / 65536)};
}

core::CombineParams combine_params_of(const CombineData& d) {
  const MlaCombineArgs a = d.args();
  core::CombineParams p;
  p.batch = a.num_splits.size(0) - 1;
  p.q_len = a.o_accum.size(1);
  p.num_heads_q = a.o_accum.size(2);
  p.d_v = a.o_accum.size(3);
  p.lse_accum = a.lse_accum.ptr<const float>();
  p.o_accum = a.o_accum.ptr<const float>();
  p.num_slots = a.o_accum.size(0);
  for (int i = 0; i < 3; ++i) {
    p.lse_accum_stride[i] = a.lse_accum.stride(i);
    p.o_accum_stride[i] = a.o_accum.stride(i);
    p.out_stride[i] = a.out.stride(i);
    p.lse_stride[i] = a.lse.stride(i);
  }
  p.num_splits = a.num_splits.ptr<const int32_t>();
  p.attn_sink = a.attn_sink.defined() ? a.attn_sink.ptr<const float>() : nullptr;
  p.out_dtype = a.out.dtype;
  p.out = a.out.data;
  p.lse = a.lse.ptr<float>();
  return p;
}

}  // namespace flashmla::testing
