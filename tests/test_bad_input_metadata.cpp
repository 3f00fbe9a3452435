// Bad-input table of get_mla_metadata and mla_num_sm_parts (machinery and rules: tests/testing/bad_input.h).
#include "testing/bad_input.h"

namespace flashmla {
namespace {

using namespace testing::bad_input;

// ==========================================================================================
// get_mla_metadata
// ==========================================================================================

struct MetadataFixture {
  Buffers buf;
  HostTensor& seqlens = buf.alloc_i32({3}, {100, 0, 300});
  HostTensor& meta = buf.alloc_output(DType::int32, {kParts, 8});
  HostTensor& splits = buf.alloc_output(DType::int32, {4});
  MlaMetadataArgs args;

  MetadataFixture() {
    for (int64_t p = 0; p < kParts; ++p)
      for (int64_t k = 0; k < 8; ++k) meta.i32({p, k}) = kSentinel;
    for (int64_t i = 0; i < 4; ++i) splits.i32({i}) = kSentinel;
    args = {.cache_seqlens = seqlens.view(), .num_sm_parts = kParts,
            .tile_scheduler_metadata = meta.view(), .num_splits = splits.view()};
  }
};

struct MetadataBadCase {
  std::string name;
  std::function<void(MetadataFixture&)> mutate;
  Expected want;
};

void PrintTo(const MetadataBadCase& c, std::ostream* os) { *os << c.name; }

using M = MetadataFixture;

std::vector<MetadataBadCase> metadata_cases() {
  std::vector<MetadataBadCase> c;
  auto add = [&c](std::string name, std::function<void(M&)> m, Expected e) {
    c.push_back({std::move(name), std::move(m), std::move(e)});
  };
  add("valid_call", [](M&) {}, kAccept);
  add("valid_all_lengths_zero", [](M& f) {
    f.args.cache_seqlens = f.buf.alloc_i32({3}, {0, 0, 0}).view();
  }, kAccept);
  add("valid_one_part", [](M& f) {
    f.args.num_sm_parts = 1;
    f.args.tile_scheduler_metadata.shape[0] = 1;
  }, kAccept);

  // ---- cache_seqlens ----
  add("cache_seqlens_dtype_fp32", [](M& f) {
    f.args.cache_seqlens = with_dtype(f.args.cache_seqlens, DType::fp32);
  }, type("cache_seqlens"));
  add("cache_seqlens_rank2", [](M& f) {
    f.args.cache_seqlens = reshape(f.args.cache_seqlens, {3, 1});
  }, value("cache_seqlens"));
  add("cache_seqlens_rank0", [](M& f) {
    f.args.cache_seqlens = reshape(f.args.cache_seqlens, {});
  }, value("cache_seqlens"));
  add("cache_seqlens_null", [](M& f) { f.args.cache_seqlens = null_data(f.args.cache_seqlens); },
      value("cache_seqlens"));
  add("cache_seqlens_cuda", [](M& f) { f.args.cache_seqlens = on_cuda(f.args.cache_seqlens); },
      value("cache_seqlens"));
  add("cache_seqlens_strided", [](M& f) {
    TensorView t = f.buf.alloc_i32({6}, {100, 100, 0, 0, 300, 300}).view();
    f.args.cache_seqlens = TensorView::strided(t.data, DType::int32, {3}, {2});
  }, value("cache_seqlens"));
  add("batch_zero", [](M& f) {
    f.args.cache_seqlens.shape[0] = 0;
    f.args.num_splits.shape[0] = 1;
  }, value("cache_seqlens"));
  add("cache_seqlens_negative", [](M& f) { f.seqlens.i32({1}) = -1; }, value("cache_seqlens"));
  add("cache_seqlens_int_min", [](M& f) { f.seqlens.i32({2}) = kI32Min; },
      value("cache_seqlens"));

  // ---- sparse mode (topk > 0): the batch is args.batch ----
  add("sparse_batch_accepted", [](M& f) {
    f.args.topk = 64;
    f.args.batch = f.args.num_splits.shape[0] - 1;
  }, kAccept);
  // Found by fuzz/fuzz_scheduler: a huge batch escaped as std::length_error from an allocation
  // sized by it; the batch must be checked (and num_splits must hold it) first.
  add("sparse_batch_2_pow_62", [](M& f) {
    f.args.topk = 64;
    f.args.batch = int64_t{1} << 62;
  }, value("batch"));
  add("sparse_batch_int64_max", [](M& f) {
    f.args.topk = 64;
    f.args.batch = INT64_MAX;
  }, value("batch"));
  add("sparse_batch_beyond_num_splits", [](M& f) {
    f.args.topk = 64;
    f.args.batch = int64_t{1} << 30;
  }, value("num_splits"));

  // ---- num_sm_parts ----
  add("num_sm_parts_zero", [](M& f) {
    f.args.num_sm_parts = 0;
    f.args.tile_scheduler_metadata.shape[0] = 0;
  }, value("num_sm_parts"));
  add("num_sm_parts_negative", [](M& f) { f.args.num_sm_parts = -1; }, value("num_sm_parts"));
  // Probe: flash_mla_with_kvcache rejects schedules of more than 2^20 parts, so producing one
  // should be rejected too.
  add("num_sm_parts_above_2pow20", [](M& f) {
    const int parts = (1 << 20) + 1;
    f.args.num_sm_parts = parts;
    f.args.tile_scheduler_metadata = f.buf.alloc_output(DType::int32, {parts, 8}).view();
  }, value("num_sm_parts"));

  // ---- tile_scheduler_metadata ----
  add("metadata_dim0_parts_plus_1", [](M& f) {
    f.args.tile_scheduler_metadata = f.buf.alloc_output(DType::int32, {kParts + 1, 8}).view();
  }, value("tile_scheduler_metadata"));
  add("metadata_dim0_parts_minus_1", [](M& f) { f.args.tile_scheduler_metadata.shape[0] -= 1; },
      value("tile_scheduler_metadata"));
  add("metadata_dim1_7", [](M& f) {
    f.args.tile_scheduler_metadata = reshape(f.args.tile_scheduler_metadata, {kParts, 7});
  }, value("tile_scheduler_metadata"));
  add("metadata_rank1", [](M& f) {
    f.args.tile_scheduler_metadata = reshape(f.args.tile_scheduler_metadata, {kParts * 8});
  }, value("tile_scheduler_metadata"));
  add("metadata_dtype_fp32", [](M& f) {
    f.args.tile_scheduler_metadata = with_dtype(f.args.tile_scheduler_metadata, DType::fp32);
  }, type("tile_scheduler_metadata"));
  add("metadata_null", [](M& f) {
    f.args.tile_scheduler_metadata = null_data(f.args.tile_scheduler_metadata);
  }, value("tile_scheduler_metadata"));
  add("metadata_cuda", [](M& f) {
    f.args.tile_scheduler_metadata = on_cuda(f.args.tile_scheduler_metadata);
  }, cuda_lead("tile_scheduler_metadata", "cache_seqlens"));
  add("metadata_non_contiguous", [](M& f) {
    TensorView t = f.buf.alloc_output(DType::int32, {kParts, 16}).view();
    f.args.tile_scheduler_metadata = TensorView::strided(t.data, DType::int32, {kParts, 8}, {16, 1});
  }, value("tile_scheduler_metadata"));
  add("metadata_zero_row_stride", [](M& f) {
    f.args.tile_scheduler_metadata = restride(f.args.tile_scheduler_metadata, {0, 1});
  }, value("tile_scheduler_metadata"));

  // ---- num_splits ----
  add("num_splits_dim0_batch", [](M& f) { f.args.num_splits.shape[0] = 3; },
      value("num_splits"));
  add("num_splits_dim0_batch_plus_2", [](M& f) {
    f.args.num_splits = f.buf.alloc_output(DType::int32, {5}).view();
  }, value("num_splits"));
  add("num_splits_rank2", [](M& f) { f.args.num_splits = reshape(f.args.num_splits, {4, 1}); },
      value("num_splits"));
  add("num_splits_dtype_fp32", [](M& f) {
    f.args.num_splits = with_dtype(f.args.num_splits, DType::fp32);
  }, type("num_splits"));
  add("num_splits_null", [](M& f) { f.args.num_splits = null_data(f.args.num_splits); },
      value("num_splits"));
  add("num_splits_cuda", [](M& f) { f.args.num_splits = on_cuda(f.args.num_splits); },
      value("num_splits"));
  add("num_splits_strided", [](M& f) {
    TensorView t = f.buf.alloc_output(DType::int32, {8}).view();
    f.args.num_splits = TensorView::strided(t.data, DType::int32, {4}, {2});
  }, value("num_splits"));
  return c;
}

class MetadataBadInput : public ::testing::TestWithParam<MetadataBadCase> {};

TEST_P(MetadataBadInput, RejectedBeforeAnyWork) {
  const MetadataBadCase& c = GetParam();
  MetadataFixture f;
  c.mutate(f);
  f.buf.snapshot();
  if (c.want.argument.empty()) {
    EXPECT_NO_THROW(get_mla_metadata(f.args));
    return;
  }
  if (!expect_error([&] { get_mla_metadata(f.args); }, "get_mla_metadata", c.want)) return;
  f.buf.expect_untouched();
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(f.splits.i32({i}), kSentinel) << "num_splits written";
}

std::string metadata_case_name(const ::testing::TestParamInfo<MetadataBadCase>& info) {
  return info.param.name;
}

INSTANTIATE_TEST_SUITE_P(Table, MetadataBadInput, ::testing::ValuesIn(metadata_cases()),
                         metadata_case_name);

// ==========================================================================================
// mla_num_sm_parts
// ==========================================================================================

struct NumSmPartsBadCase {
  std::string name;
  MlaDecodeShape shape;
  Context ctx;
  Expected want;
};

void PrintTo(const NumSmPartsBadCase& c, std::ostream* os) { *os << c.name; }

std::vector<NumSmPartsBadCase> num_sm_parts_cases() {
  const MlaDecodeShape ok{.batch = 3, .q_len = 2, .num_heads_q = 8, .num_heads_kv = 2};
  auto with = [ok](auto&& edit) {
    MlaDecodeShape s = ok;
    edit(s);
    return s;
  };
  return {
      {"valid_call", ok, {}, kAccept},
      {"valid_explicit_threads", ok, {.num_threads = 3}, kAccept},
      {"batch_zero", with([](auto& s) { s.batch = 0; }), {}, value("shape.batch")},
      {"batch_negative", with([](auto& s) { s.batch = -1; }), {}, value("shape.batch")},
      {"ctx_num_threads_negative", ok, {.num_threads = -1}, value("ctx.num_threads")},
      // Probes: the other shape fields are not looked at.
      {"q_len_zero", with([](auto& s) { s.q_len = 0; }), {}, value("shape.q_len")},
      {"num_heads_q_zero", with([](auto& s) { s.num_heads_q = 0; }), {},
       value("shape.num_heads_q")},
      {"num_heads_kv_zero", with([](auto& s) { s.num_heads_kv = 0; }), {},
       value("shape.num_heads_kv")},
      {"num_heads_kv_not_dividing_num_heads_q", with([](auto& s) { s.num_heads_kv = 3; }), {},
       value("shape.num_heads_kv")},
      // Probe: 2^21 parts is more than flash_mla_with_kvcache accepts in a schedule (2^20).
      {"ctx_num_threads_absurd", ok, {.num_threads = 1 << 21}, value("ctx.num_threads")},
  };
}

class NumSmPartsBadInput : public ::testing::TestWithParam<NumSmPartsBadCase> {};

TEST_P(NumSmPartsBadInput, Rejected) {
  const NumSmPartsBadCase& c = GetParam();
  if (c.want.argument.empty()) {
    int parts = 0;
    EXPECT_NO_THROW(parts = mla_num_sm_parts(c.shape, c.ctx));
    EXPECT_GE(parts, 1);
    if (c.ctx.num_threads > 0) {
      EXPECT_EQ(parts, c.ctx.num_threads);
    }
    return;
  }
  expect_error([&] { (void)mla_num_sm_parts(c.shape, c.ctx); }, "mla_num_sm_parts", c.want);
}

std::string num_sm_parts_case_name(const ::testing::TestParamInfo<NumSmPartsBadCase>& info) {
  return info.param.name;
}

INSTANTIATE_TEST_SUITE_P(Table, NumSmPartsBadInput, ::testing::ValuesIn(num_sm_parts_cases()),
                         num_sm_parts_case_name);



TEST(BadInputTables, MetadataCaseCount) {
  report_case_count("get_mla_metadata", metadata_cases());
  report_case_count("mla_num_sm_parts", num_sm_parts_cases());
  EXPECT_GT(metadata_cases().size() + num_sm_parts_cases().size(), 20u);
}

}  // namespace
}  // namespace flashmla
