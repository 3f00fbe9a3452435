// libFuzzer target: the FP8 KV-cache formats (V32 and MODEL1). Any cache bytes (every e4m3 code,
// any fp32 / UE8M0 scale, NaN and inf included) dequantize without a fault, and the AVX-512
// dequantizer gives bit for bit what the scalar one gives (where the CPU has AVX-512); the public
// quantize / dequantize calls take fuzzed shapes, strides and dtypes and either succeed or throw
// flashmla::Error.
#include <cstring>
#include <vector>

#include "cpu/common/kv_codec.h"
#include "flashmla/kv_format.h"
#include "fuzz_common.h"

using namespace flashmla;
using flashmla::fuzz::Tensor;

namespace {

bool has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider f(data, size);
  namespace fz = flashmla::fuzz;
  const KvFormat format = f.ConsumeBool() ? KvFormat::v32 : KvFormat::model1;
  const KvFormatInfo info = kv_format_info(format);
  const int64_t page = f.ConsumeIntegralInRange<int64_t>(1, 5);

  // One block of raw bytes, every token decoded by both dequantizers.
  std::vector<uint8_t> block = f.ConsumeBytes<uint8_t>(static_cast<size_t>(page) * info.bytes_per_token);
  block.resize(static_cast<size_t>(page) * info.bytes_per_token, 0x7f);
  std::vector<uint16_t> scalar(info.d_qk), vec(info.d_qk);
  for (int64_t r = 0; r < page; ++r) {
    const cpu::KvTokenBytes t = cpu::kv_token_bytes(format, block.data(), page, r);
    cpu::dequantize_kv_token(format, t, scalar.data());
    if (has_avx512()) {
      cpu::dequantize_kv_token_avx512(format, t, vec.data());
      if (std::memcmp(scalar.data(), vec.data(), scalar.size() * 2) != 0) __builtin_trap();
    }
  }

  // The public calls on fuzzed views.
  const int64_t blocks = f.ConsumeIntegralInRange<int64_t>(1, 3);
  Tensor k(f, fz::dtype(f, DType::bf16), {fz::dim(f, blocks), fz::dim(f, page), fz::dim(f, 1),
                                         fz::dim(f, info.d_qk)});
  Tensor cache(f, fz::dtype(f, DType::uint8), {fz::dim(f, blocks), fz::dim(f, page), fz::dim(f, 1),
                                              fz::dim(f, info.bytes_per_token)});
  const KvQuantizeArgs args{.format = format, .k = k.view(), .cache = cache.view()};
  if (f.ConsumeBool()) {
    fz::call([&] { quantize_kv_cache(args); });
  } else {
    fz::call([&] { dequantize_kv_cache(args); });
  }
  return 0;
}
