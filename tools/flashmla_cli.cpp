// flashmla_cli: runs MLA attention on realistic shapes, checks a sample against the reference
// and prints a table (case, µs, TFLOP/s, GB/s, max error). The main job of `make run`.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "cli_cases.h"
#include "flashmla/flashmla.h"
#include "gpu/gpu_device.h"

namespace {

using flashmla::DType;
using flashmla::cli::Row;
using flashmla::testing::DenseDecodeCase;
using flashmla::testing::SparsePrefillCase;

struct Options {
  std::string preset = "v3-decode-quick";
  std::vector<int64_t> batch, mean_len;
  int64_t q_len = 0, heads_q = 0, heads_kv = 0, page_block_size = 0, topk = 0;
  std::string dtype;
  bool causal = false;
  int threads = 0, warmup = 2, iters = 5, check_requests = 2;
  uint64_t seed = 1;
  std::string device = "cpu";
};

enum class Op { dense_decode, sparse_decode, sparse_prefill, mha_prefill };

// A preset: an operation on DeepSeek shapes (h_kv 1, d_qk 576, d_v 512). Dense decode: batch
// sizes and mean lengths, each request's length max(N(mean, mean/2), q_len). Sparse prefill:
// `mean_len` are s_kv values, `batch` is unused, topk indices per query token. Sparse decode:
// FP8 V32 cache, `mean_len` tokens per request, topk indices per query token. MHA prefill:
// `batch` sequences of `mean_len` queries and keys each (d_qk 192, d_v 128, h_kv = h_q unless
// --heads-kv), forward and backward.
struct Preset {
  const char* help;
  Op op;
  std::vector<int64_t> batch, mean_len;
  int64_t q_len, heads_q;
  bool causal;
  int64_t topk;
};

const std::map<std::string, Preset>& presets() {
  static const std::map<std::string, Preset> p = {
      {"v3-decode-quick", {"DeepSeek-V3 dense decode, h_q 128, s_q 1, small batch (seconds)",
                           Op::dense_decode, {2}, {512, 2048}, 1, 128, false, 0}},
      {"v3-decode", {"DeepSeek-V3 dense decode, h_q 128, s_q 1, b 16, lengths 1K-4K",
                     Op::dense_decode, {16}, {1024, 4096}, 1, 128, false, 0}},
      {"v3-decode-mtp", {"DeepSeek-V3 dense decode with one MTP token (s_q 2, causal)",
                         Op::dense_decode, {16}, {4096}, 2, 128, true, 0}},
      {"v3-decode-tp8", {"DeepSeek-V3 dense decode on a tensor-parallel rank (h_q 16)",
                         Op::dense_decode, {16, 64}, {4096}, 1, 16, false, 0}},
      {"v32-sparse-decode", {"DeepSeek-V3.2 sparse decode, FP8 V32 cache, h_q 128, s_q 2, "
                             "topk 2048, b 16, 4K tokens per request",
                             Op::sparse_decode, {16}, {4096}, 2, 128, false, 2048}},
      {"v32-sparse-prefill", {"DeepSeek-V3.2 sparse prefill, h_q 128, topk 2048, s_kv 8K, "
                              "s_q 256 (FlashMLA's perf shape: -s 4096)",
                              Op::sparse_prefill, {1}, {8192}, 256, 128, false, 2048}},
      {"mha-prefill", {"DeepSeek-V3 MHA prefill (d_qk 192, d_v 128), forward and backward, "
                       "causal, on a tensor-parallel rank (h 16), b 1, lengths 1K and 2K",
                       Op::mha_prefill, {1}, {1024, 2048}, 0, 16, true, 0}},
  };
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  const auto positive = CLI::Range(int64_t{1}, int64_t{1} << 30);
  const auto non_negative = CLI::Range(int64_t{0}, int64_t{1} << 30);
  CLI::App app{"Runs DeepSeek MLA attention (dense and sparse decode, sparse prefill, MHA "
               "prefill forward and backward) on realistic shapes, "
               "checks a sample against the double-precision reference and prints a table.\n"
               "Shape options override the preset's values."};
  std::string preset_help = "Preset to run:";
  for (const auto& [name, p] : presets()) preset_help += "\n  " + name + ": " + p.help;
  app.add_option("--preset", opt.preset, preset_help)->capture_default_str();
  app.add_option("-b,--batch", opt.batch, "Batch sizes (requests per step), e.g. -b 1 16 64")
      ->check(positive);
  app.add_option("-l,--mean-len", opt.mean_len,
                 "Decode: mean KV lengths, each request's max(N(mean, mean/2), q_len); "
                 "sparse prefill: s_kv values; MHA prefill: keys per sequence")
      ->check(non_negative);
  app.add_option("--topk", opt.topk, "Sparse decode / prefill: indices per query token")
      ->check(positive);
  app.add_option("-s,--q-len", opt.q_len,
                 "Query tokens per request (s_q; >1 for MTP); sparse prefill: query tokens; "
                 "MHA prefill: queries per sequence (default: its key count)")
      ->check(positive);
  app.add_option("--heads-q", opt.heads_q, "Query heads (h_q)")->check(positive);
  app.add_option("--heads-kv", opt.heads_kv, "KV heads (h_kv, must divide h_q); default 1")
      ->check(positive);
  app.add_option("--page-block-size", opt.page_block_size, "Tokens per cache page; default 64")
      ->check(positive);
  app.add_option("--dtype", opt.dtype, "bf16 or fp16; default bf16")
      ->check(CLI::IsMember({"bf16", "fp16"}));
  app.add_flag("--causal", opt.causal, "Causal mask (bottom-right aligned) when s_q > 1");
  app.add_option("-t,--threads", opt.threads, "Worker threads; 0 = default")
      ->capture_default_str()->check(non_negative);
  app.add_option("--warmup", opt.warmup, "Untimed calls per case")
      ->capture_default_str()->check(non_negative);
  app.add_option("--iters", opt.iters, "Timed calls per case (the median is reported)")
      ->capture_default_str()->check(positive);
  app.add_option("--check-requests", opt.check_requests,
                 "Requests (decode), query tokens (sparse prefill) or sequences (MHA prefill, "
                 "first KV head's query heads) per case checked against the reference (0 = none)")
      ->capture_default_str()->check(non_negative);
  app.add_option("--seed", opt.seed, "Random seed")->capture_default_str();
  app.add_option("--device", opt.device,
                 "cpu, or cuda: the case's tensors on the current CUDA device, calls timed with "
                 "CUDA events (exit status 3 when there is none)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  const auto it = presets().find(opt.preset);
  if (it == presets().end()) {
    std::fprintf(stderr, "unknown preset '%s' (see --help)\n", opt.preset.c_str());
    return 2;
  }
  const Preset& pre = it->second;
  const std::vector<int64_t> batches = opt.batch.empty() ? pre.batch : opt.batch;
  const std::vector<int64_t> lens = opt.mean_len.empty() ? pre.mean_len : opt.mean_len;
  const int64_t q_len = opt.q_len ? opt.q_len : pre.q_len;
  const bool causal = opt.causal || pre.causal;

  const flashmla::cli::RunOptions run{.threads = opt.threads, .warmup = opt.warmup,
                                      .iters = opt.iters, .check = opt.check_requests,
                                      .cuda = opt.device == "cuda"};
  if (run.cuda) {
    std::string why;
    if (!flashmla::gpu_testing::open_device(&why)) {
      std::fprintf(stderr, "--device cuda: no CUDA device: %s\n", why.c_str());
      return 3;
    }
    std::printf("flashmla %s | preset %s | device %s\n", flashmla::kVersion, opt.preset.c_str(),
                flashmla::gpu_testing::device_description().c_str());
  } else {
    std::printf("flashmla %s | preset %s | threads %d | microkernel %s\n", flashmla::kVersion,
                opt.preset.c_str(), flashmla::resolved_num_threads({.num_threads = opt.threads}),
                flashmla::cpu_microkernel_name());
  }
  std::printf("%-58s %12s %9s %9s %10s %6s\n", "case", "us", "TFLOP/s", "GB/s", "max_err",
              "check");
  bool all_ok = true;
  try {
    for (int64_t b : batches) {
      for (int64_t len : lens) {
        const int64_t heads_q = opt.heads_q ? opt.heads_q : pre.heads_q;
        std::vector<Row> rows(1);
        Row& r = rows[0];
        if (pre.op == Op::mha_prefill) {
          rows = flashmla::cli::run_mha_case(
              {.batch = b, .q_len = opt.q_len ? opt.q_len : len, .kv_len = len,
               .num_heads_q = heads_q, .num_heads_kv = opt.heads_kv ? opt.heads_kv : heads_q,
               .d_qk = 192, .d_v = 128, .causal = causal, .seed = opt.seed},
              run);
        } else if (pre.op == Op::dense_decode) {
          r = flashmla::cli::run_dense_decode_case(
              {.batch = b, .q_len = q_len, .kv_len = len, .num_heads_q = heads_q,
               .num_heads_kv = opt.heads_kv ? opt.heads_kv : 1,
               .page_block_size = opt.page_block_size ? opt.page_block_size : 64,
               .varlen = true, .causal = causal,
               .dtype = opt.dtype == "fp16" ? DType::fp16 : DType::bf16, .seed = opt.seed},
              run);
        } else if (pre.op == Op::sparse_decode) {
          r = flashmla::cli::run_sparse_decode_case(
              {.batch = b, .q_len = q_len, .num_heads_q = heads_q, .d_qk = 576, .kv_len = len,
               .topk = opt.topk ? opt.topk : pre.topk,
               .page_block_size = opt.page_block_size ? opt.page_block_size : 64,
               .sink = true, .seed = opt.seed},
              run);
        } else {
          r = flashmla::cli::run_sparse_prefill_case(
              {.q_len = q_len, .kv_len = len, .num_heads_q = heads_q, .d_qk = 576,
               .topk = opt.topk ? opt.topk : pre.topk, .sink = true, .seed = opt.seed},
              run);
        }
        for (const Row& row : rows) {
          all_ok &= row.ok;
          std::printf("%-58s %12.1f %9.4f %9.2f %10.2e %6s\n", row.name.c_str(), row.us,
                      row.tflops, row.gbps, row.max_err,
                      opt.check_requests ? (row.ok ? "ok" : "FAIL") : "-");
        }
      }
    }
  } catch (const std::exception& e) {  // flashmla::Error for bad shapes; bad_alloc for huge ones
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  return all_ok ? 0 : 1;
}
