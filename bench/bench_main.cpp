// flashmla_bench: Google Benchmark cases for every operation on DeepSeek model shapes and the
// tests' grids, plus the machine limits (DRAM read bandwidth, the microkernel's matrix peak)
// measured in the same run. bench/run_bench.py runs it once per microkernel (natively and with
// FLASHMLA_ISA=portable) and turns the counters into TFLOP/s, GB/s and % of roofline.
//
//   build/flashmla_bench [--threads N] [--reps N] [--min-time S] [Google Benchmark flags]
//
// Case names: "<operation>.<set>_<shape>", operation one of dense_decode, sparse_decode,
// sparse_prefill, mha_fwd, mha_bwd, peak; set "v3"/"v32" (model shapes; "tp8": a tensor-parallel
// rank's 16 heads; a size written "sq32of4096" is scaled down from the model's 4096 so that a
// call takes well under a second on a few cores) or "grid" (cases of the test suites' grids,
// small; "--benchmark_filter=grid_b2_sq1_sk140" is a sub-second smoke test).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench_cases.h"
#include "bench_util.h"
#include "cpu/common/isa.h"
#include "flashmla/flashmla.h"

namespace flashmla::bench {
namespace {

using testing::DenseDecodeCase;
using testing::MhaCase;
using testing::SparseDecodeCase;
using testing::SparsePrefillCase;

void register_cases() {
  add_peaks();
  add_insn_peaks();

  // DeepSeek-V3 dense decode: h_kv 1, d_qk 576 / d_v 512, page 64, bf16, every request of the
  // given length; s_q 2 = one MTP token (causal). h_q 128 (whole model) and 16 (a TP8 rank).
  auto v3 = [](int64_t b, int64_t sq, int64_t sk, int64_t hq) {
    return DenseDecodeCase{.batch = b, .q_len = sq, .kv_len = sk, .num_heads_q = hq,
                           .num_heads_kv = 1, .page_block_size = 64, .causal = sq > 1,
                           .dtype = DType::bf16, .seed = 1};
  };
  add_dense_decode("v3_b16_sq1_sk4096_hq128", v3(16, 1, 4096, 128));
  add_dense_decode("v3_mtp_b16_sq2_sk4096_hq128_causal", v3(16, 2, 4096, 128));
  add_dense_decode("v3_b64_sq1_sk1024_hq128", v3(64, 1, 1024, 128));
  add_dense_decode("v3_b1_sq1_sk32768_hq128", v3(1, 1, 32768, 128));
  add_dense_decode("v3_tp8_b16_sq1_sk4096_hq16", v3(16, 1, 4096, 16));
  add_dense_decode("v3_tp8_mtp_b16_sq2_sk4096_hq16_causal", v3(16, 2, 4096, 16));
  add_dense_decode("v3_tp8_b64_sq1_sk1024_hq16", v3(64, 1, 1024, 16));
  add_dense_decode("v3_tp8_b1_sq1_sk32768_hq16", v3(1, 1, 32768, 16));
  // The same cache in fp16 (fp32 products: see docs/conventions.md §11) and as FP8 V32.
  DenseDecodeCase fp16 = v3(16, 1, 4096, 128);
  fp16.dtype = DType::fp16;
  add_dense_decode("v3_fp16_b16_sq1_sk4096_hq128", fp16);
  add_dense_decode("v3_fp8_b16_sq1_sk4096_hq128", v3(16, 1, 4096, 128), /*fp8=*/true);
  add_dense_decode("v3_tp8_fp8_b16_sq1_sk4096_hq16", v3(16, 1, 4096, 16), /*fp8=*/true);

  // DeepSeek-V3.2 sparse decode: FP8 V32 cache (656 B/token), h_q 128, s_q 2, topk 2048 of
  // 32768 tokens per request, attention sink (FlashMLA's perf shape; its batches are 2, 64,
  // 74, 128: b 8 is scaled down).
  auto v32 = [](int64_t b) {
    return SparseDecodeCase{.batch = b, .q_len = 2, .num_heads_q = 128, .d_qk = 576,
                            .kv_len = 32768, .topk = 2048, .page_block_size = 64, .fp8 = true,
                            .sink = true, .seed = 1};
  };
  add_sparse_decode("v32_fp8_b2_sq2_hq128_sk32768_k2048", v32(2));
  add_sparse_decode("v32_fp8_b8of64_sq2_hq128_sk32768_k2048", v32(8));
  // The MODEL1 FP8 format (584 bytes per token, d_qk 512) on the same shape.
  SparseDecodeCase model1 = v32(2);
  model1.d_qk = 512;
  add_sparse_decode("model1_fp8_b2_sq2_hq128_sk32768_k2048", model1);

  // DeepSeek-V3.2 sparse prefill: h_q 128, d_qk 576, topk 2048, sink; s_q scaled down from
  // FlashMLA's 4096 (a call is O(s_q)).
  auto v32p = [](int64_t sq, int64_t skv) {
    return SparsePrefillCase{.q_len = sq, .kv_len = skv, .num_heads_q = 128, .d_qk = 576,
                             .topk = 2048, .sink = true, .seed = 1};
  };
  add_sparse_prefill("v32_sq32of4096_sk8192_hq128_k2048", v32p(32, 8192));
  add_sparse_prefill("v32_sq32of4096_sk32768_hq128_k2048", v32p(32, 32768));

  // Dense MHA prefill, forward and backward, causal: DeepSeek-V3's d_qk 192 / d_v 128 and
  // 128 / 128, on a TP8 rank's 16 heads, one sequence of 1024 tokens (FlashMLA's tests: 4096).
  auto mha = [](int64_t d) {
    return MhaCase{.batch = 1, .q_len = 1024, .kv_len = 1024, .num_heads_q = 16,
                   .num_heads_kv = 16, .d_qk = d, .d_v = 128, .causal = true, .seed = 1};
  };
  add_mha("v3_b1_s1024of4096_h16_d192_dv128_causal", mha(192));
  add_mha("v3_b1_s1024of4096_h16_d128_dv128_causal", mha(128));

  // Cases of the test suites' grids (FlashMLA's correctness grids, reference §6): small.
  add_dense_decode("grid_b2_sq1_sk140_hq64_hkv1",
                   {.batch = 2, .q_len = 1, .kv_len = 140, .num_heads_q = 64, .seed = 2});
  add_dense_decode("grid_b64_sq1_sk140_hq128_hkv8",
                   {.batch = 64, .q_len = 1, .kv_len = 140, .num_heads_q = 128,
                    .num_heads_kv = 8, .seed = 2});
  add_dense_decode("grid_b6_sq2_sk4096_hq64_hkv1_varlen_causal",
                   {.batch = 6, .q_len = 2, .kv_len = 4096, .num_heads_q = 64,
                    .varlen = true, .causal = true, .seed = 2});
  add_sparse_decode("grid_v32_b4_sq1_hq64_sk512_k64_p64_sink",
                    {.batch = 4, .q_len = 1, .num_heads_q = 64, .d_qk = 576, .kv_len = 512,
                     .topk = 64, .page_block_size = 64, .sink = true, .seed = 2});
  add_sparse_decode("grid_model1_b4_sq3_hq128_sk1024_k576_p61_len_sink",
                    {.batch = 4, .q_len = 3, .num_heads_q = 128, .d_qk = 512, .kv_len = 1024,
                     .topk = 576, .page_block_size = 61, .topk_length = true, .sink = true,
                     .seed = 2});
  add_sparse_prefill("grid_sq62_sk592_hq64_d576_k128",
                     {.q_len = 62, .kv_len = 592, .num_heads_q = 64, .d_qk = 576, .topk = 128,
                      .seed = 2});
  add_sparse_prefill("grid_sq213_sk1521_hq128_d512_k512_sink_len",
                     {.q_len = 213, .kv_len = 1521, .num_heads_q = 128, .d_qk = 512,
                      .topk = 512, .sink = true, .topk_length = true, .seed = 2});
  add_mha("grid_b2_sq256_sk256_h32_hk4_d128_dv128_varlen_causal",
          {.batch = 2, .q_len = 256, .kv_len = 256, .num_heads_q = 32, .num_heads_kv = 4,
           .d_qk = 128, .d_v = 128, .varlen = true, .causal = true, .seed = 2});
  add_mha("grid_b2_sq64_sk64_h8_hk8_d192_dv128",
          {.batch = 2, .q_len = 64, .kv_len = 64, .num_heads_q = 8, .num_heads_kv = 8,
           .d_qk = 192, .d_v = 128, .seed = 2});
}

// Takes "--name=value" or "--name value" out of argv; true if found.
bool take_flag(int& argc, char** argv, const char* name, std::string& value) {
  const size_t len = std::strlen(name);
  for (int i = 1; i < argc; ++i) {
    int used = 0;
    if (std::strncmp(argv[i], name, len) == 0 && argv[i][len] == '=') {
      value = argv[i] + len + 1;
      used = 1;
    } else if (std::strcmp(argv[i], name) == 0 && i + 1 < argc) {
      value = argv[i + 1];
      used = 2;
    }
    if (used) {
      for (int j = i; j + used <= argc; ++j) argv[j] = argv[j + used];
      argc -= used;
      return true;
    }
  }
  return false;
}

int parse_int(const std::string& s, const char* flag, int lo, int hi) {
  char* end = nullptr;
  const long v = std::strtol(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || v < lo || v > hi) {
    std::fprintf(stderr, "flashmla_bench: %s expects an integer in [%d, %d], got '%s'\n", flag,
                 lo, hi, s.c_str());
    std::exit(2);
  }
  return static_cast<int>(v);
}

}  // namespace
}  // namespace flashmla::bench

int main(int argc, char** argv) {
  using namespace flashmla::bench;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      std::printf(
          "flashmla_bench: FlashMLA operations on DeepSeek shapes and the tests' grids, plus the\n"
          "machine's DRAM read bandwidth and the microkernel's matrix peak (bench/run_bench.py\n"
          "runs it per microkernel and computes TFLOP/s, GB/s and %% of roofline).\n"
          "  --threads N    worker threads (default: the library's default, all cores)\n"
          "  --reps N       repetitions per case, median reported (default 5)\n"
          "  --min-time S   seconds per repetition, at least one call (default 0.1)\n"
          "Google Benchmark's flags follow.\n\n");
      break;
    }
  }
  std::string v;
  if (take_flag(argc, argv, "--threads", v)) {
    options().threads = parse_int(v, "--threads", 0, flashmla::kMaxThreads);
  }
  if (take_flag(argc, argv, "--reps", v)) options().repetitions = parse_int(v, "--reps", 1, 1000);
  if (take_flag(argc, argv, "--min-time", v)) {
    char* end = nullptr;
    options().min_time = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0' || !(options().min_time > 0)) {
      std::fprintf(stderr, "flashmla_bench: --min-time expects seconds > 0, got '%s'\n",
                   v.c_str());
      return 2;
    }
  }

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  const char* isa_env = std::getenv("FLASHMLA_ISA");
  benchmark::AddCustomContext("flashmla_version", flashmla::kVersion);
  benchmark::AddCustomContext("flashmla_microkernel", flashmla::cpu_microkernel_name());
  benchmark::AddCustomContext("flashmla_cpu_isa",
                              flashmla::cpu::isa_name(flashmla::cpu::detected_isa()));
  benchmark::AddCustomContext("flashmla_isa_cap",
                              isa_env != nullptr && *isa_env != '\0' ? isa_env : "native");
  benchmark::AddCustomContext("flashmla_threads", std::to_string(resolved_threads()));
  benchmark::AddCustomContext("l1d_bytes", std::to_string(l1d_bytes()));
  benchmark::AddCustomContext("llc_bytes", std::to_string(llc_bytes()));

  register_cases();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return any_case_failed() ? 1 : 0;
}
