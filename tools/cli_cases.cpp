#include "cli_cases.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <vector>

#include "flashmla/flashmla.h"
#include "gpu/gpu_device.h"
#include "gpu/mirror.h"
#include "ref/ref.h"
#include "testing/compare.h"
#include "testing/host_tensor.h"
#include "testing/work.h"

namespace flashmla::cli {
namespace {

using testing::DenseDecodeCase;
using testing::DenseDecodeData;
using testing::HostTensor;
using testing::SparseDecodeCase;
using testing::SparseDecodeData;
using testing::SparsePrefillCase;
using testing::SparsePrefillData;

// Where a case's calls run: on the host, or on the CUDA device (opt.cuda), where the arguments'
// tensors are copied once and the outputs come back with fetch().
class Placement {
 public:
  explicit Placement(const RunOptions& opt) : opt_(opt), ctx_{.num_threads = opt.threads} {
    if (opt.cuda) {
      mirror_ = std::make_unique<gpu_testing::Mirror>(/*check_inputs=*/false);
      ctx_.cuda_stream = gpu_testing::stream();
    }
  }
  const Context& ctx() const { return ctx_; }
  Device device() const { return opt_.cuda ? Device::cuda : Device::cpu; }
  // The arguments as the calls take them (device copies with --device cuda).
  template <class Args>
  Args place(const Args& a) {
    return mirror_ ? (*mirror_)(a) : a;
  }
  // Median time in µs of opt.iters calls after opt.warmup untimed ones: wall-clock on the host,
  // device events around each call on the device.
  double median_us(const std::function<void()>& call) {
    std::vector<double> t;
    for (int it = 0; it < opt_.warmup + opt_.iters; ++it) {
      double us = 0;
      if (mirror_) {
        us = 1e6 * gpu_testing::time_on_device(
                       [](void* f) { (*static_cast<const std::function<void()>*>(f))(); },
                       const_cast<std::function<void()>*>(&call));
      } else {
        const auto t0 = std::chrono::steady_clock::now();
        call();
        us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
                 .count();
      }
      if (it >= opt_.warmup) t.push_back(us);
    }
    std::sort(t.begin(), t.end());
    return t.size() % 2 ? t[t.size() / 2] : 0.5 * (t[t.size() / 2 - 1] + t[t.size() / 2]);
  }
  // The outputs back in the host tensors (nothing to do on the host).
  void fetch() {
    if (mirror_) (void)mirror_->copy_back();
  }

 private:
  const RunOptions& opt_;
  Context ctx_;
  std::unique_ptr<gpu_testing::Mirror> mirror_;
};

// A view of the first k requests (leading dimension sliced).
TensorView first_rows(TensorView v, int64_t k) {
  v.shape[0] = k;
  return v;
}

}  // namespace

Row run_dense_decode_case(const DenseDecodeCase& cs, const RunOptions& opt) {
  DenseDecodeData data = testing::make_dense_decode_data(cs);
  MlaDecodeArgs args = data.args();
  Placement at(opt);

  // The schedule is computed once and reused by every call, as a model's layers would (for the
  // device: its part count, the same schedule as the device scheduler's).
  const int parts = mla_num_sm_parts(
      {.batch = cs.batch, .q_len = cs.q_len, .num_heads_q = cs.num_heads_q,
       .num_heads_kv = cs.num_heads_kv}, at.ctx(), at.device());
  std::vector<int32_t> meta(static_cast<size_t>(parts) * 8), splits(cs.batch + 1);
  args.tile_scheduler_metadata =
      TensorView::contiguous(meta.data(), DType::int32, {parts, 8});
  args.num_splits = TensorView::contiguous(splits.data(), DType::int32, {cs.batch + 1});
  get_mla_metadata({.cache_seqlens = args.cache_seqlens, .num_sm_parts = parts,
                              .tile_scheduler_metadata = args.tile_scheduler_metadata,
                              .num_splits = args.num_splits});

  const MlaDecodeArgs placed = at.place(args);
  const double us = at.median_us([&] { flash_mla_with_kvcache(placed, at.ctx()); });
  at.fetch();

  const testing::Work work = testing::dense_decode_work(cs, data);  // FlashMLA's counting
  const double flops = work.flops, bytes = work.bytes;

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
  Placement at(opt);
  const MlaDecodeArgs placed = at.place(args);
  const double us = at.median_us([&] { flash_mla_with_kvcache(placed, at.ctx()); });
  at.fetch();

  const testing::Work work = testing::sparse_decode_work(cs, args);  // FlashMLA's counting
  const double flops = work.flops, bytes = work.bytes;

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
  Placement at(opt);
  const SparsePrefillArgs placed = at.place(args);
  const double us = at.median_us([&] { flash_mla_sparse_fwd(placed, at.ctx()); });
  at.fetch();

  const testing::Work work = testing::sparse_prefill_work(cs, data);  // FlashMLA's counting
  const double flops = work.flops, bytes = work.bytes;

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
  if (opt.cuda) {
    throw Error(ErrorKind::unsupported, "flashmla_cli", "--device",
                "cpu for the MHA prefill (it has no CUDA kernel)", "cuda");
  }
  testing::MhaData data = testing::make_mha_data(cs);
  const MhaBwdArgs args = data.bwd_args();
  Placement at(opt);
  const double fwd_us = at.median_us([&] { flash_attn_varlen_fwd(args.fwd, at.ctx()); });
  const double bwd_us = at.median_us([&] { flash_attn_varlen_bwd(args, at.ctx()); });

  const testing::MhaWork work = testing::mha_work(cs, data);  // FlashMLA's counting
  const double fwd_flops = work.fwd.flops, bwd_flops = work.bwd.flops;
  const double fwd_bytes = work.fwd.bytes, bwd_bytes = work.bwd.bytes;
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
