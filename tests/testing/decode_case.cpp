#include "testing/decode_case.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "ref/ref.h"
#include "testing/random_data.h"

namespace flashmla::testing {

namespace {

// An independent random stream per kind of data, so that e.g. the K values do not depend on how
// many random numbers the block permutation consumed.
enum Stream : uint32_t { kSeqlens = 1, kQuery, kKeys, kBlocks };

std::mt19937_64 make_stream(uint64_t seed, Stream stream) {
  return seeded_stream(seed, {stream});
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

std::vector<int32_t> make_seqlens(const DenseDecodeCase& c) {
  std::mt19937_64 rng = make_stream(c.seed, kSeqlens);
  return random_seqlens(rng, c.batch, c.kv_len, c.q_len, c.varlen, c.zero_lengths);
}


}  // namespace

std::string DenseDecodeCase::name() const {
  std::string n = "b" + std::to_string(batch) + "_sq" + std::to_string(q_len) + "_sk" +
                  std::to_string(kv_len) + "_hq" + std::to_string(num_heads_q) + "_hkv" +
                  std::to_string(num_heads_kv) + "_p" + std::to_string(page_block_size);
  if (varlen) n += "_varlen";
  if (causal) n += "_causal";
  if (zero_lengths) n += "_zero";
  if (non_contiguous) n += "_nc";
  return n + "_" + dtype_name(dtype) + "_s" + std::to_string(seed);
}

MlaDecodeArgs DenseDecodeData::args(std::optional<float> softmax_scale) const {
  return {.q = q.view(),
          .k_cache = k_cache.view(),
          .block_table = block_table.view(),
          .cache_seqlens = cache_seqlens.view(),
          .head_dim_v = static_cast<int>(kDenseHeadDimV),
          .softmax_scale = softmax_scale,
          .causal = causal,
          .tile_scheduler_metadata = {},
          .num_splits = {},
          .out = out.view(),
          .lse = lse.view()};
}

DenseDecodeData make_dense_decode_data(const DenseDecodeCase& c) {
  const Padding layout = c.non_contiguous ? Padding::non_contiguous() : Padding{};
  const int64_t page = c.page_block_size;
  DenseDecodeData d;
  d.causal = c.causal;
  d.seqlens = make_seqlens(c);

  d.cache_seqlens = HostTensor::empty(DType::int32, {c.batch});
  for (int64_t i = 0; i < c.batch; ++i) d.cache_seqlens.i32({i}) = d.seqlens[i];

  d.q = HostTensor::empty(c.dtype, {c.batch, c.q_len, c.num_heads_q, kDenseHeadDimQK}, layout);
  std::mt19937_64 q_rng = make_stream(c.seed, kQuery);
  d.q.fill_randn(q_rng, 0.1f, 1.0f);

  // Every request owns the blocks for max_seqlen rounded up to 256 tokens, at random places.
  const int64_t max_seqlen = *std::max_element(d.seqlens.begin(), d.seqlens.end());
  const int64_t padded_seqlen = ceil_div(max_seqlen, 256) * 256;
  const int64_t blocks_per_seq = std::max<int64_t>(1, ceil_div(padded_seqlen, page));
  std::vector<int32_t> block_ids(static_cast<size_t>(c.batch * blocks_per_seq));
  std::iota(block_ids.begin(), block_ids.end(), 0);
  std::mt19937_64 block_rng = make_stream(c.seed, kBlocks);
  std::shuffle(block_ids.begin(), block_ids.end(), block_rng);
  d.block_table = HostTensor::empty(DType::int32, {c.batch, blocks_per_seq}, layout);
  for (int64_t i = 0; i < c.batch; ++i) {
    const int64_t used = ceil_div(d.seqlens[i], page);
    for (int64_t j = 0; j < blocks_per_seq; ++j) {
      d.block_table.i32({i, j}) = j < used ? block_ids[i * blocks_per_seq + j] : kGarbageBlockId;
    }
  }

  // The cache starts as NaN; only the valid tokens of each request get values, drawn in logical
  // order (request, token, head, channel) so that they do not depend on the paging.
  d.k_cache = HostTensor::empty(
      c.dtype, {c.batch * blocks_per_seq, page, c.num_heads_kv, kDenseHeadDimQK});
  std::mt19937_64 k_rng = make_stream(c.seed, kKeys);
  FastNormal normal(k_rng);
  const TensorView& kc = d.k_cache.view();
  for (int64_t i = 0; i < c.batch; ++i) {
    for (int64_t t = 0; t < d.seqlens[i]; ++t) {
      const int64_t block = d.block_table.i32({i, t / page});
      for (int64_t h = 0; h < c.num_heads_kv; ++h) {
        const int64_t base = element_offset(kc, {block, t % page, h, 0});
        for (int64_t ch = 0; ch < kDenseHeadDimQK; ++ch) {
          store_float(kc, base + ch, std::clamp(0.1f * normal(), -1.0f, 1.0f));
        }
      }
    }
  }

  d.out = HostTensor::empty(c.dtype, {c.batch, c.q_len, c.num_heads_q, kDenseHeadDimV});
  d.lse = HostTensor::empty(DType::fp32, {c.batch, c.num_heads_q, c.q_len});
  return d;
}

std::vector<CompareResult> compare_dense_decode_with_reference(const MlaDecodeArgs& args) {
  const int64_t b = args.q.size(0), s_q = args.q.size(1), h_q = args.q.size(2);
  HostTensor ref_out = HostTensor::empty(args.out.dtype, {b, s_q, h_q, kDenseHeadDimV});
  HostTensor ref_lse = HostTensor::empty(DType::fp32, {b, h_q, s_q});
  MlaDecodeArgs ref_args = args;
  ref_args.tile_scheduler_metadata = ref_args.num_splits = {};
  ref_args.out = ref_out.view();
  ref_args.lse = ref_lse.view();
  ref::dense_decode(ref_args);
  return {check_is_allclose("out", args.out, ref_out.view(), 8e-4, 2.01 / 128, 5e-6),
          check_is_allclose("lse", args.lse, ref_lse.view(), 1e-6, 8.01 / 65536)};
}

}  // namespace flashmla::testing
