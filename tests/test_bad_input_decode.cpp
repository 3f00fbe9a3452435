// Bad-input table of flash_mla_with_kvcache and its _can_run twin. Decode cases ask
// flash_mla_with_kvcache_can_run first and never run the kernel on an input that should have
// been rejected (machinery and rules: tests/testing/bad_input.h).
#include "testing/bad_input.h"

namespace flashmla {
namespace {

using namespace testing::bad_input;

// ==========================================================================================
// flash_mla_with_kvcache
// ==========================================================================================

const DenseDecodeCase kDecodeCase{.batch = 3, .q_len = 2, .kv_len = 100, .num_heads_q = 8,
                                  .num_heads_kv = 2, .varlen = true};

const DenseDecodeData& base_decode_data() {
  static const DenseDecodeData data = testing::make_dense_decode_data(kDecodeCase);
  return data;
}

struct DecodeFixture {
  DenseDecodeData d = base_decode_data();  // a private copy
  MlaDecodeArgs args = d.args();
  Context ctx{};
  Buffers buf;
  HostTensor* meta = nullptr;    // set by attach_schedule
  HostTensor* splits = nullptr;

  const int64_t b = kDecodeCase.batch, s_q = kDecodeCase.q_len, h_q = kDecodeCase.num_heads_q,
                h_kv = kDecodeCase.num_heads_kv;
  const int64_t page = d.k_cache.size(1), num_blocks = d.k_cache.size(0),
                cols = d.block_table.size(1);

  DecodeFixture() {
    args = d.args();
    buf.outputs = {&d.out, &d.lse};
  }

  int32_t& seqlen(int64_t i) { return d.cache_seqlens.i32({i}); }
  int32_t& table(int64_t i, int64_t j) { return d.block_table.i32({i, j}); }
  int64_t used(int64_t i) const { return (d.seqlens[i] + page - 1) / page; }
  // A request whose block-table row has at least one column that is not read.
  int64_t request_with_unread_column() const {
    for (int64_t i = 0; i < b; ++i) {
      if (used(i) < cols) return i;
    }
    return -1;
  }

  // Computes the schedule of `lengths` with `parts` parts via get_mla_metadata and passes it.
  void attach_schedule(const std::vector<int32_t>& lengths, int parts = kParts) {
    const int64_t n = static_cast<int64_t>(lengths.size());
    HostTensor& lens = buf.alloc_i32({n}, lengths);
    meta = &buf.alloc(DType::int32, {parts, 8});
    splits = &buf.alloc(DType::int32, {n + 1});
    get_mla_metadata({.cache_seqlens = lens.view(), .num_sm_parts = parts,
                      .tile_scheduler_metadata = meta->view(), .num_splits = splits->view()});
    args.tile_scheduler_metadata = meta->view();
    args.num_splits = splits->view();
  }
  void attach_schedule() { attach_schedule(d.seqlens); }
};

struct DecodeBadCase {
  std::string name;
  std::function<void(DecodeFixture&)> mutate;
  Expected want;             // want.argument empty: must be accepted
  bool finite_out = false;   // accepted: also check out and lse are finite
  // Either rejected as `want` says, or accepted with finite out and lse (for inputs that a fix
  // may reasonably either reject or handle).
  bool or_finite = false;
};

void PrintTo(const DecodeBadCase& c, std::ostream* os) { *os << c.name; }

using F = DecodeFixture;

std::vector<DecodeBadCase> decode_cases() {
  std::vector<DecodeBadCase> c;
  auto add = [&c](std::string name, std::function<void(F&)> m, Expected e, bool fin = false,
                   bool or_finite = false) {
    c.push_back({std::move(name), std::move(m), std::move(e), fin, or_finite});
  };

  // ---- accepted baselines ----
  add("valid_call", [](F&) {}, kAccept, true);
  add("valid_with_schedule", [](F& f) { f.attach_schedule(); }, kAccept, true);
  add("valid_with_one_part_schedule", [](F& f) { f.attach_schedule(f.d.seqlens, 1); }, kAccept,
      true);
  add("schedule_padding_int_ignored", [](F& f) {
    f.attach_schedule();
    for (int64_t p = 0; p < kParts; ++p) f.meta->i32({p, 7}) = 12345;
  }, kAccept, true);
  add("schedule_of_lengths_with_same_block_counts_accepted", [](F& f) {
    std::vector<int32_t> same = f.d.seqlens;  // all > 0: round up to whole 64-token blocks
    for (int32_t& len : same) len = (len + 63) / 64 * 64;
    f.attach_schedule(same);
  }, kAccept, true);
  add("softmax_scale_finite_accepted", [](F& f) { f.args.softmax_scale = 0.5f; }, kAccept, true);

  // ---- context ----
  add("ctx_num_threads_negative", [](F& f) { f.ctx.num_threads = -1; }, value("ctx.num_threads"));
  add("ctx_num_threads_int_min", [](F& f) { f.ctx.num_threads = kI32Min; },
      value("ctx.num_threads"));
  // Probe: a thread count above the 2^20 parts a schedule may have (the environment variable is
  // capped at 4096). Only asked through can_run: running it would start 2M OpenMP threads.
  add("ctx_num_threads_absurd", [](F& f) { f.ctx.num_threads = (1 << 21); },
      value("ctx.num_threads"));

  // ---- q ----
  add("q_dtype_fp32", [](F& f) { f.args.q = f.buf.alloc(DType::fp32, {3, 2, 8, 576}).view(); },
      type("q"));
  add("q_dtype_int32", [](F& f) { f.args.q = f.buf.alloc(DType::int32, {3, 2, 8, 576}).view(); },
      type("q"));
  add("q_dtype_fp8", [](F& f) { f.args.q = with_dtype(f.args.q, DType::fp8_e4m3); }, type("q"));
  add("q_rank3", [](F& f) { f.args.q = reshape(f.args.q, {3, 2, 8 * 576}); }, value("q"));
  add("q_rank5", [](F& f) { f.args.q = reshape(f.args.q, {1, 3, 2, 8, 576}); }, value("q"));
  add("q_rank0", [](F& f) { f.args.q = reshape(f.args.q, {}); }, value("q"));
  add("q_rank7", [](F& f) { f.args.q.rank = 7; }, value("q"));
  add("q_negative_size", [](F& f) { f.args.q.shape[1] = -2; }, value("q"));
  add("q_null", [](F& f) { f.args.q = null_data(f.args.q); }, value("q"));
  add("q_cuda", [](F& f) { f.args.q = on_cuda(f.args.q); }, cuda_lead("q", "k_cache"));
  add("q_last_dim_strided", [](F& f) {
    TensorView big = f.buf.alloc(DType::bf16, {3, 2, 8, 1152}).view();
    f.args.q = TensorView::strided(big.data, DType::bf16, {3, 2, 8, 576},
                                   {2 * 8 * 1152, 8 * 1152, 1152, 2});
  }, value("q"));
  // Views no memory can hold (found by fuzz/fuzz_decode: a 2^40-request batch in q and indices
  // was accepted and its indices read): rejected by their extent, before any element is read.
  add("q_batch_2_pow_40", [](F& f) { f.args.q.shape[0] = int64_t{1} << 40; }, value("q"));
  add("q_stride_2_pow_50", [](F& f) { f.args.q.strides[0] = int64_t{1} << 50; }, value("q"));
  add("q_stride_int64_max", [](F& f) { f.args.q.strides[1] = INT64_MAX; }, value("q"));
  add("block_table_width_2_pow_46", [](F& f) { f.args.block_table.shape[1] = int64_t{1} << 46; },
      value("block_table"));
  add("batch_zero", [](F& f) { f.args.q.shape[0] = 0; }, value("q"));
  add("batch_zero_null_q", [](F& f) { f.args.q = null_data(reshape(f.args.q, {0, 2, 8, 576})); },
      value("q"));
  add("q_len_zero", [](F& f) { f.args.q.shape[1] = 0; }, value("q"));
  add("num_heads_q_zero", [](F& f) { f.args.q.shape[2] = 0; }, value("q"));
  // q fixes batch, q_len and num_heads_q: a wrong one is reported on the first tensor that
  // disagrees.
  add("q_dim0_batch_4", [](F& f) { f.args.q = f.buf.alloc(DType::bf16, {4, 2, 8, 576}).view(); },
      value("cache_seqlens"));
  add("q_dim1_q_len_3", [](F& f) { f.args.q = f.buf.alloc(DType::bf16, {3, 3, 8, 576}).view(); },
      value("out"));
  add("q_dim2_heads_16", [](F& f) { f.args.q = f.buf.alloc(DType::bf16, {3, 2, 16, 576}).view(); },
      value("out"));
  add("h_q_not_divisible_by_h_kv", [](F& f) {
    f.args.q = f.buf.alloc(DType::bf16, {3, 2, 7, 576}).view();
  }, value("k_cache"));
  add("q_dim3_d_qk_512", [](F& f) { f.args.q = reshape(f.args.q, {3, 2, 8, 512}); }, value("q"));
  add("q_dim3_d_qk_640", [](F& f) { f.args.q = f.buf.alloc(DType::bf16, {3, 2, 8, 640}).view(); },
      value("q"));
  add("d_qk_512_in_q_and_k_cache", [](F& f) {
    f.args.q = reshape(f.args.q, {3, 2, 8, 512});
    f.args.k_cache = reshape(f.args.k_cache, {f.num_blocks, f.page, 2, 512});
  }, value("q"));

  // ---- k_cache ----
  add("k_cache_dtype_differs_from_q", [](F& f) {
    f.args.k_cache = with_dtype(f.args.k_cache, DType::fp16);
  }, type("k_cache"));
  add("q_fp16_k_cache_bf16", [](F& f) {
    f.args.q = with_dtype(f.args.q, DType::fp16);
  }, type("k_cache"));
  add("k_cache_dtype_fp32", [](F& f) {
    f.args.k_cache = f.buf.alloc(DType::fp32, {f.num_blocks, f.page, 2, 576}).view();
  }, type("k_cache"));
  add("k_cache_rank3", [](F& f) {
    f.args.k_cache = reshape(f.args.k_cache, {f.num_blocks * f.page, 2, 576});
  }, value("k_cache"));
  add("k_cache_rank5", [](F& f) {
    f.args.k_cache = reshape(f.args.k_cache, {1, f.num_blocks, f.page, 2, 576});
  }, value("k_cache"));
  add("k_cache_null", [](F& f) { f.args.k_cache = null_data(f.args.k_cache); }, value("k_cache"));
  add("k_cache_cuda", [](F& f) { f.args.k_cache = on_cuda(f.args.k_cache); },
      value("k_cache"));
  add("k_cache_last_dim_strided", [](F& f) {
    TensorView big = f.buf.alloc(DType::bf16, {f.num_blocks, f.page, 2, 1152}).view();
    f.args.k_cache = TensorView::strided(big.data, DType::bf16, {f.num_blocks, f.page, 2, 576},
                                         {f.page * 2 * 1152, 2 * 1152, 1152, 2});
  }, value("k_cache"));
  add("k_cache_dim0_too_few_blocks", [](F& f) { f.args.k_cache.shape[0] = 1; },
      value("block_table"));
  add("k_cache_dim0_zero_blocks", [](F& f) { f.args.k_cache.shape[0] = 0; },
      value("block_table"));
  add("k_cache_dim1_page_zero", [](F& f) { f.args.k_cache.shape[1] = 0; }, value("k_cache"));
  add("k_cache_negative_num_blocks", [](F& f) { f.args.k_cache.shape[0] = -1; },
      value("k_cache"));
  add("k_cache_dim2_h_kv_3", [](F& f) {
    f.args.k_cache = f.buf.alloc(DType::bf16, {f.num_blocks, f.page, 3, 576}).view();
  }, value("k_cache"));
  add("k_cache_dim2_h_kv_zero", [](F& f) { f.args.k_cache.shape[2] = 0; }, value("k_cache"));
  add("k_cache_dim3_d_qk_512", [](F& f) {
    f.args.k_cache = reshape(f.args.k_cache, {f.num_blocks, f.page, 2, 512});
  }, value("k_cache"));
  add("k_cache_dim3_d_qk_640", [](F& f) {
    f.args.k_cache = f.buf.alloc(DType::bf16, {f.num_blocks, f.page, 2, 640}).view();
  }, value("k_cache"));

  // ---- head_dim_v ----
  add("head_dim_v_576", [](F& f) { f.args.head_dim_v = 576; }, value("head_dim_v"));
  add("head_dim_v_0", [](F& f) { f.args.head_dim_v = 0; }, value("head_dim_v"));
  add("head_dim_v_negative", [](F& f) { f.args.head_dim_v = -512; }, value("head_dim_v"));

  // ---- cache_seqlens ----
  add("cache_seqlens_dtype_fp32", [](F& f) {
    f.args.cache_seqlens = with_dtype(f.args.cache_seqlens, DType::fp32);
  }, type("cache_seqlens"));
  add("cache_seqlens_dtype_uint8", [](F& f) {
    f.args.cache_seqlens = with_dtype(f.args.cache_seqlens, DType::uint8);
  }, type("cache_seqlens"));
  add("cache_seqlens_rank2", [](F& f) {
    f.args.cache_seqlens = reshape(f.args.cache_seqlens, {3, 1});
  }, value("cache_seqlens"));
  add("cache_seqlens_rank0", [](F& f) {
    f.args.cache_seqlens = reshape(f.args.cache_seqlens, {});
  }, value("cache_seqlens"));
  add("cache_seqlens_dim0_batch_plus_1", [](F& f) {
    std::vector<int32_t> v = f.d.seqlens;
    v.push_back(5);
    f.args.cache_seqlens = f.buf.alloc_i32({4}, v).view();
  }, value("cache_seqlens"));
  add("cache_seqlens_dim0_batch_minus_1", [](F& f) { f.args.cache_seqlens.shape[0] = 2; },
      value("cache_seqlens"));
  add("cache_seqlens_null", [](F& f) { f.args.cache_seqlens = null_data(f.args.cache_seqlens); },
      value("cache_seqlens"));
  add("cache_seqlens_cuda", [](F& f) { f.args.cache_seqlens = on_cuda(f.args.cache_seqlens); },
      value("cache_seqlens"));
  add("cache_seqlens_strided", [](F& f) {
    std::vector<int32_t> v;
    for (int32_t len : f.d.seqlens) v.insert(v.end(), {len, len});
    TensorView t = f.buf.alloc_i32({6}, v).view();
    f.args.cache_seqlens = TensorView::strided(t.data, DType::int32, {3}, {2});
  }, value("cache_seqlens"));
  add("cache_seqlens_negative", [](F& f) { f.seqlen(1) = -1; }, value("cache_seqlens"));
  add("cache_seqlens_int_min", [](F& f) { f.seqlen(2) = kI32Min; }, value("cache_seqlens"));
  add("cache_seqlens_beyond_block_table_capacity", [](F& f) {
    f.seqlen(0) = static_cast<int32_t>(f.cols * f.page + 1);
  }, value("cache_seqlens"));
  add("cache_seqlens_int_max", [](F& f) { f.seqlen(0) = kI32Max; }, value("cache_seqlens"));

  // ---- block_table ----
  add("block_table_dtype_fp32", [](F& f) {
    f.args.block_table = with_dtype(f.args.block_table, DType::fp32);
  }, type("block_table"));
  add("block_table_dtype_uint8", [](F& f) {
    f.args.block_table = with_dtype(f.args.block_table, DType::uint8);
  }, type("block_table"));
  add("block_table_rank1", [](F& f) {
    f.args.block_table = reshape(f.args.block_table, {3 * f.cols});
  }, value("block_table"));
  add("block_table_rank3", [](F& f) {
    f.args.block_table = reshape(f.args.block_table, {3, f.cols, 1});
  }, value("block_table"));
  add("block_table_dim0_batch_plus_1", [](F& f) {
    std::vector<int32_t> v(static_cast<size_t>(4 * f.cols), 0);
    std::memcpy(v.data(), f.args.block_table.data, static_cast<size_t>(3 * f.cols) * 4);
    f.args.block_table = f.buf.alloc_i32({4, f.cols}, v).view();
  }, value("block_table"));
  add("block_table_dim0_batch_minus_1", [](F& f) { f.args.block_table.shape[0] = 2; },
      value("block_table"));
  // Fewer columns than the lengths need: reported on the lengths.
  add("block_table_dim1_zero_columns", [](F& f) { f.args.block_table.shape[1] = 0; },
      value("cache_seqlens"));
  add("block_table_null", [](F& f) { f.args.block_table = null_data(f.args.block_table); },
      value("block_table"));
  add("block_table_cuda", [](F& f) { f.args.block_table = on_cuda(f.args.block_table); },
      value("block_table"));
  add("block_table_last_dim_strided", [](F& f) {
    std::vector<int32_t> v;
    for (int64_t i = 0; i < 3; ++i)
      for (int64_t j = 0; j < f.cols; ++j) v.insert(v.end(), {f.table(i, j), f.table(i, j)});
    TensorView t = f.buf.alloc_i32({3, 2 * f.cols}, v).view();
    f.args.block_table =
        TensorView::strided(t.data, DType::int32, {3, f.cols}, {2 * f.cols, 2});
  }, value("block_table"));
  add("block_table_read_entry_negative", [](F& f) { f.table(0, 0) = -1; }, value("block_table"));
  add("block_table_read_entry_int_min", [](F& f) { f.table(1, 0) = kI32Min; },
      value("block_table"));
  add("block_table_read_entry_num_blocks", [](F& f) {
    f.table(2, f.used(2) - 1) = static_cast<int32_t>(f.num_blocks);
  }, value("block_table"));
  add("block_table_read_entry_garbage", [](F& f) {
    f.table(1, f.used(1) - 1) = testing::kGarbageBlockId;
  }, value("block_table"));
  // The same values in a column that is not read are fine (docs/conventions.md §3.3).
  add("block_table_unread_entry_negative_accepted", [](F& f) {
    const int64_t i = f.request_with_unread_column();
    ASSERT_GE(i, 0);
    f.table(i, f.used(i)) = -1;
  }, kAccept, true);
  add("block_table_unread_entry_int_min_accepted", [](F& f) {
    const int64_t i = f.request_with_unread_column();
    ASSERT_GE(i, 0);
    f.table(i, f.cols - 1) = kI32Min;
  }, kAccept, true);
  add("block_table_unread_entry_num_blocks_accepted", [](F& f) {
    const int64_t i = f.request_with_unread_column();
    ASSERT_GE(i, 0);
    f.table(i, f.used(i)) = static_cast<int32_t>(f.num_blocks);
  }, kAccept, true);
  add("block_table_unread_entry_garbage_accepted", [](F& f) {
    const int64_t i = f.request_with_unread_column();
    ASSERT_GE(i, 0);
    f.table(i, f.used(i)) = testing::kGarbageBlockId;
  }, kAccept, true);
  // A length that is an exact multiple of the page: the next column is not read.
  add("block_table_column_after_full_page_not_read", [](F& f) {
    int64_t i = 0;
    while (i < f.b && f.d.seqlens[i] < f.page) ++i;
    ASSERT_LT(i, f.b) << "no request of >= one page";
    const int64_t pages = f.d.seqlens[i] / f.page;
    f.seqlen(i) = static_cast<int32_t>(pages * f.page);
    f.table(i, pages) = -1;
  }, kAccept, true);

  // ---- softmax_scale ----
  add("softmax_scale_nan", [](F& f) { f.args.softmax_scale = kNaN; }, value("softmax_scale"));
  add("softmax_scale_inf", [](F& f) { f.args.softmax_scale = kInf; }, value("softmax_scale"));
  add("softmax_scale_minus_inf", [](F& f) { f.args.softmax_scale = -kInf; },
      value("softmax_scale"));
  // Probes: finite scales whose log2 form (scale * log2(e), computed in fp32) overflows. Either
  // reject them or compute finite results (the true out is the attention of the best-scoring
  // key and lse is finite).
  add("softmax_scale_huge_finite", [](F& f) { f.args.softmax_scale = 3e38f; },
      value("softmax_scale"), false, true);
  add("softmax_scale_minus_flt_max", [](F& f) {
    f.args.softmax_scale = -std::numeric_limits<float>::max();
  }, value("softmax_scale"), false, true);

  // ---- tile_scheduler_metadata / num_splits ----
  add("metadata_without_num_splits", [](F& f) {
    f.attach_schedule();
    f.args.num_splits = {};
  }, value("num_splits"));
  add("num_splits_without_metadata", [](F& f) {
    f.attach_schedule();
    f.args.tile_scheduler_metadata = {};
  }, value("tile_scheduler_metadata"));
  add("metadata_dtype_fp32", [](F& f) {
    f.attach_schedule();
    f.args.tile_scheduler_metadata = with_dtype(f.args.tile_scheduler_metadata, DType::fp32);
  }, type("tile_scheduler_metadata"));
  add("metadata_dtype_uint8", [](F& f) {
    f.attach_schedule();
    f.args.tile_scheduler_metadata = with_dtype(f.args.tile_scheduler_metadata, DType::uint8);
  }, type("tile_scheduler_metadata"));
  add("metadata_rank1", [](F& f) {
    f.attach_schedule();
    f.args.tile_scheduler_metadata = reshape(f.args.tile_scheduler_metadata, {kParts * 8});
  }, value("tile_scheduler_metadata"));
  add("metadata_rank3", [](F& f) {
    f.attach_schedule();
    f.args.tile_scheduler_metadata = reshape(f.args.tile_scheduler_metadata, {1, kParts, 8});
  }, value("tile_scheduler_metadata"));
  add("metadata_dim1_7", [](F& f) {
    f.attach_schedule();
    f.args.tile_scheduler_metadata = reshape(f.args.tile_scheduler_metadata, {kParts, 7});
  }, value("tile_scheduler_metadata"));
  add("metadata_dim1_16", [](F& f) {
    f.attach_schedule();
    f.args.tile_scheduler_metadata = reshape(f.args.tile_scheduler_metadata, {kParts / 2, 16});
  }, value("tile_scheduler_metadata"));
  add("metadata_dim0_zero", [](F& f) {
    f.attach_schedule();
    f.args.tile_scheduler_metadata.shape[0] = 0;
  }, value("tile_scheduler_metadata"));
  add("metadata_dim0_above_2pow20", [](F& f) {
    f.attach_schedule();
    f.args.tile_scheduler_metadata.shape[0] = (1 << 20) + 1;  // rejected before any read
  }, value("tile_scheduler_metadata"));
  add("metadata_non_contiguous", [](F& f) {
    f.attach_schedule();
    std::vector<int32_t> v(static_cast<size_t>(kParts) * 16, 0);
    for (int64_t p = 0; p < kParts; ++p)
      for (int64_t k = 0; k < 8; ++k) v[p * 16 + k] = f.meta->i32({p, k});
    TensorView t = f.buf.alloc_i32({kParts, 16}, v).view();
    f.args.tile_scheduler_metadata =
        TensorView::strided(t.data, DType::int32, {kParts, 8}, {16, 1});
  }, value("tile_scheduler_metadata"));
  add("metadata_cuda", [](F& f) {
    f.attach_schedule();
    f.args.tile_scheduler_metadata = on_cuda(f.args.tile_scheduler_metadata);
  }, value("tile_scheduler_metadata"));
  add("num_splits_dtype_fp32", [](F& f) {
    f.attach_schedule();
    f.args.num_splits = with_dtype(f.args.num_splits, DType::fp32);
  }, type("num_splits"));
  add("num_splits_rank2", [](F& f) {
    f.attach_schedule();
    f.args.num_splits = reshape(f.args.num_splits, {4, 1});
  }, value("num_splits"));
  add("num_splits_dim0_batch", [](F& f) {
    f.attach_schedule();
    f.args.num_splits.shape[0] = 3;
  }, value("num_splits"));
  add("num_splits_dim0_batch_plus_2", [](F& f) {
    f.attach_schedule();
    std::vector<int32_t> v(5, 0);
    for (int64_t i = 0; i < 4; ++i) v[i] = f.splits->i32({i});
    v[4] = v[3];
    f.args.num_splits = f.buf.alloc_i32({5}, v).view();
  }, value("num_splits"));
  add("num_splits_strided", [](F& f) {
    f.attach_schedule();
    std::vector<int32_t> v;
    for (int64_t i = 0; i < 4; ++i) v.insert(v.end(), {f.splits->i32({i}), f.splits->i32({i})});
    TensorView t = f.buf.alloc_i32({8}, v).view();
    f.args.num_splits = TensorView::strided(t.data, DType::int32, {4}, {2});
  }, value("num_splits"));
  add("num_splits_null_data_with_shape", [](F& f) {
    f.attach_schedule();
    f.args.num_splits = null_data(f.args.num_splits);  // i.e. not given
  }, value("num_splits"));
  add("num_splits_cuda", [](F& f) {
    f.attach_schedule();
    f.args.num_splits = on_cuda(f.args.num_splits);
  }, value("num_splits"));
  add("stale_schedule_longer_lengths", [](F& f) {
    std::vector<int32_t> other = f.d.seqlens;
    for (int32_t& len : other) len += 64;  // one more 64-token block each
    f.attach_schedule(other);
  }, value("tile_scheduler_metadata"));
  add("stale_schedule_last_request_changed", [](F& f) {
    std::vector<int32_t> other = f.d.seqlens;
    other.back() = other.back() > 64 ? 1 : 200;
    f.attach_schedule(other);
  }, value("tile_scheduler_metadata"));
  add("stale_schedule_all_lengths_zero", [](F& f) {
    f.attach_schedule(std::vector<int32_t>(3, 0));
  }, value("tile_scheduler_metadata"));
  add("stale_schedule_other_batch", [](F& f) {
    f.attach_schedule(std::vector<int32_t>(f.d.seqlens.begin(), f.d.seqlens.end() - 1));
  }, value("num_splits"));
  for (int field = 0; field < 7; ++field) {
    add("tampered_record0_field" + std::to_string(field), [field](F& f) {
      f.attach_schedule();
      f.meta->i32({0, field}) += 1;
    }, value("tile_scheduler_metadata"));
  }
  add("tampered_last_record_end_block", [](F& f) {
    f.attach_schedule();
    f.meta->i32({kParts - 1, 3}) -= 1;
  }, value("tile_scheduler_metadata"));
  add("tampered_num_splits_total", [](F& f) {
    f.attach_schedule();
    f.splits->i32({3}) += 1;
  }, value("tile_scheduler_metadata"));
  add("tampered_num_splits_first", [](F& f) {
    f.attach_schedule();
    f.splits->i32({0}) = 1;
  }, value("tile_scheduler_metadata"));
  add("tampered_records_all_garbage", [](F& f) {
    f.attach_schedule();
    for (int64_t p = 0; p < kParts; ++p)
      for (int64_t k = 0; k < 8; ++k) f.meta->i32({p, k}) = testing::kGarbageBlockId;
  }, value("tile_scheduler_metadata"));

  // ---- out ----
  add("out_dtype_fp32", [](F& f) {
    f.args.out = f.buf.alloc_output(DType::fp32, {3, 2, 8, 512}).view();
  }, type("out"));
  add("out_dtype_fp16", [](F& f) { f.args.out = with_dtype(f.args.out, DType::fp16); },
      type("out"));
  add("out_rank3", [](F& f) { f.args.out = reshape(f.args.out, {3, 2, 8 * 512}); }, value("out"));
  add("out_rank5", [](F& f) { f.args.out = reshape(f.args.out, {1, 3, 2, 8, 512}); },
      value("out"));
  add("out_dim0_batch_4", [](F& f) {
    f.args.out = f.buf.alloc_output(DType::bf16, {4, 2, 8, 512}).view();
  }, value("out"));
  add("out_dim0_batch_2", [](F& f) { f.args.out.shape[0] = 2; }, value("out"));
  add("out_dim1_q_len_3", [](F& f) {
    f.args.out = f.buf.alloc_output(DType::bf16, {3, 3, 8, 512}).view();
  }, value("out"));
  add("out_dim2_heads_16", [](F& f) {
    f.args.out = f.buf.alloc_output(DType::bf16, {3, 2, 16, 512}).view();
  }, value("out"));
  add("out_dim3_576", [](F& f) {
    f.args.out = f.buf.alloc_output(DType::bf16, {3, 2, 8, 576}).view();
  }, value("out"));
  add("out_dim3_256", [](F& f) { f.args.out = reshape(f.args.out, {3, 2, 8, 256}); },
      value("out"));
  add("out_null", [](F& f) { f.args.out = null_data(f.args.out); }, value("out"));
  add("out_cuda", [](F& f) { f.args.out = on_cuda(f.args.out); }, value("out"));
  add("out_last_dim_strided", [](F& f) {
    TensorView big = f.buf.alloc_output(DType::bf16, {3, 2, 8, 1024}).view();
    f.args.out = TensorView::strided(big.data, DType::bf16, {3, 2, 8, 512},
                                     {2 * 8 * 1024, 8 * 1024, 1024, 2});
  }, value("out"));
  add("out_zero_stride_heads", [](F& f) {
    f.args.out = restride(f.args.out, {2 * 8 * 512, 8 * 512, 0, 1});
  }, value("out"));
  add("out_zero_stride_batch", [](F& f) {
    f.args.out = restride(f.args.out, {0, 8 * 512, 512, 1});
  }, value("out"));
  add("out_overlapping_rows", [](F& f) {  // consecutive heads overlap by half a row
    f.args.out = restride(f.args.out, {2 * 8 * 512, 8 * 512, 256, 1});
  }, value("out"));
  add("out_batch_stride_equals_token_stride", [](F& f) {
    f.args.out = restride(f.args.out, {8 * 512, 8 * 512, 512, 1});
  }, value("out"));

  // ---- lse ----
  add("lse_dtype_bf16", [](F& f) {
    f.args.lse = f.buf.alloc_output(DType::bf16, {3, 8, 2}).view();
  }, type("lse"));
  add("lse_dtype_int32", [](F& f) { f.args.lse = with_dtype(f.args.lse, DType::int32); },
      type("lse"));
  add("lse_rank2", [](F& f) { f.args.lse = reshape(f.args.lse, {3, 16}); }, value("lse"));
  add("lse_rank4", [](F& f) { f.args.lse = reshape(f.args.lse, {3, 8, 2, 1}); }, value("lse"));
  add("lse_tokens_before_heads", [](F& f) { f.args.lse = reshape(f.args.lse, {3, 2, 8}); },
      value("lse"));
  add("lse_dim0_batch_4", [](F& f) {
    f.args.lse = f.buf.alloc_output(DType::fp32, {4, 8, 2}).view();
  }, value("lse"));
  add("lse_dim1_heads_16", [](F& f) {
    f.args.lse = f.buf.alloc_output(DType::fp32, {3, 16, 2}).view();
  }, value("lse"));
  add("lse_dim2_q_len_3", [](F& f) {
    f.args.lse = f.buf.alloc_output(DType::fp32, {3, 8, 3}).view();
  }, value("lse"));
  add("lse_null", [](F& f) { f.args.lse = null_data(f.args.lse); }, value("lse"));
  add("lse_cuda", [](F& f) { f.args.lse = on_cuda(f.args.lse); }, value("lse"));
  add("lse_zero_stride_last", [](F& f) { f.args.lse = restride(f.args.lse, {16, 2, 0}); },
      value("lse"));
  add("lse_all_strides_zero", [](F& f) { f.args.lse = restride(f.args.lse, {0, 0, 0}); },
      value("lse"));
  add("lse_overlapping", [](F& f) { f.args.lse = restride(f.args.lse, {16, 1, 1}); },
      value("lse"));

  // ---- several devices / order: the first bad argument in the documented order wins ----
  add("everything_on_cuda", [](F& f) {
    f.args.q = on_cuda(f.args.q);
    f.args.k_cache = on_cuda(f.args.k_cache);
    f.args.out = on_cuda(f.args.out);
  }, cuda_lead("q", "cache_seqlens"));
  return c;
}

class DecodeBadInput : public ::testing::TestWithParam<DecodeBadCase> {};

TEST_P(DecodeBadInput, RejectedBeforeAnyWork) {
  const DecodeBadCase& c = GetParam();
  DecodeFixture f;
  c.mutate(f);
  if (::testing::Test::HasFatalFailure()) return;
  f.buf.snapshot();
  const std::optional<std::string> can = flash_mla_with_kvcache_can_run(f.args, f.ctx);

  if (c.want.argument.empty()) {  // must be accepted
    EXPECT_EQ(can, std::nullopt);
    EXPECT_NO_THROW(flash_mla_with_kvcache(f.args, f.ctx));
    if (c.finite_out) {
      EXPECT_TRUE(all_finite(f.d.out)) << "out has non-finite values";
      EXPECT_TRUE(all_finite(f.d.lse)) << "lse has non-finite values";
    }
    return;
  }
  if (!can && c.or_finite) {  // accepted: then the results must be finite
    EXPECT_NO_THROW(flash_mla_with_kvcache(f.args, f.ctx));
    EXPECT_TRUE(all_finite(f.d.out))
        << "accepted, but out has non-finite values; expected finite results or a "
        << kind_name(c.want.kind) << " error on argument '" << c.want.argument << "'";
    EXPECT_TRUE(all_finite(f.d.lse))
        << "accepted, but lse has non-finite values; expected finite results or a "
        << kind_name(c.want.kind) << " error on argument '" << c.want.argument << "'";
    return;
  }
  if (!can) {  // never run the kernel on an input that should have been rejected
    ADD_FAILURE() << "flash_mla_with_kvcache_can_run accepted it (not run); expected a "
                  << kind_name(c.want.kind) << " error on argument '" << c.want.argument << "'";
    return;
  }
  const std::optional<std::string> msg =
      expect_error([&] { flash_mla_with_kvcache(f.args, f.ctx); }, "flash_mla_with_kvcache",
                   c.want);
  EXPECT_EQ(can, msg) << "can_run and the thrown error disagree";
  f.buf.expect_untouched();
  EXPECT_TRUE(all_nan(f.d.out)) << "out was written";
  EXPECT_TRUE(all_nan(f.d.lse)) << "lse was written";
}

std::string decode_case_name(const ::testing::TestParamInfo<DecodeBadCase>& info) {
  return info.param.name;
}

INSTANTIATE_TEST_SUITE_P(Table, DecodeBadInput, ::testing::ValuesIn(decode_cases()),
                         decode_case_name);


// can_run reports exactly the message of the error the call throws, and nothing for a valid call.
TEST(BadInputCanRun, SameMessageAsThrownError) {
  DecodeFixture valid;
  EXPECT_EQ(flash_mla_with_kvcache_can_run(valid.args, valid.ctx), std::nullopt);
  int checked = 0;
  for (const char* name : {"q_dtype_fp32", "cache_seqlens_negative", "block_table_read_entry_negative",
                           "softmax_scale_nan", "stale_schedule_longer_lengths", "lse_cuda"}) {
    for (const DecodeBadCase& c : decode_cases()) {
      if (c.name != name) continue;
      SCOPED_TRACE(c.name);
      DecodeFixture f;
      c.mutate(f);
      const std::optional<std::string> can = flash_mla_with_kvcache_can_run(f.args, f.ctx);
      ASSERT_TRUE(can.has_value());
      try {
        flash_mla_with_kvcache(f.args, f.ctx);
        ADD_FAILURE() << "accepted";
      } catch (const Error& e) {
        EXPECT_EQ(*can, std::string(e.what()));
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, 6);
}

TEST(BadInputTables, DecodeCaseCount) {
  report_case_count("flash_mla_with_kvcache", decode_cases());
  EXPECT_GT(decode_cases().size(), 100u);
}

}  // namespace
}  // namespace flashmla
