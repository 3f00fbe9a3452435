// FP8 KV-cache format descriptions and the quantize / dequantize entry points.
#include <string>

#include "core/check.h"
#include "cpu/common/kv_codec.h"
#include "flashmla/kv_format.h"

namespace flashmla {

KvFormatInfo kv_format_info(KvFormat format) {
  if (format == KvFormat::v32) {
    return {.d_qk = 576, .d_nope = 512, .d_rope = 64, .tile = 128, .num_tiles = 4,
            .bytes_per_token = 656};
  }
  return {.d_qk = 512, .d_nope = 448, .d_rope = 64, .tile = 64, .num_tiles = 7,
          .bytes_per_token = 584};
}

const char* kv_format_name(KvFormat format) {
  return format == KvFormat::v32 ? "V32" : "MODEL1";
}

namespace {

// Checks both tensors of a quantize/dequantize call; `k_written` says which one is the output.
void check_kv_args(const core::Checker& c, const KvQuantizeArgs& a, bool k_written) {
  if (a.format != KvFormat::v32 && a.format != KvFormat::model1) {
    c.fail(ErrorKind::value, "format", "KvFormat::v32 or KvFormat::model1",
           std::to_string(static_cast<int>(a.format)));
  }
  const KvFormatInfo f = kv_format_info(a.format);
  const std::string fmt = std::string(" for ") + kv_format_name(a.format);
  c.present(a.k, "k");
  c.rank(a.k, "k", 4);
  c.dtype(a.k, "k", {DType::bf16});
  const int64_t num_blocks = a.k.size(0), page = a.k.size(1);
  c.shape(a.k, "k", {num_blocks, page, 1, f.d_qk});
  c.last_dim_contiguous(a.k, "k");
  if (k_written) c.non_overlapping(a.k, "k");

  c.present(a.cache, "cache");
  c.rank(a.cache, "cache", 4);
  c.dtype(a.cache, "cache", {DType::uint8, DType::fp8_e4m3});
  c.shape(a.cache, "cache", {num_blocks, page, 1, f.bytes_per_token});
  c.last_dim_contiguous(a.cache, "cache");
  if (page > 1 && a.cache.stride(1) != f.bytes_per_token) {
    c.fail(ErrorKind::value, "cache",
           "stride(1) == " + std::to_string(f.bytes_per_token) + " (bytes per token" + fmt + ")",
           "strides " + a.cache.strides_string());
  }
  if (num_blocks > 1 && a.cache.stride(0) < page * f.bytes_per_token) {
    c.fail(ErrorKind::value, "cache",
           "stride(0) >= " + std::to_string(page * f.bytes_per_token) +
               " (page_block_size x bytes per token" + fmt + ")",
           "strides " + a.cache.strides_string());
  }
}

template <class TokenFn>
void for_each_token(const KvQuantizeArgs& a, TokenFn fn) {
  const int64_t num_blocks = a.k.size(0), page = a.k.size(1);
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < num_blocks; ++blk) {
    uint8_t* block = a.cache.ptr<uint8_t>() + blk * a.cache.stride(0);
    for (int64_t r = 0; r < page; ++r) {
      uint16_t* k = a.k.ptr<uint16_t>() + blk * a.k.stride(0) + r * a.k.stride(1);
      fn(k, cpu::kv_token_bytes(a.format, block, page, r));
    }
  }
}

}  // namespace

void quantize_kv_cache(const KvQuantizeArgs& args) {
  check_kv_args(core::Checker("quantize_kv_cache"), args, false);
  for_each_token(args, [&](uint16_t* k, cpu::KvTokenBytes t) {
    cpu::quantize_kv_token(args.format, k, t);
  });
}

void dequantize_kv_cache(const KvQuantizeArgs& args) {
  check_kv_args(core::Checker("dequantize_kv_cache"), args, true);
  for_each_token(args, [&](uint16_t* k, cpu::KvTokenBytes t) {
    cpu::dequantize_kv_token(args.format, t, k);
  });
}

}  // namespace flashmla
