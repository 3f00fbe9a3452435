// flashmla_cli: runs MLA attention on realistic shapes, checks a sample against the reference
// and prints a table (case, µs, TFLOP/s, GB/s, max error). The main job of `make run`.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "flashmla/flashmla.h"
#include "ref/ref.h"
#include "testing/compare.h"
#include "testing/decode_case.h"
#include "testing/host_tensor.h"

namespace {

using flashmla::DType;
using flashmla::testing::DenseDecodeCase;
using flashmla::testing::DenseDecodeData;
using flashmla::testing::HostTensor;

struct Options {
  std::string preset = "v3-decode-quick";
  std::vector<int64_t> batch, mean_len;
  int64_t q_len = 0, heads_q = 0, heads_kv = 0, page_block_size = 0;
  std::string dtype;
  bool causal = false;
  int threads = 0, warmup = 2, iters = 5, check_requests = 2;
  uint64_t seed = 1;
};

// A preset: the DeepSeek-V3 decode shape (h_kv 1, d_qk 576, d_v 512) at some batch sizes and
// mean lengths. Lengths vary around the mean: max(N(mean, mean/2), q_len) per request.
struct Preset {
  const char* help;
  std::vector<int64_t> batch, mean_len;
  int64_t q_len, heads_q;
  bool causal;
};

const std::map<std::string, Preset>& presets() {
  static const std::map<std::string, Preset> p = {
      {"v3-decode-quick", {"DeepSeek-V3 dense decode, h_q 128, s_q 1, small batch (seconds)",
                           {2}, {512, 2048}, 1, 128, false}},
      {"v3-decode", {"DeepSeek-V3 dense decode, h_q 128, s_q 1, b 16, lengths 1K-4K",
                     {16}, {1024, 4096}, 1, 128, false}},
      {"v3-decode-mtp", {"DeepSeek-V3 dense decode with one MTP token (s_q 2, causal)",
                         {16}, {4096}, 2, 128, true}},
      {"v3-decode-tp8", {"DeepSeek-V3 dense decode on a tensor-parallel rank (h_q 16)",
                         {16, 64}, {4096}, 1, 16, false}},
  };
  return p;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// A view of the first k requests (leading dimension sliced).
flashmla::TensorView first_rows(flashmla::TensorView v, int64_t k) {
  v.shape[0] = k;
  return v;
}

struct Row {
  std::string name;
  double us, tflops, gbps, max_err;
  bool ok;
};

Row run_case(const DenseDecodeCase& cs, const Options& opt) {
  DenseDecodeData data = flashmla::testing::make_dense_decode_data(cs);
  flashmla::MlaDecodeArgs args = data.args();
  const flashmla::Context ctx{.num_threads = opt.threads};

  // The schedule is computed once and reused by every call, as a model's layers would.
  const int parts = flashmla::mla_num_sm_parts(
      {.batch = cs.batch, .q_len = cs.q_len, .num_heads_q = cs.num_heads_q,
       .num_heads_kv = cs.num_heads_kv}, ctx);
  std::vector<int32_t> meta(static_cast<size_t>(parts) * 8), splits(cs.batch + 1);
  args.tile_scheduler_metadata =
      flashmla::TensorView::contiguous(meta.data(), DType::int32, {parts, 8});
  args.num_splits = flashmla::TensorView::contiguous(splits.data(), DType::int32, {cs.batch + 1});
  flashmla::get_mla_metadata({.cache_seqlens = args.cache_seqlens, .num_sm_parts = parts,
                              .tile_scheduler_metadata = args.tile_scheduler_metadata,
                              .num_splits = args.num_splits});

  std::vector<double> times;
  for (int it = 0; it < opt.warmup + opt.iters; ++it) {
    const auto t0 = std::chrono::steady_clock::now();
    flashmla::flash_mla_with_kvcache(args, ctx);
    const auto t1 = std::chrono::steady_clock::now();
    if (it >= opt.warmup) times.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  const double us = median(times);

  // FlashMLA's counting (reference §7.1).
  const double total_len = std::accumulate(data.seqlens.begin(), data.seqlens.end(), 0.0);
  const double d_qk = 576, d_v = 512, elem = flashmla::dtype_size(cs.dtype);
  const double flops = 2.0 * cs.num_heads_q * cs.q_len * total_len * (d_qk + d_v);
  const double bytes = (total_len * cs.num_heads_kv * d_qk +
                        cs.batch * cs.q_len * cs.num_heads_q * (d_qk + d_v)) * elem;

  // Check the first requests against the reference.
  const int64_t k = std::min<int64_t>(opt.check_requests, cs.batch);
  double max_err = 0;
  bool ok = true;
  if (k > 0) {
    HostTensor ref_out = HostTensor::empty(cs.dtype, {k, cs.q_len, cs.num_heads_q, 512});
    HostTensor ref_lse = HostTensor::empty(DType::fp32, {k, cs.num_heads_q, cs.q_len});
    flashmla::MlaDecodeArgs sub = args;
    sub.q = first_rows(args.q, k);
    sub.block_table = first_rows(args.block_table, k);
    sub.cache_seqlens = first_rows(args.cache_seqlens, k);
    sub.out = ref_out.view();
    sub.lse = ref_lse.view();
    flashmla::ref::dense_decode(sub);
    const auto out_cmp = flashmla::testing::check_is_allclose(
        "out", first_rows(args.out, k), ref_out.view(), 8e-4, 2.01 / 128, 5e-6);
    const auto lse_cmp = flashmla::testing::check_is_allclose(
        "lse", first_rows(args.lse, k), ref_lse.view(), 1e-6, 8.01 / 65536);
    ok = out_cmp.ok && lse_cmp.ok;
    max_err = std::max(out_cmp.max_abs_err, lse_cmp.max_abs_err);
    if (!ok) std::fprintf(stderr, "%s\n%s\n", out_cmp.message.c_str(), lse_cmp.message.c_str());
  }
  return {cs.name(), us, flops / us * 1e-6, bytes / us * 1e-3, max_err, ok};
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  const auto positive = CLI::Range(int64_t{1}, int64_t{1} << 30);
  const auto non_negative = CLI::Range(int64_t{0}, int64_t{1} << 30);
  CLI::App app{"Runs DeepSeek MLA dense decode on realistic shapes, checks a sample of requests "
               "against the double-precision reference and prints a table.\n"
               "Shape options override the preset's values."};
  std::string preset_help = "Preset to run:";
  for (const auto& [name, p] : presets()) preset_help += "\n  " + name + ": " + p.help;
  app.add_option("--preset", opt.preset, preset_help)->capture_default_str();
  app.add_option("-b,--batch", opt.batch, "Batch sizes (requests per step), e.g. -b 1 16 64")
      ->check(positive);
  app.add_option("-l,--mean-len", opt.mean_len,
                 "Mean KV lengths; each request's length is max(N(mean, mean/2), q_len)")
      ->check(non_negative);
  app.add_option("-s,--q-len", opt.q_len, "Query tokens per request (s_q; >1 for MTP)")
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
                 "Requests per case checked against the reference (0 = none)")
      ->capture_default_str()->check(non_negative);
  app.add_option("--seed", opt.seed, "Random seed")->capture_default_str();
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

  std::printf("flashmla %s | preset %s | threads %d | microkernel portable\n", flashmla::kVersion,
              opt.preset.c_str(), flashmla::resolved_num_threads({.num_threads = opt.threads}));
  std::printf("%-58s %12s %9s %9s %10s %6s\n", "case", "us", "TFLOP/s", "GB/s", "max_err",
              "check");
  bool all_ok = true;
  try {
    for (int64_t b : batches) {
      for (int64_t len : lens) {
        DenseDecodeCase cs{.batch = b, .q_len = q_len, .kv_len = len,
                           .num_heads_q = opt.heads_q ? opt.heads_q : pre.heads_q,
                           .num_heads_kv = opt.heads_kv ? opt.heads_kv : 1,
                           .page_block_size = opt.page_block_size ? opt.page_block_size : 64,
                           .varlen = true, .causal = causal,
                           .dtype = opt.dtype == "fp16" ? DType::fp16 : DType::bf16,
                           .seed = opt.seed};
        const Row r = run_case(cs, opt);
        all_ok &= r.ok;
        std::printf("%-58s %12.1f %9.4f %9.2f %10.2e %6s\n", r.name.c_str(), r.us, r.tflops,
                    r.gbps, r.max_err, opt.check_requests ? (r.ok ? "ok" : "FAIL") : "-");
      }
    }
  } catch (const std::exception& e) {  // flashmla::Error for bad shapes; bad_alloc for huge ones
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  return all_ok ? 0 : 1;
}
