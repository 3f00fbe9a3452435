#include "testing/random_data.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace flashmla::testing {

std::mt19937_64 seeded_stream(uint64_t seed, std::initializer_list<uint32_t> tags) {
  std::vector<uint32_t> words{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
  words.insert(words.end(), tags.begin(), tags.end());
  std::seed_seq seq(words.begin(), words.end());
  return std::mt19937_64(seq);
}

std::vector<int32_t> random_seqlens(std::mt19937_64& rng, int64_t batch, int64_t kv_len,
                                    int64_t q_len, bool varlen, bool zero_lengths) {
  std::vector<int32_t> seqlens(static_cast<size_t>(batch), static_cast<int32_t>(kv_len));
  if (varlen) {
    const double mean = static_cast<double>(kv_len);
    std::normal_distribution<double> normal(mean, mean / 2);
    for (int32_t& len : seqlens) {
      len = static_cast<int32_t>(std::max<int64_t>(std::llround(normal(rng)), q_len));
    }
  }
  if (zero_lengths) {
    std::bernoulli_distribution coin(0.5);
    bool any_zero = false;
    for (int32_t& len : seqlens) {
      if (coin(rng)) {
        len = 0;
        any_zero = true;
      }
    }
    if (batch > 1 && !any_zero) {
      seqlens[std::uniform_int_distribution<size_t>(0, seqlens.size() - 1)(rng)] = 0;
    }
  }
  return seqlens;
}

HostTensor random_attn_sink(std::mt19937_64& rng, int64_t h_q) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  const float inf = std::numeric_limits<float>::infinity();
  HostTensor sink = HostTensor::empty(DType::fp32, {h_q});
  for (int64_t h = 0; h < h_q; ++h) {
    const float value = normal(rng), u = uniform(rng);
    sink.set({h}, u < 0.31f ? inf : u < 0.62f ? -inf : value);
  }
  return sink;
}

}  // namespace flashmla::testing
