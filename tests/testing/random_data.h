// Random pieces shared by the test-case generators (decode_case, sparse_decode_case,
// prefill_case): independent seeded streams, per-request lengths and attention sinks drawn the
// way FlashMLA's tests draw them.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <random>
#include <vector>

#include "testing/host_tensor.h"

namespace flashmla::testing {

// A stream seeded by (seed, tags...): one independent stream per kind of data (and pool), so
// that e.g. the cache values do not depend on how many numbers the index generation consumed.
std::mt19937_64 seeded_stream(uint64_t seed, std::initializer_list<uint32_t> tags);

// Per-request lengths: kv_len, or with varlen max(round(N(kv_len, kv_len/2)), q_len); with
// zero_lengths about half of them 0 (at least one when batch > 1).
std::vector<int32_t> random_seqlens(std::mt19937_64& rng, int64_t batch, int64_t kv_len,
                                    int64_t q_len, bool varlen, bool zero_lengths);

// An (h_q,) fp32 attention sink: N(0, 1) with about 31% +inf and 31% -inf entries.
HostTensor random_attn_sink(std::mt19937_64& rng, int64_t h_q);

}  // namespace flashmla::testing
