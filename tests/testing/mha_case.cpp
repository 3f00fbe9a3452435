#include "testing/mha_case.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <sstream>

#include "testing/random_data.h"

namespace flashmla::testing {
namespace {

enum Stream : uint32_t { kLengths = 1, kQuery, kKeys, kValues, kDout, kGarbage };

// Per-sequence lengths per §6.5: s_q = max(N(q_len, q_len/2), 1), s_k = max(N(kv_len,
// kv_len/2), s_q when kv_len >= q_len else 1); with zero_lengths, sequence 0 gets s_k = 0 and
// (when b > 1) sequence 1 gets s_q = 0.
void draw_lengths(const MhaCase& c, std::vector<int32_t>& q_lens, std::vector<int32_t>& kv_lens) {
  std::mt19937_64 rng = seeded_stream(c.seed, {kLengths});
  q_lens.assign(static_cast<size_t>(c.batch), static_cast<int32_t>(c.q_len));
  kv_lens.assign(static_cast<size_t>(c.batch), static_cast<int32_t>(c.kv_len));
  if (c.varlen) {
    std::normal_distribution<double> nq(c.q_len, c.q_len / 2.0), nk(c.kv_len, c.kv_len / 2.0);
    for (int64_t i = 0; i < c.batch; ++i) {
      q_lens[i] = static_cast<int32_t>(std::max<int64_t>(std::llround(nq(rng)), 1));
      const int64_t floor = c.kv_len >= c.q_len ? q_lens[i] : 1;
      kv_lens[i] = static_cast<int32_t>(std::max<int64_t>(std::llround(nk(rng)), floor));
    }
  }
  if (c.zero_lengths) {
    kv_lens[0] = 0;
    if (c.batch > 1) q_lens[1] = 0;
  }
}

HostTensor prefix_sums(const std::vector<int32_t>& lens) {
  HostTensor cu = HostTensor::empty(DType::int32, {static_cast<int64_t>(lens.size()) + 1});
  int32_t acc = 0;
  cu.i32({0}) = 0;
  for (size_t i = 0; i < lens.size(); ++i) cu.i32({static_cast<int64_t>(i) + 1}) = acc += lens[i];
  return cu;
}

HostTensor randn_tensor(std::vector<int64_t> shape, Padding pad, uint64_t seed, Stream s) {
  HostTensor t = HostTensor::empty(DType::bf16, std::move(shape), pad);
  std::mt19937_64 rng = seeded_stream(seed, {s});
  t.fill_randn(rng, 0.1f, 10.0f);
  return t;
}

void allocate_outputs(MhaData& d) {
  const MhaCase& c = d.c;
  const Padding pad = c.non_contiguous ? Padding::non_contiguous() : Padding{};
  const int64_t total_q = d.q.size(0), total_kv = d.k.size(0);
  d.out = HostTensor::empty(DType::bf16, {total_q, c.num_heads_q, c.d_v}, pad);
  d.lse_storage = HostTensor::empty(DType::fp32, {c.num_heads_q, total_q});
  d.dq = HostTensor::empty(DType::bf16, {total_q, c.num_heads_q, c.d_qk}, pad);
  d.dk = HostTensor::empty(DType::bf16, {total_kv, c.num_heads_kv, c.d_qk}, pad);
  d.dv = HostTensor::empty(DType::bf16, {total_kv, c.num_heads_kv, c.d_v}, pad);
}

}  // namespace

std::string MhaCase::name() const {
  std::ostringstream os;
  os << "b" << batch << "_sq" << q_len << "_sk" << kv_len << "_h" << num_heads_q << "_hk"
     << num_heads_kv << "_d" << d_qk << "_dv" << d_v << (varlen ? "_var" : "")
     << (fixed_api ? "_fixedapi" : "") << (causal ? "_causal" : "")
     << (zero_lengths ? "_zero" : "") << (non_contiguous ? "_strided" : "")
     << (default_scale ? "_defscale" : "") << "_s" << seed;
  return os.str();
}

TensorView MhaData::lse() const {
  const int64_t total = total_q(), h_q = c.num_heads_q;
  return TensorView::strided(lse_storage.view().data, DType::fp32, {total, h_q}, {1, total});
}

MhaFwdArgs MhaData::fwd_args() const {
  MhaFwdArgs a{.q = q.view(), .k = k.view(), .v = v.view(),
               .cu_seqlens_qo = cu_seqlens_qo.view(), .cu_seqlens_kv = cu_seqlens_kv.view(),
               .max_seqlen_qo = max_seqlen_qo, .max_seqlen_kv = max_seqlen_kv,
               .causal = c.causal, .is_varlen = !c.fixed_api, .out = out.view(), .lse = lse()};
  if (!c.default_scale) a.softmax_scale = static_cast<float>(std::pow(c.d_qk + 100.0, -0.5));
  return a;
}

MhaBwdArgs MhaData::bwd_args() const {
  return {.fwd = fwd_args(), .dout = dout.view(), .dq = dq.view(), .dk = dk.view(),
          .dv = dv.view()};
}

MhaData make_mha_data(const MhaCase& c) {
  MhaData d;
  d.c = c;
  draw_lengths(c, d.q_lens, d.kv_lens);
  const int64_t total_q = std::accumulate(d.q_lens.begin(), d.q_lens.end(), int64_t{0});
  const int64_t total_kv = std::accumulate(d.kv_lens.begin(), d.kv_lens.end(), int64_t{0});
  d.max_seqlen_qo = *std::max_element(d.q_lens.begin(), d.q_lens.end());
  d.max_seqlen_kv = *std::max_element(d.kv_lens.begin(), d.kv_lens.end());
  d.cu_seqlens_qo = prefix_sums(d.q_lens);
  d.cu_seqlens_kv = prefix_sums(d.kv_lens);
  if (c.fixed_api) {  // the values must not be read: make them invalid offsets
    std::mt19937_64 rng = seeded_stream(c.seed, {kGarbage});
    std::uniform_int_distribution<int32_t> any(-1000000, 1000000);
    for (int64_t i = 0; i <= c.batch; ++i) {
      d.cu_seqlens_qo.i32({i}) = any(rng);
      d.cu_seqlens_kv.i32({i}) = any(rng);
    }
  }
  const Padding pad = c.non_contiguous ? Padding::non_contiguous() : Padding{};
  d.q = randn_tensor({total_q, c.num_heads_q, c.d_qk}, pad, c.seed, kQuery);
  d.k = randn_tensor({total_kv, c.num_heads_kv, c.d_qk}, pad, c.seed, kKeys);
  d.v = randn_tensor({total_kv, c.num_heads_kv, c.d_v}, pad, c.seed, kValues);
  d.dout = randn_tensor({total_q, c.num_heads_q, c.d_v}, pad, c.seed, kDout);
  allocate_outputs(d);
  return d;
}

MhaData with_fresh_outputs(const MhaData& d) {
  MhaData r = d;
  allocate_outputs(r);
  return r;
}

}  // namespace flashmla::testing
