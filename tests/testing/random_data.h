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

// Bulk test values close to N(0, 1), ~20x faster than std::normal_distribution (the caches of
// the long grid cases are 10^8 values): a xoshiro256+ stream seeded from `rng`, each draw the sum
// of four 16-bit uniforms (Irwin-Hall), centred and scaled to mean 0 and variance 1, so bounded
// by +-2*sqrt(3). The tests need seeded, plausible random values, not Gaussian tails.
class FastNormal {
 public:
  explicit FastNormal(std::mt19937_64& rng) {
    for (uint64_t& w : s_) w = rng();
    if ((s_[0] | s_[1] | s_[2] | s_[3]) == 0) s_[0] = 1;  // xoshiro's one forbidden state
  }
  float operator()() {
    const uint64_t r = next();
    const uint32_t sum = static_cast<uint32_t>((r & 0xffff) + ((r >> 16) & 0xffff) +
                                               ((r >> 32) & 0xffff) + (r >> 48));
    // Four uniforms (u + 0.5) / 65536: mean 2, variance 1/3.
    return (static_cast<float>(sum) + 2.0f - 131072.0f) * (1.7320508f / 65536.0f);
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t next() {  // xoshiro256+ (Blackman and Vigna)
    const uint64_t result = s_[0] + s_[3], t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  uint64_t s_[4];
};

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
