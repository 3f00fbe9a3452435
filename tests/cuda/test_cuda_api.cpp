// The public API's CUDA path (CUDA tensors in include/flashmla/flashmla.h) run end to end on the
// CPU harness: the harness build of the backend table (src/cuda/backend.cu) is installed in place
// of the GPU one, and host buffers tagged Device::cuda stand in for device memory. Each call must
// match the reference exactly as the CPU path does; the recording table around the harness one
// checks what the host did: the device scheduler runs only when no schedule is given, can_run
// launches and allocates nothing, every stream-ordered allocation is released on the call's
// stream, and the call's stream reaches every entry point. The tests of the attention kernels
// (dense decode, also over FP8; sparse decode; sparse prefill) run once per kernel generation:
// the portable one the harness table picks, and the Hopper (wgmma) one a CC 9.0 GPU gets.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <tuple>
#include <map>
#include <string>
#include <vector>

#include "core/cuda_backend.h"
#include "core/scheduler.h"
#include "cuda/backend.h"
#include "cuda/common/generation.h"
#include "cuda/decode/dense_decode.h"
#include "cuda/decode/sparse_decode.h"
#include "cuda/prefill/sparse_prefill.h"
#include "flashmla/flashmla.h"
#include "flashmla/kv_format.h"
#include "ref/ref.h"
#include "testing/combine_case.h"
#include "testing/compare.h"
#include "testing/decode_case.h"
#include "testing/expect_rows.h"
#include "testing/host_tensor.h"
#include "testing/prefill_case.h"
#include "testing/sparse_decode_case.h"
#include "testing/test_size.h"

namespace flashmla {
namespace {

using testing::HostTensor;

// ---- a recording backend around the harness one ----

struct Record {
  std::map<std::string, int> calls;  // entry point -> calls
  int64_t live_allocations = 0;
  bool foreign_stream = false;  // some entry point got another stream than kStream
};
Record g_rec;
cuda::KernelGeneration g_gen = cuda::KernelGeneration::sm80;  // of the attention kernels
void* const kStream = reinterpret_cast<void*>(uintptr_t{0x5157});

const core::CudaBackend& harness() { return cuda::harness::backend(); }

void seen(const char* what, void* stream) {
  ++g_rec.calls[what];
  if (stream != kStream) g_rec.foreign_stream = true;
}

const core::CudaBackend kRecording{
    .name = "recording harness",
    .sm_count = [](void* s) { seen("sm_count", s); return harness().sm_count(s); },
    .allocate = [](size_t bytes, void* s) {
      seen("allocate", s);
      ++g_rec.live_allocations;
      return harness().allocate(bytes, s);
    },
    .release = [](void* p, void* s) {
      seen("release", s);
      --g_rec.live_allocations;
      harness().release(p, s);
    },
    .get_mla_metadata = [](const int32_t* lens, int64_t b, int bs, int f, int parts,
                           core::SchedRecord* r, int32_t* splits, void* s) {
      seen("get_mla_metadata", s);
      harness().get_mla_metadata(lens, b, bs, f, parts, r, splits, s);
    },
    .get_mla_metadata_sparse = [](int64_t b, int64_t topk, const int32_t* len, int64_t etopk,
                                  const int32_t* elen, int bs, int f, int parts,
                                  core::SchedRecord* r, int32_t* splits, void* s) {
      seen("get_mla_metadata_sparse", s);
      harness().get_mla_metadata_sparse(b, topk, len, etopk, elen, bs, f, parts, r, splits, s);
    },
    .dense_decode = [](const core::DenseDecodeParams& p, void* s) {
      seen("dense_decode", s);
      cuda::harness::run_dense_decode(p, s, g_gen);
    },
    .dense_token_slots = [](const int32_t* table, int64_t table_stride, int64_t max_blocks,
                            const int32_t* lens, int64_t page, int64_t num_blocks, int64_t b,
                            int64_t s_q, bool causal, int32_t* indices, void* s) {
      seen("dense_token_slots", s);
      harness().dense_token_slots(table, table_stride, max_blocks, lens, page, num_blocks, b,
                                  s_q, causal, indices, s);
    },
    .sparse_decode = [](const core::SparseDecodeParams& p, void* s) {
      seen("sparse_decode", s);
      cuda::harness::run_sparse_decode(p, s, g_gen);
    },
    .sparse_prefill = [](const core::SparsePrefillParams& p, void* s) {
      seen("sparse_prefill", s);
      cuda::harness::run_sparse_prefill(p, s, g_gen);
    },
    .combine = [](const core::CombineParams& p, void* s) {
      seen("combine", s);
      harness().combine(p, s);
    },
};

const Context kCtx{.num_threads = 1, .cuda_stream = kStream};

class CudaApi : public ::testing::Test {
 protected:
  void SetUp() override {
    previous_ = core::set_cuda_backend(&kRecording);
    g_rec = {};
    g_gen = cuda::KernelGeneration::sm80;
  }
  void TearDown() override {
    core::set_cuda_backend(previous_);
    EXPECT_EQ(g_rec.live_allocations, 0) << "device buffers left allocated";
    EXPECT_FALSE(g_rec.foreign_stream) << "an entry point ran on another stream than ctx's";
  }
  int calls(const char* what) const { return g_rec.calls.count(what) ? g_rec.calls.at(what) : 0; }

 private:
  const core::CudaBackend* previous_ = nullptr;
};

// The tests of the attention kernels, once per generation.
class CudaApiKernels : public CudaApi,
                      public ::testing::WithParamInterface<cuda::KernelGeneration> {
 protected:
  void SetUp() override {
    CudaApi::SetUp();
    g_gen = GetParam();
  }
};
INSTANTIATE_TEST_SUITE_P(Generations, CudaApiKernels,
                         ::testing::Values(cuda::KernelGeneration::sm80,
                                           cuda::KernelGeneration::sm90),
                         [](const ::testing::TestParamInfo<cuda::KernelGeneration>& info) {
                           return std::string(cuda::generation_name(info.param));
                         });

TensorView dev(TensorView v) {
  v.device = Device::cuda;
  return v;
}

// The same call with every tensor tagged as a CUDA tensor.
MlaDecodeArgs dev(MlaDecodeArgs a) {
  for (TensorView* t : {&a.q, &a.k_cache, &a.block_table, &a.cache_seqlens,
                        &a.tile_scheduler_metadata, &a.num_splits, &a.out, &a.lse, &a.indices,
                        &a.topk_length, &a.attn_sink, &a.extra_k_cache,
                        &a.extra_indices_in_kvcache, &a.extra_topk_length}) {
    *t = dev(*t);
  }
  return a;
}

SparsePrefillArgs dev(SparsePrefillArgs a) {
  for (TensorView* t : {&a.q, &a.kv, &a.indices, &a.attn_sink, &a.topk_length, &a.out,
                        &a.max_logits, &a.lse}) {
    *t = dev(*t);
  }
  return a;
}

MlaCombineArgs dev(MlaCombineArgs a) {
  for (TensorView* t : {&a.lse_accum, &a.o_accum, &a.num_splits, &a.attn_sink, &a.out, &a.lse}) {
    *t = dev(*t);
  }
  return a;
}

// out and lse of a dense call (CPU views of the memory the CUDA call wrote) against the
// reference, with the dense decode tolerances.
void expect_dense_matches_reference(const MlaDecodeArgs& args) {
  for (const auto& r : testing::compare_dense_decode_with_reference(args)) {
    EXPECT_TRUE(r.ok) << r.message;
  }
}

// Whether the host's schedule of `parts` parts for these token counts splits some request (so
// the call's combine step runs; the device scheduler's schedule is the same, bit for bit).
bool splits_a_request(const std::vector<int32_t>& n_tok, int parts) {
  std::vector<core::SchedRecord> records(parts);
  std::vector<int32_t> splits(n_tok.size() + 1);
  core::schedule_split_kv(n_tok, kSchedulerBlockSize, kSchedulerFixedOverhead, parts,
                          records.data(), splits.data());
  return splits.back() > static_cast<int32_t>(n_tok.size());
}

int cuda_parts(int64_t batch, int64_t q_len, int64_t h_q, int64_t h_kv) {
  return mla_num_sm_parts({.batch = batch, .q_len = q_len, .num_heads_q = h_q,
                           .num_heads_kv = h_kv},
                          kCtx, Device::cuda);
}

// flash_mla_with_kvcache on args' memory as CUDA tensors, recording from a clean slate; can_run
// first, which must accept the call without reaching the backend.
void decode_on_device(const MlaDecodeArgs& args) {
  g_rec = {};
  EXPECT_EQ(flash_mla_with_kvcache_can_run(dev(args), kCtx), std::nullopt);
  EXPECT_TRUE(g_rec.calls.empty()) << "can_run reached the backend";
  flash_mla_with_kvcache(dev(args), kCtx);
}

// Each splits a request over the harness's 8 parts, so the combine step runs too.
const testing::DenseDecodeCase kDenseCases[] = {
    {.batch = 3, .q_len = 1, .kv_len = 300, .num_heads_q = 16, .num_heads_kv = 1,
     .page_block_size = 17, .varlen = true, .zero_lengths = true, .seed = 1},
    {.batch = 2, .q_len = 2, .kv_len = 400, .num_heads_q = 32, .num_heads_kv = 2,
     .causal = true, .non_contiguous = true, .dtype = DType::fp16, .seed = 2},
    {.batch = 5, .q_len = 1, .kv_len = 300, .num_heads_q = 64, .num_heads_kv = 1, .varlen = true,
     .seed = 3},
};

TEST_P(CudaApiKernels, DenseDecodeSchedulesOnTheDevice) {
  for (const auto& c : kDenseCases) {
    SCOPED_TRACE(c.name());
    testing::DenseDecodeData d = testing::make_dense_decode_data(c);
    EXPECT_TRUE(splits_a_request(
        d.seqlens, cuda_parts(c.batch, c.q_len, c.num_heads_q, c.num_heads_kv)))
        << "the case no longer tests the combine step";
    const MlaDecodeArgs args = d.args();
    decode_on_device(args);
    EXPECT_EQ(calls("get_mla_metadata"), 1);
    EXPECT_EQ(calls("dense_decode"), 1);
    EXPECT_EQ(calls("allocate"), 4);  // records, num_splits, lse_accum, o_accum
    expect_dense_matches_reference(args);
  }
}

TEST_P(CudaApiKernels, DenseDecodeWithDeviceMetadata) {
  const testing::DenseDecodeCase c{.batch = 2, .q_len = 1, .kv_len = 300, .num_heads_q = 16,
                                   .num_heads_kv = 1, .page_block_size = 64, .seed = 10};
  testing::DenseDecodeData d = testing::make_dense_decode_data(c);
  MlaDecodeArgs args = d.args();
  const int parts = mla_num_sm_parts(
      {.batch = c.batch, .q_len = c.q_len, .num_heads_q = c.num_heads_q,
       .num_heads_kv = c.num_heads_kv},
      kCtx, Device::cuda);
  EXPECT_EQ(parts, harness().sm_count(nullptr));  // 16 rows of one KV head: one part per SM
  std::vector<int32_t> meta(parts * 8, -7), splits(c.batch + 1, -7);
  std::vector<int32_t> cpu_meta(parts * 8), cpu_splits(c.batch + 1);
  MlaMetadataArgs m{.cache_seqlens = dev(args.cache_seqlens), .num_sm_parts = parts,
                    .tile_scheduler_metadata =
                        dev(TensorView::contiguous(meta.data(), DType::int32, {parts, 8})),
                    .num_splits = dev(TensorView::contiguous(splits.data(), DType::int32,
                                                             {c.batch + 1}))};
  get_mla_metadata(m, kCtx);
  EXPECT_EQ(calls("get_mla_metadata"), 1);
  get_mla_metadata({.cache_seqlens = args.cache_seqlens, .num_sm_parts = parts,
                    .tile_scheduler_metadata =
                        TensorView::contiguous(cpu_meta.data(), DType::int32, {parts, 8}),
                    .num_splits = TensorView::contiguous(cpu_splits.data(), DType::int32,
                                                         {c.batch + 1})});
  EXPECT_EQ(meta, cpu_meta);
  EXPECT_EQ(splits, cpu_splits);
  EXPECT_GT(splits[c.batch], c.batch) << "the case no longer splits a request";

  args.tile_scheduler_metadata = TensorView::contiguous(meta.data(), DType::int32, {parts, 8});
  args.num_splits = TensorView::contiguous(splits.data(), DType::int32, {c.batch + 1});
  g_rec = {};
  flash_mla_with_kvcache(dev(args), kCtx);
  EXPECT_EQ(calls("get_mla_metadata"), 0) << "a given schedule was recomputed";
  EXPECT_EQ(calls("allocate"), 2);  // lse_accum, o_accum
  expect_dense_matches_reference(args);
}

// Dense decode over an FP8 V32 cache (beyond FlashMLA), which the GPU runs on the sparse kernel
// over index lists of every visible token: the cache of a generated case (NaN in every unused
// slot) quantised with padding between blocks, against the reference reading the same bytes;
// zero-length requests, causal q_len > 1 with odd pages; the schedule from the device scheduler
// and then given (dense get_mla_metadata on the device), which the sparse kernel must take as
// it is.
TEST_P(CudaApiKernels, DenseDecodeOverFp8V32Cache) {
  uint64_t seed = 30;
  for (auto [hq, sq, page, causal] : std::vector<std::tuple<int64_t, int64_t, int64_t, bool>>{
           {16, 1, 64, false}, {8, 4, 7, true}, {32, 2, 16, true}}) {
    // (Shorter under the sanitizers, where this test was most of the harness suites' time.)
    const testing::DenseDecodeCase c{.batch = 3, .q_len = sq, .kv_len = testing::sized(600, 384),
                                     .num_heads_q = hq,
                                     .num_heads_kv = 1, .page_block_size = page,
                                     .varlen = true, .causal = causal,
                                     .zero_lengths = seed % 2 == 1, .seed = seed};
    ++seed;
    SCOPED_TRACE(c.name());
    testing::DenseDecodeData d = testing::make_dense_decode_data(c);
    const int64_t nb = d.k_cache.size(0), block_bytes = (page + 1) * 656;
    std::vector<uint8_t> bytes(nb * block_bytes, 0xff);
    const TensorView fp8 = TensorView::strided(bytes.data(), DType::uint8, {nb, page, 1, 656},
                                               {block_bytes, 656, 656, 1});
    quantize_kv_cache({.format = KvFormat::v32, .k = d.k_cache.view(), .cache = fp8});
    MlaDecodeArgs args = d.args();
    args.k_cache = fp8;
    const int parts = cuda_parts(c.batch, c.q_len, c.num_heads_q, 1);
    EXPECT_TRUE(splits_a_request(d.seqlens, parts)) << "the case no longer tests the combine";

    decode_on_device(args);
    EXPECT_EQ(calls("dense_token_slots"), 1);
    EXPECT_EQ(calls("sparse_decode"), 1);
    EXPECT_EQ(calls("dense_decode"), 0);
    expect_dense_matches_reference(args);

    std::vector<int32_t> meta(parts * 8), splits(c.batch + 1);
    args.tile_scheduler_metadata = TensorView::contiguous(meta.data(), DType::int32, {parts, 8});
    args.num_splits = TensorView::contiguous(splits.data(), DType::int32, {c.batch + 1});
    get_mla_metadata({.cache_seqlens = dev(args.cache_seqlens), .num_sm_parts = parts,
                      .tile_scheduler_metadata = dev(args.tile_scheduler_metadata),
                      .num_splits = dev(args.num_splits)},
                     kCtx);
    d.out.fill(std::numeric_limits<float>::quiet_NaN());
    d.lse.fill(std::numeric_limits<float>::quiet_NaN());
    decode_on_device(args);
    EXPECT_EQ(calls("get_mla_metadata"), 0);
    expect_dense_matches_reference(args);
  }
}

// The FP8 path's index lists come from device values the host never reads: a length far past
// the block table row (request 0), block ids outside the cache (request 1) and a negative
// length (request 2) stay inside the tensors, and request 3 still matches the reference.
TEST_P(CudaApiKernels, DenseDecodeOverFp8V32CacheWithCorruptDeviceValues) {
  const testing::DenseDecodeCase c{.batch = 4, .q_len = 2, .kv_len = 200, .num_heads_q = 16,
                                   .num_heads_kv = 1, .page_block_size = 16, .causal = true,
                                   .seed = 44};
  testing::DenseDecodeData d = testing::make_dense_decode_data(c);
  const int64_t nb = d.k_cache.size(0);
  std::vector<uint8_t> bytes(nb * 16 * 656);
  const TensorView fp8 = TensorView::contiguous(bytes.data(), DType::uint8, {nb, 16, 1, 656});
  quantize_kv_cache({.format = KvFormat::v32, .k = d.k_cache.view(), .cache = fp8});
  MlaDecodeArgs args = d.args();
  args.k_cache = fp8;
  HostTensor ref_out = HostTensor::empty(DType::bf16, {c.batch, c.q_len, c.num_heads_q, 512});
  HostTensor ref_lse = HostTensor::empty(DType::fp32, {c.batch, c.num_heads_q, c.q_len});
  MlaDecodeArgs ref_args = args;
  ref_args.out = ref_out.view();
  ref_args.lse = ref_lse.view();
  ref::dense_decode(ref_args);

  d.cache_seqlens.i32({0}) = INT32_MAX;
  const int32_t bad_ids[] = {1 << 30, -7, INT32_MIN, INT32_MAX};
  for (int64_t j = 0; j < d.block_table.view().shape[1]; ++j) {
    d.block_table.i32({1, j}) = bad_ids[j % 4];
  }
  d.cache_seqlens.i32({2}) = -5;
  flash_mla_with_kvcache(dev(args), kCtx);
  EXPECT_EQ(calls("dense_token_slots"), 1);
  testing::expect_rows_match(args.out, ref_out.view(), args.lse, ref_lse.view(), 3);
}

TEST_P(CudaApiKernels, SparseDecodeSchedulesOnTheDevice) {
  const testing::SparseDecodeCase cases[] = {
      {.batch = 3, .q_len = 1, .num_heads_q = 16, .d_qk = 576, .kv_len = 600, .topk = 512,
       .page_block_size = 7, .topk_length = true, .extra = true, .extra_topk_length = true,
       .sink = true, .extra_topk = 64, .seed = 4},
      {.batch = 2, .q_len = 2, .num_heads_q = 20, .d_qk = 512, .kv_len = 400, .topk = 384,
       .varlen = true, .non_contiguous = true, .seed = 5},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name());
    testing::SparseDecodeData d = testing::make_sparse_decode_data(c);
    const auto lengths = [](const HostTensor& t) {
      return t.view().defined() ? t.view().ptr<const int32_t>() : nullptr;
    };
    EXPECT_TRUE(splits_a_request(
        core::sparse_token_counts(c.batch, c.topk, lengths(d.topk_length),
                                  c.extra ? c.extra_topk : 0, lengths(d.extra_topk_length)),
        cuda_parts(c.batch, c.q_len, c.num_heads_q, 1)))
        << "the case no longer tests the combine step";
    const MlaDecodeArgs args = d.args();
    decode_on_device(args);
    EXPECT_EQ(calls("get_mla_metadata_sparse"), 1);
    EXPECT_EQ(calls("sparse_decode"), 1);
    for (const auto& r : testing::compare_sparse_decode_with_reference(args)) {
      EXPECT_TRUE(r.ok) << r.message;
    }
  }
}

TEST_F(CudaApi, SparseMetadataOnTheDeviceEqualsTheHosts) {
  const testing::SparseDecodeCase c{.batch = 6, .num_heads_q = 16, .topk = 256,
                                    .topk_length = true, .extra = true,
                                    .extra_topk_length = true, .extra_topk = 64, .seed = 6};
  testing::SparseDecodeData d = testing::make_sparse_decode_data(c);
  const int parts = 5;
  std::vector<int32_t> meta(parts * 8, -7), splits(c.batch + 1, -7);
  std::vector<int32_t> cpu_meta(parts * 8), cpu_splits(c.batch + 1);
  MlaMetadataArgs m{.batch = c.batch, .topk = c.topk, .topk_length = d.topk_length.view(),
                    .extra_topk = c.extra_topk, .extra_topk_length = d.extra_topk_length.view(),
                    .num_sm_parts = parts,
                    .tile_scheduler_metadata =
                        TensorView::contiguous(cpu_meta.data(), DType::int32, {parts, 8}),
                    .num_splits = TensorView::contiguous(cpu_splits.data(), DType::int32,
                                                         {c.batch + 1})};
  get_mla_metadata(m);
  m.topk_length = dev(m.topk_length);
  m.extra_topk_length = dev(m.extra_topk_length);
  m.tile_scheduler_metadata = dev(TensorView::contiguous(meta.data(), DType::int32, {parts, 8}));
  m.num_splits = dev(TensorView::contiguous(splits.data(), DType::int32, {c.batch + 1}));
  get_mla_metadata(m, kCtx);
  EXPECT_EQ(calls("get_mla_metadata_sparse"), 1);
  EXPECT_EQ(meta, cpu_meta);
  EXPECT_EQ(splits, cpu_splits);
}

TEST_P(CudaApiKernels, SparsePrefill) {
  const testing::SparsePrefillCase cases[] = {
      {.q_len = 7, .kv_len = 300, .num_heads_q = 20, .d_qk = 576, .topk = 100, .sink = true,
       .topk_length = true, .seed = 7},
      {.q_len = 5, .kv_len = 90, .num_heads_q = 16, .d_qk = 512, .topk = 128,
       .all_invalid_rows = true, .non_contiguous = true, .seed = 8},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name());
    g_rec = {};
    testing::SparsePrefillData d = testing::make_sparse_prefill_data(c);
    const SparsePrefillArgs args = d.args();
    flash_mla_sparse_fwd(dev(args), kCtx);
    EXPECT_EQ(calls("sparse_prefill"), 1);
    for (const auto& r : testing::compare_sparse_prefill_with_reference(args)) {
      EXPECT_TRUE(r.ok) << r.message;
    }
  }
}

TEST_F(CudaApi, Combine) {
  const testing::CombineCase c{.q_len = 2, .num_heads_q = 8, .head_dim_v = 512,
                               .pieces = {1, 3, 0, 5}, .sink = true, .seed = 9};
  testing::CombineData d = testing::make_combine_data(c);
  mla_combine(dev(d.args()), kCtx);
  EXPECT_EQ(calls("combine"), 1);
  for (const auto& r : testing::compare_combine_with_reference(d)) EXPECT_TRUE(r.ok) << r.message;
}

// Every tensor on the call's device; CPU-only operations say so.
TEST_F(CudaApi, DeviceErrors) {
  const testing::DenseDecodeCase& c = kDenseCases[0];
  testing::DenseDecodeData d = testing::make_dense_decode_data(c);
  const auto expect_error = [](auto call, const char* arg, ErrorKind kind, const char* says) {
    try {
      call();
      ADD_FAILURE() << "accepted; expected an error on '" << arg << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.argument(), arg) << e.what();
      EXPECT_EQ(e.kind(), kind) << e.what();
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
  };
  MlaDecodeArgs mixed = dev(d.args());
  mixed.out = d.args().out;  // a CPU output for a CUDA call
  expect_error([&] { flash_mla_with_kvcache(mixed, kCtx); }, "out", ErrorKind::value,
               "a CUDA tensor, on the device of 'q'");
  MlaDecodeArgs mixed_cpu = d.args();
  mixed_cpu.lse = dev(mixed_cpu.lse);  // a CUDA output for a CPU call
  expect_error([&] { flash_mla_with_kvcache(mixed_cpu, kCtx); }, "lse", ErrorKind::value,
               "a CPU tensor, on the device of 'q'");

  // The MHA prefill has no CUDA kernel.
  HostTensor q = HostTensor::empty(DType::bf16, {4, 2, 64});
  HostTensor k = HostTensor::empty(DType::bf16, {4, 2, 64});
  HostTensor o = HostTensor::empty(DType::bf16, {4, 2, 64});
  HostTensor lse = HostTensor::empty(DType::fp32, {4, 2});
  std::vector<int32_t> cu = {0, 4};
  const TensorView cu_view = TensorView::contiguous(cu.data(), DType::int32, {2});
  expect_error([&] {
    flash_attn_varlen_fwd({.q = dev(q.view()), .k = dev(k.view()), .v = dev(k.view()),
                           .cu_seqlens_qo = dev(cu_view), .cu_seqlens_kv = dev(cu_view),
                           .max_seqlen_qo = 4, .max_seqlen_kv = 4, .out = dev(o.view()),
                           .lse = dev(lse.view())});
  }, "q", ErrorKind::unsupported, "has no CUDA kernel");
  EXPECT_EQ(calls("allocate"), 0);
  EXPECT_EQ(calls("dense_decode"), 0);
}

}  // namespace
}  // namespace flashmla
