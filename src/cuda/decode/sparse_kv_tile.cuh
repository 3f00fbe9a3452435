// Sparse decode's KV tile: a few dozen cache slots gathered by index into shared memory as bf16
// rows (V = the first 512 channels of the same rows). FP8 tokens (V32, MODEL1; reference §4) are
// dequantised with the CPU codec's numerics bit for bit (cpu/common/kv_codec.cpp); bf16 pools
// are copied. Slots < 0 (invalid or past the length) become rows of zeros, so that no byte of an
// unreferenced token (NaN in the tests) reaches P·V.
#pragma once

#include "cuda/common/mma_tile.cuh"
#include "cuda/common/portable.h"

FMLA_CUDA_NS_BEGIN

enum SparseKvKind : int { kSparseKvBf16 = 0, kSparseKvV32 = 1, kSparseKvModel1 = 2 };

// One pool as the kernel reads it (core::SparseKvPool with device pointers).
struct SparseKvPoolArgs {
  const uint8_t* data;
  int64_t block_stride_bytes, token_stride_bytes, page_block_size;
  int64_t num_tokens;          // slots in the cache (num_blocks * page_block_size)
  const int32_t* indices;
  int64_t indices_stride0, indices_stride1;
  int64_t topk;
  const int32_t* topk_length;  // null = topk
};

// 16 bytes from global memory: one vector load when `aligned` (address % 16 == 0), else bytes.
__device__ __forceinline__ Bytes16 load_bytes16(const uint8_t* p, bool aligned) {
  if (aligned) return *reinterpret_cast<const Bytes16*>(p);
  Bytes16 v;
  auto* d = reinterpret_cast<unsigned char*>(v.w);
FMLA_UNROLL
  for (int i = 0; i < 16; ++i) d[i] = p[i];
  return v;
}

// cpu::fp8_e4m3_to_float: OCP E4M3 "fn" (S.1111.111 is NaN, no infinities).
__device__ __forceinline__ float fp8_e4m3_to_float(uint32_t v) {
  const uint32_t exp = (v >> 3) & 0xfu, man = v & 0x7u;
  float mag;
  if (exp == 0xf && man == 0x7) {
    mag = __uint_as_float(0x7fc00000u);
  } else if (exp == 0) {
    mag = static_cast<float>(man) * 0x1p-9f;
  } else {
    mag = __uint_as_float(((exp + 120u) << 23) | (man << 20));
  }
  return (v & 0x80u) ? -mag : mag;
}

// cpu::float_to_bf16: round to nearest even, NaN kept quiet with its high payload bits.
__device__ __forceinline__ uint32_t float_to_bf16_bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return ((u >> 16) | 0x40u) & 0xffffu;
  u += 0x7fffu + ((u >> 16) & 1u);
  return u >> 16;
}

// UE8M0 byte e -> 2^(e - 127) (exact in bf16 too, so the codec's bf16 rounding is a no-op);
// 255 is NaN.
__device__ __forceinline__ float ue8m0_to_float(uint32_t e) {
  if (e == 0xffu) return __uint_as_float(0x7fc00000u);
  return e == 0 ? __uint_as_float(0x00400000u) : __uint_as_float(e << 23);
}

// 16 e4m3 values times `scale` -> 16 bf16 values: the first 8 at lo, the next 8 at hi (16 bytes
// each, 16-byte aligned).
__device__ __forceinline__ void dequant16(const Bytes16& v, float scale, uint16_t* lo_dst,
                                          uint16_t* hi_dst) {
  Bytes16 out[2];
  const auto* b = reinterpret_cast<const unsigned char*>(v.w);
FMLA_UNROLL
  for (int i = 0; i < 8; ++i) {
    const float x0 = fp8_e4m3_to_float(b[2 * i]), x1 = fp8_e4m3_to_float(b[2 * i + 1]);
    // A NaN code stays that NaN whatever the scale, as in the CPU codec.
    const uint32_t lo = float_to_bf16_bits(x0 != x0 ? x0 : x0 * scale);
    const uint32_t hi = float_to_bf16_bits(x1 != x1 ? x1 : x1 * scale);
    out[i / 4].w[i % 4] = lo | (hi << 16);
  }
  *reinterpret_cast<Bytes16*>(lo_dst) = out[0];
  *reinterpret_cast<Bytes16*>(hi_dst) = out[1];
}

// Where a tile's token bytes are read from: the pool in global memory, or a staging copy in
// shared memory (stage_kv_tile below). token(t, v): the first byte of token t (slot v) as the
// pool lays it out (V32: 656 bytes; MODEL1: 576; bf16: 2 d_qk); model1_scales(t, v): its 8
// UE8M0 scale bytes (7 used).
struct PoolTokens {
  const SparseKvPoolArgs& pool;
  __device__ __forceinline__ const uint8_t* block(int32_t v) const {
    return pool.data + (v / pool.page_block_size) * pool.block_stride_bytes;
  }
  __device__ __forceinline__ const uint8_t* token(int kind, int32_t v) const {
    const int64_t off = v % pool.page_block_size;
    return block(v) + off * (kind == kSparseKvV32      ? 656
                             : kind == kSparseKvModel1 ? 576
                                                       : pool.token_stride_bytes);
  }
  __device__ __forceinline__ const uint8_t* model1_scales(int32_t v) const {
    return block(v) + 576 * pool.page_block_size + 8 * (v % pool.page_block_size);
  }
  __device__ __forceinline__ const uint8_t* token(int kind, int /*t*/, int32_t v) const {
    return token(kind, v);
  }
  __device__ __forceinline__ const uint8_t* model1_scales(int /*t*/, int32_t v) const {
    return model1_scales(v);
  }
};

// Bytes per token in a staging copy: V32 656; MODEL1 576 + 8 scale bytes at 576, padded to 592;
// bf16 2 d_qk. All multiples of 16.
__host__ __device__ constexpr int stage_stride(int kind, int d_qk) {
  return kind == kSparseKvV32 ? 656 : kind == kSparseKvModel1 ? 592 : 2 * d_qk;
}
// The largest of those for a d_qk (what a staging buffer of `tokens` tokens needs per token).
__host__ __device__ constexpr int max_stage_stride(int d_qk) {
  return 2 * d_qk > 656 ? 2 * d_qk : 656;
}

struct StagedTokens {
  const uint8_t* stage;
  int stride;
  __device__ __forceinline__ const uint8_t* token(int, int t, int32_t) const {
    return stage + t * stride;
  }
  __device__ __forceinline__ const uint8_t* model1_scales(int t, int32_t) const {
    return stage + t * stride + 576;
  }
};

// Fills tokens [0, tokens) of a tile from the slots in s_slot (-1: zeros), reading each token's
// bytes from `src` (PoolTokens or StagedTokens); `chunk(t, c)` is where channels 8c..8c+7 of
// token t go (16-byte aligned). Every thread of the block takes part; the caller synchronises
// before and after. `aligned`: the bytes are 16-byte aligned (a staging copy always is).
template <class Source, class ChunkAt>
__device__ __forceinline__ void dequant_kv_tile(const Source& src, int kind, bool aligned,
                                                const int32_t* s_slot, int tokens, ChunkAt chunk,
                                                int d_qk) {
  // Work items per token, 16 source bytes each: bf16 rows in chunks of 8 channels; FP8 tokens
  // in chunks of 16 quantised channels, then the 64 bf16 RoPE channels in 8 chunks.
  const int d_nope = kind == kSparseKvV32 ? 512 : 448;
  const int fp8_chunks = d_nope / 16;
  const int items = kind == kSparseKvBf16 ? d_qk / 8 : fp8_chunks + 8;
  const Bytes16 zero = {{0u, 0u, 0u, 0u}};
  const int step = static_cast<int>(blockDim.x);
  for (int it = static_cast<int>(threadIdx.x); it < tokens * items; it += step) {
    const int t = it / items, c = it % items;
    const int32_t v = s_slot[t];
    const bool fp8_values = kind != kSparseKvBf16 && c < fp8_chunks;
    // The 8-channel chunk this item writes (FP8 values: it and the next one).
    const int c8 = fp8_values ? 2 * c : kind == kSparseKvBf16 ? c : d_nope / 8 + (c - fp8_chunks);
    uint16_t* dst = chunk(t, c8);
    if (v < 0) {
      *reinterpret_cast<Bytes16*>(dst) = zero;
      if (fp8_values) *reinterpret_cast<Bytes16*>(chunk(t, c8 + 1)) = zero;
      continue;
    }
    const uint8_t* tok = src.token(kind, t, v);
    if (kind == kSparseKvBf16) {
      *reinterpret_cast<Bytes16*>(dst) = load_bytes16(tok + 16 * c, aligned);
    } else if (kind == kSparseKvV32) {  // 512 e4m3 | 4 fp32 scales | 64 bf16
      if (fp8_values) {
        const uint8_t* sp = tok + 512 + 4 * (c / 8);
        uint32_t bits = 0;
        for (int i = 0; i < 4; ++i) bits |= static_cast<uint32_t>(sp[i]) << (8 * i);
        dequant16(load_bytes16(tok + 16 * c, aligned), __uint_as_float(bits), dst,
                  chunk(t, c8 + 1));
      } else {
        *reinterpret_cast<Bytes16*>(dst) = load_bytes16(tok + 528 + 16 * (c - fp8_chunks), aligned);
      }
    } else {  // MODEL1: 448 e4m3 | 64 bf16 per token; 7 UE8M0 + pad per token after the block
      if (fp8_values) {
        dequant16(load_bytes16(tok + 16 * c, aligned),
                  ue8m0_to_float(src.model1_scales(t, v)[c / 4]), dst, chunk(t, c8 + 1));
      } else {
        *reinterpret_cast<Bytes16*>(dst) = load_bytes16(tok + 448 + 16 * (c - fp8_chunks), aligned);
      }
    }
  }
}

// The tile straight from the pool.
template <class ChunkAt>
__device__ __forceinline__ void gather_kv_tile(const SparseKvPoolArgs& pool, int kind, bool aligned,
                                               const int32_t* s_slot, int tokens, ChunkAt chunk,
                                               int d_qk) {
  dequant_kv_tile(PoolTokens{pool}, kind, aligned, s_slot, tokens, chunk, d_qk);
}

// Starts copying the raw bytes of the tile's valid tokens into `stage` (stage_stride(kind, d_qk)
// bytes per token) with cp.async, without waiting: the caller commits, and waits before
// dequant_kv_tile(StagedTokens{...}) reads them, so the copy overlaps whatever runs between.
// Needs a 16-byte aligned pool (SparseDecodeArgs::kv_aligned). Every thread takes part.
__device__ __forceinline__ void stage_kv_tile(const SparseKvPoolArgs& pool, int kind,
                                              const int32_t* s_slot, int tokens, uint8_t* stage,
                                              int d_qk) {
  const PoolTokens src{pool};
  const int stride = stage_stride(kind, d_qk);
  // 16-byte pieces per token (MODEL1: 36 of the token, then one of 8 scale bytes).
  const int pieces = kind == kSparseKvV32 ? 41 : kind == kSparseKvModel1 ? 37 : 2 * d_qk / 16;
  const int step = static_cast<int>(blockDim.x);
  for (int it = static_cast<int>(threadIdx.x); it < tokens * pieces; it += step) {
    const int t = it / pieces, c = it % pieces;
    const int32_t v = s_slot[t];
    if (v < 0) continue;  // dequant_kv_tile writes its zeros without reading
    if (kind == kSparseKvModel1 && c == 36) {
      cp_async_8(stage + t * stride + 576, src.model1_scales(v));
    } else {
      cp_async_16(stage + t * stride + 16 * c, src.token(kind, v) + 16 * c, 16);
    }
  }
}

// The same into row-major rows of stride ldk (bf16).
__device__ __forceinline__ void gather_kv_tile(const SparseKvPoolArgs& pool, int kind, bool aligned,
                                               const int32_t* s_slot, int tokens, uint16_t* sk,
                                               int ldk, int d_qk) {
  gather_kv_tile(pool, kind, aligned, s_slot, tokens,
                 [=](int t, int c8) { return sk + t * ldk + 8 * c8; }, d_qk);
}

FMLA_CUDA_NS_END
