// Table-driven bad-input tests of the public API: flash_mla_with_kvcache (and its _can_run twin),
// mla_combine, get_mla_metadata and mla_num_sm_parts.
//
// Every case starts from a valid small call, applies ONE mutation and expects a flashmla::Error
// naming the function and the argument, of the right kind (type for a dtype, unsupported for a
// CUDA tensor, value otherwise), whose message says what was expected and what was got; and
// after the rejected call every output buffer must be exactly as before (validation happens
// before any work). A few cases are "accept" cases: inputs that look odd but are valid by the
// contract of docs/conventions.md (e.g. garbage block ids in block-table columns that are not
// read) and must run.
//
// Replacement tensors are real allocations of the mutated shape/dtype, so that a check the
// library forgot makes the case fail instead of reading out of bounds. Decode cases ask
// flash_mla_with_kvcache_can_run first and never run the kernel on an input that should have
// been rejected.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <iostream>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "flashmla/flashmla.h"
#include "testing/combine_case.h"
#include "testing/decode_case.h"
#include "testing/host_tensor.h"

namespace flashmla {
namespace {

using testing::CombineCase;
using testing::CombineData;
using testing::DenseDecodeCase;
using testing::DenseDecodeData;
using testing::HostTensor;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int32_t kI32Min = std::numeric_limits<int32_t>::min();
constexpr int32_t kI32Max = std::numeric_limits<int32_t>::max();
constexpr int32_t kSentinel = -7;  // prefill of int32 outputs (get_mla_metadata)

// ------------------------------------------------------------------------------------------
// Shared helpers.

// A view of the same memory with another shape (row-major strides), dtype and device kept.
TensorView reshape(const TensorView& v, std::initializer_list<int64_t> shape) {
  return TensorView::contiguous(v.data, v.dtype, shape, v.device);
}

TensorView restride(const TensorView& v, std::initializer_list<int64_t> strides) {
  TensorView t = v;
  int d = 0;
  for (int64_t s : strides) t.strides[d++] = s;
  return t;
}

TensorView on_cuda(TensorView v) {
  v.device = Device::cuda;
  return v;
}

TensorView with_dtype(TensorView v, DType dtype) {
  v.dtype = dtype;
  return v;
}

TensorView null_data(TensorView v) {
  v.data = nullptr;
  return v;
}

std::vector<std::byte> bytes_of(const HostTensor& t) {
  const auto* p = static_cast<const std::byte*>(t.view().data);
  return std::vector<std::byte>(p, p + t.numel() * static_cast<int64_t>(dtype_size(t.dtype())));
}

bool all_nan(const HostTensor& t) {
  bool ok = true;
  testing::for_each_element(t.view(), [&](const int64_t*, int64_t off) {
    ok = ok && std::isnan(testing::load_float(t.view(), off));
  });
  return ok;
}

bool all_finite(const HostTensor& t) {
  bool ok = true;
  testing::for_each_element(t.view(), [&](const int64_t*, int64_t off) {
    ok = ok && std::isfinite(testing::load_float(t.view(), off));
  });
  return ok;
}

const char* kind_name(ErrorKind k) {
  switch (k) {
    case ErrorKind::value: return "value";
    case ErrorKind::type: return "type";
    case ErrorKind::unsupported: return "unsupported";
  }
  return "?";
}

// Owned buffers of one case: replacement tensors, and the outputs that must stay untouched by a
// rejected call (checked byte for byte against a snapshot taken just before the call).
struct Buffers {
  std::deque<HostTensor> owned;  // deque: references stay valid
  std::vector<const HostTensor*> outputs;
  std::vector<std::vector<std::byte>> snapshots;

  HostTensor& alloc(DType dtype, std::vector<int64_t> shape) {
    owned.push_back(HostTensor::empty(dtype, std::move(shape)));
    return owned.back();
  }
  HostTensor& alloc_i32(std::vector<int64_t> shape, const std::vector<int32_t>& values) {
    HostTensor& t = alloc(DType::int32, std::move(shape));
    std::memcpy(t.view().data, values.data(),
                std::min<size_t>(values.size(), static_cast<size_t>(t.numel())) * 4);
    return t;
  }
  // A replacement output: tracked like the original ones.
  HostTensor& alloc_output(DType dtype, std::vector<int64_t> shape) {
    HostTensor& t = alloc(dtype, std::move(shape));
    outputs.push_back(&t);
    return t;
  }
  void snapshot() {
    snapshots.clear();
    for (const HostTensor* t : outputs) snapshots.push_back(bytes_of(*t));
  }
  void expect_untouched() const {
    for (size_t i = 0; i < outputs.size(); ++i) {
      EXPECT_TRUE(bytes_of(*outputs[i]) == snapshots[i])
          << "output buffer #" << i << " (shape " << outputs[i]->view().shape_string()
          << ") was written by a rejected call";
    }
  }
};

// What a rejected call must throw.
struct Expected {
  std::string argument;  // empty: the call must be accepted
  ErrorKind kind = ErrorKind::value;
};

// Runs `call`; checks that it throws the expected flashmla::Error. Returns its message.
std::optional<std::string> expect_error(const std::function<void()>& call,
                                        const std::string& function, const Expected& want) {
  try {
    call();
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(e.function(), function) << what;
    EXPECT_EQ(e.argument(), want.argument) << what;
    EXPECT_EQ(kind_name(e.kind()), std::string(kind_name(want.kind))) << what;
    EXPECT_NE(what.find("expected"), std::string::npos) << what;
    EXPECT_NE(what.find("got"), std::string::npos) << what;
    EXPECT_EQ(what.rfind(function, 0), 0u) << "message does not start with the function: " << what;
    EXPECT_NE(what.find("'" + want.argument + "'"), std::string::npos)
        << "message does not name the argument: " << what;
    EXPECT_FALSE(e.expected().empty()) << what;
    EXPECT_FALSE(e.got().empty()) << what;
    return what;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-flashmla exception: " << e.what();
    return std::nullopt;
  }
  ADD_FAILURE() << "accepted; expected a " << kind_name(want.kind) << " error on argument '"
                << want.argument << "'";
  return std::nullopt;
}

// ==========================================================================================
// flash_mla_with_kvcache
// ==========================================================================================

constexpr int kParts = 4;  // schedule parts of the explicit schedules used below

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
Expected value(std::string arg) { return {std::move(arg), ErrorKind::value}; }
Expected type(std::string arg) { return {std::move(arg), ErrorKind::type}; }
Expected unsupported(std::string arg) { return {std::move(arg), ErrorKind::unsupported}; }
const Expected kAccept{};

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
  add("q_cuda", [](F& f) { f.args.q = on_cuda(f.args.q); }, unsupported("q"));
  add("q_last_dim_strided", [](F& f) {
    TensorView big = f.buf.alloc(DType::bf16, {3, 2, 8, 1152}).view();
    f.args.q = TensorView::strided(big.data, DType::bf16, {3, 2, 8, 576},
                                   {2 * 8 * 1152, 8 * 1152, 1152, 2});
  }, value("q"));
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
      unsupported("k_cache"));
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
      unsupported("cache_seqlens"));
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
      unsupported("block_table"));
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
  }, unsupported("tile_scheduler_metadata"));
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
  }, unsupported("num_splits"));
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
  add("out_cuda", [](F& f) { f.args.out = on_cuda(f.args.out); }, unsupported("out"));
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
  add("lse_cuda", [](F& f) { f.args.lse = on_cuda(f.args.lse); }, unsupported("lse"));
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
  }, unsupported("q"));
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

// ==========================================================================================
// mla_combine
// ==========================================================================================

const CombineCase kCombineCase{.q_len = 2, .num_heads_q = 8, .head_dim_v = 512,
                               .pieces = {2, 1, 3}, .sink = true, .out_dtype = DType::bf16};

const CombineData& base_combine_data() {
  static const CombineData data = testing::make_combine_data(kCombineCase);
  return data;
}

struct CombineFixture {
  CombineData d = base_combine_data();
  MlaCombineArgs args;
  Context ctx{};
  Buffers buf;
  const int64_t b = 3, s_q = 2, h_q = 8, d_v = 512, slots = 6;

  CombineFixture() {
    args = d.args();
    buf.outputs = {&d.out, &d.lse};
  }
  int32_t& split(int64_t i) { return d.num_splits.i32({i}); }
};

struct CombineBadCase {
  std::string name;
  std::function<void(CombineFixture&)> mutate;
  Expected want;
};

void PrintTo(const CombineBadCase& c, std::ostream* os) { *os << c.name; }

using C = CombineFixture;

std::vector<CombineBadCase> combine_cases() {
  std::vector<CombineBadCase> c;
  auto add = [&c](std::string name, std::function<void(C&)> m, Expected e) {
    c.push_back({std::move(name), std::move(m), std::move(e)});
  };
  add("valid_call", [](C&) {}, kAccept);
  add("valid_without_sink", [](C& f) { f.args.attn_sink = {}; }, kAccept);
  add("valid_with_empty_request", [](C& f) { f.split(2) = f.split(1); }, kAccept);  // 0 pieces
  add("valid_out_fp32", [](C& f) {
    f.args.out = f.buf.alloc_output(DType::fp32, {3, 2, 8, 512}).view();
  }, kAccept);

  add("ctx_num_threads_negative", [](C& f) { f.ctx.num_threads = -1; },
      value("ctx.num_threads"));

  // ---- o_accum ----
  add("o_accum_dtype_bf16", [](C& f) {
    f.args.o_accum = f.buf.alloc(DType::bf16, {6, 2, 8, 512}).view();
  }, type("o_accum"));
  add("o_accum_dtype_int32", [](C& f) { f.args.o_accum = with_dtype(f.args.o_accum, DType::int32); },
      type("o_accum"));
  add("o_accum_rank3", [](C& f) { f.args.o_accum = reshape(f.args.o_accum, {6, 2, 8 * 512}); },
      value("o_accum"));
  add("o_accum_rank5", [](C& f) { f.args.o_accum = reshape(f.args.o_accum, {1, 6, 2, 8, 512}); },
      value("o_accum"));
  add("o_accum_null", [](C& f) { f.args.o_accum = null_data(f.args.o_accum); }, value("o_accum"));
  add("o_accum_cuda", [](C& f) { f.args.o_accum = on_cuda(f.args.o_accum); },
      unsupported("o_accum"));
  add("o_accum_last_dim_strided", [](C& f) {
    TensorView big = f.buf.alloc(DType::fp32, {6, 2, 8, 1024}).view();
    f.args.o_accum = TensorView::strided(big.data, DType::fp32, {6, 2, 8, 512},
                                         {2 * 8 * 1024, 8 * 1024, 1024, 2});
  }, value("o_accum"));
  add("o_accum_q_len_zero", [](C& f) { f.args.o_accum.shape[1] = 0; }, value("o_accum"));
  add("o_accum_heads_zero", [](C& f) { f.args.o_accum.shape[2] = 0; }, value("o_accum"));
  add("o_accum_d_v_zero", [](C& f) { f.args.o_accum.shape[3] = 0; }, value("o_accum"));
  add("o_accum_negative_slots", [](C& f) { f.args.o_accum.shape[0] = -1; }, value("o_accum"));
  // o_accum fixes slots, q_len, heads and d_v: a wrong one is reported on the tensor that
  // disagrees.
  add("o_accum_dim0_more_slots", [](C& f) {
    f.args.o_accum = f.buf.alloc(DType::fp32, {7, 2, 8, 512}).view();
  }, value("lse_accum"));
  add("o_accum_dim3_d_v_256", [](C& f) {
    f.args.o_accum = reshape(f.args.o_accum, {6, 2, 8, 256});
  }, value("out"));

  // ---- lse_accum ----
  add("lse_accum_dtype_bf16", [](C& f) {
    f.args.lse_accum = f.buf.alloc(DType::bf16, {6, 2, 8}).view();
  }, type("lse_accum"));
  add("lse_accum_rank2", [](C& f) { f.args.lse_accum = reshape(f.args.lse_accum, {6, 16}); },
      value("lse_accum"));
  add("lse_accum_dim0_fewer_slots", [](C& f) { f.args.lse_accum.shape[0] = 5; },
      value("lse_accum"));
  add("lse_accum_dim0_more_slots", [](C& f) {
    f.args.lse_accum = f.buf.alloc(DType::fp32, {7, 2, 8}).view();
  }, value("lse_accum"));
  add("lse_accum_dim1_q_len_3", [](C& f) {
    f.args.lse_accum = f.buf.alloc(DType::fp32, {6, 3, 8}).view();
  }, value("lse_accum"));
  add("lse_accum_dim2_heads_4", [](C& f) { f.args.lse_accum.shape[2] = 4; }, value("lse_accum"));
  add("lse_accum_heads_before_tokens", [](C& f) {
    f.args.lse_accum = reshape(f.args.lse_accum, {6, 8, 2});
  }, value("lse_accum"));
  add("lse_accum_null", [](C& f) { f.args.lse_accum = null_data(f.args.lse_accum); },
      value("lse_accum"));
  add("lse_accum_cuda", [](C& f) { f.args.lse_accum = on_cuda(f.args.lse_accum); },
      unsupported("lse_accum"));

  // ---- num_splits ----
  add("num_splits_dtype_fp32", [](C& f) {
    f.args.num_splits = with_dtype(f.args.num_splits, DType::fp32);
  }, type("num_splits"));
  add("num_splits_rank2", [](C& f) { f.args.num_splits = reshape(f.args.num_splits, {4, 1}); },
      value("num_splits"));
  add("num_splits_rank0", [](C& f) { f.args.num_splits = reshape(f.args.num_splits, {}); },
      value("num_splits"));
  add("num_splits_batch_zero", [](C& f) { f.args.num_splits.shape[0] = 1; },
      value("num_splits"));
  add("num_splits_empty", [](C& f) { f.args.num_splits.shape[0] = 0; }, value("num_splits"));
  add("num_splits_null", [](C& f) { f.args.num_splits = null_data(f.args.num_splits); },
      value("num_splits"));
  add("num_splits_cuda", [](C& f) { f.args.num_splits = on_cuda(f.args.num_splits); },
      unsupported("num_splits"));
  add("num_splits_strided", [](C& f) {
    std::vector<int32_t> v;
    for (int64_t i = 0; i < 4; ++i) v.insert(v.end(), {f.split(i), f.split(i)});
    TensorView t = f.buf.alloc_i32({8}, v).view();
    f.args.num_splits = TensorView::strided(t.data, DType::int32, {4}, {2});
  }, value("num_splits"));
  add("num_splits_not_starting_at_0", [](C& f) { f.split(0) = 1; }, value("num_splits"));
  add("num_splits_starting_negative", [](C& f) { f.split(0) = -1; }, value("num_splits"));
  add("num_splits_decreasing", [](C& f) { f.split(2) = 1; }, value("num_splits"));
  add("num_splits_negative_entry", [](C& f) { f.split(1) = -1; }, value("num_splits"));
  add("num_splits_beyond_slots", [](C& f) { f.split(3) = 7; }, value("num_splits"));
  add("num_splits_int_max", [](C& f) { f.split(3) = kI32Max; }, value("num_splits"));
  add("num_splits_middle_beyond_slots", [](C& f) {
    f.split(2) = 9;
    f.split(3) = 9;
  }, value("num_splits"));
  // One entry too many: the batch becomes 4 and out disagrees.
  add("num_splits_batch_plus_1", [](C& f) {
    f.args.num_splits = f.buf.alloc_i32({5}, {0, 2, 3, 6, 6}).view();
  }, value("out"));

  // ---- attn_sink ----
  add("attn_sink_heads_plus_1", [](C& f) {
    f.args.attn_sink = f.buf.alloc(DType::fp32, {9}).view();
  }, value("attn_sink"));
  add("attn_sink_heads_minus_1", [](C& f) { f.args.attn_sink.shape[0] = 7; }, value("attn_sink"));
  add("attn_sink_dtype_bf16", [](C& f) {
    f.args.attn_sink = with_dtype(f.args.attn_sink, DType::bf16);
  }, type("attn_sink"));
  add("attn_sink_rank2", [](C& f) { f.args.attn_sink = reshape(f.args.attn_sink, {1, 8}); },
      value("attn_sink"));
  add("attn_sink_rank0", [](C& f) { f.args.attn_sink = reshape(f.args.attn_sink, {}); },
      value("attn_sink"));
  add("attn_sink_strided", [](C& f) {
    TensorView t = f.buf.alloc(DType::fp32, {16}).view();
    f.args.attn_sink = TensorView::strided(t.data, DType::fp32, {8}, {2});
  }, value("attn_sink"));
  add("attn_sink_cuda", [](C& f) { f.args.attn_sink = on_cuda(f.args.attn_sink); },
      unsupported("attn_sink"));

  // ---- out ----
  add("out_dtype_int32", [](C& f) {
    f.args.out = f.buf.alloc_output(DType::int32, {3, 2, 8, 512}).view();
  }, type("out"));
  add("out_dtype_fp8", [](C& f) { f.args.out = with_dtype(f.args.out, DType::fp8_e4m3); },
      type("out"));
  add("out_dtype_uint8", [](C& f) { f.args.out = with_dtype(f.args.out, DType::uint8); },
      type("out"));
  add("out_rank3", [](C& f) { f.args.out = reshape(f.args.out, {3, 2, 8 * 512}); }, value("out"));
  add("out_dim0_batch_4", [](C& f) {
    f.args.out = f.buf.alloc_output(DType::bf16, {4, 2, 8, 512}).view();
  }, value("out"));
  add("out_dim0_batch_2", [](C& f) { f.args.out.shape[0] = 2; }, value("out"));
  add("out_dim1_q_len_3", [](C& f) {
    f.args.out = f.buf.alloc_output(DType::bf16, {3, 3, 8, 512}).view();
  }, value("out"));
  add("out_dim2_heads_16", [](C& f) {
    f.args.out = f.buf.alloc_output(DType::bf16, {3, 2, 16, 512}).view();
  }, value("out"));
  add("out_dim3_d_v_576", [](C& f) {
    f.args.out = f.buf.alloc_output(DType::bf16, {3, 2, 8, 576}).view();
  }, value("out"));
  add("out_null", [](C& f) { f.args.out = null_data(f.args.out); }, value("out"));
  add("out_cuda", [](C& f) { f.args.out = on_cuda(f.args.out); }, unsupported("out"));
  add("out_last_dim_strided", [](C& f) {
    TensorView big = f.buf.alloc_output(DType::bf16, {3, 2, 8, 1024}).view();
    f.args.out = TensorView::strided(big.data, DType::bf16, {3, 2, 8, 512},
                                     {2 * 8 * 1024, 8 * 1024, 1024, 2});
  }, value("out"));
  add("out_zero_stride_heads", [](C& f) {
    f.args.out = restride(f.args.out, {2 * 8 * 512, 8 * 512, 0, 1});
  }, value("out"));
  add("out_overlapping_tokens", [](C& f) {
    f.args.out = restride(f.args.out, {2 * 8 * 512, 512, 512, 1});
  }, value("out"));

  // ---- lse ----
  add("lse_dtype_bf16", [](C& f) {
    f.args.lse = f.buf.alloc_output(DType::bf16, {3, 8, 2}).view();
  }, type("lse"));
  add("lse_rank2", [](C& f) { f.args.lse = reshape(f.args.lse, {3, 16}); }, value("lse"));
  add("lse_tokens_before_heads", [](C& f) { f.args.lse = reshape(f.args.lse, {3, 2, 8}); },
      value("lse"));
  add("lse_dim0_batch_4", [](C& f) {
    f.args.lse = f.buf.alloc_output(DType::fp32, {4, 8, 2}).view();
  }, value("lse"));
  add("lse_null", [](C& f) { f.args.lse = null_data(f.args.lse); }, value("lse"));
  add("lse_cuda", [](C& f) { f.args.lse = on_cuda(f.args.lse); }, unsupported("lse"));
  add("lse_zero_stride", [](C& f) { f.args.lse = restride(f.args.lse, {16, 0, 1}); },
      value("lse"));
  return c;
}

class CombineBadInput : public ::testing::TestWithParam<CombineBadCase> {};

TEST_P(CombineBadInput, RejectedBeforeAnyWork) {
  const CombineBadCase& c = GetParam();
  CombineFixture f;
  c.mutate(f);
  if (::testing::Test::HasFatalFailure()) return;
  f.buf.snapshot();
  if (c.want.argument.empty()) {
    EXPECT_NO_THROW(mla_combine(f.args, f.ctx));
    return;
  }
  if (!expect_error([&] { mla_combine(f.args, f.ctx); }, "mla_combine", c.want)) return;
  f.buf.expect_untouched();
  EXPECT_TRUE(all_nan(f.d.out)) << "out was written";
  EXPECT_TRUE(all_nan(f.d.lse)) << "lse was written";
}

std::string combine_case_name(const ::testing::TestParamInfo<CombineBadCase>& info) {
  return info.param.name;
}

INSTANTIATE_TEST_SUITE_P(Table, CombineBadInput, ::testing::ValuesIn(combine_cases()),
                         combine_case_name);

// ==========================================================================================
// get_mla_metadata
// ==========================================================================================

struct MetadataFixture {
  Buffers buf;
  HostTensor& seqlens = buf.alloc_i32({3}, {100, 0, 300});
  HostTensor& meta = buf.alloc_output(DType::int32, {kParts, 8});
  HostTensor& splits = buf.alloc_output(DType::int32, {4});
  MlaMetadataArgs args;

  MetadataFixture() {
    for (int64_t p = 0; p < kParts; ++p)
      for (int64_t k = 0; k < 8; ++k) meta.i32({p, k}) = kSentinel;
    for (int64_t i = 0; i < 4; ++i) splits.i32({i}) = kSentinel;
    args = {.cache_seqlens = seqlens.view(), .num_sm_parts = kParts,
            .tile_scheduler_metadata = meta.view(), .num_splits = splits.view()};
  }
};

struct MetadataBadCase {
  std::string name;
  std::function<void(MetadataFixture&)> mutate;
  Expected want;
};

void PrintTo(const MetadataBadCase& c, std::ostream* os) { *os << c.name; }

using M = MetadataFixture;

std::vector<MetadataBadCase> metadata_cases() {
  std::vector<MetadataBadCase> c;
  auto add = [&c](std::string name, std::function<void(M&)> m, Expected e) {
    c.push_back({std::move(name), std::move(m), std::move(e)});
  };
  add("valid_call", [](M&) {}, kAccept);
  add("valid_all_lengths_zero", [](M& f) {
    f.args.cache_seqlens = f.buf.alloc_i32({3}, {0, 0, 0}).view();
  }, kAccept);
  add("valid_one_part", [](M& f) {
    f.args.num_sm_parts = 1;
    f.args.tile_scheduler_metadata.shape[0] = 1;
  }, kAccept);

  // ---- cache_seqlens ----
  add("cache_seqlens_dtype_fp32", [](M& f) {
    f.args.cache_seqlens = with_dtype(f.args.cache_seqlens, DType::fp32);
  }, type("cache_seqlens"));
  add("cache_seqlens_rank2", [](M& f) {
    f.args.cache_seqlens = reshape(f.args.cache_seqlens, {3, 1});
  }, value("cache_seqlens"));
  add("cache_seqlens_rank0", [](M& f) {
    f.args.cache_seqlens = reshape(f.args.cache_seqlens, {});
  }, value("cache_seqlens"));
  add("cache_seqlens_null", [](M& f) { f.args.cache_seqlens = null_data(f.args.cache_seqlens); },
      value("cache_seqlens"));
  add("cache_seqlens_cuda", [](M& f) { f.args.cache_seqlens = on_cuda(f.args.cache_seqlens); },
      unsupported("cache_seqlens"));
  add("cache_seqlens_strided", [](M& f) {
    TensorView t = f.buf.alloc_i32({6}, {100, 100, 0, 0, 300, 300}).view();
    f.args.cache_seqlens = TensorView::strided(t.data, DType::int32, {3}, {2});
  }, value("cache_seqlens"));
  add("batch_zero", [](M& f) {
    f.args.cache_seqlens.shape[0] = 0;
    f.args.num_splits.shape[0] = 1;
  }, value("cache_seqlens"));
  add("cache_seqlens_negative", [](M& f) { f.seqlens.i32({1}) = -1; }, value("cache_seqlens"));
  add("cache_seqlens_int_min", [](M& f) { f.seqlens.i32({2}) = kI32Min; },
      value("cache_seqlens"));

  // ---- num_sm_parts ----
  add("num_sm_parts_zero", [](M& f) {
    f.args.num_sm_parts = 0;
    f.args.tile_scheduler_metadata.shape[0] = 0;
  }, value("num_sm_parts"));
  add("num_sm_parts_negative", [](M& f) { f.args.num_sm_parts = -1; }, value("num_sm_parts"));
  // Probe: flash_mla_with_kvcache rejects schedules of more than 2^20 parts, so producing one
  // should be rejected too.
  add("num_sm_parts_above_2pow20", [](M& f) {
    const int parts = (1 << 20) + 1;
    f.args.num_sm_parts = parts;
    f.args.tile_scheduler_metadata = f.buf.alloc_output(DType::int32, {parts, 8}).view();
  }, value("num_sm_parts"));

  // ---- tile_scheduler_metadata ----
  add("metadata_dim0_parts_plus_1", [](M& f) {
    f.args.tile_scheduler_metadata = f.buf.alloc_output(DType::int32, {kParts + 1, 8}).view();
  }, value("tile_scheduler_metadata"));
  add("metadata_dim0_parts_minus_1", [](M& f) { f.args.tile_scheduler_metadata.shape[0] -= 1; },
      value("tile_scheduler_metadata"));
  add("metadata_dim1_7", [](M& f) {
    f.args.tile_scheduler_metadata = reshape(f.args.tile_scheduler_metadata, {kParts, 7});
  }, value("tile_scheduler_metadata"));
  add("metadata_rank1", [](M& f) {
    f.args.tile_scheduler_metadata = reshape(f.args.tile_scheduler_metadata, {kParts * 8});
  }, value("tile_scheduler_metadata"));
  add("metadata_dtype_fp32", [](M& f) {
    f.args.tile_scheduler_metadata = with_dtype(f.args.tile_scheduler_metadata, DType::fp32);
  }, type("tile_scheduler_metadata"));
  add("metadata_null", [](M& f) {
    f.args.tile_scheduler_metadata = null_data(f.args.tile_scheduler_metadata);
  }, value("tile_scheduler_metadata"));
  add("metadata_cuda", [](M& f) {
    f.args.tile_scheduler_metadata = on_cuda(f.args.tile_scheduler_metadata);
  }, unsupported("tile_scheduler_metadata"));
  add("metadata_non_contiguous", [](M& f) {
    TensorView t = f.buf.alloc_output(DType::int32, {kParts, 16}).view();
    f.args.tile_scheduler_metadata = TensorView::strided(t.data, DType::int32, {kParts, 8}, {16, 1});
  }, value("tile_scheduler_metadata"));
  add("metadata_zero_row_stride", [](M& f) {
    f.args.tile_scheduler_metadata = restride(f.args.tile_scheduler_metadata, {0, 1});
  }, value("tile_scheduler_metadata"));

  // ---- num_splits ----
  add("num_splits_dim0_batch", [](M& f) { f.args.num_splits.shape[0] = 3; },
      value("num_splits"));
  add("num_splits_dim0_batch_plus_2", [](M& f) {
    f.args.num_splits = f.buf.alloc_output(DType::int32, {5}).view();
  }, value("num_splits"));
  add("num_splits_rank2", [](M& f) { f.args.num_splits = reshape(f.args.num_splits, {4, 1}); },
      value("num_splits"));
  add("num_splits_dtype_fp32", [](M& f) {
    f.args.num_splits = with_dtype(f.args.num_splits, DType::fp32);
  }, type("num_splits"));
  add("num_splits_null", [](M& f) { f.args.num_splits = null_data(f.args.num_splits); },
      value("num_splits"));
  add("num_splits_cuda", [](M& f) { f.args.num_splits = on_cuda(f.args.num_splits); },
      unsupported("num_splits"));
  add("num_splits_strided", [](M& f) {
    TensorView t = f.buf.alloc_output(DType::int32, {8}).view();
    f.args.num_splits = TensorView::strided(t.data, DType::int32, {4}, {2});
  }, value("num_splits"));
  return c;
}

class MetadataBadInput : public ::testing::TestWithParam<MetadataBadCase> {};

TEST_P(MetadataBadInput, RejectedBeforeAnyWork) {
  const MetadataBadCase& c = GetParam();
  MetadataFixture f;
  c.mutate(f);
  f.buf.snapshot();
  if (c.want.argument.empty()) {
    EXPECT_NO_THROW(get_mla_metadata(f.args));
    return;
  }
  if (!expect_error([&] { get_mla_metadata(f.args); }, "get_mla_metadata", c.want)) return;
  f.buf.expect_untouched();
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(f.splits.i32({i}), kSentinel) << "num_splits written";
}

std::string metadata_case_name(const ::testing::TestParamInfo<MetadataBadCase>& info) {
  return info.param.name;
}

INSTANTIATE_TEST_SUITE_P(Table, MetadataBadInput, ::testing::ValuesIn(metadata_cases()),
                         metadata_case_name);

// ==========================================================================================
// mla_num_sm_parts
// ==========================================================================================

struct NumSmPartsBadCase {
  std::string name;
  MlaDecodeShape shape;
  Context ctx;
  Expected want;
};

void PrintTo(const NumSmPartsBadCase& c, std::ostream* os) { *os << c.name; }

std::vector<NumSmPartsBadCase> num_sm_parts_cases() {
  const MlaDecodeShape ok{.batch = 3, .q_len = 2, .num_heads_q = 8, .num_heads_kv = 2};
  auto with = [ok](auto&& edit) {
    MlaDecodeShape s = ok;
    edit(s);
    return s;
  };
  return {
      {"valid_call", ok, {}, kAccept},
      {"valid_explicit_threads", ok, {.num_threads = 3}, kAccept},
      {"batch_zero", with([](auto& s) { s.batch = 0; }), {}, value("shape.batch")},
      {"batch_negative", with([](auto& s) { s.batch = -1; }), {}, value("shape.batch")},
      {"ctx_num_threads_negative", ok, {.num_threads = -1}, value("ctx.num_threads")},
      // Probes: the other shape fields are not looked at.
      {"q_len_zero", with([](auto& s) { s.q_len = 0; }), {}, value("shape.q_len")},
      {"num_heads_q_zero", with([](auto& s) { s.num_heads_q = 0; }), {},
       value("shape.num_heads_q")},
      {"num_heads_kv_zero", with([](auto& s) { s.num_heads_kv = 0; }), {},
       value("shape.num_heads_kv")},
      {"num_heads_kv_not_dividing_num_heads_q", with([](auto& s) { s.num_heads_kv = 3; }), {},
       value("shape.num_heads_kv")},
      // Probe: 2^21 parts is more than flash_mla_with_kvcache accepts in a schedule (2^20).
      {"ctx_num_threads_absurd", ok, {.num_threads = 1 << 21}, value("ctx.num_threads")},
  };
}

class NumSmPartsBadInput : public ::testing::TestWithParam<NumSmPartsBadCase> {};

TEST_P(NumSmPartsBadInput, Rejected) {
  const NumSmPartsBadCase& c = GetParam();
  if (c.want.argument.empty()) {
    int parts = 0;
    EXPECT_NO_THROW(parts = mla_num_sm_parts(c.shape, c.ctx));
    EXPECT_GE(parts, 1);
    if (c.ctx.num_threads > 0) {
      EXPECT_EQ(parts, c.ctx.num_threads);
    }
    return;
  }
  expect_error([&] { (void)mla_num_sm_parts(c.shape, c.ctx); }, "mla_num_sm_parts", c.want);
}

std::string num_sm_parts_case_name(const ::testing::TestParamInfo<NumSmPartsBadCase>& info) {
  return info.param.name;
}

INSTANTIATE_TEST_SUITE_P(Table, NumSmPartsBadInput, ::testing::ValuesIn(num_sm_parts_cases()),
                         num_sm_parts_case_name);

// ==========================================================================================

TEST(BadInputTables, CaseCount) {
  const size_t decode = decode_cases().size(), combine = combine_cases().size(),
               metadata = metadata_cases().size(), parts = num_sm_parts_cases().size();
  const size_t total = decode + combine + metadata + parts;
  size_t accepted = 0;
  for (const auto& c : decode_cases()) accepted += c.want.argument.empty();
  for (const auto& c : combine_cases()) accepted += c.want.argument.empty();
  for (const auto& c : metadata_cases()) accepted += c.want.argument.empty();
  for (const auto& c : num_sm_parts_cases()) accepted += c.want.argument.empty();
  RecordProperty("cases", static_cast<int>(total));
  RecordProperty("rejection_cases", static_cast<int>(total - accepted));
  std::cout << "bad-input cases: " << total << " (flash_mla_with_kvcache " << decode
            << ", mla_combine " << combine << ", get_mla_metadata " << metadata
            << ", mla_num_sm_parts " << parts << "); " << total - accepted
            << " must be rejected, " << accepted << " must be accepted\n";
  EXPECT_GT(total, 100u);
}

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

}  // namespace
}  // namespace flashmla
