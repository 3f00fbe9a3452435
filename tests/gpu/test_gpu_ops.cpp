// Every MLA operation of the public API on CUDA tensors of a real device, against src/ref: the
// suite a first GPU run starts with (docs/cuda-kernels.md, "First run on a GPU"). It needs no
// PyTorch: the tests' own case generators make the data on the host (NaN in every cache slot a
// kernel must not read, permuted block tables), each tensor is copied to the device, the call
// runs there on a stream of its own, and everything comes back for the comparison — the inputs
// too, which must come back unchanged.
//
// Built twice from this source: test_gpu_ops on the GPU (gpu_device_cuda.cpp; every test skips
// where no GPU answers) and test_gpu_ops_harness on the CPU harness (gpu_device_harness.cpp),
// which runs in every `make test`, so the suite itself is checked before a GPU ever runs it. On
// a GPU the shapes are DeepSeek's (128 heads, 4096-token caches, topk 2048); in the harness, small
// ones of the same kinds. The attention tests run twice: with the kernels the library picks for
// the device (Hopper's on compute capability 9.0) and with the portable ones.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "flashmla/flashmla.h"
#include "flashmla/kv_format.h"
#include "gpu/gpu_device.h"
#include "gpu/mirror.h"
#include "testing/combine_case.h"
#include "testing/decode_case.h"
#include "testing/host_tensor.h"
#include "testing/prefill_case.h"
#include "testing/sparse_decode_case.h"

namespace flashmla {
namespace {

namespace dev = gpu_testing;
using gpu_testing::Mirror;
using gpu_testing::span_bytes;
using testing::HostTensor;

using dev::sized;

Context context() { return {.num_threads = 1, .cuda_stream = dev::stream()}; }

bool device_ready(std::string* why) {
  static std::string reason;
  static const bool ready = [] {
    const bool ok = dev::open_device(&reason);
    if (ok) std::printf("test_gpu_ops: device %s\n", dev::device_description().c_str());
    return ok;
  }();
  if (!ready) *why = reason;
  return ready;
}

class GpuOps : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!device_ready(&why)) GTEST_SKIP() << "no device: " << why;
    dev::select_kernels(dev::Kernels::picked);
  }
};

class GpuKernels : public ::testing::TestWithParam<dev::Kernels> {
 protected:
  void SetUp() override {
    std::string why;
    if (!device_ready(&why)) GTEST_SKIP() << "no device: " << why;
    dev::select_kernels(GetParam());
  }
  void TearDown() override { dev::select_kernels(dev::Kernels::picked); }
};
INSTANTIATE_TEST_SUITE_P(Kernels, GpuKernels,
                         ::testing::Values(dev::Kernels::picked, dev::Kernels::portable),
                         [](const ::testing::TestParamInfo<dev::Kernels>& info) {
                           return dev::kernels_name(info.param);
                         });

void expect_ok(const std::vector<testing::CompareResult>& results) {
  for (const auto& r : results) EXPECT_TRUE(r.ok) << r.message;
}

int device_parts(const MlaDecodeArgs& a) {
  return mla_num_sm_parts({.batch = a.q.size(0), .q_len = a.q.size(1),
                           .num_heads_q = a.q.size(2), .num_heads_kv = a.k_cache.size(2)},
                          context(), Device::cuda);
}

// The Mirror itself: a view inside an uploaded buffer shares its device copy; a view that only
// partly overlaps one is refused (two copies of the same bytes would lose the aliasing), as is a
// negative stride.
TEST_F(GpuOps, MirrorKeepsAliasing) {
  std::vector<float> host(64, 1.0f);
  Mirror m;
  const TensorView all = m(TensorView::contiguous(host.data(), DType::fp32, {64}));
  const TensorView tail = m(TensorView::contiguous(host.data() + 48, DType::fp32, {16}));
  EXPECT_EQ(static_cast<float*>(tail.data), static_cast<float*>(all.data) + 48);
  EXPECT_EQ(tail.device, Device::cuda);
  std::vector<float> other(64, 2.0f);
  (void)m(TensorView::contiguous(other.data() + 8, DType::fp32, {8}));
  EXPECT_THROW((void)m(TensorView::contiguous(other.data(), DType::fp32, {12})),
               std::logic_error);
  EXPECT_THROW((void)m(TensorView::strided(other.data() + 40, DType::fp32, {4}, {-1})),
               std::logic_error);
  EXPECT_EQ(m.copy_back(), "");
}

// get_mla_metadata on the device, dense and sparse, is the host's schedule bit for bit.
TEST_F(GpuOps, SchedulesEqualTheHosts) {
  const testing::DenseDecodeCase dc{.batch = sized(128, 9), .q_len = 1, .kv_len = sized(4096, 300),
                                    .num_heads_q = 128, .varlen = true, .zero_lengths = true,
                                    .seed = 1};
  testing::DenseDecodeData d = testing::make_dense_decode_data(dc);
  const MlaDecodeArgs a = d.args();
  const int parts = device_parts(a);
  const int64_t b = dc.batch;
  HostTensor meta = HostTensor::empty(DType::int32, {parts, 8});
  HostTensor splits = HostTensor::empty(DType::int32, {b + 1});
  HostTensor host_meta = HostTensor::empty(DType::int32, {parts, 8});
  HostTensor host_splits = HostTensor::empty(DType::int32, {b + 1});
  {
    Mirror m;
    get_mla_metadata({.cache_seqlens = m(a.cache_seqlens), .num_sm_parts = parts,
                      .tile_scheduler_metadata = m(meta.view(), true),
                      .num_splits = m(splits.view(), true)},
                     context());
    EXPECT_EQ(m.copy_back(), "");
  }
  get_mla_metadata({.cache_seqlens = a.cache_seqlens, .num_sm_parts = parts,
                    .tile_scheduler_metadata = host_meta.view(), .num_splits = host_splits.view()});
  EXPECT_EQ(0, std::memcmp(meta.view().data, host_meta.view().data, parts * 8 * 4));
  EXPECT_EQ(0, std::memcmp(splits.view().data, host_splits.view().data, (b + 1) * 4));

  const testing::SparseDecodeCase sc{.batch = sized(64, 6), .num_heads_q = 128,
                                     .topk = sized(2048, 256), .topk_length = true,
                                     .extra = true, .extra_topk_length = true,
                                     .extra_topk = sized(512, 64), .seed = 2};
  testing::SparseDecodeData s = testing::make_sparse_decode_data(sc);
  HostTensor smeta = HostTensor::empty(DType::int32, {parts, 8});
  HostTensor ssplits = HostTensor::empty(DType::int32, {sc.batch + 1});
  HostTensor host_ssplits = HostTensor::empty(DType::int32, {sc.batch + 1});
  const MlaMetadataArgs sm{.batch = sc.batch, .topk = sc.topk,
                           .topk_length = s.topk_length.view(), .extra_topk = sc.extra_topk,
                           .extra_topk_length = s.extra_topk_length.view(),
                           .num_sm_parts = parts, .tile_scheduler_metadata = host_meta.view(),
                           .num_splits = host_ssplits.view()};
  get_mla_metadata(sm);
  {
    Mirror m;
    MlaMetadataArgs dm = sm;
    dm.topk_length = m(sm.topk_length);
    dm.extra_topk_length = m(sm.extra_topk_length);
    dm.tile_scheduler_metadata = m(smeta.view(), true);
    dm.num_splits = m(ssplits.view(), true);
    get_mla_metadata(dm, context());
    EXPECT_EQ(m.copy_back(), "");
  }
  EXPECT_EQ(0, std::memcmp(smeta.view().data, host_meta.view().data, parts * 8 * 4));
  EXPECT_EQ(0, std::memcmp(ssplits.view().data, host_ssplits.view().data, (sc.batch + 1) * 4));
}

// Dense decode: the schedule made on the device by the call, then given (from get_mla_metadata
// on the device) — the same numbers both ways.
TEST_P(GpuKernels, DenseDecode) {
  const testing::DenseDecodeCase cases[] = {
      // DeepSeek-V3 decode: 128 heads of one KV head, page 64.
      {.batch = sized(8, 2), .q_len = 1, .kv_len = sized(4096, 200), .num_heads_q = 128,
       .varlen = true, .seed = 11},
      // MTP: two causal query tokens, fp16, a TP8 rank's 16 heads.
      {.batch = sized(16, 2), .q_len = 2, .kv_len = sized(2048, 150), .num_heads_q = 16,
       .causal = true, .dtype = DType::fp16, .seed = 12},
      // GQA, odd pages, empty requests, padded q and block table.
      {.batch = sized(6, 3), .q_len = 3, .kv_len = sized(1000, 100), .num_heads_q = 64,
       .num_heads_kv = 2, .page_block_size = 17, .varlen = true, .causal = true,
       .zero_lengths = true, .non_contiguous = true, .seed = 13},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name());
    testing::DenseDecodeData d = testing::make_dense_decode_data(c);
    MlaDecodeArgs a = d.args();
    {
      Mirror m;
      flash_mla_with_kvcache(m(a), context());
      EXPECT_EQ(m.copy_back(), "");
    }
    expect_ok(testing::compare_dense_decode_with_reference(a));
    const std::vector<uint8_t> first(static_cast<uint8_t*>(a.out.data),
                                     static_cast<uint8_t*>(a.out.data) + span_bytes(a.out));

    const int parts = device_parts(a);
    HostTensor meta = HostTensor::empty(DType::int32, {parts, 8});
    HostTensor splits = HostTensor::empty(DType::int32, {c.batch + 1});
    d.out.fill(std::numeric_limits<float>::quiet_NaN());
    d.lse.fill(std::numeric_limits<float>::quiet_NaN());
    {
      Mirror m;
      MlaDecodeArgs da = m(a);
      da.tile_scheduler_metadata = m(meta.view(), true);
      da.num_splits = m(splits.view(), true);
      get_mla_metadata({.cache_seqlens = da.cache_seqlens, .num_sm_parts = parts,
                        .tile_scheduler_metadata = da.tile_scheduler_metadata,
                        .num_splits = da.num_splits},
                       context());
      flash_mla_with_kvcache(da, context());
      EXPECT_EQ(m.copy_back(), "");
    }
    expect_ok(testing::compare_dense_decode_with_reference(a));
    EXPECT_EQ(0, std::memcmp(first.data(), a.out.data, first.size()))
        << "the same call with the same schedule gave other bits";
  }
}

// Dense decode over the FP8 V32 cache (the sparse kernel over every visible token).
TEST_P(GpuKernels, DenseDecodeOverFp8V32Cache) {
  const testing::DenseDecodeCase c{.batch = sized(8, 2), .q_len = 2, .kv_len = sized(4096, 200),
                                   .num_heads_q = sized(128, 16), .page_block_size = 64,
                                   .varlen = true, .causal = true, .seed = 21};
  testing::DenseDecodeData d = testing::make_dense_decode_data(c);
  const int64_t nb = d.k_cache.size(0);
  HostTensor fp8 = HostTensor::empty(DType::uint8, {nb, 64, 1, 656});
  quantize_kv_cache({.format = KvFormat::v32, .k = d.k_cache.view(), .cache = fp8.view()});
  MlaDecodeArgs a = d.args();
  a.k_cache = fp8.view();
  {
    Mirror m;
    flash_mla_with_kvcache(m(a), context());
    EXPECT_EQ(m.copy_back(), "");
  }
  expect_ok(testing::compare_dense_decode_with_reference(a));
}

// Sparse FP8 decode: DeepSeek-V3.2's V32 cache with an extra pool, lengths and the sink; MODEL1.
TEST_P(GpuKernels, SparseDecode) {
  const testing::SparseDecodeCase cases[] = {
      {.batch = sized(8, 2), .q_len = 2, .num_heads_q = sized(128, 16), .d_qk = 576,
       .kv_len = sized(8192, 400), .topk = sized(2048, 128), .topk_length = true, .extra = true,
       .extra_topk_length = true, .sink = true, .extra_topk = sized(256, 32), .seed = 31},
      {.batch = sized(4, 2), .q_len = 1, .num_heads_q = sized(64, 20), .d_qk = 512,
       .kv_len = sized(4096, 300), .topk = sized(512, 96), .page_block_size = 7,
       .all_invalid = true, .varlen = true, .non_contiguous = true, .seed = 32},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name());
    testing::SparseDecodeData d = testing::make_sparse_decode_data(c);
    const MlaDecodeArgs a = d.args();
    {
      Mirror m;
      flash_mla_with_kvcache(m(a), context());
      EXPECT_EQ(m.copy_back(), "");
    }
    expect_ok(testing::compare_sparse_decode_with_reference(a));
  }
}

TEST_P(GpuKernels, SparsePrefill) {
  const testing::SparsePrefillCase cases[] = {
      {.q_len = sized(64, 4), .kv_len = sized(8192, 300), .num_heads_q = sized(128, 16),
       .d_qk = 576, .topk = sized(2048, 100), .sink = true, .topk_length = true, .seed = 41},
      {.q_len = sized(32, 3), .kv_len = sized(4096, 90), .num_heads_q = 64, .d_qk = 512,
       .topk = sized(512, 64), .all_invalid_rows = true, .non_contiguous = true, .seed = 42},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name());
    testing::SparsePrefillData d = testing::make_sparse_prefill_data(c);
    const SparsePrefillArgs a = d.args();
    {
      Mirror m;
      flash_mla_sparse_fwd(m(a), context());
      EXPECT_EQ(m.copy_back(), "");
    }
    expect_ok(testing::compare_sparse_prefill_with_reference(a));
  }
}

// Decode steps as serving engines run them, captured into a CUDA graph and launched twice: a
// dense call that computes its own schedule (stream-ordered allocations inside the capture), and
// get_mla_metadata on the device followed by a sparse call that is given that schedule. (The
// harness has no graphs: it runs the steps twice.) The steps run once before the capture.
TEST_P(GpuKernels, DecodeStepsAsACudaGraph) {
  const testing::DenseDecodeCase dc{.batch = sized(16, 2), .q_len = 1,
                                    .kv_len = sized(4096, 200), .num_heads_q = sized(128, 16),
                                    .varlen = true, .seed = 61};
  const testing::SparseDecodeCase sc{.batch = sized(16, 2), .q_len = 2,
                                     .num_heads_q = sized(128, 16), .kv_len = sized(8192, 300),
                                     .topk = sized(2048, 128), .topk_length = true, .sink = true,
                                     .seed = 62};
  testing::DenseDecodeData d = testing::make_dense_decode_data(dc);
  testing::SparseDecodeData s = testing::make_sparse_decode_data(sc);
  const MlaDecodeArgs dense = d.args(), sparse = s.args();
  const int parts = device_parts(sparse);
  HostTensor meta = HostTensor::empty(DType::int32, {parts, 8});
  HostTensor splits = HostTensor::empty(DType::int32, {sc.batch + 1});
  {
    Mirror m;
    struct Steps {
      MlaDecodeArgs dense, sparse;
      MlaMetadataArgs schedule;
    } steps{m(dense), m(sparse), {}};
    steps.sparse.tile_scheduler_metadata = m(meta.view(), true);
    steps.sparse.num_splits = m(splits.view(), true);
    steps.schedule = {.batch = sc.batch, .topk = sc.topk,
                      .topk_length = steps.sparse.topk_length, .num_sm_parts = parts,
                      .tile_scheduler_metadata = steps.sparse.tile_scheduler_metadata,
                      .num_splits = steps.sparse.num_splits};
    const auto queue = [](void* p) {
      const auto& st = *static_cast<const Steps*>(p);
      flash_mla_with_kvcache(st.dense, context());
      get_mla_metadata(st.schedule, context());
      flash_mla_with_kvcache(st.sparse, context());
    };
    // Warm-up outside the capture, as serving engines do (kernel modules load, the allocator's
    // pool exists); then the outputs are NaN again, so only the graph's launches can fill them.
    queue(&steps);
    m.upload_again();
    dev::run_as_graph(queue, &steps, 2);
    EXPECT_EQ(m.copy_back(), "");
  }
  expect_ok(testing::compare_dense_decode_with_reference(dense));
  expect_ok(testing::compare_sparse_decode_with_reference(sparse));
}

TEST_F(GpuOps, Combine) {
  const testing::CombineCase c{.q_len = 2, .num_heads_q = sized(128, 8), .head_dim_v = 512,
                               .pieces = {1, 3, 0, 5, 2}, .sink = true, .seed = 51};
  testing::CombineData d = testing::make_combine_data(c);
  {
    Mirror m;
    mla_combine(m(d.args()), context());
    EXPECT_EQ(m.copy_back(), "");
  }
  expect_ok(testing::compare_combine_with_reference(d));
}

}  // namespace
}  // namespace flashmla
