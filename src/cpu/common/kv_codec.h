// Byte-level encoding of one token in the FP8 KV-cache formats (reference §4).
#pragma once

#include <cstdint>

#include "flashmla/kv_format.h"

namespace flashmla::cpu {

// Where one token's bytes live inside its page block.
struct KvTokenBytes {
  uint8_t* values;  // V32: the token's 656 bytes; MODEL1: its 576 bytes (448 e4m3 + 64 bf16)
  uint8_t* scales;  // V32: values + 512 (4 fp32); MODEL1: block + 576*B + 8*r (7 UE8M0 + pad)
};

inline KvTokenBytes kv_token_bytes(KvFormat format, uint8_t* block, int64_t page_block_size,
                                   int64_t r) {
  if (format == KvFormat::v32) {
    uint8_t* t = block + 656 * r;
    return {t, t + 512};
  }
  return {block + 576 * r, block + 576 * page_block_size + 8 * r};
}

// Quantizes one token of d_qk bf16 values (reference quantizer, §4.3).
void quantize_kv_token(KvFormat format, const uint16_t* k, KvTokenBytes dst);

// Dequantizes one token into d_qk bf16 values, with the kernels' numerics (§4.3).
void dequantize_kv_token(KvFormat format, KvTokenBytes src, uint16_t* k);
// The same, bit for bit, 16 values per AVX-512 step (kv_codec_avx512.cpp); only where the CPU
// has AVX-512F/BW/VL/DQ.
void dequantize_kv_token_avx512(KvFormat format, KvTokenBytes src, uint16_t* k);

// The dequantizer the kernels use in this process: the AVX-512 one where the run-time ISA choice
// (isa.cpp, capped by FLASHMLA_ISA) allows it, else the scalar one.
using DequantizeKvTokenFn = void (*)(KvFormat format, KvTokenBytes src, uint16_t* k);
DequantizeKvTokenFn active_kv_dequantizer();

}  // namespace flashmla::cpu
