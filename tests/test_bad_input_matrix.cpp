// The bad-input matrix: every tensor argument of every operation (dense and sparse decode,
// sparse prefill, combine, the scheduler, MHA forward and backward, FP8 quantize / dequantize)
// times every generic kind of breakage, generated rather than written out:
//   wrong dtype (each dtype the argument does not take)      -> type error naming it
//   rank - 1, rank + 1                                      -> value error naming it
//   each size - 1 and + 1 (a real allocation of that shape)  -> rejected (the argument, or the
//                                                              tensor it now disagrees with)
//   a negative size, a size of 2^62                          -> value error naming it
//   null data (required arguments)                           -> value error naming it
//   a strided last dimension (a real allocation)             -> value error naming it
//   overlapping elements (outputs: a zero stride)             -> value error naming it
//   a CUDA pointer                                           -> unsupported error naming it
// Each rejected call must leave every output byte untouched. Sizes that may legally differ (the
// number of cache blocks, tokens per page, s_kv, topk, block-table width, accumulator slots,
// KV heads where fewer still divide the query heads) are left out of the +-1 rows. The schedule
// tensors of a decode call and the forward tensors inside MhaBwdArgs (a nested struct) are
// covered by the hand-written tables only. The hand-written
// tables (test_bad_input_*.cpp, test_sparse_*.cpp, test_kv_format.cpp) cover the value-level
// cases: indices and block ids out of range, lengths, NaN / inf scales, schedules.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <iostream>
#include <deque>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "flashmla/flashmla.h"
#include "flashmla/kv_format.h"
#include "flashmla/mha.h"
#include "testing/bad_input.h"
#include "testing/combine_case.h"
#include "testing/decode_case.h"
#include "testing/mha_case.h"
#include "testing/prefill_case.h"
#include "testing/sparse_decode_case.h"

namespace flashmla {
namespace {

using testing::HostTensor;
using testing::bad_input::bytes_of;

constexpr DType kDtypes[] = {DType::fp32, DType::bf16, DType::fp16, DType::int32, DType::uint8,
                             DType::fp8_e4m3};

// One tensor argument: how to reach it in the call's arguments, which dtypes it takes, whether
// it may be absent (null; for `indices`, absence selects dense mode), whether it is written,
// which sizes may legally change, and whether any strides are allowed (lse-like outputs).
template <class Args>
struct Field {
  const char* name;
  TensorView Args::*member;
  std::vector<DType> dtypes;
  bool optional = false;
  bool output = false;
  std::set<int> free_dims;
  bool any_strides = false;
};

struct Outcome {
  int cases = 0, failures = 0;
};

// Runs every mutation of every field on fresh copies of a valid call.
template <class Args, class Make, class Call>
// cuda_lead: the argument whose device the call runs on (nullptr: a CPU-only operation). A CUDA
// tensor anywhere else is a device mismatch (value error); a CUDA lead is unsupported without a
// CUDA backend, and with one the first CPU argument after it is the mismatch.
Outcome run_matrix(const char* function, const char* cuda_lead,
                   const std::vector<Field<Args>>& fields, Make make, Call call) {
  Outcome out;
  for (const Field<Args>& f : fields) {
    struct Mutation {
      std::string what;
      std::function<void(TensorView&, std::deque<HostTensor>&)> apply;
      std::string argument;  // empty: any argument of the call may be named
      ErrorKind kind;
    };
    std::vector<Mutation> muts;
    auto alloc = [](std::deque<HostTensor>& owned, DType dt, std::vector<int64_t> shape) {
      owned.push_back(HostTensor::empty(dt, std::move(shape)));
      return owned.back().view();
    };
    auto shape_of = [](const TensorView& v) {
      return std::vector<int64_t>(v.shape, v.shape + v.rank);
    };
    for (DType dt : kDtypes) {
      if (std::find(f.dtypes.begin(), f.dtypes.end(), dt) != f.dtypes.end()) continue;
      muts.push_back({std::string("dtype ") + dtype_name(dt),
                      [=](TensorView& v, std::deque<HostTensor>& o) {
                        v = alloc(o, dt, shape_of(v));
                      },
                      f.name, ErrorKind::type});
    }
    muts.push_back({"rank - 1", [=](TensorView& v, std::deque<HostTensor>& o) {
                      std::vector<int64_t> s = shape_of(v);
                      s.pop_back();
                      v = alloc(o, v.dtype, s);
                    }, f.name, ErrorKind::value});
    muts.push_back({"rank + 1", [=](TensorView& v, std::deque<HostTensor>& o) {
                      std::vector<int64_t> s = shape_of(v);
                      s.push_back(1);
                      v = alloc(o, v.dtype, s);
                    }, f.name, ErrorKind::value});
    muts.push_back({"size 0 negative", [](TensorView& v, std::deque<HostTensor>&) {
                      v.shape[0] = -3;
                    }, f.name, ErrorKind::value});
    muts.push_back({"size 0 = 2^62", [](TensorView& v, std::deque<HostTensor>&) {
                      v.shape[0] = int64_t{1} << 62;
                    }, f.name, ErrorKind::value});
    if (!f.optional) {
      muts.push_back({"null data", [](TensorView& v, std::deque<HostTensor>&) {
                        v.data = nullptr;
                      }, f.name, ErrorKind::value});
    }
    const bool lead = cuda_lead != nullptr && std::string(cuda_lead) == f.name;
    muts.push_back({"cuda", [](TensorView& v, std::deque<HostTensor>&) {
                      v.device = Device::cuda;
                    },
                    lead && has_cuda_backend() ? "" : f.name,
                    cuda_lead == nullptr || lead ? ErrorKind::unsupported : ErrorKind::value});
    if (!f.any_strides) muts.push_back({"strided last dim", [=](TensorView& v, std::deque<HostTensor>& o) {
                      std::vector<int64_t> s = shape_of(v);
                      std::vector<int64_t> big = s;
                      big.back() *= 2;
                      TensorView b = alloc(o, v.dtype, big);
                      TensorView r = v;
                      r.data = b.data;
                      for (int d = 0; d < r.rank; ++d) r.strides[d] = b.strides[d];
                      r.strides[r.rank - 1] = 2;
                      v = r;
                    }, f.name, ErrorKind::value});
    if (f.output) {
      muts.push_back({"zero stride (overlap)", [](TensorView& v, std::deque<HostTensor>&) {
                        v.strides[0] = 0;
                      }, f.name, ErrorKind::value});
    }
    // Sizes +-1 (the number of dimensions is fixed by the field's valid view).
    Args probe = make().args;
    const TensorView base = probe.*(f.member);
    for (int d = 0; d < base.rank; ++d) {
      if (f.free_dims.count(d) != 0) continue;
      for (int delta : {-1, 1}) {
        if (base.shape[d] + delta < 0) continue;
        muts.push_back({"size " + std::to_string(d) + (delta > 0 ? " + 1" : " - 1"),
                        [=](TensorView& v, std::deque<HostTensor>& o) {
                          std::vector<int64_t> s = shape_of(v);
                          s[d] += delta;
                          v = alloc(o, v.dtype, s);
                        },
                        "", ErrorKind::value});
      }
    }

    for (const Mutation& m : muts) {
      // Strided last dim only means something where the last size is above 1.
      if (m.what == "strided last dim" && base.shape[base.rank - 1] <= 1) continue;
      if (m.what == "zero stride (overlap)" && base.shape[0] <= 1) continue;
      ++out.cases;
      auto inst = make();
      std::deque<HostTensor> owned;
      TensorView& v = inst.args.*(f.member);
      if (!v.defined() && f.optional) {  // give the optional argument first, then break it
        ADD_FAILURE() << function << ": the base call must give " << f.name;
        continue;
      }
      m.apply(v, owned);
      const std::vector<std::vector<std::byte>> before = inst.snapshot();
      const std::string where = std::string(function) + " " + f.name + ": " + m.what;
      try {
        call(inst.args);
        ADD_FAILURE() << where << ": accepted";
        ++out.failures;
        continue;
      } catch (const Error& e) {
        const std::string what = e.what();
        bool ok = e.function() == function;
        if (!m.argument.empty()) {
          ok = ok && e.argument() == m.argument && e.kind() == m.kind;
        }
        ok = ok && what.find("'" + e.argument() + "'") != std::string::npos;
        if (!ok) {
          ADD_FAILURE() << where << ": wrong error: " << what;
          ++out.failures;
        }
      } catch (const std::exception& e) {
        ADD_FAILURE() << where << ": threw a non-flashmla exception: " << e.what();
        ++out.failures;
        continue;
      }
      if (inst.snapshot() != before) {
        ADD_FAILURE() << where << ": a rejected call wrote an output";
        ++out.failures;
      }
    }
  }
  return out;
}

void report(const char* function, const Outcome& o) {
  std::cout << "bad-input matrix of " << function << ": " << o.cases << " cases, "
            << o.cases - o.failures << " passed\n";
  ::testing::Test::RecordProperty("cases", o.cases);
}

// ---- sparse decode ----

struct SparseDecodeInstance {
  testing::SparseDecodeData data;
  MlaDecodeArgs args;
  std::vector<std::vector<std::byte>> snapshot() const {
    return {bytes_of(data.out), bytes_of(data.lse)};
  }
};

TEST(BadInputMatrix, SparseDecode) {
  const testing::SparseDecodeCase cs{.batch = 2, .q_len = 2, .num_heads_q = 8, .kv_len = 64,
                                     .topk = 32, .page_block_size = 16, .topk_length = true,
                                     .extra = true, .extra_topk_length = true, .sink = true,
                                     .extra_topk = 16, .extra_page_block_size = 16};
  auto make = [&] {
    SparseDecodeInstance inst{testing::make_sparse_decode_data(cs), {}};
    inst.args = inst.data.args();
    return inst;
  };
  using A = MlaDecodeArgs;
  const std::vector<Field<A>> fields = {
      {"q", &A::q, {DType::bf16}},
      {"k_cache", &A::k_cache, {DType::uint8, DType::fp8_e4m3, DType::bf16}, false, false, {0, 1}},
      {"indices", &A::indices, {DType::int32}, true, false, {2}},  // topk: any >= 1
      {"topk_length", &A::topk_length, {DType::int32}, true},
      {"attn_sink", &A::attn_sink, {DType::fp32}, true},
      {"extra_k_cache", &A::extra_k_cache, {DType::uint8, DType::fp8_e4m3, DType::bf16}, true,
       false, {0, 1}},
      {"extra_indices_in_kvcache", &A::extra_indices_in_kvcache, {DType::int32}, true, false, {2}},
      {"extra_topk_length", &A::extra_topk_length, {DType::int32}, true},
      {"out", &A::out, {DType::bf16}, false, true},
      {"lse", &A::lse, {DType::fp32}, false, true, {}, true},
  };
  const Outcome o = run_matrix<A>("flash_mla_with_kvcache", "q", fields, make,
                                  [](const A& a) { flash_mla_with_kvcache(a); });
  report("flash_mla_with_kvcache (sparse mode)", o);
  EXPECT_GT(o.cases, 100);
  EXPECT_EQ(o.failures, 0);
}

// ---- sparse prefill ----

struct PrefillInstance {
  testing::SparsePrefillData data;
  SparsePrefillArgs args;
  std::vector<std::vector<std::byte>> snapshot() const {
    return {bytes_of(data.out), bytes_of(data.max_logits), bytes_of(data.lse)};
  }
};

TEST(BadInputMatrix, SparsePrefill) {
  const testing::SparsePrefillCase cs{.q_len = 3, .kv_len = 64, .num_heads_q = 8, .d_qk = 576,
                                      .topk = 32, .sink = true, .topk_length = true};
  auto make = [&] {
    PrefillInstance inst{testing::make_sparse_prefill_data(cs), {}};
    inst.args = inst.data.args();
    return inst;
  };
  using A = SparsePrefillArgs;
  const std::vector<Field<A>> fields = {
      {"q", &A::q, {DType::bf16}},
      {"kv", &A::kv, {DType::bf16}, false, false, {0}},
      {"indices", &A::indices, {DType::int32}, false, false, {2}},  // topk: any >= 1
      {"attn_sink", &A::attn_sink, {DType::fp32}, true},
      {"topk_length", &A::topk_length, {DType::int32}, true},
      {"out", &A::out, {DType::bf16}, false, true},
      {"max_logits", &A::max_logits, {DType::fp32}, false, true, {}, true},
      {"lse", &A::lse, {DType::fp32}, false, true, {}, true},
  };
  const Outcome o = run_matrix<A>("flash_mla_sparse_fwd", "q", fields, make,
                                  [](const A& a) { flash_mla_sparse_fwd(a); });
  report("flash_mla_sparse_fwd", o);
  EXPECT_GT(o.cases, 80);
  EXPECT_EQ(o.failures, 0);
}

// ---- dense decode ----

struct DenseDecodeInstance {
  testing::DenseDecodeData data;
  MlaDecodeArgs args;
  std::vector<std::vector<std::byte>> snapshot() const {
    return {bytes_of(data.out), bytes_of(data.lse)};
  }
};

TEST(BadInputMatrix, DenseDecode) {
  const testing::DenseDecodeCase cs{.batch = 2, .q_len = 2, .kv_len = 100, .num_heads_q = 8,
                                    .num_heads_kv = 2, .page_block_size = 32, .varlen = true,
                                    .causal = true, .seed = 3};
  auto make = [&] {
    DenseDecodeInstance inst{testing::make_dense_decode_data(cs), {}};
    inst.args = inst.data.args();
    return inst;
  };
  using A = MlaDecodeArgs;
  const std::vector<Field<A>> fields = {
      {"q", &A::q, {DType::bf16, DType::fp16}},
      // num_blocks, page size and (fewer) KV heads may differ; a 1-byte dtype is an FP8 cache
      // (another format, checked by its shape).
      {"k_cache", &A::k_cache, {DType::bf16, DType::fp16, DType::uint8, DType::fp8_e4m3}, false,
       false, {0, 1, 2}},
      {"block_table", &A::block_table, {DType::int32}, false, false, {1}},
      {"cache_seqlens", &A::cache_seqlens, {DType::int32}},
      {"out", &A::out, {DType::bf16, DType::fp16}, false, true},
      {"lse", &A::lse, {DType::fp32}, false, true, {}, true},
  };
  const Outcome o = run_matrix<A>("flash_mla_with_kvcache", "q", fields, make,
                                  [](const A& a) { flash_mla_with_kvcache(a); });
  report("flash_mla_with_kvcache (dense)", o);
  EXPECT_GT(o.cases, 60);
  EXPECT_EQ(o.failures, 0);
}

// ---- combine ----

struct CombineInstance {
  testing::CombineData data;
  MlaCombineArgs args;
  std::vector<std::vector<std::byte>> snapshot() const {
    return {bytes_of(data.out), bytes_of(data.lse)};
  }
};

TEST(BadInputMatrix, Combine) {
  const testing::CombineCase cs{.q_len = 2, .num_heads_q = 4, .head_dim_v = 64,
                                .pieces = {3, 1, 2}, .sink = true, .seed = 4};
  auto make = [&] {
    CombineInstance inst{testing::make_combine_data(cs), {}};
    inst.args = inst.data.args();
    return inst;
  };
  using A = MlaCombineArgs;
  const std::vector<Field<A>> fields = {
      {"lse_accum", &A::lse_accum, {DType::fp32}, false, false, {0}, true},  // slots: any
      {"o_accum", &A::o_accum, {DType::fp32}, false, false, {0}},
      {"num_splits", &A::num_splits, {DType::int32}},
      {"attn_sink", &A::attn_sink, {DType::fp32}, true},
      {"out", &A::out, {DType::bf16, DType::fp16, DType::fp32}, false, true},
      {"lse", &A::lse, {DType::fp32}, false, true, {}, true},
  };
  const Outcome o = run_matrix<A>("mla_combine", "o_accum", fields, make,
                                  [](const A& a) { mla_combine(a); });
  report("mla_combine", o);
  EXPECT_GT(o.cases, 60);
  EXPECT_EQ(o.failures, 0);
}

// ---- scheduler ----

struct MetadataInstance {
  HostTensor seqlens, meta, splits;
  MlaMetadataArgs args;
  std::vector<std::vector<std::byte>> snapshot() const {
    return {bytes_of(meta), bytes_of(splits)};
  }
};

TEST(BadInputMatrix, GetMlaMetadata) {
  auto make = [] {
    MetadataInstance inst{HostTensor::empty(DType::int32, {3}),
                          HostTensor::empty(DType::int32, {4, 8}),
                          HostTensor::empty(DType::int32, {4}), {}};
    inst.seqlens.i32({0}) = 100;
    inst.seqlens.i32({1}) = 0;
    inst.seqlens.i32({2}) = 300;
    inst.args = {.cache_seqlens = inst.seqlens.view(), .num_sm_parts = 4,
                 .tile_scheduler_metadata = inst.meta.view(), .num_splits = inst.splits.view()};
    return inst;
  };
  using A = MlaMetadataArgs;
  const std::vector<Field<A>> fields = {
      {"cache_seqlens", &A::cache_seqlens, {DType::int32}},
      {"tile_scheduler_metadata", &A::tile_scheduler_metadata, {DType::int32}, false, true},
      {"num_splits", &A::num_splits, {DType::int32}, false, true},
  };
  const Outcome o = run_matrix<A>("get_mla_metadata", "tile_scheduler_metadata", fields, make,
                                  [](const A& a) { get_mla_metadata(a); });
  report("get_mla_metadata", o);
  EXPECT_GT(o.cases, 30);
  EXPECT_EQ(o.failures, 0);
}

// ---- MHA forward and backward ----

struct MhaInstance {
  testing::MhaData data;
  MhaFwdArgs args;
  std::vector<std::vector<std::byte>> snapshot() const {
    return {bytes_of(data.out), bytes_of(data.lse_storage)};
  }
};

struct MhaBwdInstance {
  testing::MhaData data;
  MhaBwdArgs args;
  std::vector<std::vector<std::byte>> snapshot() const {
    return {bytes_of(data.dq), bytes_of(data.dk), bytes_of(data.dv)};
  }
};

const testing::MhaCase kMhaCase{.batch = 2, .q_len = 20, .kv_len = 30, .num_heads_q = 4,
                                .num_heads_kv = 2, .d_qk = 64, .d_v = 32, .varlen = true,
                                .causal = true, .seed = 5};

TEST(BadInputMatrix, MhaForward) {
  auto make = [] {
    MhaInstance inst{testing::make_mha_data(kMhaCase), {}};
    inst.args = inst.data.fwd_args();
    return inst;
  };
  using A = MhaFwdArgs;
  const std::vector<Field<A>> fields = {
      {"q", &A::q, {DType::bf16}},
      {"k", &A::k, {DType::bf16}, false, false, {1}},  // 1 KV head still divides 4
      {"v", &A::v, {DType::bf16}},
      {"cu_seqlens_qo", &A::cu_seqlens_qo, {DType::int32}},
      {"cu_seqlens_kv", &A::cu_seqlens_kv, {DType::int32}},
      {"out", &A::out, {DType::bf16}, false, true},
      {"lse", &A::lse, {DType::fp32}, false, true, {}, true},
  };
  const Outcome o = run_matrix<A>("flash_attn_varlen_fwd", nullptr, fields, make,
                                  [](const A& a) { flash_attn_varlen_fwd(a); });
  report("flash_attn_varlen_fwd", o);
  EXPECT_GT(o.cases, 60);
  EXPECT_EQ(o.failures, 0);
}

TEST(BadInputMatrix, MhaBackward) {
  auto make = [] {
    MhaBwdInstance inst{testing::make_mha_data(kMhaCase), {}};
    flash_attn_varlen_fwd(inst.data.fwd_args());
    inst.args = inst.data.bwd_args();
    return inst;
  };
  using A = MhaBwdArgs;
  const std::vector<Field<A>> fields = {
      {"dout", &A::dout, {DType::bf16}},
      {"dq", &A::dq, {DType::bf16}, false, true},
      {"dk", &A::dk, {DType::bf16}, false, true},
      {"dv", &A::dv, {DType::bf16}, false, true},
  };
  const Outcome o = run_matrix<A>("flash_attn_varlen_bwd", nullptr, fields, make,
                                  [](const A& a) { flash_attn_varlen_bwd(a); });
  report("flash_attn_varlen_bwd", o);
  EXPECT_GT(o.cases, 40);
  EXPECT_EQ(o.failures, 0);
}

// ---- FP8 quantize / dequantize ----

struct KvInstance {
  HostTensor k, cache;
  KvQuantizeArgs args;
  bool k_is_output = false;
  std::vector<std::vector<std::byte>> snapshot() const {
    return {bytes_of(k_is_output ? k : cache)};
  }
};

void kv_matrix(bool dequantize) {
  for (KvFormat format : {KvFormat::v32, KvFormat::model1}) {
    const KvFormatInfo info = kv_format_info(format);
    auto make = [&] {
      KvInstance inst{HostTensor::empty(DType::bf16, {3, 4, 1, info.d_qk}),
                      HostTensor::empty(DType::uint8, {3, 4, 1, info.bytes_per_token}), {},
                      dequantize};
      inst.k.fill(0.25f);
      inst.args = {.format = format, .k = inst.k.view(), .cache = inst.cache.view()};
      return inst;
    };
    using A = KvQuantizeArgs;
    const std::vector<Field<A>> fields = {
        {"k", &A::k, {DType::bf16}, false, dequantize},
        {"cache", &A::cache, {DType::uint8, DType::fp8_e4m3}, false, !dequantize},
    };
    const char* fn = dequantize ? "dequantize_kv_cache" : "quantize_kv_cache";
    const Outcome o = run_matrix<A>(fn, nullptr, fields, make, [&](const A& a) {
      dequantize ? dequantize_kv_cache(a) : quantize_kv_cache(a);
    });
    report((std::string(fn) + " " + kv_format_name(format)).c_str(), o);
    EXPECT_GT(o.cases, 25);
    EXPECT_EQ(o.failures, 0);
  }
}

TEST(BadInputMatrix, QuantizeKvCache) { kv_matrix(false); }
TEST(BadInputMatrix, DequantizeKvCache) { kv_matrix(true); }

}  // namespace
}  // namespace flashmla
