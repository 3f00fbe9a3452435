// FP8 KV-cache formats of DeepSeek sparse attention (reference §4), and the reference
// quantizer / dequantizer between a bf16 cache and each format.
#pragma once

#include <cstdint>

#include "flashmla/tensor.h"

namespace flashmla {

enum class KvFormat : uint8_t {
  v32,     // DeepSeek-V3.x: 656 bytes/token, token-major: 512 e4m3 | 4 fp32 scales | 64 bf16 RoPE
  model1,  // MODEL1: 584 bytes/token, block-structured: per token 448 e4m3 + 64 bf16 RoPE
           // (576 B), then per token 7 UE8M0 scales + 1 pad byte (8 B) after the whole block
};

struct KvFormatInfo {
  int d_qk;             // 576 | 512 (selects the format, as q's last dim does in FlashMLA)
  int d_nope;           // quantized channels: 512 | 448
  int d_rope;           // bf16 channels: 64
  int tile;             // channels per scale: 128 | 64
  int num_tiles;        // 4 | 7
  int bytes_per_token;  // 656 | 584
};

KvFormatInfo kv_format_info(KvFormat format);
const char* kv_format_name(KvFormat format);  // "V32" | "MODEL1"

struct KvQuantizeArgs {
  KvFormat format = KvFormat::v32;
  TensorView k;  // (num_blocks, page_block_size, 1, d_qk) bf16, last dim contiguous
  // (num_blocks, page_block_size, 1, bytes_per_token), a 1-byte dtype (uint8 | fp8_e4m3),
  // stride(1) == bytes_per_token, stride(3) == 1, stride(0) >= page_block_size *
  // bytes_per_token (padding between blocks allowed).
  TensorView cache;
};

// Writes `cache` from `k` with the reference quantizer (§4.3): per token and tile, scale =
// 2^ceil(log2(max(amax / 448, 1e-4))), values round to nearest e4m3; RoPE copied verbatim.
void quantize_kv_cache(const KvQuantizeArgs& args);

// Writes `k` from `cache` as the kernels see it (§4.3): V32: bf16(fp8 * fp32 scale); MODEL1:
// bf16(bf16(fp8) * bf16(2^(e-127))); RoPE copied verbatim.
void dequantize_kv_cache(const KvQuantizeArgs& args);

}  // namespace flashmla
