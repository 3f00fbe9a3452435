// Bad-input table of mla_combine (machinery and rules: tests/testing/bad_input.h).
#include "testing/bad_input.h"

namespace flashmla {
namespace {

using namespace testing::bad_input;

// ==========================================================================================
// mla_combine
// ==========================================================================================

const CombineCase kCombineCase{.q_len = 2, .num_heads_q = 8, .head_dim_v = 512,
                               .pieces = {2, 1, 3}, .sink = true, .out_dtype = DType::bf16};

const CombineData& base_combine_data() {
  static const CombineData data = testing::make_combine_data(kCombineCase);
  return data;
}

struct CombineFixture {
  CombineData d = base_combine_data();
  MlaCombineArgs args;
  Context ctx{};
  Buffers buf;
  const int64_t b = 3, s_q = 2, h_q = 8, d_v = 512, slots = 6;

  CombineFixture() {
    args = d.args();
    buf.outputs = {&d.out, &d.lse};
  }
  int32_t& split(int64_t i) { return d.num_splits.i32({i}); }
};

struct CombineBadCase {
  std::string name;
  std::function<void(CombineFixture&)> mutate;
  Expected want;
};

void PrintTo(const CombineBadCase& c, std::ostream* os) { *os << c.name; }

using C = CombineFixture;

std::vector<CombineBadCase> combine_cases() {
  std::vector<CombineBadCase> c;
  auto add = [&c](std::string name, std::function<void(C&)> m, Expected e) {
    c.push_back({std::move(name), std::move(m), std::move(e)});
  };
  add("valid_call", [](C&) {}, kAccept);
  add("valid_without_sink", [](C& f) { f.args.attn_sink = {}; }, kAccept);
  add("valid_with_empty_request", [](C& f) { f.split(2) = f.split(1); }, kAccept);  // 0 pieces
  add("valid_out_fp32", [](C& f) {
    f.args.out = f.buf.alloc_output(DType::fp32, {3, 2, 8, 512}).view();
  }, kAccept);

  add("ctx_num_threads_negative", [](C& f) { f.ctx.num_threads = -1; },
      value("ctx.num_threads"));

  // ---- o_accum ----
  add("o_accum_dtype_bf16", [](C& f) {
    f.args.o_accum = f.buf.alloc(DType::bf16, {6, 2, 8, 512}).view();
  }, type("o_accum"));
  add("o_accum_dtype_int32", [](C& f) { f.args.o_accum = with_dtype(f.args.o_accum, DType::int32); },
      type("o_accum"));
  add("o_accum_rank3", [](C& f) { f.args.o_accum = reshape(f.args.o_accum, {6, 2, 8 * 512}); },
      value("o_accum"));
  add("o_accum_rank5", [](C& f) { f.args.o_accum = reshape(f.args.o_accum, {1, 6, 2, 8, 512}); },
      value("o_accum"));
  add("o_accum_null", [](C& f) { f.args.o_accum = null_data(f.args.o_accum); }, value("o_accum"));
  add("o_accum_cuda", [](C& f) { f.args.o_accum = on_cuda(f.args.o_accum); },
      cuda_lead("o_accum", "lse_accum"));
  add("o_accum_last_dim_strided", [](C& f) {
    TensorView big = f.buf.alloc(DType::fp32, {6, 2, 8, 1024}).view();
    f.args.o_accum = TensorView::strided(big.data, DType::fp32, {6, 2, 8, 512},
                                         {2 * 8 * 1024, 8 * 1024, 1024, 2});
  }, value("o_accum"));
  add("o_accum_q_len_zero", [](C& f) { f.args.o_accum.shape[1] = 0; }, value("o_accum"));
  add("o_accum_heads_zero", [](C& f) { f.args.o_accum.shape[2] = 0; }, value("o_accum"));
  add("o_accum_d_v_zero", [](C& f) { f.args.o_accum.shape[3] = 0; }, value("o_accum"));
  add("o_accum_negative_slots", [](C& f) { f.args.o_accum.shape[0] = -1; }, value("o_accum"));
  // o_accum fixes slots, q_len, heads and d_v: a wrong one is reported on the tensor that
  // disagrees.
  add("o_accum_dim0_more_slots", [](C& f) {
    f.args.o_accum = f.buf.alloc(DType::fp32, {7, 2, 8, 512}).view();
  }, value("lse_accum"));
  add("o_accum_dim3_d_v_256", [](C& f) {
    f.args.o_accum = reshape(f.args.o_accum, {6, 2, 8, 256});
  }, value("out"));

  // ---- lse_accum ----
  add("lse_accum_dtype_bf16", [](C& f) {
    f.args.lse_accum = f.buf.alloc(DType::bf16, {6, 2, 8}).view();
  }, type("lse_accum"));
  add("lse_accum_rank2", [](C& f) { f.args.lse_accum = reshape(f.args.lse_accum, {6, 16}); },
      value("lse_accum"));
  add("lse_accum_dim0_fewer_slots", [](C& f) { f.args.lse_accum.shape[0] = 5; },
      value("lse_accum"));
  add("lse_accum_dim0_more_slots", [](C& f) {
    f.args.lse_accum = f.buf.alloc(DType::fp32, {7, 2, 8}).view();
  }, value("lse_accum"));
  add("lse_accum_dim1_q_len_3", [](C& f) {
    f.args.lse_accum = f.buf.alloc(DType::fp32, {6, 3, 8}).view();
  }, value("lse_accum"));
  add("lse_accum_dim2_heads_4", [](C& f) { f.args.lse_accum.shape[2] = 4; }, value("lse_accum"));
  add("lse_accum_heads_before_tokens", [](C& f) {
    f.args.lse_accum = reshape(f.args.lse_accum, {6, 8, 2});
  }, value("lse_accum"));
  add("lse_accum_null", [](C& f) { f.args.lse_accum = null_data(f.args.lse_accum); },
      value("lse_accum"));
  add("lse_accum_cuda", [](C& f) { f.args.lse_accum = on_cuda(f.args.lse_accum); },
      value("lse_accum"));

  // ---- num_splits ----
  add("num_splits_dtype_fp32", [](C& f) {
    f.args.num_splits = with_dtype(f.args.num_splits, DType::fp32);
  }, type("num_splits"));
  add("num_splits_rank2", [](C& f) { f.args.num_splits = reshape(f.args.num_splits, {4, 1}); },
      value("num_splits"));
  add("num_splits_rank0", [](C& f) { f.args.num_splits = reshape(f.args.num_splits, {}); },
      value("num_splits"));
  add("num_splits_batch_zero", [](C& f) { f.args.num_splits.shape[0] = 1; },
      value("num_splits"));
  add("num_splits_empty", [](C& f) { f.args.num_splits.shape[0] = 0; }, value("num_splits"));
  add("num_splits_null", [](C& f) { f.args.num_splits = null_data(f.args.num_splits); },
      value("num_splits"));
  add("num_splits_cuda", [](C& f) { f.args.num_splits = on_cuda(f.args.num_splits); },
      value("num_splits"));
  add("num_splits_strided", [](C& f) {
    std::vector<int32_t> v;
    for (int64_t i = 0; i < 4; ++i) v.insert(v.end(), {f.split(i), f.split(i)});
    TensorView t = f.buf.alloc_i32({8}, v).view();
    f.args.num_splits = TensorView::strided(t.data, DType::int32, {4}, {2});
  }, value("num_splits"));
  add("num_splits_not_starting_at_0", [](C& f) { f.split(0) = 1; }, value("num_splits"));
  add("num_splits_starting_negative", [](C& f) { f.split(0) = -1; }, value("num_splits"));
  add("num_splits_decreasing", [](C& f) { f.split(2) = 1; }, value("num_splits"));
  add("num_splits_negative_entry", [](C& f) { f.split(1) = -1; }, value("num_splits"));
  add("num_splits_beyond_slots", [](C& f) { f.split(3) = 7; }, value("num_splits"));
  add("num_splits_int_max", [](C& f) { f.split(3) = kI32Max; }, value("num_splits"));
  add("num_splits_middle_beyond_slots", [](C& f) {
    f.split(2) = 9;
    f.split(3) = 9;
  }, value("num_splits"));
  // One entry too many: the batch becomes 4 and out disagrees.
  add("num_splits_batch_plus_1", [](C& f) {
    f.args.num_splits = f.buf.alloc_i32({5}, {0, 2, 3, 6, 6}).view();
  }, value("out"));

  // ---- attn_sink ----
  add("attn_sink_heads_plus_1", [](C& f) {
    f.args.attn_sink = f.buf.alloc(DType::fp32, {9}).view();
  }, value("attn_sink"));
  add("attn_sink_heads_minus_1", [](C& f) { f.args.attn_sink.shape[0] = 7; }, value("attn_sink"));
  add("attn_sink_dtype_bf16", [](C& f) {
    f.args.attn_sink = with_dtype(f.args.attn_sink, DType::bf16);
  }, type("attn_sink"));
  add("attn_sink_rank2", [](C& f) { f.args.attn_sink = reshape(f.args.attn_sink, {1, 8}); },
      value("attn_sink"));
  add("attn_sink_rank0", [](C& f) { f.args.attn_sink = reshape(f.args.attn_sink, {}); },
      value("attn_sink"));
  add("attn_sink_strided", [](C& f) {
    TensorView t = f.buf.alloc(DType::fp32, {16}).view();
    f.args.attn_sink = TensorView::strided(t.data, DType::fp32, {8}, {2});
  }, value("attn_sink"));
  add("attn_sink_cuda", [](C& f) { f.args.attn_sink = on_cuda(f.args.attn_sink); },
      value("attn_sink"));

  // ---- out ----
  add("out_dtype_int32", [](C& f) {
    f.args.out = f.buf.alloc_output(DType::int32, {3, 2, 8, 512}).view();
  }, type("out"));
  add("out_dtype_fp8", [](C& f) { f.args.out = with_dtype(f.args.out, DType::fp8_e4m3); },
      type("out"));
  add("out_dtype_uint8", [](C& f) { f.args.out = with_dtype(f.args.out, DType::uint8); },
      type("out"));
  add("out_rank3", [](C& f) { f.args.out = reshape(f.args.out, {3, 2, 8 * 512}); }, value("out"));
  add("out_dim0_batch_4", [](C& f) {
    f.args.out = f.buf.alloc_output(DType::bf16, {4, 2, 8, 512}).view();
  }, value("out"));
  add("out_dim0_batch_2", [](C& f) { f.args.out.shape[0] = 2; }, value("out"));
  add("out_dim1_q_len_3", [](C& f) {
    f.args.out = f.buf.alloc_output(DType::bf16, {3, 3, 8, 512}).view();
  }, value("out"));
  add("out_dim2_heads_16", [](C& f) {
    f.args.out = f.buf.alloc_output(DType::bf16, {3, 2, 16, 512}).view();
  }, value("out"));
  add("out_dim3_d_v_576", [](C& f) {
    f.args.out = f.buf.alloc_output(DType::bf16, {3, 2, 8, 576}).view();
  }, value("out"));
  add("out_null", [](C& f) { f.args.out = null_data(f.args.out); }, value("out"));
  add("out_cuda", [](C& f) { f.args.out = on_cuda(f.args.out); }, value("out"));
  add("out_last_dim_strided", [](C& f) {
    TensorView big = f.buf.alloc_output(DType::bf16, {3, 2, 8, 1024}).view();
    f.args.out = TensorView::strided(big.data, DType::bf16, {3, 2, 8, 512},
                                     {2 * 8 * 1024, 8 * 1024, 1024, 2});
  }, value("out"));
  add("out_zero_stride_heads", [](C& f) {
    f.args.out = restride(f.args.out, {2 * 8 * 512, 8 * 512, 0, 1});
  }, value("out"));
  add("out_overlapping_tokens", [](C& f) {
    f.args.out = restride(f.args.out, {2 * 8 * 512, 512, 512, 1});
  }, value("out"));

  // ---- lse ----
  add("lse_dtype_bf16", [](C& f) {
    f.args.lse = f.buf.alloc_output(DType::bf16, {3, 8, 2}).view();
  }, type("lse"));
  add("lse_rank2", [](C& f) { f.args.lse = reshape(f.args.lse, {3, 16}); }, value("lse"));
  add("lse_tokens_before_heads", [](C& f) { f.args.lse = reshape(f.args.lse, {3, 2, 8}); },
      value("lse"));
  add("lse_dim0_batch_4", [](C& f) {
    f.args.lse = f.buf.alloc_output(DType::fp32, {4, 8, 2}).view();
  }, value("lse"));
  add("lse_null", [](C& f) { f.args.lse = null_data(f.args.lse); }, value("lse"));
  add("lse_cuda", [](C& f) { f.args.lse = on_cuda(f.args.lse); }, value("lse"));
  add("lse_zero_stride", [](C& f) { f.args.lse = restride(f.args.lse, {16, 0, 1}); },
      value("lse"));
  return c;
}

class CombineBadInput : public ::testing::TestWithParam<CombineBadCase> {};

TEST_P(CombineBadInput, RejectedBeforeAnyWork) {
  const CombineBadCase& c = GetParam();
  CombineFixture f;
  c.mutate(f);
  if (::testing::Test::HasFatalFailure()) return;
  f.buf.snapshot();
  if (c.want.argument.empty()) {
    EXPECT_NO_THROW(mla_combine(f.args, f.ctx));
    return;
  }
  if (!expect_error([&] { mla_combine(f.args, f.ctx); }, "mla_combine", c.want)) return;
  f.buf.expect_untouched();
  EXPECT_TRUE(all_nan(f.d.out)) << "out was written";
  EXPECT_TRUE(all_nan(f.d.lse)) << "lse was written";
}

std::string combine_case_name(const ::testing::TestParamInfo<CombineBadCase>& info) {
  return info.param.name;
}

INSTANTIATE_TEST_SUITE_P(Table, CombineBadInput, ::testing::ValuesIn(combine_cases()),
                         combine_case_name);


TEST(BadInputTables, CombineCaseCount) {
  report_case_count("mla_combine", combine_cases());
  EXPECT_GT(combine_cases().size(), 40u);
}

}  // namespace
}  // namespace flashmla
