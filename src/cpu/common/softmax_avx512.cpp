// AVX-512 online softmax update and backward probability row (online_softmax.h's contracts, 16
// scores per step) on a vectorised exp2 for scores in log2 units.
//
// exp2(x) for x <= 0: x = n + f with n = round(x), f in [-1/2, 1/2]; 2^f by its degree-7
// Taylor polynomial (truncation below 1e-8; within 3 ulp of libm's exp2f, tested) scaled by 2^n with
// vscalefps. Arguments below -149 give exactly 0 (as -inf does); NaN stays NaN. The running max
// ignores NaN scores like the scalar std::max does; the sum propagates them.
#include <immintrin.h>

#include <cmath>
#include <limits>

#include "cpu/common/online_softmax.h"
#include "cpu/common/target.h"

FLASHMLA_TARGET_BEGIN("avx512f,avx512bw,avx512vl,avx512dq,fma")

namespace flashmla::cpu {
namespace {

inline __m512 exp2_nonpositive(__m512 x) {
  const __m512 xc = _mm512_max_ps(x, _mm512_set1_ps(-150.0f));  // NaN -> -150, fixed below
  const __m512 n = _mm512_roundscale_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(xc, n);
  // 2^f = e^(f ln2), Taylor coefficients ln2^k / k! (|f| <= 1/2).
  __m512 p = _mm512_set1_ps(1.5252734e-5f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.5403530e-4f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504109e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022651e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  __m512 y = _mm512_scalef_ps(p, n);
  y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, _mm512_set1_ps(-149.0f), _CMP_LT_OQ),
                         _mm512_setzero_ps());
  return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
}

inline __mmask16 lanes(int count) {  // the first min(max(count, 0), 16) lanes
  return count >= 16 ? __mmask16(0xffff) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1);
}

}  // namespace

void online_softmax_update_avx512(float* scores, int visible, float& m, float& l, float* o,
                                  int d_v) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  static_assert(kKvTile % 16 == 0);
  __m512 mx = _mm512_set1_ps(-kInf);
  for (int j = 0; j < visible; j += 16) {
    const __m512 s = _mm512_maskz_loadu_ps(lanes(visible - j), scores + j);
    // max(s, mx) returns mx where s is NaN; masked-off lanes hold 0: keep mx there.
    mx = _mm512_mask_max_ps(mx, lanes(visible - j), s, mx);
  }
  const float m_new = std::max(m, _mm512_reduce_max_ps(mx));
  if (m_new == -kInf) {  // nothing visible yet
    for (int j = 0; j < kKvTile; j += 16) _mm512_storeu_ps(scores + j, _mm512_setzero_ps());
    return;
  }
  const float alpha = std::exp2(m - m_new);  // 0 when m was -inf
  const __m512 mn = _mm512_set1_ps(m_new);
  __m512 sum = _mm512_setzero_ps();
  for (int j = 0; j < kKvTile; j += 16) {
    const __mmask16 k = lanes(visible - j);
    const __m512 s = _mm512_maskz_loadu_ps(k, scores + j);
    const __m512 p = _mm512_maskz_mov_ps(k, exp2_nonpositive(_mm512_sub_ps(s, mn)));
    sum = _mm512_add_ps(sum, p);
    _mm512_storeu_ps(scores + j, p);
  }
  l = l * alpha + _mm512_reduce_add_ps(sum);
  if (alpha != 1.0f) {
    const __m512 a = _mm512_set1_ps(alpha);
    int c = 0;
    for (; c + 16 <= d_v; c += 16) _mm512_storeu_ps(o + c, _mm512_mul_ps(_mm512_loadu_ps(o + c), a));
    const __mmask16 k = lanes(d_v - c);
    _mm512_mask_storeu_ps(o + c, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, o + c), a));
  }
  m = m_new;
}

void softmax_grad_row_avx512(float* s, float* dp, int visible, float lse2, float d) {
  const __m512 l2 = _mm512_set1_ps(lse2), dv = _mm512_set1_ps(d);
  for (int j = 0; j < kKvTile; j += 16) {
    const __mmask16 k = lanes(visible - j);
    const __m512 x = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + j), l2);
    // min(0, x) returns x where x is NaN (the second operand), as std::min(x, 0) does.
    const __m512 p = _mm512_maskz_mov_ps(k, exp2_nonpositive(_mm512_min_ps(_mm512_setzero_ps(), x)));
    const __m512 g = _mm512_mul_ps(p, _mm512_sub_ps(_mm512_maskz_loadu_ps(k, dp + j), dv));
    _mm512_storeu_ps(s + j, p);
    _mm512_storeu_ps(dp + j, _mm512_maskz_mov_ps(k, g));
  }
}

}  // namespace flashmla::cpu

FLASHMLA_TARGET_END
