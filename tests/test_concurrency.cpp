// Many threads calling the operations at once give what serial calls give, bitwise: every
// operation (scheduler, dense decode bf16 / fp16, sparse FP8 decode, sparse prefill, combine, MHA
// forward and backward, FP8 quantize / dequantize) runs from several threads simultaneously, on
// shared inputs (one copy of q, the caches, the block tables and the schedule metadata, read by
// all) and on different inputs (two cases per decode operation), each call with its own outputs
// and its own OpenMP thread count (1, 2 or 3). Outputs go into NaN-filled buffers spanning the
// output view's strides, compared whole, so a stray write between elements would show too.
// (ctest also runs this suite under ThreadSanitizer where that build is made: see
// scripts/test-sanitizers.sh.)
#include <gtest/gtest.h>

#include <atomic>
#include <cstddef>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "flashmla/flashmla.h"
#include "flashmla/kv_format.h"
#include "flashmla/mha.h"
#include "testing/combine_case.h"
#include "testing/decode_case.h"
#include "testing/mha_case.h"
#include "testing/prefill_case.h"
#include "testing/sparse_decode_case.h"

namespace flashmla {
namespace {

using Bytes = std::vector<std::byte>;
using Outputs = std::vector<Bytes>;

// A view like v (shape, strides, dtype) into a fresh buffer covering its whole span, filled with
// 0xff bytes (NaN in every float dtype).
TensorView redirect(const TensorView& v, Bytes& mem) {
  int64_t span = 1;
  for (int d = 0; d < v.rank; ++d) {
    if (v.shape[d] == 0) span = 0;
  }
  if (span != 0) {
    for (int d = 0; d < v.rank; ++d) span += (v.shape[d] - 1) * v.strides[d];
  }
  mem.assign(static_cast<size_t>(span) * dtype_size(v.dtype) + 1, std::byte{0xff});
  TensorView r = v;
  r.data = mem.data();
  return r;
}

// One operation on fixed inputs: runs it into fresh outputs with `threads` OpenMP threads.
struct Op {
  std::string name;
  std::function<Outputs(int threads)> run;
};

// An Op calling `call(args, ctx)` on a copy of `base` whose `outputs` are redirected to fresh
// buffers (the inputs stay shared).
template <class Args, class Call>
Op op(std::string name, const Args& base, std::vector<TensorView Args::*> outputs, Call call) {
  return {std::move(name), [=](int threads) {
            Outputs o(outputs.size());
            Args a = base;
            for (size_t k = 0; k < outputs.size(); ++k) {
              a.*outputs[k] = redirect(a.*outputs[k], o[k]);
            }
            call(a, Context{.num_threads = threads});
            return o;
          }};
}

// The schedule of a decode call, computed once and then only read.
struct Schedule {
  std::vector<int32_t> meta, splits;
  void attach(MlaMetadataArgs margs, int64_t batch, int parts, MlaDecodeArgs& args) {
    meta.assign(static_cast<size_t>(parts) * 8, 0);
    splits.assign(static_cast<size_t>(batch + 1), 0);
    args.tile_scheduler_metadata = TensorView::contiguous(meta.data(), DType::int32, {parts, 8});
    args.num_splits = TensorView::contiguous(splits.data(), DType::int32, {batch + 1});
    margs.num_sm_parts = parts;
    margs.tile_scheduler_metadata = args.tile_scheduler_metadata;
    margs.num_splits = args.num_splits;
    get_mla_metadata(margs);
  }
};

// The inputs every Op reads (kept alive for the whole test).
struct Inputs {
  std::vector<testing::DenseDecodeData> dense;
  std::vector<testing::SparseDecodeData> sparse;
  std::vector<MlaDecodeArgs> dense_args, sparse_args;
  std::vector<Schedule> schedules;
  testing::SparsePrefillData prefill;
  testing::CombineData combine;
  testing::MhaData mha;
  testing::HostTensor k_bf16, cache_fp8;
};

MlaDecodeArgs dense_args(testing::DenseDecodeData& d, Schedule& s) {
  MlaDecodeArgs a = d.args();
  const int64_t b = d.q.size(0);
  s.attach({.cache_seqlens = a.cache_seqlens}, b, 5, a);
  return a;
}

MlaDecodeArgs sparse_args(testing::SparseDecodeData& d, Schedule& s) {
  MlaDecodeArgs a = d.args();
  const int64_t b = d.q.size(0);
  s.attach({.batch = b,
            .topk = d.indices.size(2),
            .topk_length = d.topk_length.view(),
            .extra_topk = d.extra_indices.view().defined() ? d.extra_indices.size(2) : 0,
            .extra_topk_length = d.extra_topk_length.view()},
           b, 4, a);
  return a;
}

std::vector<Op> make_ops(Inputs& in) {
  in.schedules.resize(4);
  in.dense.push_back(testing::make_dense_decode_data(
      {.batch = 3, .q_len = 2, .kv_len = 300, .num_heads_q = 16, .varlen = true,
       .causal = true, .seed = 1}));
  in.dense.push_back(testing::make_dense_decode_data(
      {.batch = 2, .q_len = 1, .kv_len = 200, .num_heads_q = 8, .num_heads_kv = 2,
       .page_block_size = 32, .dtype = DType::fp16, .seed = 2}));
  in.sparse.push_back(testing::make_sparse_decode_data(
      {.batch = 2, .q_len = 2, .num_heads_q = 16, .kv_len = 300, .topk = 128,
       .topk_length = true, .sink = true, .seed = 3}));
  in.sparse.push_back(testing::make_sparse_decode_data(
      {.batch = 2, .q_len = 1, .num_heads_q = 16, .d_qk = 512, .kv_len = 200, .topk = 64,
       .extra = true, .extra_topk = 64, .seed = 4}));
  for (size_t i = 0; i < 2; ++i) {
    in.dense_args.push_back(dense_args(in.dense[i], in.schedules[i]));
    in.sparse_args.push_back(sparse_args(in.sparse[i], in.schedules[2 + i]));
  }
  in.prefill = testing::make_sparse_prefill_data(
      {.q_len = 6, .kv_len = 500, .num_heads_q = 16, .topk = 128, .sink = true,
       .topk_length = true, .seed = 5});
  in.combine = testing::make_combine_data(
      {.q_len = 2, .num_heads_q = 8, .pieces = {3, 1, 0, 4}, .sink = true, .seed = 6});
  in.mha = testing::make_mha_data({.batch = 2, .q_len = 70, .kv_len = 90, .num_heads_q = 4,
                                   .num_heads_kv = 2, .d_qk = 192, .varlen = true,
                                   .causal = true, .seed = 7});
  flash_attn_varlen_fwd(in.mha.fwd_args());  // the backward's out and lse, shared

  // FP8 caches: bf16 tokens quantized to V32 (and back), 2 blocks of 16 tokens.
  in.k_bf16 = testing::HostTensor::empty(DType::bf16, {2, 16, 1, 576});
  std::mt19937_64 rng(8);
  in.k_bf16.fill_randn(rng, 1.0f, 8.0f);
  in.cache_fp8 = testing::HostTensor::empty(DType::uint8, {2, 16, 1, 656});
  quantize_kv_cache({.format = KvFormat::v32, .k = in.k_bf16.view(), .cache = in.cache_fp8.view()});

  std::vector<Op> ops;
  for (size_t i = 0; i < 2; ++i) {
    ops.push_back(op("dense decode " + std::to_string(i), in.dense_args[i], {&MlaDecodeArgs::out,
                     &MlaDecodeArgs::lse}, flash_mla_with_kvcache));
    ops.push_back(op("sparse decode " + std::to_string(i), in.sparse_args[i],
                     {&MlaDecodeArgs::out, &MlaDecodeArgs::lse}, flash_mla_with_kvcache));
  }
  const MlaMetadataArgs sched{.cache_seqlens = in.dense_args[0].cache_seqlens,
                              .num_sm_parts = 5,
                              .tile_scheduler_metadata = in.dense_args[0].tile_scheduler_metadata,
                              .num_splits = in.dense_args[0].num_splits};
  ops.push_back(op("scheduler", sched,
                   {&MlaMetadataArgs::tile_scheduler_metadata, &MlaMetadataArgs::num_splits},
                   [](const MlaMetadataArgs& a, const Context&) { get_mla_metadata(a); }));
  ops.push_back(op("sparse prefill", in.prefill.args(),
                   {&SparsePrefillArgs::out, &SparsePrefillArgs::max_logits,
                    &SparsePrefillArgs::lse},
                   flash_mla_sparse_fwd));
  ops.push_back(op("combine", in.combine.args(), {&MlaCombineArgs::out, &MlaCombineArgs::lse},
                   mla_combine));
  ops.push_back(op("mha forward", in.mha.fwd_args(), {&MhaFwdArgs::out, &MhaFwdArgs::lse},
                   flash_attn_varlen_fwd));
  ops.push_back(op("mha backward", in.mha.bwd_args(),
                   {&MhaBwdArgs::dq, &MhaBwdArgs::dk, &MhaBwdArgs::dv}, flash_attn_varlen_bwd));
  ops.push_back({"fp8 quantize / dequantize", [&in](int) {
                   Outputs o(2);
                   quantize_kv_cache({.format = KvFormat::v32,
                                      .k = in.k_bf16.view(),
                                      .cache = redirect(in.cache_fp8.view(), o[0])});
                   dequantize_kv_cache({.format = KvFormat::v32,
                                        .k = redirect(in.k_bf16.view(), o[1]),
                                        .cache = in.cache_fp8.view()});
                   return o;
                 }});
  return ops;
}

TEST(Concurrency, ThreadsCallingAtOnceMatchSerialCalls) {
  Inputs in;
  const std::vector<Op> ops = make_ops(in);
  std::vector<Outputs> serial;
  for (const Op& op : ops) serial.push_back(op.run(1));

  constexpr int kThreads = 6, kRounds = 3;
  std::atomic<int> mismatches{0}, errors{0}, calls{0};
  std::vector<std::string> first_error(kThreads);
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int w = 0; w < kThreads; ++w) {
    threads.emplace_back([&, w] {
      while (!go.load()) std::this_thread::yield();  // start together
      for (int r = 0; r < kRounds; ++r) {
        for (size_t k = 0; k < ops.size(); ++k) {
          const size_t i = (k + w + r) % ops.size();  // threads on different ops at once
          try {
            const Outputs got = ops[i].run(1 + (w + r) % 3);
            calls++;
            if (got != serial[i]) {
              if (mismatches++ == 0) first_error[w] = ops[i].name + ": differs from serial";
            }
          } catch (const std::exception& e) {
            if (errors++ == 0) first_error[w] = ops[i].name + ": " + e.what();
          }
        }
      }
    });
  }
  go = true;
  for (std::thread& t : threads) t.join();
  std::string what;
  for (const std::string& e : first_error) what += e.empty() ? "" : e + "; ";
  EXPECT_EQ(mismatches.load(), 0) << what;
  EXPECT_EQ(errors.load(), 0) << what;
  EXPECT_EQ(calls.load(), kThreads * kRounds * static_cast<int>(ops.size()));
}

}  // namespace
}  // namespace flashmla
