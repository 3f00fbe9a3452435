// Values that only the GPU reads. On the host the API checks every length, block id, index and
// schedule entry before a kernel runs; a CUDA tensor's values are out of the host's reach, so
// the kernels themselves must keep every read and write inside the tensors they are given,
// whatever those values are. Here the library's params are built from valid data, then the
// data the kernel will read is corrupted (lengths past the block table, block ids and slots
// outside the cache, nonsense schedule records and split counts) and the kernels run in the
// harness: they must not read or write out of bounds (huge offsets would fault here; ASan, in
// make sanitize, sees small ones), and requests whose own values are intact must still match
// the reference computed before the corruption.
#include <gtest/gtest.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/decode_prepare.h"
#include "core/schedule_arg.h"
#include "core/sparse_decode_prepare.h"
#include "core/sparse_prefill_prepare.h"
#include "cpu/decode/combine.h"
#include "cuda/decode/combine.h"
#include "cuda/decode/dense_decode.h"
#include "cuda/decode/sparse_decode.h"
#include "cuda/prefill/sparse_prefill.h"
#include "flashmla/flashmla.h"
#include "ref/ref.h"
#include "testing/combine_case.h"
#include "testing/compare.h"
#include "testing/decode_case.h"
#include "testing/expect_rows.h"
#include "testing/prefill_case.h"
#include "testing/sparse_decode_case.h"

namespace flashmla {
namespace {

using testing::HostTensor;

using testing::expect_rows_match;

// An explicit dense schedule of `parts` parts (so requests are split and combined).
struct DenseSchedule {
  std::vector<int32_t> meta, splits;
  void attach(MlaDecodeArgs& args, int64_t batch, int parts) {
    meta.assign(static_cast<size_t>(parts) * 8, 0);
    splits.assign(static_cast<size_t>(batch + 1), 0);
    args.tile_scheduler_metadata = TensorView::contiguous(meta.data(), DType::int32, {parts, 8});
    args.num_splits = TensorView::contiguous(splits.data(), DType::int32, {batch + 1});
    get_mla_metadata({.cache_seqlens = args.cache_seqlens, .num_sm_parts = parts,
                      .tile_scheduler_metadata = args.tile_scheduler_metadata,
                      .num_splits = args.num_splits});
  }
};

// A dense decode of `cs` with an explicit schedule of `parts` parts, prepared by the library
// (validated on the host) with its accumulators.
struct PreparedDense {
  testing::DenseDecodeData data;
  MlaDecodeArgs args;
  DenseSchedule schedule;
  core::ResolvedSchedule sched;
  core::DenseDecodeParams p;
  PreparedDense(const testing::DenseDecodeCase& cs, int parts)
      : data(testing::make_dense_decode_data(cs)), args(data.args()) {
    schedule.attach(args, cs.batch, parts);
    p = core::prepare_dense_decode(args, {}, sched);
    core::attach_accumulators(sched, p);
  }
};

// A sparse decode of `cs` with an explicit schedule of `parts` parts, prepared by the library
// (validated on the host) with its accumulators.
struct PreparedSparse {
  testing::SparseDecodeData data;
  MlaDecodeArgs args;
  testing::SparseDecodeSchedule schedule;
  core::PreparedSparseDecode prep;
  PreparedSparse(const testing::SparseDecodeCase& cs, int parts)
      : data(testing::make_sparse_decode_data(cs)), args(data.args()) {
    schedule.attach(data, parts, args);
    core::prepare_sparse_decode(args, Context{.num_threads = 1}, /*allocate=*/true, prep);
  }
};

// Nonsense for every field of every record and every split count.
void scramble_schedule(int32_t* records, int num_parts, int32_t* num_splits, int64_t batch) {
  const int32_t junk[] = {INT_MIN, -7, 1 << 30, INT_MAX, -1, 3};
  int n = 0;
  for (int i = 0; i < num_parts * 8; ++i) records[i] = junk[n++ % 6];
  for (int64_t i = 0; i <= batch; ++i) num_splits[i] = junk[n++ % 6];
}

// Every test runs the kernels of every generation (the portable, the Hopper and the Blackwell
// one; entry points without a Blackwell kernel run their portable one for it).
constexpr cuda::KernelGeneration kGenerations[] = {
    cuda::KernelGeneration::sm80, cuda::KernelGeneration::sm90, cuda::KernelGeneration::sm100};

TEST(CudaDeviceValues, DenseDecodeLengthsAndBlockIdsStayInTheirRequest) {
  const testing::DenseDecodeCase cs{.batch = 4, .q_len = 2, .kv_len = 400, .num_heads_q = 16,
                                    .num_heads_kv = 1, .page_block_size = 16, .causal = true,
                                    .seed = 41};
  PreparedDense d(cs, 3);
  ASSERT_GT(d.p.num_accum_slots, 0) << "the case no longer splits a request";

  HostTensor ref_out = HostTensor::empty(cs.dtype, {cs.batch, cs.q_len, cs.num_heads_q, 512});
  HostTensor ref_lse = HostTensor::empty(DType::fp32, {cs.batch, cs.num_heads_q, cs.q_len});
  MlaDecodeArgs ref_args = d.args;
  ref_args.out = ref_out.view();
  ref_args.lse = ref_lse.view();
  ref::dense_decode(ref_args);

  // Request 0: a length far past its block table row; request 1: block ids outside the cache.
  d.data.cache_seqlens.i32({0}) = INT_MAX;
  const int32_t bad_ids[] = {1 << 30, -7, INT_MIN, INT_MAX};
  for (int64_t j = 0; j < d.data.block_table.view().shape[1]; ++j) {
    d.data.block_table.i32({1, j}) = bad_ids[j % 4];
  }
  for (auto gen : kGenerations) {
    SCOPED_TRACE(cuda::generation_name(gen));
    // (sm90: tiles of request 1 copy nothing, so their mbarrier phases complete on arrival.)
    EXPECT_EQ(cuda::generation_name(cuda::run_dense_decode(d.p, nullptr, gen)),
              cuda::generation_name(gen));
    expect_rows_match(d.data.out.view(), ref_out.view(), d.data.lse.view(), ref_lse.view(), 2);
  }
}

TEST(CudaDeviceValues, DenseDecodeScheduleStaysInsideTheTensors) {
  const testing::DenseDecodeCase cs{.batch = 4, .q_len = 1, .kv_len = 400, .num_heads_q = 32,
                                    .num_heads_kv = 2, .seed = 42};
  PreparedDense d(cs, 3);
  ASSERT_GT(d.p.num_accum_slots, 0) << "the case no longer splits a request";
  scramble_schedule(d.schedule.meta.data(), d.p.num_parts, d.schedule.splits.data(), cs.batch);
  for (auto gen : kGenerations) {
    EXPECT_NO_THROW(cuda::run_dense_decode(d.p, nullptr, gen)) << cuda::generation_name(gen);
  }
}

TEST(CudaDeviceValues, SparseDecodeLengthsAndSlotsStayInTheirRequest) {
  const testing::SparseDecodeCase cs{.batch = 4, .num_heads_q = 16, .kv_len = 200, .topk = 96,
                                     .page_block_size = 32, .topk_length = true, .seed = 43};
  PreparedSparse d(cs, 3);

  HostTensor ref_out = HostTensor::empty(DType::bf16, {cs.batch, 1, cs.num_heads_q, 512});
  HostTensor ref_lse = HostTensor::empty(DType::fp32, {cs.batch, cs.num_heads_q, 1});
  MlaDecodeArgs ref_args = d.args;
  ref_args.out = ref_out.view();
  ref_args.lse = ref_lse.view();
  ref::sparse_decode(ref_args);

  // Request 0: a length past its index list; request 1: slots past the cache.
  d.data.topk_length.i32({0}) = INT_MAX;
  const int32_t bad_slots[] = {1 << 30, INT_MAX, 1 << 20};
  for (int64_t j = 0; j < cs.topk; ++j) d.data.indices.i32({1, 0, j}) = bad_slots[j % 3];
  for (auto gen : kGenerations) {
    SCOPED_TRACE(cuda::generation_name(gen));
    cuda::run_sparse_decode(d.prep.params, nullptr, gen);
    expect_rows_match(d.data.out.view(), ref_out.view(), d.data.lse_view(), ref_lse.view(), 2);
  }
}

TEST(CudaDeviceValues, SparseDecodeScheduleStaysInsideTheTensors) {
  const testing::SparseDecodeCase cs{.batch = 1, .num_heads_q = 16, .kv_len = 600, .topk = 512,
                                     .page_block_size = 64, .seed = 44};
  PreparedSparse d(cs, 4);
  ASSERT_GT(d.prep.params.num_accum_slots, 0) << "the case no longer splits a request";
  scramble_schedule(d.schedule.meta.data(), d.prep.params.num_parts, d.schedule.splits.data(),
                    cs.batch);
  for (auto gen : kGenerations) {
    EXPECT_NO_THROW(cuda::run_sparse_decode(d.prep.params, nullptr, gen))
        << cuda::generation_name(gen);
  }
}

TEST(CudaDeviceValues, SparsePrefillLengthsStayInTheirToken) {
  const testing::SparsePrefillCase cs{.q_len = 6, .kv_len = 300, .num_heads_q = 16, .topk = 64,
                                      .topk_length = true, .seed = 45};
  testing::SparsePrefillData data = testing::make_sparse_prefill_data(cs);
  const SparsePrefillArgs args = data.args();
  const core::SparsePrefillParams p = core::prepare_sparse_prefill(args, Context{});
  HostTensor ref_out = HostTensor::empty(DType::bf16, {cs.q_len, cs.num_heads_q, 512});
  HostTensor ref_max = HostTensor::empty(DType::fp32, {cs.q_len, cs.num_heads_q});
  HostTensor ref_lse = HostTensor::empty(DType::fp32, {cs.q_len, cs.num_heads_q});
  SparsePrefillArgs ref_args = args;
  ref_args.out = ref_out.view();
  ref_args.max_logits = ref_max.view();
  ref_args.lse = ref_lse.view();
  ref::sparse_prefill(ref_args);

  data.topk_length.i32({0}) = INT_MAX;  // past the index list
  data.topk_length.i32({1}) = INT_MIN;
  for (auto gen : kGenerations) {
    SCOPED_TRACE(cuda::generation_name(gen));
    cuda::run_sparse_prefill(p, nullptr, gen);
    expect_rows_match(data.out.view(), ref_out.view(), data.lse.view(), ref_lse.view(), 2);
  }
}

TEST(CudaDeviceValues, CombineSplitCountsStayInsideTheAccumulators) {
  const testing::CombineCase cs{.q_len = 1, .num_heads_q = 8, .head_dim_v = 64,
                                .pieces = {3, 2, 4, 2}, .seed = 46};
  testing::CombineData data = testing::make_combine_data(cs);
  HostTensor ref_out = data.out, ref_lse = data.lse;  // NaN copies for the reference
  MlaCombineArgs ref_args = data.args();
  ref_args.out = ref_out.view();
  ref_args.lse = ref_lse.view();
  ref::combine(ref_args);

  const core::CombineParams p = testing::combine_params_of(data);
  // Request 0 ends past the slots, request 1 starts past them (and ends before it starts).
  data.num_splits.i32({1}) = INT_MAX;
  cuda::run_combine(p, nullptr);
  expect_rows_match(data.out.view(), ref_out.view(), data.lse.view(), ref_lse.view(), 2);
  for (int64_t h = 0; h < cs.num_heads_q; ++h) {  // the two requests are left as they were
    EXPECT_TRUE(std::isnan(data.lse.view().ptr<float>()[h * data.lse.view().strides[1]]));
  }
}

}  // namespace
}  // namespace flashmla
