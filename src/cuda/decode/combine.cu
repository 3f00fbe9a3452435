// Split-KV combine on the GPU (reference §5.6), the CUDA twin of cpu/decode/combine.cpp.
//
// Grid (rows, head groups), 256 threads: one warp per (request, query token, head), each lane a
// slice of d_v. The max over the pieces is a shuffle reduction (exact, so order-free); the sum of
// 2^(l_k - M) and the weighted sum of the pieces run in piece order, each lane taking the
// pieces' values from their owners by __shfl_sync, so every partial sum is rounded as in the CPU
// combine. Products are separately rounded (__fmul_rn) as the CPU computes them (no fma). With
// the host's exp2f / log2f (the harness) the output is bit-identical to the CPU combine; on the
// GPU exp2f / log2f may differ from glibc by an ulp or two.
#include "cuda/decode/combine.h"

#include <cmath>
#include <cstdint>

#include "cuda/common/portable.h"

FMLA_CUDA_NS_BEGIN

namespace {

constexpr int kWarps = 8;               // heads per block
constexpr int kThreads = 32 * kWarps;
constexpr int kVecPerLane = 4;          // float4 loads per lane per column chunk
constexpr int kChunk = 32 * 4 * kVecPerLane;  // columns per chunk (512)
constexpr int kColsPerLane = kChunk / 32;     // 16
constexpr float kLog2e = 1.4426950408889634f;  // (float)M_LOG2E, as the CPU combine uses

__device__ __forceinline__ float pos_inf() { return __int_as_float(0x7f800000); }

// Bytes of one output element (bf16 / fp16 / fp32; the API accepts no other output dtype).
__host__ __device__ __forceinline__ int64_t out_bytes(DType dtype) {
  return dtype == DType::fp32 ? 4 : 2;
}

// Column of element i (< kColsPerLane) of this lane inside a chunk. Vectorised: 4 consecutive
// columns per float4, lanes side by side (512-byte warp loads); scalar: lane + 32 i.
template <bool kVec>
__device__ __forceinline__ int column(int lane, int i) {
  return kVec ? (i / 4) * 128 + lane * 4 + (i % 4) : lane + 32 * i;
}

template <bool kVec>
__device__ __forceinline__ void store_out(const core::CombineParams& p, void* out_row, int64_t c0,
                                          const float (&acc)[kColsPerLane], int lane) {
FMLA_UNROLL
  for (int i = 0; i < kColsPerLane; i += (kVec ? 4 : 1)) {
    const int64_t c = c0 + column<kVec>(lane, i);
    if (c >= p.d_v) break;  // d_v % 4 == 0 in the vectorised path: whole float4s
    if (p.out_dtype == DType::bf16) {
      auto* o = static_cast<__nv_bfloat16*>(out_row) + c;
      if constexpr (kVec) {
        uint2 v;
        v.x = pack_bf16x2(acc[i], acc[i + 1]);
        v.y = pack_bf16x2(acc[i + 2], acc[i + 3]);
        *reinterpret_cast<uint2*>(o) = v;
      } else {
        *o = __float2bfloat16_rn(acc[i]);
      }
    } else if (p.out_dtype == DType::fp16) {
      auto* o = static_cast<__half*>(out_row) + c;
      if constexpr (kVec) {
        uint2 v;
        v.x = pack_f16x2(acc[i], acc[i + 1]);
        v.y = pack_f16x2(acc[i + 2], acc[i + 3]);
        *reinterpret_cast<uint2*>(o) = v;
      } else {
        *o = __float2half_rn(acc[i]);
      }
    } else {
      float* o = static_cast<float*>(out_row) + c;
      if constexpr (kVec) {
        *reinterpret_cast<float4*>(o) = make_float4(acc[i], acc[i + 1], acc[i + 2], acc[i + 3]);
      } else {
        *o = acc[i];
      }
    }
  }
}

// One row (request r, token s, head h) with n >= 2 pieces starting at slot `first`; the whole
// warp calls it (every shuffle below is warp-uniform).
template <bool kVec>
__device__ __forceinline__ void combine_row(const core::CombineParams& p, int64_t r, int64_t s,
                                            int64_t h, int64_t first, int n, int lane) {
  const float inf = pos_inf();
  const float* lse_row = p.lse_accum + first * p.lse_accum_stride[0] +
                         s * p.lse_accum_stride[1] + h * p.lse_accum_stride[2];
  const int64_t ls = p.lse_accum_stride[0];

  float m = -inf;  // fmaxf ignores NaN pieces, as std::max(m, x) with m never NaN does
  for (int k = lane; k < n; k += 32) m = fmaxf(m, lse_row[k * ls]);
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(kFullMask, m, off));
  if (m == -inf) m = 0.0f;

  float sum = 0.0f;  // in piece order
  for (int k0 = 0; k0 < n; k0 += 32) {
    const int k = k0 + lane;
    const float e = k < n ? exp2f(lse_row[k * ls] - m) : 0.0f;
    const int count = n - k0 < 32 ? n - k0 : 32;
    for (int j = 0; j < count; ++j) sum += __shfl_sync(kFullMask, e, j);
  }
  float g = sum == 0.0f ? inf : log2f(sum) + m;
  if (lane == 0) p.lse[r * p.lse_stride[0] + h * p.lse_stride[1] + s * p.lse_stride[2]] = g / kLog2e;
  if (p.attn_sink != nullptr) {
    const float sink = p.attn_sink[h];
    if (g != inf) {
      g += log2f(1.0f + exp2f(__fmul_rn(sink, kLog2e) - g));
    } else {
      g = sink == -inf ? inf : __fmul_rn(sink, kLog2e);
    }
  }

  const float* o_row = p.o_accum + first * p.o_accum_stride[0] + s * p.o_accum_stride[1] +
                       h * p.o_accum_stride[2];
  const int64_t os = p.o_accum_stride[0];
  void* out_row = static_cast<char*>(p.out) +
                  out_bytes(p.out_dtype) *
                      (r * p.out_stride[0] + s * p.out_stride[1] + h * p.out_stride[2]);
  for (int64_t c0 = 0; c0 < p.d_v; c0 += kChunk) {
    float acc[kColsPerLane];
FMLA_UNROLL
    for (int i = 0; i < kColsPerLane; ++i) acc[i] = 0.0f;
    const int64_t cols = p.d_v - c0;  // columns of this chunk: min(cols, kChunk)
    for (int k0 = 0; k0 < n; k0 += 32) {
      const int k = k0 + lane;
      const float w_mine = k < n ? exp2f(lse_row[k * ls] - g) : 0.0f;
      const int count = n - k0 < 32 ? n - k0 : 32;
      for (int j = 0; j < count; ++j) {
        const float w = __shfl_sync(kFullMask, w_mine, j);
        if (w == 0.0f) continue;  // an empty piece adds nothing (uniform over the warp)
        const float* o = o_row + (k0 + j) * os + c0;
        if constexpr (kVec) {
FMLA_UNROLL
          for (int v = 0; v < kVecPerLane; ++v) {
            const int c = column<true>(lane, 4 * v);
            if (c >= cols) break;
            const float4 x = *reinterpret_cast<const float4*>(o + c);
            acc[4 * v + 0] += __fmul_rn(w, x.x);
            acc[4 * v + 1] += __fmul_rn(w, x.y);
            acc[4 * v + 2] += __fmul_rn(w, x.z);
            acc[4 * v + 3] += __fmul_rn(w, x.w);
          }
        } else {
FMLA_UNROLL
          for (int i = 0; i < kColsPerLane; ++i) {
            const int c = column<false>(lane, i);
            if (c >= cols) break;
            acc[i] += __fmul_rn(w, o[c]);
          }
        }
      }
    }
    store_out<kVec>(p, out_row, c0, acc, lane);
  }
}

}  // namespace

template <bool kVec>
__global__ void __launch_bounds__(kThreads, 1) combine_splitkv__sm80(const core::CombineParams p) {
  const int64_t rows = p.batch * p.q_len;
  const int lane = lane_id();
  for (int64_t rs = blockIdx.x; rs < rows; rs += gridDim.x) {
    const int64_t r = rs / p.q_len, s = rs % p.q_len;
    const int64_t first = p.num_splits[r], n64 = int64_t{p.num_splits[r + 1]} - first;
    if (n64 < 2) continue;  // written by the split kernel (or nothing to write): untouched
    // Pieces outside the accumulators (num_splits is device data, unchecked): nothing is read
    // and the request's rows stay untouched.
    if (first < 0 || first + n64 > p.num_slots) continue;
    const int n = static_cast<int>(n64);
    for (int64_t h = int64_t{blockIdx.y} * kWarps + warp_id(); h < p.num_heads_q;
         h += int64_t{gridDim.y} * kWarps) {
      combine_row<kVec>(p, r, s, h, first, n, lane);
    }
  }
}

void run_combine(const core::CombineParams& p, void* stream) {
  const int64_t rows = p.batch * p.q_len;
  if (rows <= 0 || p.num_heads_q <= 0 || p.d_v <= 0) return;
  const int64_t groups = (p.num_heads_q + kWarps - 1) / kWarps;
  const dim3 grid(static_cast<unsigned>(rows < 0x7fffffff ? rows : 0x7fffffff),
                  static_cast<unsigned>(groups < 65535 ? groups : 65535));
  // float4 loads and 4-element stores when every row and column group is 16-byte aligned.
  const auto aligned = [](const void* ptr, int64_t bytes) {
    return reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
  };
  const bool vec = p.d_v % 4 == 0 && aligned(p.o_accum, 16) && p.o_accum_stride[0] % 4 == 0 &&
                   p.o_accum_stride[1] % 4 == 0 && p.o_accum_stride[2] % 4 == 0 &&
                   aligned(p.out, 4 * out_bytes(p.out_dtype)) && p.out_stride[0] % 4 == 0 &&
                   p.out_stride[1] % 4 == 0 && p.out_stride[2] % 4 == 0;
  if (vec) {
    FMLA_LAUNCH(combine_splitkv__sm80<true>, grid, dim3(kThreads), 0, stream, p);
  } else {
    FMLA_LAUNCH(combine_splitkv__sm80<false>, grid, dim3(kThreads), 0, stream, p);
  }
}

void combine_decode_accumulators(int64_t batch, int64_t q_len, int64_t num_heads_q, int64_t d_v,
                                 const float* lse_accum, const float* o_accum,
                                 int64_t num_slots, const int32_t* num_splits,
                                 const float* attn_sink,
                                 DType out_dtype, void* out, const int64_t out_stride[3],
                                 float* lse, const int64_t lse_stride[3], void* stream) {
  // num_splits lives on the device: unlike the CPU version there is no "nothing split" early
  // return; blocks of unsplit requests exit at once.
  const int64_t slot_rows = q_len * num_heads_q;
  core::CombineParams p;
  p.batch = batch;
  p.q_len = q_len;
  p.num_heads_q = num_heads_q;
  p.d_v = d_v;
  p.lse_accum = lse_accum;
  p.lse_accum_stride[0] = slot_rows;
  p.lse_accum_stride[1] = num_heads_q;
  p.lse_accum_stride[2] = 1;
  p.o_accum = o_accum;
  p.o_accum_stride[0] = slot_rows * d_v;
  p.o_accum_stride[1] = num_heads_q * d_v;
  p.o_accum_stride[2] = d_v;
  p.num_slots = num_slots;
  p.num_splits = num_splits;
  p.attn_sink = attn_sink;
  p.out_dtype = out_dtype;
  p.out = out;
  for (int i = 0; i < 3; ++i) {
    p.out_stride[i] = out_stride[i];
    p.lse_stride[i] = lse_stride[i];
  }
  p.lse = lse;
  run_combine(p, stream);
}

FMLA_CUDA_NS_END
