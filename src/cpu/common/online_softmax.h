// Online softmax over tiles of scores in log2 units, shared by the CPU attention drivers.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu/common/microkernel.h"

namespace flashmla::cpu {

// Updates one row's running max m and sum l with a tile of scores: scores[j] for j < visible
// are logits in log2 units; they become probabilities exp2(s - m_new), and the rest of the tile
// (up to kKvTile) becomes 0. The running output o (d_v values) is rescaled to the new max.
inline void online_softmax_update(float* scores, int visible, float& m, float& l, float* o,
                                  int d_v) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  float tile_max = -kInf;
  for (int j = 0; j < visible; ++j) tile_max = std::max(tile_max, scores[j]);
  const float m_new = std::max(m, tile_max);
  if (m_new == -kInf) {  // nothing visible yet
    std::fill(scores, scores + kKvTile, 0.0f);
    return;
  }
  const float alpha = std::exp2(m - m_new);  // 0 when m was -inf
  float sum = 0.0f;
  for (int j = 0; j < visible; ++j) {
    scores[j] = std::exp2(scores[j] - m_new);
    sum += scores[j];
  }
  std::fill(scores + visible, scores + kKvTile, 0.0f);
  l = l * alpha + sum;
  if (alpha != 1.0f) {
    for (int c = 0; c < d_v; ++c) o[c] *= alpha;
  }
  m = m_new;
}

// The backward pass's row of probabilities and their gradient: for j < visible,
// s[j] = P = exp2(min(s[j] - lse2, 0)) (logits in log2 units, lse2 the row's log2-sum-exp; the
// clamp only matters where fp32 cannot resolve the logits) and dp[j] = P * (dp[j] - d) (dP in,
// dS out, d = rowsum(dO * O)); both are 0 from `visible` to kKvTile.
inline void softmax_grad_row(float* s, float* dp, int visible, float lse2, float d) {
  for (int j = 0; j < visible; ++j) {
    s[j] = std::exp2(std::min(s[j] - lse2, 0.0f));
    dp[j] = s[j] * (dp[j] - d);
  }
  std::fill(s + visible, s + kKvTile, 0.0f);
  std::fill(dp + visible, dp + kKvTile, 0.0f);
}

// The same with AVX-512 (softmax_avx512.cpp): a vectorised exp2 within 2 ulp of libm's and the
// sum in another order; NaN and -inf behave as above. Only where the CPU has AVX-512F/BW/VL/DQ.
void online_softmax_update_avx512(float* scores, int visible, float& m, float& l, float* o,
                                  int d_v);
void softmax_grad_row_avx512(float* s, float* dp, int visible, float lse2, float d);

// The update the drivers use in this process (isa.cpp): the AVX-512 one where the run-time ISA
// choice allows it, else the portable one above.
using SoftmaxUpdateFn = void (*)(float* scores, int visible, float& m, float& l, float* o,
                                 int d_v);
SoftmaxUpdateFn active_softmax_update();
using SoftmaxGradRowFn = void (*)(float* s, float* dp, int visible, float lse2, float d);
SoftmaxGradRowFn active_softmax_grad_row();

}  // namespace flashmla::cpu
