#include "testing/prefill_case.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "ref/ref.h"
#include "testing/random_data.h"

namespace flashmla::testing {

namespace {

// An independent random stream per kind of data, so that e.g. the kv values do not depend on how
// many random numbers the index generation consumed.
enum Stream : uint32_t { kQuery = 1, kKeys, kIndices, kLengths, kSink };

std::mt19937_64 make_stream(uint64_t seed, Stream stream) {
  return seeded_stream(seed, {stream});
}

// The invalid markers of FlashMLA's test (s_kv itself is added by invalid_marker).
constexpr std::array<int64_t, 7> kInvalidMarkers = {
    std::numeric_limits<int32_t>::min(), -123456, -1, 114514, 1919810, 2147480000,
    std::numeric_limits<int32_t>::max()};

int32_t invalid_marker(std::mt19937_64& rng, int64_t s_kv) {
  const size_t pick = std::uniform_int_distribution<size_t>(0, kInvalidMarkers.size())(rng);
  return static_cast<int32_t>(pick == kInvalidMarkers.size() ? s_kv : kInvalidMarkers[pick]);
}

// Fills a (rows, cols) view with clamp(N(0,1)/10 + u, -10, 10), u ~ U(-0.05, 0.05) drawn once.
void fill_shifted_randn(const TensorView& v, std::mt19937_64& rng) {
  const float u = std::uniform_real_distribution<float>(-0.05f, 0.05f)(rng);
  FastNormal normal(rng);
  for_each_element(v, [&](const int64_t*, int64_t off) {
    store_float(v, off, std::clamp(0.1f * normal() + u, -10.0f, 10.0f));
  });
}

// Per-token index lists (row-major (s_q, topk)): topk distinct positions when topk <= s_kv,
// otherwise every position once plus invalid markers, shuffled; then a few duplicated entries
// in about a third of the rows, and whole rows of one invalid marker when asked for.
std::vector<int32_t> make_indices(const SparsePrefillCase& c, std::mt19937_64& rng) {
  const int64_t s_kv = c.kv_len, topk = c.topk;
  std::vector<int32_t> all(static_cast<size_t>(s_kv));
  std::iota(all.begin(), all.end(), 0);
  std::vector<int32_t> idx(static_cast<size_t>(c.q_len * topk));
  std::uniform_int_distribution<int64_t> column(0, topk - 1);
  std::bernoulli_distribution third(1.0 / 3), tenth(0.1);
  for (int64_t s = 0; s < c.q_len; ++s) {
    int32_t* row = &idx[s * topk];
    std::shuffle(all.begin(), all.end(), rng);
    const int64_t valid = std::min(topk, s_kv);
    std::copy(all.begin(), all.begin() + valid, row);
    for (int64_t j = valid; j < topk; ++j) row[j] = invalid_marker(rng, s_kv);
    std::shuffle(row, row + topk, rng);
    if (third(rng)) {
      for (int k = 0; k < 3; ++k) {
        const int64_t from = column(rng), to = column(rng);
        if (row[from] >= 0 && row[from] < s_kv) row[to] = row[from];
      }
    }
  }
  if (c.all_invalid_rows) {
    std::vector<bool> chosen(static_cast<size_t>(c.q_len));
    for (int64_t s = 0; s < c.q_len; ++s) chosen[s] = tenth(rng);
    if (std::none_of(chosen.begin(), chosen.end(), [](bool b) { return b; })) {
      chosen[std::uniform_int_distribution<int64_t>(0, c.q_len - 1)(rng)] = true;
    }
    for (int64_t s = 0; s < c.q_len; ++s) {
      if (chosen[s]) std::fill_n(&idx[s * topk], topk, invalid_marker(rng, s_kv));
    }
  }
  return idx;
}

// Keeps row `witness` out of every token's in-length entries (swapping it past the length, or
// replacing it by -1 when the whole list is in length) and places it at the first entry past
// the length of tokens with valid entries, so that those point at a NaN row.
void hide_witness_row(const SparsePrefillCase& c, const std::vector<int32_t>& lengths,
                      int32_t witness, std::vector<int32_t>& idx) {
  const int64_t topk = c.topk;
  for (int64_t s = 0; s < c.q_len; ++s) {
    int32_t* row = &idx[s * topk];
    const int64_t len = lengths[s];
    for (int64_t j = 0; j < len; ++j) {
      if (row[j] != witness) continue;
      int32_t* other = std::find_if(row + len, row + topk, [&](int32_t v) { return v != witness; });
      if (other != row + topk) {
        std::swap(row[j], *other);
      } else {
        row[j] = -1;
      }
    }
    const bool any_valid =
        std::any_of(row, row + topk, [&](int32_t v) { return v >= 0 && v < c.kv_len; });
    if (len < topk && any_valid) row[len] = witness;
  }
}

}  // namespace

std::string SparsePrefillCase::name() const {
  std::string n = "sq" + std::to_string(q_len) + "_sk" + std::to_string(kv_len) + "_hq" +
                  std::to_string(num_heads_q) + "_d" + std::to_string(d_qk) + "_k" +
                  std::to_string(topk);
  if (sink) n += "_sink";
  if (topk_length) n += "_len";
  if (all_invalid_rows) n += "_invalid";
  if (non_contiguous) n += "_nc";
  return n + "_s" + std::to_string(seed);
}

SparsePrefillArgs SparsePrefillData::args() const {
  return {.q = q.view(),
          .kv = kv.view(),
          .indices = indices.view(),
          .sm_scale = sm_scale,
          .d_v = static_cast<int>(kSparseHeadDimV),
          .attn_sink = attn_sink.view(),
          .topk_length = topk_length.view(),
          .out = out.view(),
          .max_logits = max_logits.view(),
          .lse = lse.view()};
}

SparsePrefillData make_sparse_prefill_data(const SparsePrefillCase& c) {
  const Padding layout = c.non_contiguous ? Padding::non_contiguous() : Padding{};
  const int64_t s_q = c.q_len, s_kv = c.kv_len, h_q = c.num_heads_q, topk = c.topk;
  SparsePrefillData d;

  d.q = HostTensor::empty(DType::bf16, {s_q, h_q, c.d_qk}, layout);
  std::mt19937_64 q_rng = make_stream(c.seed, kQuery);
  fill_shifted_randn(d.q.view(), q_rng);

  std::mt19937_64 idx_rng = make_stream(c.seed, kIndices);
  std::vector<int32_t> idx = make_indices(c, idx_rng);

  // Lengths in [0, topk], every 11th token (from the 6th) forced empty; a length of topk means
  // the token uses its whole list.
  std::vector<int32_t> lengths(static_cast<size_t>(s_q), static_cast<int32_t>(topk));
  if (c.topk_length) {
    std::mt19937_64 len_rng = make_stream(c.seed, kLengths);
    std::uniform_int_distribution<int32_t> length(0, static_cast<int32_t>(topk));
    for (int64_t s = 0; s < s_q; ++s) lengths[s] = s % 11 == 5 ? 0 : length(len_rng);
    const int32_t witness = std::uniform_int_distribution<int32_t>(
        0, static_cast<int32_t>(s_kv - 1))(len_rng);
    hide_witness_row(c, lengths, witness, idx);
    d.topk_length = HostTensor::empty(DType::int32, {s_q});
    for (int64_t s = 0; s < s_q; ++s) d.topk_length.i32({s}) = lengths[s];
  }

  d.indices = HostTensor::empty(DType::int32, {s_q, 1, topk}, layout);
  std::vector<bool> referenced(static_cast<size_t>(s_kv), false);
  for (int64_t s = 0; s < s_q; ++s) {
    for (int64_t j = 0; j < topk; ++j) {
      const int32_t t = idx[s * topk + j];
      d.indices.i32({s, 0, j}) = t;
      if (j < lengths[s] && t >= 0 && t < s_kv) referenced[t] = true;
    }
  }

  // Every kv row gets values (so they depend only on the seed); unreferenced rows become NaN.
  d.kv = HostTensor::empty(DType::bf16, {s_kv, 1, c.d_qk}, layout);
  std::mt19937_64 kv_rng = make_stream(c.seed, kKeys);
  fill_shifted_randn(d.kv.view(), kv_rng);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t t = 0; t < s_kv; ++t) {
    if (referenced[t]) continue;
    for (int64_t ch = 0; ch < c.d_qk; ++ch) d.kv.set({t, 0, ch}, nan);
  }

  if (c.sink) {
    std::mt19937_64 sink_rng = make_stream(c.seed, kSink);
    d.attn_sink = random_attn_sink(sink_rng, h_q);
  }

  d.out = HostTensor::empty(DType::bf16, {s_q, h_q, kSparseHeadDimV});
  d.max_logits = HostTensor::empty(DType::fp32, {s_q, h_q});
  d.lse = HostTensor::empty(DType::fp32, {s_q, h_q});
  return d;
}

std::vector<CompareResult> compare_sparse_prefill_with_reference(const SparsePrefillArgs& args) {
  const int64_t s_q = args.q.size(0), h_q = args.q.size(1);
  HostTensor ref_out = HostTensor::empty(DType::bf16, {s_q, h_q, kSparseHeadDimV});
  HostTensor ref_max = HostTensor::empty(DType::fp32, {s_q, h_q});
  HostTensor ref_lse = HostTensor::empty(DType::fp32, {s_q, h_q});
  SparsePrefillArgs ref_args = args;
  ref_args.out = ref_out.view();
  ref_args.max_logits = ref_max.view();
  ref_args.lse = ref_lse.view();
  ref::sparse_prefill(ref_args);
  return {check_is_allclose("out", args.out, ref_out.view(), 8e-4, 3.01 / 128, 7e-6),
          check_is_allclose("max_logits", args.max_logits, ref_max.view(), 1e-6, 2.01 / 65536),
          check_is_allclose("lse", args.lse, ref_lse.view(), 1e-6, 2.01 / 65536)};
}

}  // namespace flashmla::testing
