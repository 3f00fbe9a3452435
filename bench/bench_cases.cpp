// The operation cases: generate data with the tests' generators, rotate over copies of it so
// that the inputs come from DRAM, compute the schedule once (as a model's layers share it),
// warm up once, time calls, and count work with FlashMLA's formulas (reference §7,
// shared/design/performance.md), as tools/cli_cases.cpp does.
#include "bench_cases.h"

#include <memory>
#include <vector>

#include "bench_util.h"
#include "cpu/common/microkernel.h"
#include "flashmla/flashmla.h"
#include "flashmla/kv_format.h"
#include "testing/work.h"

namespace flashmla::bench {
namespace {

// Fills `sets` with `n` copies of `first` (the vector is reserved first, so the views of the
// copies never move).
template <class Data>
void make_copies(std::vector<Data>& sets, Data first, int n) {
  sets.reserve(static_cast<size_t>(n));
  sets.push_back(std::move(first));
  for (int i = 1; i < n; ++i) sets.push_back(sets[0]);
}

// ---- decode, dense and sparse ----

struct DecodeRun : CaseData {
  std::vector<testing::DenseDecodeData> dense;
  std::vector<std::vector<uint8_t>> fp8_caches;  // dense over FP8 V32: each copy's cache bytes
  std::vector<testing::SparseDecodeData> sparse;
  std::vector<MlaDecodeArgs> args;
  std::vector<int32_t> meta, splits;
  double flops = 0, bytes = 0;
  const char* kernel = nullptr;  // the microkernel of the operands' dtype
  size_t next = 0;
};

// The split-KV schedule of args (dense or sparse mode), computed once and attached to every
// argument set.
void attach_schedule(DecodeRun& r, const MlaDecodeShape& shape, const MlaMetadataArgs& base) {
  const Context ctx = context();
  const int parts = mla_num_sm_parts(shape, ctx);
  r.meta.assign(static_cast<size_t>(parts) * 8, 0);
  r.splits.assign(static_cast<size_t>(shape.batch) + 1, 0);
  MlaMetadataArgs m = base;
  m.num_sm_parts = parts;
  m.tile_scheduler_metadata = TensorView::contiguous(r.meta.data(), DType::int32, {parts, 8});
  m.num_splits = TensorView::contiguous(r.splits.data(), DType::int32, {shape.batch + 1});
  get_mla_metadata(m);
  for (MlaDecodeArgs& a : r.args) {
    a.tile_scheduler_metadata = m.tile_scheduler_metadata;
    a.num_splits = m.num_splits;
  }
}

// Dense decode; with `fp8`, over the case's cache quantized to the FP8 V32 format (656 bytes per
// token, the same page blocks and block table).
std::unique_ptr<DecodeRun> make_dense_run(const testing::DenseDecodeCase& c, bool fp8) {
  auto r = std::make_unique<DecodeRun>();
  r->kernel = cpu::active_microkernel(c.dtype).name;
  testing::DenseDecodeData d = testing::make_dense_decode_data(c);
  const testing::Work work = testing::dense_decode_work(c, d, fp8);  // FlashMLA's counting
  r->flops = work.flops;
  r->bytes = work.bytes;
  const int64_t nb = d.k_cache.size(0), page = d.k_cache.size(1), hk = d.k_cache.size(2);
  const double cache_bytes = fp8 ? double(nb) * page * hk * 656 : tensor_bytes(d.k_cache);
  const double copy_bytes = tensor_bytes(d.q) + cache_bytes + tensor_bytes(d.block_table) +
                            tensor_bytes(d.out) + tensor_bytes(d.lse);
  const int copies = rotation_copies(r->bytes, copy_bytes);
  make_copies(r->dense, std::move(d), copies);
  for (const auto& s : r->dense) r->args.push_back(s.args());
  if (fp8) {
    r->fp8_caches.resize(static_cast<size_t>(copies));
    for (int i = 0; i < copies; ++i) {
      auto& bytes = r->fp8_caches[i];
      bytes.resize(static_cast<size_t>(nb * page * hk * 656));
      const TensorView cache =
          TensorView::contiguous(bytes.data(), DType::uint8, {nb, page, hk, 656});
      quantize_kv_cache({.format = KvFormat::v32, .k = r->args[i].k_cache, .cache = cache});
      r->args[i].k_cache = cache;
    }
  }
  attach_schedule(*r,
                  {.batch = c.batch, .q_len = c.q_len, .num_heads_q = c.num_heads_q,
                   .num_heads_kv = c.num_heads_kv},
                  {.cache_seqlens = r->args[0].cache_seqlens});
  flash_mla_with_kvcache(r->args[0], context());  // warm-up: scratch, page faults of outputs
  return r;
}

// Sparse decode.
std::unique_ptr<DecodeRun> make_sparse_run(const testing::SparseDecodeCase& c) {
  auto r = std::make_unique<DecodeRun>();
  testing::SparseDecodeData d = testing::make_sparse_decode_data(c);
  const MlaDecodeArgs a = d.args();
  const testing::Work work = testing::sparse_decode_work(c, a);  // FlashMLA's counting
  r->flops = work.flops;
  r->bytes = work.bytes;
  const double copy_bytes = tensor_bytes(d.q) + tensor_bytes(d.k_cache) +
                            tensor_bytes(d.indices) + tensor_bytes(d.extra_k_cache) +
                            tensor_bytes(d.extra_indices) + tensor_bytes(d.out) +
                            tensor_bytes(d.lse);
  make_copies(r->sparse, std::move(d), rotation_copies(r->bytes, copy_bytes));
  for (const auto& s : r->sparse) r->args.push_back(s.args());
  attach_schedule(*r, {.batch = c.batch, .q_len = c.q_len, .num_heads_q = c.num_heads_q},
                  {.batch = c.batch,
                   .topk = a.indices.size(2),
                   .topk_length = a.topk_length,
                   .extra_topk = a.extra_indices_in_kvcache.defined()
                                     ? a.extra_indices_in_kvcache.size(2) : 0,
                   .extra_topk_length = a.extra_topk_length});
  flash_mla_with_kvcache(r->args[0], context());
  return r;
}

void run_decode(benchmark::State& st, DecodeRun& r) {
  const Context ctx = context();
  for (auto _ : st) {
    flash_mla_with_kvcache(r.args[r.next], ctx);
    r.next = (r.next + 1) % r.args.size();
  }
  report(st, r.flops, r.bytes, static_cast<int>(r.args.size()), r.kernel);
}

// ---- sparse prefill ----

struct PrefillRun : CaseData {
  std::vector<testing::SparsePrefillData> sets;
  std::vector<SparsePrefillArgs> args;
  double flops = 0, bytes = 0;
  size_t next = 0;
};

std::unique_ptr<PrefillRun> make_prefill_run(const testing::SparsePrefillCase& c) {
  auto r = std::make_unique<PrefillRun>();
  testing::SparsePrefillData d = testing::make_sparse_prefill_data(c);
  const testing::Work work = testing::sparse_prefill_work(c, d);  // FlashMLA's counting
  r->flops = work.flops;
  r->bytes = work.bytes;
  const double copy_bytes = tensor_bytes(d.q) + tensor_bytes(d.kv) + tensor_bytes(d.indices) +
                            tensor_bytes(d.out) + 2 * tensor_bytes(d.lse);
  make_copies(r->sets, std::move(d), rotation_copies(r->bytes, copy_bytes));
  for (const auto& s : r->sets) r->args.push_back(s.args());
  flash_mla_sparse_fwd(r->args[0], context());
  return r;
}

// ---- dense MHA prefill ----

struct MhaRun : CaseData {
  std::vector<testing::MhaData> sets;
  std::vector<MhaBwdArgs> args;  // .fwd: the forward's arguments
  double fwd_flops = 0, fwd_bytes = 0, bwd_flops = 0, bwd_bytes = 0;
  size_t next = 0;
};

std::unique_ptr<MhaRun> make_mha_run(const testing::MhaCase& c) {
  auto r = std::make_unique<MhaRun>();
  testing::MhaData d = testing::make_mha_data(c);
  const testing::MhaWork work = testing::mha_work(c, d);  // FlashMLA's counting
  r->fwd_flops = work.fwd.flops;
  r->fwd_bytes = work.fwd.bytes;
  r->bwd_flops = work.bwd.flops;
  r->bwd_bytes = work.bwd.bytes;
  // The backward reads the forward's out and lse: run the forward before copying.
  flash_attn_varlen_fwd(d.fwd_args(), context());
  const double copy_bytes = tensor_bytes(d.q) + tensor_bytes(d.k) + tensor_bytes(d.v) +
                            tensor_bytes(d.dout) + tensor_bytes(d.out) +
                            tensor_bytes(d.lse_storage) + tensor_bytes(d.dq) +
                            tensor_bytes(d.dk) + tensor_bytes(d.dv);
  make_copies(r->sets, std::move(d), rotation_copies(r->fwd_bytes, copy_bytes));
  for (const auto& s : r->sets) r->args.push_back(s.bwd_args());
  flash_attn_varlen_bwd(r->args[0], context());
  return r;
}

}  // namespace

void add_dense_decode(const std::string& name, const testing::DenseDecodeCase& c, bool fp8) {
  const std::string key = "dense_decode." + name;
  add(key, [key, c, fp8](benchmark::State& st) {
    guarded(st, [&] {
      run_decode(st, cached_as<DecodeRun>(key, [&] { return make_dense_run(c, fp8); }));
    });
  });
}

void add_sparse_decode(const std::string& name, const testing::SparseDecodeCase& c) {
  const std::string key = "sparse_decode." + name;
  add(key, [key, c](benchmark::State& st) {
    guarded(st, [&] {
      run_decode(st, cached_as<DecodeRun>(key, [&] { return make_sparse_run(c); }));
    });
  });
}

void add_sparse_prefill(const std::string& name, const testing::SparsePrefillCase& c) {
  const std::string key = "sparse_prefill." + name;
  add(key, [key, c](benchmark::State& st) {
    guarded(st, [&] {
      auto& r = cached_as<PrefillRun>(key, [&] { return make_prefill_run(c); });
      const Context ctx = context();
      for (auto _ : st) {
        flash_mla_sparse_fwd(r.args[r.next], ctx);
        r.next = (r.next + 1) % r.args.size();
      }
      report(st, r.flops, r.bytes, static_cast<int>(r.args.size()));
    });
  });
}

void add_mha(const std::string& name, const testing::MhaCase& c) {
  const std::string key = "mha." + name;  // forward and backward share the data
  add("mha_fwd." + name, [key, c](benchmark::State& st) {
    guarded(st, [&] {
      auto& r = cached_as<MhaRun>(key, [&] { return make_mha_run(c); });
      const Context ctx = context();
      for (auto _ : st) {
        flash_attn_varlen_fwd(r.args[r.next].fwd, ctx);
        r.next = (r.next + 1) % r.args.size();
      }
      report(st, r.fwd_flops, r.fwd_bytes, static_cast<int>(r.args.size()));
    });
  });
  add("mha_bwd." + name, [key, c](benchmark::State& st) {
    guarded(st, [&] {
      auto& r = cached_as<MhaRun>(key, [&] { return make_mha_run(c); });
      const Context ctx = context();
      for (auto _ : st) {
        flash_attn_varlen_bwd(r.args[r.next], ctx);
        r.next = (r.next + 1) % r.args.size();
      }
      report(st, r.bwd_flops, r.bwd_bytes, static_cast<int>(r.args.size()));
    });
  });
}

}  // namespace flashmla::bench
