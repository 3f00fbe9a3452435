// Dense MHA varlen prefill (flash_attn_varlen_fwd / _bwd) on the CPU against the double-precision
// reference, on FlashMLA's test_fmha_sm100 grid (reference §6.5) scaled down for 2 cores, with
// FlashMLA's tolerances; plus empty rows, the packed forms, is_varlen = false, lse layouts and
// bitwise determinism across runs and thread counts.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "flashmla/flashmla.h"
#include "ref/ref.h"
#include "testing/compare.h"
#include "testing/mha_case.h"

namespace flashmla {
namespace {

using testing::HostTensor;
using testing::MhaCase;
using testing::MhaData;

constexpr float kInf = std::numeric_limits<float>::infinity();

// Every element of a view (any strides) as raw bits, in row-major order.
std::vector<uint32_t> bits(const TensorView& v) {
  std::vector<uint32_t> out;
  testing::for_each_element(v, [&](const int64_t*, int64_t off) {
    uint32_t b = 0;
    std::memcpy(&b, static_cast<const char*>(v.data) + off * dtype_size(v.dtype),
                dtype_size(v.dtype));
    out.push_back(b);
  });
  return out;
}

// No NaN or +-inf anywhere in a view; `allow_minus_inf` admits -inf (lse of empty rows).
bool all_finite(const TensorView& v, bool allow_minus_inf = false) {
  bool ok = true;
  testing::for_each_element(v, [&](const int64_t*, int64_t off) {
    const float x = testing::load_float(v, off);
    ok = ok && (std::isfinite(x) || (allow_minus_inf && x == -kInf));
  });
  return ok;
}

void expect_close(const char* name, const TensorView& ans, const TensorView& ref, double abs_tol,
                  double rel_tol, double cos_tol) {
  const auto r = testing::check_is_allclose(name, ans, ref, abs_tol, rel_tol, cos_tol);
  EXPECT_TRUE(r.ok) << r.message;
}

// Runs forward and backward (with `ctx`) and the reference on the same data; compares with
// FlashMLA's tolerances (out, dq, dk, dv: abs 1e-3, rel 8.01/128, cos 7e-6; lse: abs 1e-6,
// rel 2.01/65536). The backward reads the kernel's own out and lse, as in training.
void check_against_reference(const MhaCase& cs, const Context& ctx = {}) {
  SCOPED_TRACE(cs.name());
  MhaData d = testing::make_mha_data(cs);
  flash_attn_varlen_fwd(d.fwd_args(), ctx);
  flash_attn_varlen_bwd(d.bwd_args(), ctx);

  MhaData r = testing::with_fresh_outputs(d);
  ref::mha_fwd(r.fwd_args());
  ref::mha_bwd(r.bwd_args());

  EXPECT_TRUE(all_finite(d.out.view())) << "out has inf / NaN";
  EXPECT_TRUE(all_finite(d.lse(), true)) << "lse has +inf / NaN";
  for (const HostTensor* g : {&d.dq, &d.dk, &d.dv}) {
    EXPECT_TRUE(all_finite(g->view())) << "a gradient has inf / NaN";
  }
  expect_close("out", d.out.view(), r.out.view(), 1e-3, 8.01 / 128, 7e-6);
  expect_close("lse", d.lse(), r.lse(), 1e-6, 2.01 / 65536, 1e-7);
  expect_close("dq", d.dq.view(), r.dq.view(), 1e-3, 8.01 / 128, 7e-6);
  expect_close("dk", d.dk.view(), r.dk.view(), 1e-3, 8.01 / 128, 7e-6);
  expect_close("dv", d.dv.view(), r.dv.view(), 1e-3, 8.01 / 128, 7e-6);
}

class MhaGrid : public ::testing::TestWithParam<MhaCase> {};

TEST_P(MhaGrid, ForwardAndBackwardMatchReference) { check_against_reference(GetParam()); }

std::string case_name(const ::testing::TestParamInfo<MhaCase>& info) { return info.param.name(); }

// FlashMLA's grid with lengths scaled from 4096 to odd sizes around 64-512: fixed and varlen ×
// (h, h_kv) in {(8, 8), (8, 2)} (GQA backward too, beyond FlashMLA) × (d_qk, d_v) in {(128, 128),
// (192, 128)} and, beyond FlashMLA, (72, 200) × causal; lengths alternate between (s_q, s_k) =
// (127, 127) and (61, 300), with non-contiguous layouts and the default scale mixed in.
std::vector<MhaCase> main_grid() {
  const std::pair<int64_t, int64_t> dims[] = {{128, 128}, {192, 128}, {72, 200}};
  const std::pair<int64_t, int64_t> heads[] = {{8, 8}, {8, 2}};
  std::vector<MhaCase> cases;
  uint64_t n = 0;
  for (bool varlen : {false, true}) {
    for (const auto& [h, hk] : heads) {
      for (const auto& [d, dv] : dims) {
        for (bool causal : {false, true}) {
          const bool long_kv = n % 2 == 1;
          cases.push_back({.q_len = long_kv ? 61 : 127, .kv_len = long_kv ? 300 : 127,
                           .num_heads_q = h, .num_heads_kv = hk, .d_qk = d, .d_v = dv,
                           .varlen = varlen, .causal = causal, .non_contiguous = n % 3 == 0,
                           .default_scale = n % 5 == 2, .seed = 100 + n});
          ++n;
        }
      }
    }
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Grid, MhaGrid, ::testing::ValuesIn(main_grid()), case_name);

// Corners: q longer than kv under causal (rows that see no key), zero-length q and kv
// sequences, lengths of 1, a longer sequence (512), one KV head for 8 query heads, is_varlen =
// false, the largest and smallest head dims, and more sequences.
std::vector<MhaCase> corner_grid() {
  return {
      {.q_len = 200, .kv_len = 77, .num_heads_q = 8, .num_heads_kv = 2, .causal = true,
       .seed = 1},
      {.q_len = 90, .kv_len = 40, .num_heads_q = 4, .num_heads_kv = 4, .varlen = true,
       .causal = true, .seed = 2},
      {.batch = 3, .q_len = 70, .kv_len = 90, .num_heads_q = 4, .num_heads_kv = 4,
       .varlen = true, .zero_lengths = true, .seed = 3},
      {.batch = 3, .q_len = 70, .kv_len = 90, .num_heads_q = 4, .num_heads_kv = 2,
       .varlen = true, .causal = true, .zero_lengths = true, .seed = 4},
      {.batch = 4, .q_len = 1, .kv_len = 1, .num_heads_q = 2, .num_heads_kv = 1, .seed = 5},
      {.batch = 1, .q_len = 512, .kv_len = 512, .num_heads_q = 2, .num_heads_kv = 1,
       .causal = true, .seed = 6},
      {.q_len = 100, .kv_len = 150, .num_heads_q = 8, .num_heads_kv = 1, .causal = true,
       .seed = 7},
      {.q_len = 96, .kv_len = 130, .num_heads_q = 4, .num_heads_kv = 2, .fixed_api = true,
       .causal = true, .seed = 8},
      {.q_len = 65, .kv_len = 129, .num_heads_q = 2, .num_heads_kv = 2, .d_qk = 256,
       .d_v = 256, .varlen = true, .causal = true, .non_contiguous = true, .seed = 9},
      {.q_len = 65, .kv_len = 129, .num_heads_q = 2, .num_heads_kv = 1, .d_qk = 8, .d_v = 8,
       .varlen = true, .seed = 10},
      {.batch = 7, .q_len = 33, .kv_len = 47, .num_heads_q = 3, .num_heads_kv = 1,
       .d_qk = 64, .d_v = 32, .varlen = true, .causal = true, .seed = 11},
  };
}
INSTANTIATE_TEST_SUITE_P(Corners, MhaGrid, ::testing::ValuesIn(corner_grid()), case_name);

// Rows that see no key (q longer than kv under causal, empty KV sequences) give out 0 and
// lse -inf, and zero dq; keys that no query sees (empty q sequence) get zero dk and dv.
TEST(MhaEmptyRows, ZeroOutputsAndGradients) {
  const MhaCase cs{.batch = 3, .q_len = 50, .kv_len = 20, .num_heads_q = 4, .num_heads_kv = 2,
                   .causal = true, .zero_lengths = true, .seed = 21};
  MhaData d = testing::make_mha_data(cs);
  ASSERT_EQ(d.kv_lens[0], 0);
  ASSERT_EQ(d.q_lens[1], 0);
  flash_attn_varlen_fwd(d.fwd_args());
  flash_attn_varlen_bwd(d.bwd_args());
  const TensorView lse = d.lse();
  int64_t q0 = 0, kv0 = 0, empty_rows = 0;
  for (int64_t i = 0; i < cs.batch; ++i) {
    const int64_t s_q = d.q_lens[i], s_k = d.kv_lens[i];
    for (int64_t r = 0; r < s_q; ++r) {
      if (r + s_k - s_q >= 0) continue;  // this row sees key 0 at least
      ++empty_rows;
      for (int64_t h = 0; h < cs.num_heads_q; ++h) {
        ASSERT_EQ(testing::load_float(lse, (q0 + r) * lse.strides[0] + h * lse.strides[1]),
                  -kInf);
        for (int64_t c = 0; c < cs.d_v; ++c) ASSERT_EQ(d.out.get({q0 + r, h, c}), 0.0f);
        for (int64_t c = 0; c < cs.d_qk; ++c) ASSERT_EQ(d.dq.get({q0 + r, h, c}), 0.0f);
      }
    }
    if (s_q == 0) {
      for (int64_t j = 0; j < s_k; ++j) {
        for (int64_t h = 0; h < cs.num_heads_kv; ++h) {
          for (int64_t c = 0; c < cs.d_qk; ++c) ASSERT_EQ(d.dk.get({kv0 + j, h, c}), 0.0f);
          for (int64_t c = 0; c < cs.d_v; ++c) ASSERT_EQ(d.dv.get({kv0 + j, h, c}), 0.0f);
        }
      }
    }
    q0 += s_q;
    kv0 += s_k;
  }
  EXPECT_GT(empty_rows, 50) << "the case must contain rows that see no key";
}

// All five outputs, as bits.
std::vector<std::vector<uint32_t>> output_bits(const MhaData& d) {
  return {bits(d.out.view()), bits(d.lse()), bits(d.dq.view()), bits(d.dk.view()),
          bits(d.dv.view())};
}

// out, lse, dq, dk and dv are bitwise identical across runs and thread counts 1, 2, 3 (FlashMLA
// guarantees it for out, lse, dk and dv; here dq too).
TEST(MhaDeterminism, BitwiseAcrossRunsAndThreads) {
  const MhaCase cs{.batch = 3, .q_len = 150, .kv_len = 170, .num_heads_q = 4,
                   .num_heads_kv = 2, .d_qk = 192, .varlen = true, .causal = true, .seed = 31};
  MhaData d = testing::make_mha_data(cs);
  std::vector<std::vector<uint32_t>> first;
  for (int threads : {1, 2, 3, 2, 1}) {
    MhaData run = testing::with_fresh_outputs(d);
    flash_attn_varlen_fwd(run.fwd_args(), {.num_threads = threads});
    flash_attn_varlen_bwd(run.bwd_args(), {.num_threads = threads});
    std::vector<std::vector<uint32_t>> now = output_bits(run);
    if (first.empty()) {
      first = std::move(now);
      continue;
    }
    const char* names[] = {"out", "lse", "dq", "dk", "dv"};
    for (size_t i = 0; i < now.size(); ++i) {
      EXPECT_TRUE(now[i] == first[i]) << names[i] << " differs with " << threads << " threads";
    }
  }
}

// Copies the values of `src` (any strides) into `dst` (same shape).
void copy_values(const TensorView& src, const TensorView& dst) {
  testing::for_each_element(src, [&](const int64_t* idx, int64_t off) {
    int64_t dst_off = 0;
    for (int d = 0; d < src.rank; ++d) dst_off += idx[d] * dst.strides[d];
    testing::store_float(dst, dst_off, testing::load_float(src, off));
  });
}

// flash_attn_varlen_qkvpacked_func: q, k, v as slices of one (total, h, 2 d_qk + d_v) tensor,
// gradients into slices of one dqkv tensor; bitwise the same as separate tensors.
TEST(MhaPacked, QkvPackedEqualsSeparate) {
  const MhaCase cs{.batch = 2, .q_len = 90, .kv_len = 90, .num_heads_q = 4, .num_heads_kv = 4,
                   .d_qk = 192, .d_v = 128, .varlen = false, .causal = true, .seed = 41};
  MhaData d = testing::make_mha_data(cs);
  flash_attn_varlen_fwd(d.fwd_args());
  flash_attn_varlen_bwd(d.bwd_args());

  const int64_t total = d.total_q(), width = 2 * cs.d_qk + cs.d_v;
  HostTensor qkv = HostTensor::empty(DType::bf16, {total, cs.num_heads_q, width});
  HostTensor dqkv = HostTensor::empty(DType::bf16, {total, cs.num_heads_q, width});
  const QkvViews in = split_qkv_packed(qkv.view(), cs.d_qk);
  const QkvViews grad = split_qkv_packed(dqkv.view(), cs.d_qk);
  copy_values(d.q.view(), in.q);
  copy_values(d.k.view(), in.k);
  copy_values(d.v.view(), in.v);

  MhaData p = testing::with_fresh_outputs(d);
  MhaBwdArgs args = p.bwd_args();
  args.fwd.q = in.q, args.fwd.k = in.k, args.fwd.v = in.v;
  args.fwd.cu_seqlens_kv = args.fwd.cu_seqlens_qo;  // one cu_seqlens for both, as packed
  flash_attn_varlen_fwd(args.fwd);
  args.dq = grad.q, args.dk = grad.k, args.dv = grad.v;
  flash_attn_varlen_bwd(args);

  EXPECT_TRUE(bits(p.out.view()) == bits(d.out.view()));
  EXPECT_TRUE(bits(p.lse()) == bits(d.lse()));
  EXPECT_TRUE(bits(grad.q) == bits(d.dq.view()));
  EXPECT_TRUE(bits(grad.k) == bits(d.dk.view()));
  EXPECT_TRUE(bits(grad.v) == bits(d.dv.view()));
}

// flash_attn_varlen_kvpacked_func: k and v as slices of one (total_kv, h_kv, d_qk + d_v)
// tensor (GQA here); bitwise the same as separate tensors.
TEST(MhaPacked, KvPackedEqualsSeparate) {
  const MhaCase cs{.batch = 2, .q_len = 40, .kv_len = 110, .num_heads_q = 4, .num_heads_kv = 2,
                   .d_qk = 128, .d_v = 128, .varlen = true, .seed = 42};
  MhaData d = testing::make_mha_data(cs);
  flash_attn_varlen_fwd(d.fwd_args());
  flash_attn_varlen_bwd(d.bwd_args());

  HostTensor kv = HostTensor::empty(DType::bf16, {d.total_kv(), 2, cs.d_qk + cs.d_v});
  HostTensor dkv = HostTensor::empty(DType::bf16, {d.total_kv(), 2, cs.d_qk + cs.d_v});
  const KvViews in = split_kv_packed(kv.view(), cs.d_qk);
  const KvViews grad = split_kv_packed(dkv.view(), cs.d_qk);
  copy_values(d.k.view(), in.k);
  copy_values(d.v.view(), in.v);

  MhaData p = testing::with_fresh_outputs(d);
  MhaBwdArgs args = p.bwd_args();
  args.fwd.k = in.k, args.fwd.v = in.v;
  flash_attn_varlen_fwd(args.fwd);
  args.dk = grad.k, args.dv = grad.v;
  flash_attn_varlen_bwd(args);

  EXPECT_TRUE(bits(p.out.view()) == bits(d.out.view()));
  EXPECT_TRUE(bits(p.lse()) == bits(d.lse()));
  EXPECT_TRUE(bits(p.dq.view()) == bits(d.dq.view()));
  EXPECT_TRUE(bits(grad.k) == bits(d.dk.view()));
  EXPECT_TRUE(bits(grad.v) == bits(d.dv.view()));
}

// is_varlen = false ignores the cu_seqlens values (garbage here) and gives the same bits as the
// varlen call with equal lengths; an lse with row-major strides gets the same values as
// FlashMLA's head-major layout.
TEST(MhaLayouts, FixedLengthsAndLseStrides) {
  MhaCase cs{.batch = 3, .q_len = 70, .kv_len = 90, .num_heads_q = 4, .num_heads_kv = 2,
             .causal = true, .seed = 51};
  MhaData var = testing::make_mha_data(cs);
  flash_attn_varlen_fwd(var.fwd_args());
  flash_attn_varlen_bwd(var.bwd_args());

  cs.fixed_api = true;
  MhaData fixed = testing::make_mha_data(cs);
  ASSERT_NE(fixed.cu_seqlens_qo.i32({0}), 0) << "garbage expected in the unused cu_seqlens";
  flash_attn_varlen_fwd(fixed.fwd_args());
  flash_attn_varlen_bwd(fixed.bwd_args());
  EXPECT_TRUE(output_bits(fixed) == output_bits(var));

  HostTensor lse_rows = HostTensor::empty(DType::fp32, {var.total_q(), cs.num_heads_q});
  const MhaData again = testing::with_fresh_outputs(var);
  MhaFwdArgs a = again.fwd_args();
  HostTensor out2 = HostTensor::empty(DType::bf16, {var.total_q(), cs.num_heads_q, cs.d_v});
  a.out = out2.view();
  a.lse = lse_rows.view();
  flash_attn_varlen_fwd(a);
  EXPECT_TRUE(bits(lse_rows.view()) == bits(var.lse()));
  EXPECT_TRUE(bits(out2.view()) == bits(var.out.view()));
}

}  // namespace
}  // namespace flashmla
