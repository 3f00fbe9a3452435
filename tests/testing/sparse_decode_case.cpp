#include "testing/sparse_decode_case.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "flashmla/kv_format.h"
#include "ref/ref.h"
#include "testing/random_data.h"

namespace flashmla::testing {

namespace {

// An independent random stream per kind of data and pool, so that e.g. the cache values do not
// depend on how many random numbers the index generation consumed.
enum Stream : uint32_t { kQuery = 1, kSink, kInvalid, kSeqlens, kBlocks, kIndices, kLengths,
                         kKeys, kPastLength };

std::mt19937_64 make_stream(uint64_t seed, Stream stream, uint32_t pool = 0) {
  return seeded_stream(seed, {stream, pool});
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Garbage that entries past a request's length may hold (never read by a correct kernel).
constexpr std::array<int32_t, 4> kGarbage = {std::numeric_limits<int32_t>::max(),
                                             std::numeric_limits<int32_t>::min(), 2147480000,
                                             -2};

// What one KV pool of a case looks like.
struct PoolSpec {
  uint32_t id;  // 0 main, 1 extra (selects the random streams)
  int64_t kv_len, topk, page;
  bool lengths;
};

struct PoolData {
  HostTensor cache, indices, lengths;
  SparseDecodeData::CacheLayout layout;
};

std::vector<int32_t> make_seqlens(const SparseDecodeCase& c, const PoolSpec& p) {
  std::mt19937_64 rng = make_stream(c.seed, kSeqlens, p.id);
  return random_seqlens(rng, c.batch, p.kv_len, c.q_len, c.varlen, c.zero_lengths);
}

// Builds one pool: seqlens, a random block table, index lists of distinct logical positions
// (-1 padded, all -1 for `invalid` requests) turned into physical slots, lengths with garbage
// past them, and the cache with NaN in every token no valid in-length index references.
PoolData make_pool(const SparseDecodeCase& c, const PoolSpec& p,
                   const std::vector<bool>& invalid, const Padding& layout) {
  const int64_t b = c.batch, s_q = c.q_len, topk = p.topk, page = p.page;
  const std::vector<int32_t> seqlens = make_seqlens(c, p);
  const int64_t max_seqlen =
      std::max<int64_t>(1, *std::max_element(seqlens.begin(), seqlens.end()));

  // Each request owns blocks for max_seqlen rounded up to 4 pages, at random places.
  const int64_t blocks_per_seq = ceil_div(max_seqlen, 4 * page) * 4;
  const int64_t num_blocks = b * blocks_per_seq, num_slots = num_blocks * page;
  std::vector<int32_t> block_table(static_cast<size_t>(num_blocks));
  std::iota(block_table.begin(), block_table.end(), 0);
  std::mt19937_64 block_rng = make_stream(c.seed, kBlocks, p.id);
  std::shuffle(block_table.begin(), block_table.end(), block_rng);

  PoolData d;
  std::vector<int32_t> lengths(static_cast<size_t>(b), static_cast<int32_t>(topk));
  if (p.lengths) {
    std::mt19937_64 len_rng = make_stream(c.seed, kLengths, p.id);
    std::uniform_int_distribution<int32_t> length(0, static_cast<int32_t>(topk));
    d.lengths = HostTensor::empty(DType::int32, {b});
    for (int64_t i = 0; i < b; ++i) d.lengths.i32({i}) = lengths[i] = length(len_rng);
  }

  // Index lists as physical slots, row-major (b, s_q, topk).
  std::mt19937_64 idx_rng = make_stream(c.seed, kIndices, p.id);
  std::vector<int32_t> slots(static_cast<size_t>(b * s_q * topk), -1);
  std::vector<bool> referenced(static_cast<size_t>(num_slots), false);
  for (int64_t i = 0; i < b; ++i) {
    std::vector<int32_t> positions(static_cast<size_t>(seqlens[i]));
    for (int64_t s = 0; s < s_q; ++s) {
      int32_t* row = &slots[(i * s_q + s) * topk];
      if (invalid[i]) continue;  // all -1
      std::iota(positions.begin(), positions.end(), 0);
      const int64_t n = std::min<int64_t>(topk, seqlens[i]);
      for (int64_t j = 0; j < n; ++j) {  // partial Fisher-Yates: n distinct positions
        std::swap(positions[j], positions[std::uniform_int_distribution<int64_t>(
                                    j, seqlens[i] - 1)(idx_rng)]);
        const int64_t t = positions[j];
        row[j] = static_cast<int32_t>(block_table[i * blocks_per_seq + t / page] * page +
                                      t % page);
      }
      std::shuffle(row, row + topk, idx_rng);  // -1 padding spread over the list
      for (int64_t j = 0; j < lengths[i]; ++j) {
        if (row[j] != -1) referenced[row[j]] = true;
      }
    }
  }

  // Past each length: a quarter garbage, a quarter a slot of a NaN (unreferenced) token.
  const auto nan_token = std::find(referenced.begin(), referenced.end(), false);
  std::mt19937_64 garbage_rng = make_stream(c.seed, kPastLength, p.id);
  std::uniform_int_distribution<int> pick(0, 7);
  for (int64_t i = 0; i < b; ++i) {
    for (int64_t s = 0; s < s_q; ++s) {
      for (int64_t j = lengths[i]; j < topk; ++j) {
        const int k = pick(garbage_rng);
        int32_t& v = slots[(i * s_q + s) * topk + j];
        if (k < 2) v = kGarbage[(j + k) % kGarbage.size()];
        if (k >= 2 && k < 4 && nan_token != referenced.end()) {
          v = static_cast<int32_t>(nan_token - referenced.begin());
        }
      }
    }
  }
  d.indices = HostTensor::empty(DType::int32, {b, s_q, topk}, layout);
  for (int64_t i = 0; i < b; ++i)
    for (int64_t s = 0; s < s_q; ++s)
      for (int64_t j = 0; j < topk; ++j) d.indices.i32({i, s, j}) = slots[(i * s_q + s) * topk + j];

  // The bf16 cache: randn / 10 clamped to [-1, 1], NaN where not referenced.
  const Padding cache_pad = c.fp8 ? Padding{} : layout;
  HostTensor k = HostTensor::empty(DType::bf16, {num_blocks, page, 1, c.d_qk}, cache_pad);
  std::mt19937_64 k_rng = make_stream(c.seed, kKeys, p.id);
  k.fill_randn(k_rng, 0.1f, 1.0f);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t slot = 0; slot < num_slots; ++slot) {
    if (referenced[slot]) continue;
    const int64_t base = element_offset(k.view(), {slot / page, slot % page, 0, 0});
    for (int64_t ch = 0; ch < c.d_qk; ++ch) store_float(k.view(), base + ch, nan);
  }
  d.layout = {.num_blocks = num_blocks, .page_block_size = page, .fp8 = c.fp8};
  if (!c.fp8) {
    d.cache = std::move(k);
    return d;
  }

  // FP8: quantize into a cache whose blocks are padded like FlashMLA's test allocator (V32: one
  // spare token per block; MODEL1: the block rounded up to a multiple of 576 bytes). Bytes not
  // written by the quantizer are 0xFF (an e4m3 NaN).
  const KvFormat format = c.d_qk == 576 ? KvFormat::v32 : KvFormat::model1;
  const int64_t bpt = kv_format_info(format).bytes_per_token;
  d.layout.bytes_per_token = bpt;
  d.layout.block_stride =
      format == KvFormat::v32 ? (page + 1) * bpt : ceil_div(bpt * page, 576) * 576;
  d.cache = HostTensor::empty(DType::uint8, {num_blocks * d.layout.block_stride});
  std::memset(d.cache.view().data, 0xFF, static_cast<size_t>(d.cache.numel()));
  const TensorView cache = TensorView::strided(d.cache.view().data, DType::uint8,
                                               {num_blocks, page, 1, bpt},
                                               {d.layout.block_stride, bpt, bpt, 1});
  quantize_kv_cache({.format = format, .k = k.view(), .cache = cache});
  return d;
}

TensorView cache_of(const HostTensor& t, const SparseDecodeData::CacheLayout& l) {
  if (!t.view().defined() || !l.fp8) return t.view();
  return TensorView::strided(t.view().data, DType::uint8,
                             {l.num_blocks, l.page_block_size, 1, l.bytes_per_token},
                             {l.block_stride, l.bytes_per_token, l.bytes_per_token, 1});
}

}  // namespace

std::string SparseDecodeCase::name() const {
  std::string n = "b" + std::to_string(batch) + "_sq" + std::to_string(q_len) + "_hq" +
                  std::to_string(num_heads_q) + "_d" + std::to_string(d_qk) + "_sk" +
                  std::to_string(kv_len) + "_k" + std::to_string(topk) + "_p" +
                  std::to_string(page_block_size) + (fp8 ? "_fp8" : "_bf16");
  if (topk_length) n += "_len";
  if (extra) {
    n += "_x" + std::to_string(extra_kv_len > 0 ? extra_kv_len : 2 * extra_topk) + "k" +
         std::to_string(extra_topk) + "p" +
         std::to_string(extra_page_block_size > 0 ? extra_page_block_size : page_block_size);
    if (extra_topk_length) n += "len";
  }
  if (sink) n += "_sink";
  if (all_invalid) n += "_invalid";
  if (zero_lengths) n += "_zero";
  if (varlen) n += "_varlen";
  if (non_contiguous) n += "_nc";
  return n + "_s" + std::to_string(seed);
}

TensorView SparseDecodeData::cache_view() const { return cache_of(k_cache, main_layout); }
TensorView SparseDecodeData::extra_cache_view() const {
  return cache_of(extra_k_cache, extra_layout);
}

TensorView SparseDecodeData::lse_view() const {
  const int64_t b = lse.size(0), s_q = lse.size(1), h_q = lse.size(2);
  return TensorView::strided(lse.view().data, DType::fp32, {b, h_q, s_q}, {s_q * h_q, 1, h_q});
}

MlaDecodeArgs SparseDecodeData::args() const {
  return {.q = q.view(),
          .k_cache = cache_view(),
          .block_table = {},
          .cache_seqlens = {},
          .head_dim_v = static_cast<int>(kSparseDecodeHeadDimV),
          .softmax_scale = softmax_scale,
          .causal = false,
          .tile_scheduler_metadata = {},
          .num_splits = {},
          .out = out.view(),
          .lse = lse_view(),
          .indices = indices.view(),
          .topk_length = topk_length.view(),
          .attn_sink = attn_sink.view(),
          .extra_k_cache = extra_cache_view(),
          .extra_indices_in_kvcache = extra_indices.view(),
          .extra_topk_length = extra_topk_length.view()};
}

SparseDecodeData make_sparse_decode_data(const SparseDecodeCase& c) {
  const Padding layout = c.non_contiguous ? Padding::non_contiguous() : Padding{};
  const int64_t b = c.batch, s_q = c.q_len, h_q = c.num_heads_q;
  SparseDecodeData d;
  d.softmax_scale = static_cast<float>(std::pow(double(c.d_qk), -0.55));

  d.q = HostTensor::empty(DType::bf16, {b, s_q, h_q, c.d_qk}, layout);
  std::mt19937_64 q_rng = make_stream(c.seed, kQuery);
  d.q.fill_randn(q_rng, 1.0f, 1.0f);

  // Requests whose lists (in both pools) are all -1: about a third, at least one.
  std::vector<bool> invalid(static_cast<size_t>(b), false);
  if (c.all_invalid) {
    std::mt19937_64 rng = make_stream(c.seed, kInvalid);
    std::bernoulli_distribution third(1.0 / 3);
    for (int64_t i = 0; i < b; ++i) invalid[i] = third(rng);
    invalid[std::uniform_int_distribution<int64_t>(0, b - 1)(rng)] = true;
  }

  PoolData main = make_pool(c, {0, c.kv_len, c.topk, c.page_block_size, c.topk_length},
                            invalid, layout);
  d.k_cache = std::move(main.cache);
  d.indices = std::move(main.indices);
  d.topk_length = std::move(main.lengths);
  d.main_layout = main.layout;
  if (c.extra) {
    const int64_t x_len = c.extra_kv_len > 0 ? c.extra_kv_len : 2 * c.extra_topk;
    const int64_t x_page = c.extra_page_block_size > 0 ? c.extra_page_block_size
                                                       : c.page_block_size;
    PoolData extra = make_pool(c, {1, x_len, c.extra_topk, x_page, c.extra_topk_length},
                               invalid, layout);
    d.extra_k_cache = std::move(extra.cache);
    d.extra_indices = std::move(extra.indices);
    d.extra_topk_length = std::move(extra.lengths);
    d.extra_layout = extra.layout;
  }

  if (c.sink) {
    std::mt19937_64 sink_rng = make_stream(c.seed, kSink);
    d.attn_sink = random_attn_sink(sink_rng, h_q);
  }

  d.out = HostTensor::empty(DType::bf16, {b, s_q, h_q, kSparseDecodeHeadDimV});
  d.lse = HostTensor::empty(DType::fp32, {b, s_q, h_q});
  return d;
}

void SparseDecodeSchedule::attach(const SparseDecodeData& d, int parts, MlaDecodeArgs& args) {
  const int64_t b = d.q.size(0);
  meta.assign(static_cast<size_t>(parts) * 8, 0);
  splits.assign(static_cast<size_t>(b + 1), 0);
  args.tile_scheduler_metadata = TensorView::contiguous(meta.data(), DType::int32, {parts, 8});
  args.num_splits = TensorView::contiguous(splits.data(), DType::int32, {b + 1});
  get_mla_metadata({.batch = b,
                    .topk = d.indices.size(2),
                    .topk_length = d.topk_length.view(),
                    .extra_topk = d.extra_indices.view().defined() ? d.extra_indices.size(2) : 0,
                    .extra_topk_length = d.extra_topk_length.view(),
                    .num_sm_parts = parts,
                    .tile_scheduler_metadata = args.tile_scheduler_metadata,
                    .num_splits = args.num_splits});
}

std::vector<CompareResult> compare_sparse_decode_with_reference(const MlaDecodeArgs& args) {
  const int64_t b = args.q.size(0), s_q = args.q.size(1), h_q = args.q.size(2);
  HostTensor ref_out = HostTensor::empty(DType::bf16, {b, s_q, h_q, 512});
  HostTensor ref_lse = HostTensor::empty(DType::fp32, {b, h_q, s_q});  // contiguous on purpose
  MlaDecodeArgs ref_args = args;
  ref_args.out = ref_out.view();
  ref_args.lse = ref_lse.view();
  ref::sparse_decode(ref_args);
  return {check_is_allclose("out", args.out, ref_out.view(), 1e-3, 2.01 / 128, 5e-6),
          check_is_allclose("lse", args.lse, ref_lse.view(), 1e-6, 8.01 / 65536)};
}

}  // namespace flashmla::testing
