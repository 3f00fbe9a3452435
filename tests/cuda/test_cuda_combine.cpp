// The CUDA split-KV combine (src/cuda/decode/combine.cu) run by the CPU harness: against the
// double reference (FlashMLA's tolerances, as tests/test_combine.cpp) and bit for bit against the
// CPU combine (same operation order, the host's exp2f / log2f in the harness). Pieces 0, 1, 2, 5
// and beyond 32 (several shuffle rounds), sinks with ±inf entries, whole empty requests, rows of
// requests with <= 1 piece left untouched, d_v below / at / above the 512-column chunk, float4 and
// scalar paths, padded (strided) outputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/combine_params.h"
#include "cpu/decode/combine.h"
#include "cuda/decode/combine.h"
#include "flashmla/flashmla.h"
#include "testing/combine_case.h"
#include "testing/compare.h"
#include "testing/host_tensor.h"

namespace flashmla {
namespace {

using testing::CombineCase;
using testing::combine_params_of;
using testing::CombineData;
using testing::HostTensor;

bool is_nan_bits(uint32_t bits, DType dt) {
  switch (dt) {
    case DType::bf16: return (bits & 0x7fffu) > 0x7f80u;
    case DType::fp16: return (bits & 0x7fffu) > 0x7c00u;
    default: return (bits & 0x7fffffffu) > 0x7f800000u;
  }
}

// Counts elements of two views of the same shape whose bits differ (any NaN equals any NaN).
int64_t bit_differences(const TensorView& a, const TensorView& b) {
  const int64_t size = static_cast<int64_t>(dtype_size(a.dtype));
  int64_t diff = 0;
  std::vector<int64_t> idx(a.rank, 0);
  for (int64_t n = 0; n < a.numel(); ++n) {
    int64_t oa = 0, ob = 0;
    for (int d = 0; d < a.rank; ++d) {
      oa += idx[d] * a.stride(d);
      ob += idx[d] * b.stride(d);
    }
    uint32_t x = 0, y = 0;
    std::memcpy(&x, static_cast<const char*>(a.data) + oa * size, size);
    std::memcpy(&y, static_cast<const char*>(b.data) + ob * size, size);
    if (x != y && !(is_nan_bits(x, a.dtype) && is_nan_bits(y, a.dtype))) ++diff;
    for (int d = a.rank - 1; d >= 0 && ++idx[d] == a.shape[d]; --d) idx[d] = 0;
  }
  return diff;
}

// Replaces out / lse by padded (strided) NaN tensors of the same shape.
void pad_outputs(CombineData& d) {
  const TensorView o = d.out.view(), l = d.lse.view();
  d.out = HostTensor::empty(o.dtype, {o.shape[0], o.shape[1], o.shape[2], o.shape[3]},
                            testing::Padding::non_contiguous());
  d.lse = HostTensor::empty(DType::fp32, {l.shape[0], l.shape[1], l.shape[2]}, {.other = 1});
}

struct CudaCombineCase {
  CombineCase c;
  bool padded = false;
};
void PrintTo(const CudaCombineCase& c, std::ostream* os) {
  *os << c.c.name() << (c.padded ? "_padded" : "");
}

class CudaCombineGrid : public ::testing::TestWithParam<CudaCombineCase> {};

TEST_P(CudaCombineGrid, MatchesReferenceAndCpuBitwise) {
  const CombineCase& cs = GetParam().c;
  CombineData data = testing::make_combine_data(cs);
  if (GetParam().padded) pad_outputs(data);
  CombineData cpu = data;  // deep copy: same inputs, NaN outputs

  cuda::run_combine(combine_params_of(data), nullptr);
  cpu::decode::run_combine(combine_params_of(cpu));
  for (const auto& r : testing::compare_combine_with_reference(data)) {
    EXPECT_TRUE(r.ok) << r.message;
  }

  EXPECT_EQ(bit_differences(data.out.view(), cpu.out.view()), 0);
  EXPECT_EQ(bit_differences(data.lse.view(), cpu.lse.view()), 0);

  // Requests with at most one piece are not touched: every element still NaN.
  for (int64_t i = 0; i < cs.batch(); ++i) {
    if (cs.pieces[i] >= 2) continue;
    for (int64_t s = 0; s < cs.q_len; ++s)
      for (int64_t h = 0; h < cs.num_heads_q; ++h) {
        EXPECT_TRUE(std::isnan(data.lse.get({i, h, s})));
        for (int64_t c = 0; c < cs.head_dim_v; ++c)
          ASSERT_TRUE(std::isnan(data.out.get({i, s, h, c}))) << i << " " << s << " " << h;
      }
  }
}

std::vector<CudaCombineCase> cuda_combine_cases() {
  struct Shape {
    int64_t q_len, heads, d_v;
  };
  // d_v: 512 (one full float4 chunk), 64 / 16 (partial chunk), 72 (float4, 18 lanes),
  // 513 / 33 (scalar path; 513 spans two chunks), 1040 (three chunks, float4).
  const std::vector<Shape> shapes = {{1, 16, 512}, {2, 9, 64}, {3, 3, 72}, {1, 5, 513},
                                     {2, 2, 33},   {1, 3, 1040}, {4, 1, 16}};
  const std::vector<std::vector<int>> pieces = {{2, 1, 5, 0, 2}, {5, 5}, {0, 1, 2, 5}};
  std::vector<CudaCombineCase> cases;
  uint64_t seed = 100;
  for (size_t k = 0; k < shapes.size(); ++k) {
    for (bool sink : {false, true}) {
      for (DType dt : {DType::bf16, DType::fp16}) {
        const Shape& s = shapes[k];
        cases.push_back({{.q_len = s.q_len, .num_heads_q = s.heads, .head_dim_v = s.d_v,
                          .pieces = pieces[(k + (sink ? 1 : 0)) % pieces.size()], .sink = sink,
                          .out_dtype = dt, .seed = seed++}});
      }
    }
  }
  // fp32 output; many pieces (several 32-piece shuffle rounds); padded outputs.
  cases.push_back({{.q_len = 2, .num_heads_q = 4, .head_dim_v = 64, .pieces = {2, 1, 5, 0},
                    .sink = true, .out_dtype = DType::fp32, .seed = seed++}});
  cases.push_back({{.q_len = 1, .num_heads_q = 3, .head_dim_v = 40, .pieces = {40, 1, 70, 33},
                    .sink = false, .out_dtype = DType::bf16, .seed = seed++}});
  cases.push_back({{.q_len = 2, .num_heads_q = 2, .head_dim_v = 16, .pieces = {65, 2},
                    .sink = true, .out_dtype = DType::fp16, .seed = seed++}});
  cases.push_back({{.q_len = 2, .num_heads_q = 9, .head_dim_v = 512, .pieces = {2, 1, 3},
                    .sink = true, .out_dtype = DType::bf16, .seed = seed++}, true});
  cases.push_back({{.q_len = 1, .num_heads_q = 3, .head_dim_v = 37, .pieces = {3, 0, 2},
                    .sink = false, .out_dtype = DType::fp32, .seed = seed++}, true});
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Cases, CudaCombineGrid, ::testing::ValuesIn(cuda_combine_cases()),
                         [](const auto& info) {
                           return info.param.c.name() + (info.param.padded ? "_padded" : "");
                         });

// The decode drivers' entry: accumulators laid out (slot, q_len, h_q[, d_v]) contiguously.
TEST(CudaCombine, DecodeAccumulatorsMatchCpu) {
  for (bool sink : {false, true}) {
    const CombineCase cs{.q_len = 2, .num_heads_q = 10, .head_dim_v = 512,
                         .pieces = {1, 3, 2, 0, 6}, .sink = sink, .out_dtype = DType::bf16,
                         .seed = sink ? 8u : 7u};
    CombineData data = testing::make_combine_data(cs);
    CombineData cpu = data;
    const core::CombineParams g = combine_params_of(data), c = combine_params_of(cpu);
    cuda::combine_decode_accumulators(g.batch, g.q_len, g.num_heads_q, g.d_v, g.lse_accum,
                                      g.o_accum, g.num_slots, g.num_splits, g.attn_sink,
                                      g.out_dtype, g.out, g.out_stride, g.lse, g.lse_stride,
                                      nullptr);
    cpu::decode::combine_decode_accumulators(c.batch, c.q_len, c.num_heads_q, c.d_v, c.lse_accum,
                                             c.o_accum, c.num_splits, c.attn_sink, c.out_dtype,
                                             c.out, c.out_stride, c.lse, c.lse_stride, 1);
    EXPECT_EQ(bit_differences(data.out.view(), cpu.out.view()), 0) << sink;
    EXPECT_EQ(bit_differences(data.lse.view(), cpu.lse.view()), 0) << sink;
  }
}

// No request split: nothing is written.
TEST(CudaCombine, NothingSplitWritesNothing) {
  const CombineCase cs{.q_len = 1, .num_heads_q = 4, .head_dim_v = 64, .pieces = {1, 0, 1}};
  CombineData data = testing::make_combine_data(cs);
  cuda::run_combine(combine_params_of(data), nullptr);
  for (int64_t i = 0; i < data.out.numel(); ++i) {
    EXPECT_TRUE(std::isnan(data.out.get({i / 256, 0, (i / 64) % 4, i % 64})));
  }
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t h = 0; h < 4; ++h) EXPECT_TRUE(std::isnan(data.lse.get({i, h, 0})));
}

}  // namespace
}  // namespace flashmla
