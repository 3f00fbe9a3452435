// Portable fp32 microkernel: K packed transposed (d_qk x kKvTile) and V row-major
// (kKvTile x d_v), so that every inner loop runs over contiguous memory without reductions.
#include <algorithm>
#include <cstring>

#include "cpu/common/half.h"
#include "cpu/common/microkernel.h"

namespace flashmla::cpu {
namespace {

// Converts n elements of `dtype` at src to fp32.
void to_float(const void* src, DType dtype, int n, float* dst) {
  const auto* h = static_cast<const uint16_t*>(src);
  switch (dtype) {
    case DType::bf16:
      for (int c = 0; c < n; ++c) dst[c] = bf16_to_float(h[c]);
      break;
    case DType::fp16:
      for (int c = 0; c < n; ++c) dst[c] = fp16_to_float(h[c]);
      break;
    case DType::fp32:
      std::memcpy(dst, src, sizeof(float) * n);
      break;
    default:
      std::fill(dst, dst + n, 0.0f);  // unreachable: the drivers pass float dtypes only
  }
}

size_t packed_q_bytes(int m, int d) { return sizeof(float) * m * d; }
size_t packed_k_bytes(int d) { return sizeof(float) * d * kKvTile; }
size_t packed_v_bytes(int d) { return sizeof(float) * kKvTile * d; }

// Rows as fp32, row-major (m, d): the left operand of qk and the right operand of pt.
void pack_q(const void* const* rows, int m, DType dtype, int d, void* packed_q) {
  auto* q = static_cast<float*>(packed_q);
  for (int i = 0; i < m; ++i) to_float(rows[i], dtype, d, q + static_cast<size_t>(i) * d);
}

void pack_kv(const void* const* tokens, int n, DType dtype, int d_qk, int d_v, void* packed_k,
             void* packed_v) {
  auto* kt = static_cast<float*>(packed_k);  // [d_qk][kKvTile]
  auto* v = static_cast<float*>(packed_v);   // [kKvTile][d_v]
  const size_t elem = dtype_size(dtype);
  for (int j = 0; j < n; ++j) {
    // V = the first d_v channels; K = all d_qk channels (V's, then the rest).
    float* vj = v + static_cast<size_t>(j) * d_v;
    to_float(tokens[j], dtype, d_v, vj);
    for (int c = 0; c < d_v; ++c) kt[static_cast<size_t>(c) * kKvTile + j] = vj[c];
    for (int c = d_v; c < d_qk; ++c) {
      to_float(static_cast<const char*>(tokens[j]) + elem * c, dtype, 1,
               kt + static_cast<size_t>(c) * kKvTile + j);
    }
  }
  for (int j = n; j < kKvTile; ++j) {
    for (int c = 0; c < d_qk; ++c) kt[static_cast<size_t>(c) * kKvTile + j] = 0.0f;
    std::fill(v + static_cast<size_t>(j) * d_v, v + static_cast<size_t>(j + 1) * d_v, 0.0f);
  }
}

// K transposed: [d][kKvTile].
void pack_k(const void* const* tokens, int n, DType dtype, int d, void* packed_k) {
  auto* kt = static_cast<float*>(packed_k);
  const size_t elem = dtype_size(dtype);
  for (int j = 0; j < n; ++j) {
    const auto* token = static_cast<const char*>(tokens[j]);
    for (int c = 0; c < d; ++c) {
      to_float(token + elem * c, dtype, 1, kt + static_cast<size_t>(c) * kKvTile + j);
    }
  }
  for (int c = 0; c < d; ++c) {
    std::fill(kt + static_cast<size_t>(c) * kKvTile + n, kt + static_cast<size_t>(c + 1) * kKvTile,
              0.0f);
  }
}

// V row-major: [kKvTile][d].
void pack_v(const void* const* tokens, int n, DType dtype, int d, void* packed_v) {
  auto* v = static_cast<float*>(packed_v);
  for (int j = 0; j < n; ++j) to_float(tokens[j], dtype, d, v + static_cast<size_t>(j) * d);
  std::fill(v + static_cast<size_t>(n) * d, v + static_cast<size_t>(kKvTile) * d, 0.0f);
}

void qk(const void* packed_q, int m, const void* packed_k, int d_qk, float scale, float* s) {
  const auto* q = static_cast<const float*>(packed_q);
  const auto* kt = static_cast<const float*>(packed_k);
  for (int i = 0; i < m; ++i) {
    float acc[kKvTile] = {};
    const float* qi = q + static_cast<size_t>(i) * d_qk;
    for (int c = 0; c < d_qk; ++c) {
      const float qc = qi[c];
      const float* kc = kt + static_cast<size_t>(c) * kKvTile;
      for (int j = 0; j < kKvTile; ++j) acc[j] += qc * kc[j];
    }
    for (int j = 0; j < kKvTile; ++j) s[static_cast<size_t>(i) * kKvTile + j] = acc[j] * scale;
  }
}

void pv(const float* p, int m, int n, const void* packed_v, int d_v, float* o) {
  const auto* v = static_cast<const float*>(packed_v);
  for (int i = 0; i < m; ++i) {
    float* oi = o + static_cast<size_t>(i) * d_v;
    for (int j = 0; j < n; ++j) {
      const float pj = p[static_cast<size_t>(i) * kKvTile + j];
      if (pj == 0.0f) continue;  // masked token: contributes nothing
      const float* vj = v + static_cast<size_t>(j) * d_v;
      for (int c = 0; c < d_v; ++c) oi[c] += pj * vj[c];
    }
  }
}

void pt(const float* p, int m, const void* packed_rows, int d, float* acc) {
  const auto* rows = static_cast<const float*>(packed_rows);
  for (int i = 0; i < m; ++i) {
    const float* ri = rows + static_cast<size_t>(i) * d;
    for (int j = 0; j < kKvTile; ++j) {
      const float pij = p[static_cast<size_t>(i) * kKvTile + j];
      if (pij == 0.0f) continue;  // masked or padded token: contributes nothing
      float* aj = acc + static_cast<size_t>(j) * d;
      for (int c = 0; c < d; ++c) aj[c] += pij * ri[c];
    }
  }
}

}  // namespace

const AttnMicrokernel& portable_microkernel() {
  static const AttnMicrokernel k{
      .name = "portable",
      .packed_q_bytes = packed_q_bytes,
      .packed_k_bytes = packed_k_bytes,
      .packed_v_bytes = packed_v_bytes,
      .packed_rows_bytes = packed_q_bytes,
      .pack_q = pack_q,
      .pack_kv = pack_kv,
      .pack_k = pack_k,
      .pack_v = pack_v,
      .pack_rows = pack_q,
      .qk = qk,
      .pv = pv,
      .pt = pt,
      .packed_qt_bytes = nullptr,  // no token-major qk: the drivers pack K
      .pack_qt = nullptr,
      .qk_tokens = nullptr,
  };
  return k;
}

}  // namespace flashmla::cpu
