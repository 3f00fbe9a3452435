// The CUDA sparse prefill kernels (src/cuda/prefill/sparse_prefill*.cu: the SM80 mma.sync one and
// the SM90 wgmma one, each on every case) run by the CPU harness on the params the library builds
// (core::prepare_sparse_prefill), against the double-precision reference with FlashMLA's
// tolerances, as tests/test_sparse_prefill.cpp checks the CPU kernel: both d_qk, topk below / at /
// above the 32- and 64-column tiles and their multiples, topk > s_kv (tiles with no valid column),
// head counts below / at / above the 16- and 64-head groups, lengths (some 0), sink with +-inf
// entries, all-invalid rows, duplicated indices, non-contiguous inputs and strides that are not
// multiples of 16 bytes (the element-wise copy path). NaN fills every kv row that no valid
// in-length index references.
#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <vector>

#include "core/sparse_prefill_prepare.h"
#include "cuda/prefill/sparse_prefill.h"
#include "flashmla/flashmla.h"
#include "testing/bad_input.h"
#include "testing/compare.h"
#include "testing/prefill_case.h"

namespace flashmla {
namespace {

using testing::HostTensor;
using testing::SparsePrefillCase;
using testing::SparsePrefillData;
using cuda::KernelGeneration;

// Runs the CUDA kernel on the library's params for `args` and the reference on the same data;
// compares out, max_logits and lse as the CPU test does.
void check_args(const SparsePrefillArgs& args, const HostTensor& out, KernelGeneration kernel) {
  cuda::run_sparse_prefill(core::prepare_sparse_prefill(args, Context{.num_threads = 1}), nullptr,
                           kernel);

  EXPECT_TRUE(testing::bad_input::all_finite(out)) << "out has inf / NaN";
  for (const auto& r : testing::compare_sparse_prefill_with_reference(args)) {
    EXPECT_TRUE(r.ok) << r.message;
  }
}

void check_against_reference(const SparsePrefillCase& cs, float sm_scale,
                             KernelGeneration kernel) {
  SparsePrefillData data = testing::make_sparse_prefill_data(cs);
  data.sm_scale = sm_scale;
  check_args(data.args(), data.out, kernel);
}

using KernelCase = std::tuple<SparsePrefillCase, KernelGeneration>;
class CudaSparsePrefill : public ::testing::TestWithParam<KernelCase> {};

TEST_P(CudaSparsePrefill, MatchesReference) {
  const auto& [cs, kernel] = GetParam();
  check_against_reference(cs, testing::kSparseSmScale, kernel);
}

// FlashMLA's data give logits within a few tenths of each other, so the softmax weights are
// nearly uniform and errors in the running max or in its exchange between warps hardly show.
// With a 40x larger scale the weights span many orders of magnitude (lse and max_logits ~ 10).
TEST_P(CudaSparsePrefill, MatchesReferenceWithSharpSoftmax) {
  const auto& [cs, kernel] = GetParam();
  check_against_reference(cs, 20.0f, kernel);
}

std::string case_name(const ::testing::TestParamInfo<KernelCase>& info) {
  return std::get<0>(info.param).name() + "_" + cuda::generation_name(std::get<1>(info.param));
}

std::vector<SparsePrefillCase> cases() {
  std::vector<SparsePrefillCase> v;
  uint64_t n = 0;
  // topk around the 32-column tile and its multiples, 16 heads (one full group), both d_qk;
  // the features rotate so that each meets both d_qk.
  const int64_t topks[] = {1, 31, 32, 33, 64, 100, 128};
  for (size_t k = 0; k < std::size(topks); ++k) {
    for (int64_t d : {576, 512}) {
      const bool odd = (k + (d == 512)) % 2 == 1;
      v.push_back({.q_len = 2, .kv_len = 150, .num_heads_q = 16, .d_qk = d, .topk = topks[k],
                   .sink = odd, .topk_length = !odd, .all_invalid_rows = k % 3 == 1,
                   .non_contiguous = k % 2 == 0, .seed = n++});
    }
  }
  // Head counts: several groups (64, 128), a partial group (1, 3, 8, 20), with s_q up to 8.
  v.push_back({.q_len = 1, .kv_len = 600, .num_heads_q = 64, .d_qk = 576, .topk = 96,
               .sink = true, .topk_length = true, .seed = n++});
  v.push_back({.q_len = 3, .kv_len = 300, .num_heads_q = 64, .d_qk = 512, .topk = 64,
               .all_invalid_rows = true, .non_contiguous = true, .seed = n++});
  v.push_back({.q_len = 1, .kv_len = 128, .num_heads_q = 128, .d_qk = 512, .topk = 33,
               .sink = true, .seed = n++});
  v.push_back({.q_len = 8, .kv_len = 64, .num_heads_q = 1, .d_qk = 576, .topk = 64,
               .topk_length = true, .non_contiguous = true, .seed = n++});
  v.push_back({.q_len = 5, .kv_len = 95, .num_heads_q = 3, .d_qk = 512, .topk = 128,
               .sink = true, .all_invalid_rows = true, .seed = n++});
  v.push_back({.q_len = 4, .kv_len = 100, .num_heads_q = 8, .d_qk = 576, .topk = 37,
               .sink = true, .topk_length = true, .non_contiguous = true, .seed = n++});
  v.push_back({.q_len = 2, .kv_len = 200, .num_heads_q = 20, .d_qk = 576, .topk = 65,
               .topk_length = true, .seed = n++});
  // Around the SM90 kernel's 64-column tile and 64-head group: 63 and 129 columns, 65 and 100
  // heads (a second, partial group).
  v.push_back({.q_len = 2, .kv_len = 300, .num_heads_q = 65, .d_qk = 576, .topk = 63,
               .sink = true, .topk_length = true, .seed = n++});
  v.push_back({.q_len = 1, .kv_len = 400, .num_heads_q = 100, .d_qk = 512, .topk = 129,
               .all_invalid_rows = true, .non_contiguous = true, .seed = n++});
  // FlashMLA's irregular (s_kv, topk) pairs with its head counts 64 and 128.
  v.push_back({.q_len = 2, .kv_len = 592, .num_heads_q = 128, .d_qk = 576, .topk = 128,
               .sink = true, .topk_length = true, .seed = n++});
  v.push_back({.q_len = 2, .kv_len = 1840, .num_heads_q = 64, .d_qk = 512, .topk = 256,
               .all_invalid_rows = true, .non_contiguous = true, .seed = n++});
  v.push_back({.q_len = 1, .kv_len = 153, .num_heads_q = 128, .d_qk = 512, .topk = 256,
               .sink = true, .seed = n++});
  v.push_back({.q_len = 3, .kv_len = 114, .num_heads_q = 64, .d_qk = 576, .topk = 384,
               .topk_length = true, .non_contiguous = true, .seed = n++});
  v.push_back({.q_len = 6, .kv_len = 20, .num_heads_q = 16, .d_qk = 512, .topk = 1,
               .all_invalid_rows = true, .seed = n++});
  // topk far above s_kv: every position once plus invalid markers, whole tiles without a
  // valid column (FlashMLA's corner); a single all-invalid token with sink and lengths.
  for (int64_t d : {576, 512}) {
    v.push_back({.q_len = 2, .kv_len = 20, .num_heads_q = 16, .d_qk = d, .topk = 256,
                 .sink = true, .topk_length = d == 512, .non_contiguous = d == 576,
                 .seed = n++});
    v.push_back({.q_len = 1, .kv_len = 128, .num_heads_q = 16, .d_qk = d, .topk = 128,
                 .sink = true, .topk_length = true, .all_invalid_rows = true, .seed = n++});
  }
  return v;
}
INSTANTIATE_TEST_SUITE_P(Grid, CudaSparsePrefill,
                         ::testing::Combine(::testing::ValuesIn(cases()),
                                            ::testing::Values(KernelGeneration::sm80,
                                                              KernelGeneration::sm90)),
                         case_name);

// A copy of `t` (same values, NaN included) whose rows are padded by `pad` elements, so the
// strides are not multiples of 16 bytes.
HostTensor repadded(const HostTensor& t, int64_t pad) {
  const TensorView v = t.view();
  std::vector<int64_t> shape(v.shape, v.shape + v.rank);
  HostTensor r = HostTensor::empty(v.dtype, shape, {.last = pad});
  testing::for_each_element(v, [&](const int64_t* index, int64_t off) {
    testing::store_float(r.view(), testing::element_offset(r.view(), {index[0], index[1],
                                                                      index[2]}),
                         testing::load_float(v, off));
  });
  return r;
}

// q, kv and out with row strides of d + 1 / 512 + 3 elements: the element-wise copies instead
// of cp.async and 16-byte stores.
class CudaKernelGeneration : public ::testing::TestWithParam<KernelGeneration> {};

TEST_P(CudaKernelGeneration, UnalignedMatchesReference) {
  for (int64_t d : {576, 512}) {
    const SparsePrefillCase cs{.q_len = 3, .kv_len = 90, .num_heads_q = 17, .d_qk = d,
                               .topk = 40, .sink = true, .topk_length = d == 512,
                               .all_invalid_rows = true, .seed = 900 + static_cast<uint64_t>(d)};
    SCOPED_TRACE(cs.name());
    SparsePrefillData data = testing::make_sparse_prefill_data(cs);
    const HostTensor q = repadded(data.q, 1), kv = repadded(data.kv, 1);
    HostTensor out = HostTensor::empty(DType::bf16, {cs.q_len, cs.num_heads_q, 512}, {.last = 3});
    SparsePrefillArgs args = data.args();
    args.q = q.view();
    args.kv = kv.view();
    args.out = out.view();
    check_args(args, out, GetParam());
  }
}

// Bitwise identical results across runs (each run draws another thread interleaving).
TEST_P(CudaKernelGeneration, BitwiseIdenticalAcrossRuns) {
  const SparsePrefillCase cs{.q_len = 2, .kv_len = 100, .num_heads_q = 16, .d_qk = 576,
                             .topk = 70, .sink = true, .topk_length = true, .seed = 31};
  SparsePrefillData data = testing::make_sparse_prefill_data(cs);
  const core::SparsePrefillParams p = core::prepare_sparse_prefill(data.args(), {});
  const HostTensor* outputs[] = {&data.out, &data.max_logits, &data.lse};
  std::vector<std::vector<std::byte>> first;
  for (int run = 0; run < 2; ++run) {
    cuda::run_sparse_prefill(p, nullptr, GetParam());
    for (size_t i = 0; i < std::size(outputs); ++i) {
      std::vector<std::byte> bytes = testing::bad_input::bytes_of(*outputs[i]);
      if (first.size() <= i) {
        first.push_back(std::move(bytes));
      } else {
        EXPECT_TRUE(bytes == first[i]) << "output #" << i;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, CudaKernelGeneration,
                         ::testing::Values(KernelGeneration::sm80, KernelGeneration::sm90),
                         [](const ::testing::TestParamInfo<KernelGeneration>& info) {
                           return std::string(cuda::generation_name(info.param));
                         });

}  // namespace
}  // namespace flashmla
