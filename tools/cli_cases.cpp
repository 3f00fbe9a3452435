#include "cli_cases.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <vector>

#include "flashmla/flashmla.h"
#include "ref/ref.h"
#include "testing/compare.h"
#include "testing/host_tensor.h"

namespace flashmla::cli {
namespace {

using testing::DenseDecodeCase;
using testing::DenseDecodeData;
using testing::HostTensor;
using testing::SparseDecodeCase;
using testing::SparseDecodeData;
using testing::SparsePrefillCase;
using testing::SparsePrefillData;

// Median wall time in µs of opt.iters calls after opt.warmup untimed ones.
template <class F>
double median_us(const RunOptions& opt, F&& call) {
  std::vector<double> t;
  for (int it = 0; it < opt.warmup + opt.iters; ++it) {
    const auto t0 = std::chrono::steady_clock::now();
    call();
    const auto t1 = std::chrono::steady_clock::now();
    if (it >= opt.warmup) t.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t.size() % 2 ? t[t.size() / 2] : 0.5 * (t[t.size() / 2 - 1] + t[t.size() / 2]);
}

// A view of the first k requests (leading dimension sliced).
TensorView first_rows(TensorView v, int64_t k) {
  v.shape[0] = k;
  return v;
}

}  // namespace

Row run_dense_decode_case(const DenseDecodeCase& cs, const RunOptions& opt) {
  DenseDecodeData data = testing::make_dense_decode_data(cs);
  MlaDecodeArgs args = data.args();
  const Context ctx{.num_threads = opt.threads};

  // The schedule is computed once and reused by every call, as a model's layers would.
  const int parts = mla_num_sm_parts(
      {.batch = cs.batch, .q_len = cs.q_len, .num_heads_q = cs.num_heads_q,
       .num_heads_kv = cs.num_heads_kv}, ctx);
  std::vector<int32_t> meta(static_cast<size_t>(parts) * 8), splits(cs.batch + 1);
  args.tile_scheduler_metadata =
      TensorView::contiguous(meta.data(), DType::int32, {parts, 8});
  args.num_splits = TensorView::contiguous(splits.data(), DType::int32, {cs.batch + 1});
  get_mla_metadata({.cache_seqlens = args.cache_seqlens, .num_sm_parts = parts,
                              .tile_scheduler_metadata = args.tile_scheduler_metadata,
                              .num_splits = args.num_splits});

  const double us = median_us(opt, [&] { flash_mla_with_kvcache(args, ctx); });

  // FlashMLA's counting (reference §7.1).
  const double total_len = std::accumulate(data.seqlens.begin(), data.seqlens.end(), 0.0);
  const double d_qk = 576, d_v = 512, elem = dtype_size(cs.dtype);
  const double flops = 2.0 * cs.num_heads_q * cs.q_len * total_len * (d_qk + d_v);
  const double bytes = (total_len * cs.num_heads_kv * d_qk +
                        cs.batch * cs.q_len * cs.num_heads_q * (d_qk + d_v)) * elem;

  // Check the first requests against the reference.
  const int64_t k = std::min<int64_t>(opt.check, cs.batch);
  double max_err = 0;
  bool ok = true;
  if (k > 0) {
    HostTensor ref_out = HostTensor::empty(cs.dtype, {k, cs.q_len, cs.num_heads_q, 512});
    HostTensor ref_lse = HostTensor::empty(DType::fp32, {k, cs.num_heads_q, cs.q_len});
    MlaDecodeArgs sub = args;
    sub.q = first_rows(args.q, k);
    sub.block_table = first_rows(args.block_table, k);
    sub.cache_seqlens = first_rows(args.cache_seqlens, k);
    sub.out = ref_out.view();
    sub.lse = ref_lse.view();
    ref::dense_decode(sub);
    const auto out_cmp = testing::check_is_allclose(
        "out", first_rows(args.out, k), ref_out.view(), 8e-4, 2.01 / 128, 5e-6);
    const auto lse_cmp = testing::check_is_allclose(
        "lse", first_rows(args.lse, k), ref_lse.view(), 1e-6, 8.01 / 65536);
    ok = out_cmp.ok && lse_cmp.ok;
    max_err = std::max(out_cmp.max_abs_err, lse_cmp.max_abs_err);
    if (!ok) std::fprintf(stderr, "%s\n%s\n", out_cmp.message.c_str(), lse_cmp.message.c_str());
  }
  return {cs.name(), us, flops / us * 1e-6, bytes / us * 1e-3, max_err, ok};
}


Row run_sparse_decode_case(const SparseDecodeCase& cs, const RunOptions& opt) {
  SparseDecodeData data = testing::make_sparse_decode_data(cs);
  MlaDecodeArgs args = data.args();
  const Context ctx{.num_threads = opt.threads};
  const double us = median_us(opt, [&] { flash_mla_with_kvcache(args, ctx); });

  // FlashMLA's counting (reference §7.2): attended tokens and distinct referenced slots.
  double attended = 0, unique = 0;
  auto count = [&](const TensorView& idx, const TensorView& len, int64_t slots) {
    if (!idx.defined()) return;
    std::vector<bool> used(slots, false);
    for (int64_t i = 0; i < cs.batch; ++i) {
      const int64_t cols = len.defined() ? len.ptr<const int32_t>()[i] : idx.size(2);
      for (int64_t s = 0; s < cs.q_len; ++s) {
        const int32_t* row = idx.ptr<const int32_t>() + i * idx.stride(0) + s * idx.stride(1);
        for (int64_t c = 0; c < cols; ++c) {
          if (row[c] == -1) continue;
          attended += 1;
          if (!used[row[c]]) unique += 1, used[row[c]] = true;
        }
      }
    }
  };
  count(args.indices, args.topk_length, args.k_cache.size(0) * args.k_cache.size(1));
  count(args.extra_indices_in_kvcache, args.extra_topk_length,
        args.extra_k_cache.defined() ? args.extra_k_cache.size(0) * args.extra_k_cache.size(1) : 0);
  const double d_v = 512, bpt = cs.fp8 ? (cs.d_qk == 576 ? 656 : 584) : 2.0 * cs.d_qk;
  const double flops = 2.0 * cs.num_heads_q * attended * (cs.d_qk + d_v);
  const double bytes = unique * bpt + 2.0 * cs.batch * cs.q_len * cs.num_heads_q * (cs.d_qk + d_v);

  Row row{.name = cs.name(), .us = us, .tflops = flops / us * 1e-6, .gbps = bytes / us * 1e-3};
  const int64_t k = std::min<int64_t>(opt.check, cs.batch);
  if (k > 0) {  // the first k requests against the reference
    HostTensor ref_out = HostTensor::empty(DType::bf16, {k, cs.q_len, cs.num_heads_q, 512});
    HostTensor ref_lse = HostTensor::empty(DType::fp32, {k, cs.num_heads_q, cs.q_len});
    MlaDecodeArgs sub = args;
    for (TensorView* t : {&sub.q, &sub.indices, &sub.topk_length, &sub.extra_indices_in_kvcache,
                          &sub.extra_topk_length}) {
      if (t->defined()) *t = first_rows(*t, k);
    }
    sub.out = ref_out.view();
    sub.lse = ref_lse.view();
    ref::sparse_decode(sub);
    const auto out = testing::check_is_allclose("out", first_rows(args.out, k), ref_out.view(),
                                                1e-3, 2.01 / 128, 5e-6);
    const auto lse = testing::check_is_allclose("lse", first_rows(args.lse, k), ref_lse.view(),
                                                1e-6, 8.01 / 65536);
    row.ok = out.ok && lse.ok;
    row.max_err = std::max(out.max_abs_err, lse.max_abs_err);
    if (!row.ok) std::fprintf(stderr, "%s\n%s\n", out.message.c_str(), lse.message.c_str());
  }
  return row;
}

Row run_sparse_prefill_case(const SparsePrefillCase& cs, const RunOptions& opt) {
  SparsePrefillData data = testing::make_sparse_prefill_data(cs);
  SparsePrefillArgs args = data.args();
  const Context ctx{.num_threads = opt.threads};
  const double us = median_us(opt, [&] { flash_mla_sparse_fwd(args, ctx); });

  // FlashMLA's counting (reference §7.2): T valid (query, key) pairs, N distinct valid rows.
  double pairs = 0;
  std::vector<bool> used(cs.kv_len, false);
  for (int64_t s = 0; s < cs.q_len; ++s) {
    const int64_t cols = args.topk_length.defined() ? data.topk_length.i32({s}) : cs.topk;
    for (int64_t c = 0; c < cols; ++c) {
      const int32_t t = data.indices.i32({s, 0, c});
      if (t >= 0 && t < cs.kv_len) {
        pairs += 1;
        used[t] = true;
      }
    }
  }
  const double n_valid = static_cast<double>(std::count(used.begin(), used.end(), true));
  const double d_v = 512, flops = 2.0 * pairs * cs.num_heads_q * (cs.d_qk + d_v);
  const double bytes = n_valid * cs.d_qk * 2 + cs.q_len * cs.num_heads_q * (cs.d_qk + d_v) * 2;

  Row row{.name = cs.name(), .us = us, .tflops = flops / us * 1e-6, .gbps = bytes / us * 1e-3};
  const int64_t k = std::min<int64_t>(opt.check, cs.q_len);
  if (k > 0) {  // the first k query tokens against the reference
    HostTensor ref_out = HostTensor::empty(DType::bf16, {k, cs.num_heads_q, 512});
    HostTensor ref_max = HostTensor::empty(DType::fp32, {k, cs.num_heads_q});
    HostTensor ref_lse = HostTensor::empty(DType::fp32, {k, cs.num_heads_q});
    SparsePrefillArgs sub = args;
    sub.q = first_rows(args.q, k);
    sub.indices = first_rows(args.indices, k);
    if (sub.topk_length.defined()) sub.topk_length = first_rows(args.topk_length, k);
    sub.out = ref_out.view();
    sub.max_logits = ref_max.view();
    sub.lse = ref_lse.view();
    ref::sparse_prefill(sub);
    const auto out = testing::check_is_allclose("out", first_rows(args.out, k), ref_out.view(),
                                                8e-4, 3.01 / 128, 7e-6);
    const auto mx = testing::check_is_allclose("max_logits", first_rows(args.max_logits, k),
                                               ref_max.view(), 1e-6, 2.01 / 65536);
    const auto lse = testing::check_is_allclose("lse", first_rows(args.lse, k), ref_lse.view(),
                                                1e-6, 2.01 / 65536);
    row.ok = out.ok && mx.ok && lse.ok;
    row.max_err = std::max({out.max_abs_err, mx.max_abs_err, lse.max_abs_err});
    if (!row.ok) {
      std::fprintf(stderr, "%s\n%s\n%s\n", out.message.c_str(), mx.message.c_str(),
                   lse.message.c_str());
    }
  }
  return row;
}

namespace {

// Heads [0, n) of a (tokens, heads, channels) view.
TensorView first_heads(TensorView v, int64_t n) {
  v.shape[1] = n;
  return v;
}

// The first k sequences of an MHA problem, on the query heads of KV head 0: the reference's
// arguments, writing into the given outputs.
MhaBwdArgs mha_sample(const testing::MhaData& d, int64_t k, const HostTensor& out,
                      const HostTensor& lse, const HostTensor& dq, const HostTensor& dk,
                      const HostTensor& dv) {
  const int64_t group = d.c.num_heads_q / d.c.num_heads_kv;
  const int64_t tq = d.cu_seqlens_qo.i32({k}), tk = d.cu_seqlens_kv.i32({k});
  MhaBwdArgs a = d.bwd_args();
  a.fwd.q = first_heads(first_rows(a.fwd.q, tq), group);
  a.fwd.k = first_heads(first_rows(a.fwd.k, tk), 1);
  a.fwd.v = first_heads(first_rows(a.fwd.v, tk), 1);
  a.fwd.cu_seqlens_qo = first_rows(a.fwd.cu_seqlens_qo, k + 1);
  a.fwd.cu_seqlens_kv = first_rows(a.fwd.cu_seqlens_kv, k + 1);
  a.fwd.out = out.view();
  a.fwd.lse = lse.view();
  a.dout = first_heads(first_rows(a.dout, tq), group);
  a.dq = dq.view();
  a.dk = dk.view();
  a.dv = dv.view();
  return a;
}

}  // namespace

std::vector<Row> run_mha_case(const testing::MhaCase& cs, const RunOptions& opt) {
  testing::MhaData data = testing::make_mha_data(cs);
  const MhaBwdArgs args = data.bwd_args();
  const Context ctx{.num_threads = opt.threads};
  const double fwd_us = median_us(opt, [&] { flash_attn_varlen_fwd(args.fwd, ctx); });
  const double bwd_us = median_us(opt, [&] { flash_attn_varlen_bwd(args, ctx); });

  // FlashMLA's counting (reference §7.2): A unmasked (q, k) pairs; forward A·h·2·(d + dv),
  // backward A·h·2·(3d + 2dv). Bytes: q, k, v and out once (forward), plus dout, dq, dk, dv.
  double pairs = 0;
  for (int64_t i = 0; i < cs.batch; ++i) {
    const int64_t s_q = data.q_lens[i], s_k = data.kv_lens[i];
    for (int64_t r = 0; r < s_q; ++r) {
      pairs += cs.causal ? std::clamp<int64_t>(r + 1 + s_k - s_q, 0, s_k) : s_k;
    }
  }
  const double h = cs.num_heads_q, d = cs.d_qk, dv = cs.d_v;
  const double tq = data.total_q(), tk = data.total_kv(), hk = cs.num_heads_kv;
  const double fwd_flops = pairs * h * 2 * (d + dv), bwd_flops = pairs * h * 2 * (3 * d + 2 * dv);
  const double fwd_bytes = 2 * (tq * h * (d + dv) + tk * hk * (d + dv));
  const double bwd_bytes = 2 * fwd_bytes + 2 * tq * h * dv;
  Row fwd{.name = "fwd " + cs.name(), .us = fwd_us, .tflops = fwd_flops / fwd_us * 1e-6,
          .gbps = fwd_bytes / fwd_us * 1e-3};
  Row bwd{.name = "bwd " + cs.name(), .us = bwd_us, .tflops = bwd_flops / bwd_us * 1e-6,
          .gbps = bwd_bytes / bwd_us * 1e-3};

  const int64_t k = std::min<int64_t>(opt.check, cs.batch);
  if (k > 0) {
    const int64_t group = cs.num_heads_q / cs.num_heads_kv;
    const int64_t sq = data.cu_seqlens_qo.i32({k}), sk = data.cu_seqlens_kv.i32({k});
    HostTensor out = HostTensor::empty(DType::bf16, {sq, group, cs.d_v});
    HostTensor lse = HostTensor::empty(DType::fp32, {sq, group});
    HostTensor dq = HostTensor::empty(DType::bf16, {sq, group, cs.d_qk});
    HostTensor dk = HostTensor::empty(DType::bf16, {sk, 1, cs.d_qk});
    HostTensor dvv = HostTensor::empty(DType::bf16, {sk, 1, cs.d_v});
    const MhaBwdArgs ref_args = mha_sample(data, k, out, lse, dq, dk, dvv);
    ref::mha_fwd(ref_args.fwd);
    ref::mha_bwd(ref_args);
    auto mine = [&](const TensorView& v, int64_t rows, int64_t heads) {
      return first_heads(first_rows(v, rows), heads);
    };
    const auto c_out = testing::check_is_allclose("out", mine(args.fwd.out, sq, group),
                                                  out.view(), 1e-3, 8.01 / 128, 7e-6);
    TensorView my_lse = first_rows(args.fwd.lse, sq);
    my_lse.shape[1] = group;
    const auto c_lse = testing::check_is_allclose("lse", my_lse, lse.view(), 1e-6, 2.01 / 65536);
    const auto c_dq = testing::check_is_allclose("dq", mine(args.dq, sq, group), dq.view(), 1e-3,
                                                 8.01 / 128, 7e-6);
    const auto c_dk = testing::check_is_allclose("dk", mine(args.dk, sk, 1), dk.view(), 1e-3,
                                                 8.01 / 128, 7e-6);
    const auto c_dv = testing::check_is_allclose("dv", mine(args.dv, sk, 1), dvv.view(), 1e-3,
                                                 8.01 / 128, 7e-6);
    fwd.ok = c_out.ok && c_lse.ok;
    fwd.max_err = std::max(c_out.max_abs_err, c_lse.max_abs_err);
    bwd.ok = c_dq.ok && c_dk.ok && c_dv.ok;
    bwd.max_err = std::max({c_dq.max_abs_err, c_dk.max_abs_err, c_dv.max_abs_err});
    for (const auto* c : {&c_out, &c_lse, &c_dq, &c_dk, &c_dv}) {
      if (!c->ok) std::fprintf(stderr, "%s\n", c->message.c_str());
    }
  }
  return {fwd, bwd};
}

}  // namespace flashmla::cli
