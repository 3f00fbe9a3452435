// Bad-input tables of the dense MHA varlen prefill API: flash_attn_varlen_fwd,
// flash_attn_varlen_bwd, split_qkv_packed and split_kv_packed (machinery and rules:
// tests/testing/bad_input.h). There is no _can_run twin for these functions: a case the library
// wrongly accepts runs the kernel, so every replacement tensor that could be read is a real
// allocation of the mutated shape (only views rejected before any read claim more memory than
// they have). Accepted cases check that the results are finite and, where the mutation does not
// change the problem, bitwise equal to the base call's.
#include "testing/bad_input.h"
#include "testing/mha_case.h"

namespace flashmla {
namespace {

using namespace testing::bad_input;
using testing::MhaCase;
using testing::MhaData;
using testing::Padding;

constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();
constexpr int64_t kI64Min = std::numeric_limits<int64_t>::min();
constexpr int64_t kHuge = int64_t{1} << 40;  // a size no test allocation has

// ==========================================================================================
// Helpers on views
// ==========================================================================================

bool view_all_finite(const TensorView& v) {
  bool ok = true;
  testing::for_each_element(v, [&](const int64_t*, int64_t off) {
    ok = ok && std::isfinite(testing::load_float(v, off));
  });
  return ok;
}

bool view_no_nan(const TensorView& v) {  // finite or +-inf (lse of a row without keys)
  bool ok = true;
  testing::for_each_element(v, [&](const int64_t*, int64_t off) {
    ok = ok && !std::isnan(testing::load_float(v, off));
  });
  return ok;
}

// Every element of `src` written to the same index of `dst` (same shape, any strides).
void copy_values(const TensorView& src, const TensorView& dst) {
  testing::for_each_element(dst, [&](const int64_t* idx, int64_t off) {
    int64_t src_off = 0;
    for (int d = 0; d < src.rank; ++d) src_off += idx[d] * src.strides[d];
    testing::store_float(dst, off, testing::load_float(src, src_off));
  });
}

// Same shape and bitwise the same values (compared as floats) index by index.
::testing::AssertionResult same_values(const TensorView& got, const TensorView& want) {
  if (got.shape_string() != want.shape_string()) {
    return ::testing::AssertionFailure()
           << "shape " << got.shape_string() << " vs " << want.shape_string();
  }
  int64_t mismatches = 0;
  std::string first;
  testing::for_each_element(got, [&](const int64_t* idx, int64_t off) {
    int64_t want_off = 0;
    for (int d = 0; d < want.rank; ++d) want_off += idx[d] * want.strides[d];
    const float a = testing::load_float(got, off), b = testing::load_float(want, want_off);
    uint32_t ab = 0, bb = 0;
    std::memcpy(&ab, &a, 4);
    std::memcpy(&bb, &b, 4);
    if (ab != bb && !(std::isnan(a) && std::isnan(b))) {
      if (mismatches++ == 0) first = std::to_string(a) + " vs " + std::to_string(b);
    }
  });
  if (mismatches == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << mismatches << " elements differ, first: " << first;
}

// ==========================================================================================
// flash_attn_varlen_fwd / flash_attn_varlen_bwd
// ==========================================================================================

// Three sequences of drawn lengths (s_q around 3, s_k >= s_q), GQA with 4 query heads over 2 KV
// heads, d_qk 16, d_v 8, causal.
const MhaCase kMhaCase{.batch = 3, .q_len = 3, .kv_len = 5, .num_heads_q = 4,
                       .num_heads_kv = 2, .d_qk = 16, .d_v = 8, .varlen = true,
                       .causal = true, .seed = 11};
constexpr int64_t kB = 3, kHq = 4, kHkv = 2, kDqk = 16, kDv = 8;

const MhaData& base_inputs() {
  static const MhaData data = testing::make_mha_data(kMhaCase);
  return data;
}

// The base call's results: out and lse of the forward, dq, dk and dv of the backward.
const MhaData& base_results() {
  static const MhaData data = [] {
    MhaData d = base_inputs();
    flash_attn_varlen_fwd(d.fwd_args());
    flash_attn_varlen_bwd(d.bwd_args());
    return d;
  }();
  return data;
}

// is_varlen = false: 3 sequences of 2 queries and 3 keys (total_q 6, total_kv 9), the
// cu_seqlens values garbage.
MhaCase fixed_case() {
  MhaCase c = kMhaCase;
  c.varlen = false;
  c.fixed_api = true;
  c.q_len = 2;
  c.kv_len = 3;
  return c;
}

enum class Fn { fwd, bwd };

const char* fn_name(Fn fn) {
  return fn == Fn::fwd ? "flash_attn_varlen_fwd" : "flash_attn_varlen_bwd";
}

struct MhaFixture {
  Fn fn;
  MhaData d;
  MhaBwdArgs args;  // args.fwd alone for the forward
  Context ctx{};
  Buffers buf;

  // The base data; for the backward, out and lse hold the base forward's results.
  explicit MhaFixture(Fn which) : fn(which), d(base_inputs()) {
    if (fn == Fn::bwd) {
      d.out = base_results().out;
      d.lse_storage = base_results().lse_storage;
    }
    bind();
  }

  // Replaces the data by a fresh valid case (for the backward, with the forward already run).
  void load(const MhaCase& c) {
    d = testing::make_mha_data(c);
    if (fn == Fn::bwd) flash_attn_varlen_fwd(d.fwd_args());
    bind();
  }

  void bind() {
    args = d.bwd_args();
    buf.outputs = {&d.out, &d.lse_storage};  // the backward must not write them either
    if (fn == Fn::bwd) buf.outputs.insert(buf.outputs.end(), {&d.dq, &d.dk, &d.dv});
  }

  MhaFwdArgs& a() { return args.fwd; }
  int64_t tq() const { return d.total_q(); }
  int64_t tkv() const { return d.total_kv(); }
  int32_t& cu_q(int64_t i) { return d.cu_seqlens_qo.i32({i}); }
  int32_t& cu_kv(int64_t i) { return d.cu_seqlens_kv.i32({i}); }

  TensorView alloc(DType dtype, std::vector<int64_t> shape) {
    return buf.alloc(dtype, std::move(shape)).view();
  }
  TensorView bf16(std::vector<int64_t> shape) { return alloc(DType::bf16, std::move(shape)); }
  TensorView output(DType dtype, std::vector<int64_t> shape) {
    return buf.alloc_output(dtype, std::move(shape)).view();
  }
  TensorView cu(const std::vector<int32_t>& values) {
    return buf.alloc_i32({static_cast<int64_t>(values.size())}, values).view();
  }
  // A (NaN-filled) tensor of `like`'s shape and dtype with padded strides (rows padded by 8,
  // outer dimensions by 1: last dimension contiguous); tracked as an output if `is_output`,
  // else holding a copy of `like`'s values.
  TensorView padded(const TensorView& like, bool is_output) {
    std::vector<int64_t> shape(like.shape, like.shape + like.rank);
    buf.owned.push_back(HostTensor::empty(like.dtype, shape, Padding::non_contiguous()));
    HostTensor& t = buf.owned.back();
    if (is_output) buf.outputs.push_back(&t);
    else copy_values(like, t.view());
    return t.view();
  }
  // A view of `like`'s shape whose last dimension has stride 2 (into a real allocation).
  TensorView last_dim_strided(const TensorView& like, bool is_output) {
    const int64_t t0 = like.shape[0], t1 = like.shape[1], t2 = like.shape[2];
    TensorView big = is_output ? output(like.dtype, {t0, t1, 2 * t2})
                               : alloc(like.dtype, {t0, t1, 2 * t2});
    return TensorView::strided(big.data, like.dtype, {t0, t1, t2}, {t1 * 2 * t2, 2 * t2, 2});
  }
  // A (values.size(),) int32 tensor read with stride 2.
  TensorView cu_strided(const TensorView& cu_tensor) {
    const int64_t n = cu_tensor.shape[0];
    std::vector<int32_t> v;
    for (int64_t i = 0; i < n; ++i) {
      const int32_t x = cu_tensor.ptr<const int32_t>()[i];
      v.insert(v.end(), {x, x});
    }
    TensorView t = buf.alloc_i32({2 * n}, v).view();
    return TensorView::strided(t.data, DType::int32, {n}, {2});
  }
  std::vector<int32_t> cu_values(const HostTensor& t) const {
    std::vector<int32_t> v(static_cast<size_t>(t.numel()));
    std::memcpy(v.data(), t.view().data, v.size() * 4);
    return v;
  }

  // total_q = 0: every sequence without queries (cu_seqlens_qo all 0), every query-shaped
  // tensor empty.
  void zero_queries() {
    a().q = bf16({0, kHq, kDqk});
    a().out = output(DType::bf16, {0, kHq, kDv});
    a().lse = output(DType::fp32, {0, kHq});
    args.dout = bf16({0, kHq, kDv});
    args.dq = output(DType::bf16, {0, kHq, kDqk});
    for (int64_t i = 0; i <= kB; ++i) cu_q(i) = 0;
    a().max_seqlen_qo = 0;
  }
  // total_kv = 0: every sequence without keys (every row gets out 0, lse -inf, dq 0).
  void zero_keys() {
    a().k = bf16({0, kHkv, kDqk});
    a().v = bf16({0, kHkv, kDv});
    args.dk = output(DType::bf16, {0, kHkv, kDqk});
    args.dv = output(DType::bf16, {0, kHkv, kDv});
    for (int64_t i = 0; i <= kB; ++i) cu_kv(i) = 0;
    a().max_seqlen_kv = 0;
  }
};

struct MhaBadCase {
  std::string name;
  std::function<void(MhaFixture&)> mutate;
  Expected want;              // want.argument empty: must be accepted
  bool same_as_base = false;  // accepted: results bitwise equal to the base call's
  // Either rejected as `want` says, or accepted with finite results (for inputs that a fix may
  // reasonably either reject or handle).
  bool or_finite = false;
};

void PrintTo(const MhaBadCase& c, std::ostream* os) { *os << c.name; }

using F = MhaFixture;
using Adder = std::function<void(std::string, std::function<void(F&)>, Expected, bool, bool)>;

// Cases on the problem arguments (q, k, v, cu_seqlens, max_seqlen, flags, scale, ctx): the same
// for the forward and the backward, which validate them identically and first.
void add_problem_cases(const Adder& add_case) {
  auto add = [&](std::string name, std::function<void(F&)> m, Expected e, bool same = false,
                 bool or_finite = false) { add_case(std::move(name), std::move(m), e, same, or_finite); };

  // ---- accepted ----
  add("valid_call", [](F&) {}, kAccept, true);
  add("deterministic_true", [](F& f) { f.a().deterministic = true; }, kAccept, true);
  add("not_causal", [](F& f) { f.a().causal = false; }, kAccept);
  add("max_seqlen_larger_than_needed", [](F& f) {
    f.a().max_seqlen_qo += 100;
    f.a().max_seqlen_kv += 1000;
  }, kAccept, true);
  add("max_seqlen_int64_max", [](F& f) {
    f.a().max_seqlen_qo = kI64Max;
    f.a().max_seqlen_kv = kI64Max;
  }, kAccept, true);
  add("softmax_scale_default", [](F& f) { f.a().softmax_scale.reset(); }, kAccept);
  add("softmax_scale_negative", [](F& f) { f.a().softmax_scale = -0.25f; }, kAccept);
  add("softmax_scale_zero", [](F& f) { f.a().softmax_scale = 0.0f; }, kAccept);
  add("dropout_p_minus_zero", [](F& f) { f.a().dropout_p = -0.0f; }, kAccept, true);
  add("ctx_one_thread", [](F& f) { f.ctx.num_threads = 1; }, kAccept, true);
  add("ctx_three_threads", [](F& f) { f.ctx.num_threads = 3; }, kAccept, true);
  add("zero_length_sequences", [](F& f) {  // sequence 0 without keys, sequence 1 without queries
    MhaCase c = kMhaCase;
    c.zero_lengths = true;
    f.load(c);
  }, kAccept);
  add("zero_length_sequences_not_causal", [](F& f) {
    MhaCase c = kMhaCase;
    c.zero_lengths = true;
    c.causal = false;
    f.load(c);
  }, kAccept);
  add("total_q_zero_all_cu_seqlens_qo_zero", [](F& f) { f.zero_queries(); }, kAccept);
  add("total_q_zero_null_pointers", [](F& f) {
    f.zero_queries();
    f.a().q = null_data(f.a().q);
    f.a().out = null_data(f.a().out);
    f.a().lse = null_data(f.a().lse);
    f.args.dout = null_data(f.args.dout);
    f.args.dq = null_data(f.args.dq);
  }, kAccept);
  add("total_kv_zero_all_cu_seqlens_kv_zero", [](F& f) { f.zero_keys(); }, kAccept);
  add("non_contiguous_q_k_v", [](F& f) {  // last dim contiguous, rows and heads padded
    f.a().q = f.padded(f.a().q, false);
    f.a().k = f.padded(f.a().k, false);
    f.a().v = f.padded(f.a().v, false);
  }, kAccept, true);
  add("non_contiguous_generated_case", [](F& f) {
    MhaCase c = kMhaCase;
    c.non_contiguous = true;
    f.load(c);
  }, kAccept);
  add("is_varlen_false_garbage_cu_seqlens", [](F& f) { f.load(fixed_case()); }, kAccept);
  add("is_varlen_false_max_seqlen_larger", [](F& f) {
    f.load(fixed_case());
    f.a().max_seqlen_qo = 50;
    f.a().max_seqlen_kv = kI64Max;
  }, kAccept);
  add("is_varlen_false_total_zero", [](F& f) {
    f.load(fixed_case());
    f.zero_queries();  // 3 sequences of 0 queries; the cu_seqlens_qo values stay unread
    f.cu_q(1) = -99;
  }, kAccept);
  add("gqa_h_q_8_h_kv_2", [](F& f) {
    MhaCase c = kMhaCase;
    c.num_heads_q = 8;
    c.num_heads_kv = 2;
    f.load(c);
  }, kAccept);
  add("mqa_h_kv_1", [](F& f) {
    MhaCase c = kMhaCase;
    c.num_heads_kv = 1;
    f.load(c);
  }, kAccept);
  add("mha_h_kv_equals_h_q", [](F& f) {
    MhaCase c = kMhaCase;
    c.num_heads_kv = 4;
    f.load(c);
  }, kAccept);
  for (auto [dqk, dv] : {std::pair<int64_t, int64_t>{8, 256}, {192, 128}, {256, 8}, {128, 128},
                         {256, 256}, {8, 8}}) {
    add("head_dims_" + std::to_string(dqk) + "_" + std::to_string(dv), [dqk = dqk, dv = dv](F& f) {
      MhaCase c = kMhaCase;
      c.num_heads_q = 2;
      c.num_heads_kv = 1;
      c.d_qk = dqk;
      c.d_v = dv;
      f.load(c);
    }, kAccept);
  }
  add("causal_fewer_keys_than_queries", [](F& f) {  // some rows see no key
    MhaCase c = kMhaCase;
    c.q_len = 5;
    c.kv_len = 2;
    f.load(c);
  }, kAccept);

  // ---- context ----
  add("ctx_num_threads_negative", [](F& f) { f.ctx.num_threads = -1; }, value("ctx.num_threads"));
  add("ctx_num_threads_int_min", [](F& f) { f.ctx.num_threads = kI32Min; },
      value("ctx.num_threads"));
  add("ctx_num_threads_absurd", [](F& f) { f.ctx.num_threads = 1 << 21; },
      value("ctx.num_threads"));

  // ---- q ----
  add("q_dtype_fp16", [](F& f) { f.a().q = with_dtype(f.a().q, DType::fp16); }, type("q"));
  add("q_dtype_fp32", [](F& f) { f.a().q = f.alloc(DType::fp32, {f.tq(), kHq, kDqk}); },
      type("q"));
  add("q_dtype_fp8", [](F& f) { f.a().q = with_dtype(f.a().q, DType::fp8_e4m3); }, type("q"));
  add("q_dtype_int32", [](F& f) { f.a().q = f.alloc(DType::int32, {f.tq(), kHq, kDqk}); },
      type("q"));
  add("q_rank2", [](F& f) { f.a().q = reshape(f.a().q, {f.tq(), kHq * kDqk}); }, value("q"));
  add("q_rank4", [](F& f) { f.a().q = reshape(f.a().q, {1, f.tq(), kHq, kDqk}); }, value("q"));
  add("q_rank0", [](F& f) { f.a().q = reshape(f.a().q, {}); }, value("q"));
  add("q_rank7", [](F& f) { f.a().q.rank = 7; }, value("q"));
  add("q_rank_negative", [](F& f) { f.a().q.rank = -1; }, value("q"));
  add("q_negative_total", [](F& f) { f.a().q.shape[0] = -1; }, value("q"));
  add("q_negative_heads", [](F& f) { f.a().q.shape[1] = -4; }, value("q"));
  add("q_negative_d_qk", [](F& f) { f.a().q.shape[2] = -16; }, value("q"));
  add("q_null", [](F& f) { f.a().q = null_data(f.a().q); }, value("q"));
  // Sizes whose product overflows int64 (total_q * 2^62 * 16) must not pass as an empty tensor.
  add("q_null_size_product_overflows", [](F& f) {
    f.a().q = null_data(f.a().q);
    f.a().q.shape[1] = int64_t{1} << 62;
  }, value("q"));
  add("q_cuda", [](F& f) { f.a().q = on_cuda(f.a().q); }, unsupported("q"));
  add("q_last_dim_strided", [](F& f) { f.a().q = f.last_dim_strided(f.a().q, false); },
      value("q"));
  add("q_heads_zero", [](F& f) { f.a().q.shape[1] = 0; }, value("q"));
  for (int64_t dqk : {0, 4, 12, 264, 512}) {
    add("q_d_qk_" + std::to_string(dqk), [dqk](F& f) {
      f.a().q = f.bf16({f.tq(), kHq, dqk});
    }, value("q"));
  }
  add("q_d_qk_huge", [](F& f) { f.a().q.shape[2] = kHuge; }, value("q"));
  add("d_qk_12_in_q_and_k", [](F& f) {
    f.a().q = f.bf16({f.tq(), kHq, 12});
    f.a().k = f.bf16({f.tkv(), kHkv, 12});
  }, value("q"));
  add("d_qk_264_in_q_and_k", [](F& f) {
    f.a().q = f.bf16({f.tq(), kHq, 264});
    f.a().k = f.bf16({f.tkv(), kHkv, 264});
  }, value("q"));
  add("d_qk_512_in_q_and_k", [](F& f) {
    f.a().q = f.bf16({f.tq(), kHq, 512});
    f.a().k = f.bf16({f.tkv(), kHkv, 512});
  }, value("q"));
  // q fixes total_q and h_q: a wrong one is reported on the first tensor that disagrees.
  add("q_total_plus_1", [](F& f) { f.a().q = f.bf16({f.tq() + 1, kHq, kDqk}); },
      value("cu_seqlens_qo"));
  add("q_total_minus_1", [](F& f) { f.a().q.shape[0] -= 1; }, value("cu_seqlens_qo"));
  add("q_total_huge", [](F& f) { f.a().q.shape[0] = kHuge; }, value("cu_seqlens_qo"));
  add("h_q_3_not_divisible_by_h_kv", [](F& f) { f.a().q = f.bf16({f.tq(), 3, kDqk}); },
      value("k"));
  add("h_q_5_not_divisible_by_h_kv", [](F& f) { f.a().q = f.bf16({f.tq(), 5, kDqk}); },
      value("k"));
  add("q_heads_8", [](F& f) { f.a().q = f.bf16({f.tq(), 8, kDqk}); }, value("out"));
  // 2^40 heads of 192 bf16 channels: more bytes than a 2^47 address space, so q itself is
  // rejected (before its heads are compared with out's).
  add("q_heads_huge", [](F& f) { f.a().q.shape[1] = kHuge; }, value("q"));

  // ---- k ----
  add("k_dtype_fp16", [](F& f) { f.a().k = with_dtype(f.a().k, DType::fp16); }, type("k"));
  add("k_dtype_fp32", [](F& f) { f.a().k = f.alloc(DType::fp32, {f.tkv(), kHkv, kDqk}); },
      type("k"));
  add("k_dtype_uint8", [](F& f) { f.a().k = with_dtype(f.a().k, DType::uint8); }, type("k"));
  add("k_rank2", [](F& f) { f.a().k = reshape(f.a().k, {f.tkv(), kHkv * kDqk}); }, value("k"));
  add("k_rank4", [](F& f) { f.a().k = reshape(f.a().k, {f.tkv(), kHkv, kDqk, 1}); },
      value("k"));
  add("k_rank0", [](F& f) { f.a().k = reshape(f.a().k, {}); }, value("k"));
  add("k_null", [](F& f) { f.a().k = null_data(f.a().k); }, value("k"));
  add("k_cuda", [](F& f) { f.a().k = on_cuda(f.a().k); }, unsupported("k"));
  add("k_last_dim_strided", [](F& f) { f.a().k = f.last_dim_strided(f.a().k, false); },
      value("k"));
  add("k_negative_total", [](F& f) { f.a().k.shape[0] = -1; }, value("k"));
  add("k_negative_heads", [](F& f) { f.a().k.shape[1] = -2; }, value("k"));
  add("k_d_qk_24_differs_from_q", [](F& f) { f.a().k = f.bf16({f.tkv(), kHkv, 24}); },
      value("k"));
  add("k_d_qk_8_differs_from_q", [](F& f) { f.a().k = reshape(f.a().k, {f.tkv(), kHkv, 8}); },
      value("k"));
  add("k_d_qk_0", [](F& f) { f.a().k.shape[2] = 0; }, value("k"));
  add("k_heads_3_not_dividing_h_q", [](F& f) { f.a().k = f.bf16({f.tkv(), 3, kDqk}); },
      value("k"));
  add("k_heads_8_above_h_q", [](F& f) { f.a().k = f.bf16({f.tkv(), 8, kDqk}); }, value("k"));
  add("k_heads_zero", [](F& f) { f.a().k.shape[1] = 0; }, value("k"));
  add("k_heads_huge", [](F& f) { f.a().k.shape[1] = kHuge; }, value("k"));
  // k fixes total_kv and h_kv: a v that disagrees is reported on v.
  add("k_heads_4_v_heads_2", [](F& f) { f.a().k = f.bf16({f.tkv(), 4, kDqk}); }, value("v"));
  add("k_heads_1_v_heads_2", [](F& f) { f.a().k = f.bf16({f.tkv(), 1, kDqk}); }, value("v"));
  add("k_total_plus_1", [](F& f) { f.a().k = f.bf16({f.tkv() + 1, kHkv, kDqk}); }, value("v"));
  add("k_total_huge", [](F& f) { f.a().k.shape[0] = kHuge; }, value("v"));
  add("k_and_v_total_plus_1", [](F& f) {
    f.a().k = f.bf16({f.tkv() + 1, kHkv, kDqk});
    f.a().v = f.bf16({f.tkv() + 1, kHkv, kDv});
  }, value("cu_seqlens_kv"));

  // ---- v ----
  add("v_dtype_fp16", [](F& f) { f.a().v = with_dtype(f.a().v, DType::fp16); }, type("v"));
  add("v_dtype_fp32", [](F& f) { f.a().v = f.alloc(DType::fp32, {f.tkv(), kHkv, kDv}); },
      type("v"));
  add("v_rank2", [](F& f) { f.a().v = reshape(f.a().v, {f.tkv(), kHkv * kDv}); }, value("v"));
  add("v_rank4", [](F& f) { f.a().v = reshape(f.a().v, {1, f.tkv(), kHkv, kDv}); }, value("v"));
  add("v_null", [](F& f) { f.a().v = null_data(f.a().v); }, value("v"));
  add("v_cuda", [](F& f) { f.a().v = on_cuda(f.a().v); }, unsupported("v"));
  add("v_last_dim_strided", [](F& f) { f.a().v = f.last_dim_strided(f.a().v, false); },
      value("v"));
  add("v_negative_total", [](F& f) { f.a().v.shape[0] = -1; }, value("v"));
  for (int64_t dv : {0, 4, 12, 264, 512}) {
    add("v_d_v_" + std::to_string(dv), [dv](F& f) { f.a().v = f.bf16({f.tkv(), kHkv, dv}); },
        value("v"));
  }
  add("v_d_v_huge", [](F& f) { f.a().v.shape[2] = kHuge; }, value("v"));
  add("v_heads_1", [](F& f) { f.a().v = f.bf16({f.tkv(), 1, kDv}); }, value("v"));
  add("v_heads_4", [](F& f) { f.a().v = f.bf16({f.tkv(), 4, kDv}); }, value("v"));
  add("v_total_plus_1", [](F& f) { f.a().v = f.bf16({f.tkv() + 1, kHkv, kDv}); }, value("v"));
  add("v_total_minus_1", [](F& f) { f.a().v.shape[0] -= 1; }, value("v"));
  add("v_total_huge", [](F& f) { f.a().v.shape[0] = kHuge; }, value("v"));

  // ---- cu_seqlens_qo / cu_seqlens_kv and max_seqlen_qo / max_seqlen_kv ----
  for (const bool kv : {false, true}) {
    const std::string arg = kv ? "cu_seqlens_kv" : "cu_seqlens_qo";
    const std::string max_arg = kv ? "max_seqlen_kv" : "max_seqlen_qo";
    auto cu = [kv](F& f) -> TensorView& { return kv ? f.a().cu_seqlens_kv : f.a().cu_seqlens_qo; };
    auto entry = [kv](F& f, int64_t i) -> int32_t& { return kv ? f.cu_kv(i) : f.cu_q(i); };
    auto max_len = [kv](F& f) -> int64_t& { return kv ? f.a().max_seqlen_kv : f.a().max_seqlen_qo; };
    auto total = [kv](F& f) { return kv ? f.tkv() : f.tq(); };
    auto n = [&](const std::string& what) { return arg + "_" + what; };

    add(n("dtype_fp32"), [cu](F& f) { cu(f) = with_dtype(cu(f), DType::fp32); }, type(arg));
    add(n("dtype_uint8"), [cu](F& f) { cu(f) = with_dtype(cu(f), DType::uint8); }, type(arg));
    add(n("dtype_bf16"), [cu](F& f) { cu(f) = f.alloc(DType::bf16, {kB + 1}); }, type(arg));
    add(n("rank2"), [cu](F& f) { cu(f) = reshape(cu(f), {kB + 1, 1}); }, value(arg));
    add(n("rank0"), [cu](F& f) { cu(f) = reshape(cu(f), {}); }, value(arg));
    add(n("null"), [cu](F& f) { cu(f) = null_data(cu(f)); }, value(arg));
    add(n("not_given"), [cu](F& f) { cu(f) = {}; }, value(arg));
    add(n("cuda"), [cu](F& f) { cu(f) = on_cuda(cu(f)); }, unsupported(arg));
    add(n("non_contiguous"), [cu](F& f) { cu(f) = f.cu_strided(cu(f)); }, value(arg));
    add(n("first_entry_1"), [entry](F& f) { entry(f, 0) = 1; }, value(arg));
    add(n("first_entry_minus_1"), [entry](F& f) { entry(f, 0) = -1; }, value(arg));
    add(n("first_entry_int_min"), [entry](F& f) { entry(f, 0) = kI32Min; }, value(arg));
    add(n("decreasing"), [entry](F& f) { entry(f, 2) = entry(f, 1) - 1; }, value(arg));
    add(n("decreasing_to_int_min"), [entry](F& f) { entry(f, 2) = kI32Min; }, value(arg));
    add(n("all_zero"), [entry](F& f) {
      for (int64_t i = 0; i <= kB; ++i) entry(f, i) = 0;
    }, value(arg));
    add(n("last_entry_total_minus_1"), [entry, total](F& f) {
      entry(f, kB) = static_cast<int32_t>(total(f) - 1);
    }, value(arg));
    add(n("last_entry_total_plus_1_max_seqlen_large"), [entry, total, max_len](F& f) {
      entry(f, kB) = static_cast<int32_t>(total(f) + 1);
      max_len(f) = 1000;
    }, value(arg));
    add(n("last_entry_int_max_max_seqlen_int64_max"), [entry, max_len](F& f) {
      entry(f, kB) = kI32Max;
      max_len(f) = kI64Max;
    }, value(arg));
    add(n("middle_entry_beyond_total_max_seqlen_large"), [entry, total, max_len](F& f) {
      entry(f, 1) = static_cast<int32_t>(total(f) + 5);
      max_len(f) = 1000;
    }, value(arg));
    // An entry far beyond the total also makes a sequence longer than max_seqlen: the error
    // must name cu_seqlens (not ending at the total, or not non-decreasing), not max_seqlen.
    add(n("last_entry_far_beyond_total"), [entry, total](F& f) {
      entry(f, kB) = static_cast<int32_t>(total(f) + 1000);
    }, value(arg));
    add(n("last_entry_int_max"), [entry](F& f) { entry(f, kB) = kI32Max; }, value(arg));
    // The entry after it is then decreasing.
    add(n("middle_entry_far_beyond_total"), [entry, total](F& f) {
      entry(f, 1) = static_cast<int32_t>(total(f) + 1000);
    }, value(arg));

    // Wrong lengths: cu_seqlens_qo fixes b; cu_seqlens_kv must have b + 1 entries too.
    add(n("b_plus_2_entries"), [cu, kv](F& f) {
      std::vector<int32_t> v = f.cu_values(kv ? f.d.cu_seqlens_kv : f.d.cu_seqlens_qo);
      v.push_back(v.back());
      cu(f) = f.cu(v);
    }, value("cu_seqlens_kv"));
    add(n("b_entries"), [cu](F& f) { cu(f).shape[0] = kB; }, value("cu_seqlens_kv"));
    add(n("one_entry_b_0"), [cu](F& f) { cu(f) = f.cu({0}); },
        value(kv ? "cu_seqlens_kv" : "cu_seqlens_qo"));
    add(n("no_entries"), [cu](F& f) { cu(f).shape[0] = 0; },
        value(kv ? "cu_seqlens_kv" : "cu_seqlens_qo"));

    add(max_arg + "_smaller_than_a_length", [max_len](F& f) { max_len(f) -= 1; },
        value(max_arg));
    add(max_arg + "_zero", [max_len](F& f) { max_len(f) = 0; }, value(max_arg));
    add(max_arg + "_negative", [max_len](F& f) { max_len(f) = -1; }, value(max_arg));
    add(max_arg + "_int64_min", [max_len](F& f) { max_len(f) = kI64Min; }, value(max_arg));
  }
  add("b_0_both_cu_seqlens_one_entry", [](F& f) {
    f.a().cu_seqlens_qo = f.cu({0});
    f.a().cu_seqlens_kv = f.cu({0});
  }, value("cu_seqlens_qo"));
  add("b_0_empty_problem", [](F& f) {  // no sequences at all: still b >= 1 required
    f.zero_queries();
    f.zero_keys();
    f.a().cu_seqlens_qo = f.cu({0});
    f.a().cu_seqlens_kv = f.cu({0});
  }, value("cu_seqlens_qo"));

  // ---- is_varlen = false ----
  add("is_varlen_false_total_q_not_divisible_by_b", [](F& f) {
    f.load(fixed_case());
    f.a().q = f.bf16({7, kHq, kDqk});
  }, value("q"));
  add("is_varlen_false_total_kv_not_divisible_by_b", [](F& f) {
    f.load(fixed_case());
    f.a().k = f.bf16({10, kHkv, kDqk});
    f.a().v = f.bf16({10, kHkv, kDv});
  }, value("k"));
  add("is_varlen_false_max_seqlen_qo_too_small", [](F& f) {
    f.load(fixed_case());
    f.a().max_seqlen_qo = 1;
  }, value("max_seqlen_qo"));
  add("is_varlen_false_max_seqlen_kv_too_small", [](F& f) {
    f.load(fixed_case());
    f.a().max_seqlen_kv = 2;
  }, value("max_seqlen_kv"));
  add("is_varlen_false_max_seqlen_qo_negative", [](F& f) {
    f.load(fixed_case());
    f.a().max_seqlen_qo = -1;
  }, value("max_seqlen_qo"));
  add("is_varlen_false_b_0", [](F& f) {  // no division by b = 0
    f.load(fixed_case());
    f.a().cu_seqlens_qo = f.cu({0});
    f.a().cu_seqlens_kv = f.cu({0});
  }, value("cu_seqlens_qo"));
  add("is_varlen_false_cu_seqlens_kv_wrong_length", [](F& f) {
    f.load(fixed_case());
    f.a().cu_seqlens_kv = f.cu({0, 3, 6});
  }, value("cu_seqlens_kv"));
  add("is_varlen_false_cu_seqlens_qo_dtype_fp32", [](F& f) {
    f.load(fixed_case());
    f.a().cu_seqlens_qo = with_dtype(f.a().cu_seqlens_qo, DType::fp32);
  }, type("cu_seqlens_qo"));
  add("is_varlen_false_cu_seqlens_qo_null", [](F& f) {
    f.load(fixed_case());
    f.a().cu_seqlens_qo = null_data(f.a().cu_seqlens_qo);
  }, value("cu_seqlens_qo"));
  add("is_varlen_false_cu_seqlens_kv_non_contiguous", [](F& f) {
    f.load(fixed_case());
    f.a().cu_seqlens_kv = f.cu_strided(f.a().cu_seqlens_kv);
  }, value("cu_seqlens_kv"));

  // ---- dropout_p ----
  // A probability other than 0 is unsupported; something that is no probability is a value
  // error.
  for (auto [name, p] : {std::pair<const char*, float>{"0_1", 0.1f}, {"0_5", 0.5f}, {"1", 1.0f},
                         {"denormal", 1e-40f}}) {
    add(std::string("dropout_p_") + name, [p = p](F& f) { f.a().dropout_p = p; },
        unsupported("dropout_p"));
  }
  for (auto [name, p] : {std::pair<const char*, float>{"minus_0_1", -0.1f}, {"nan", kNaN},
                         {"inf", kInf}, {"1_5", 1.5f}}) {
    add(std::string("dropout_p_") + name, [p = p](F& f) { f.a().dropout_p = p; },
        value("dropout_p"));
  }

  // ---- softmax_scale ----
  add("softmax_scale_nan", [](F& f) { f.a().softmax_scale = kNaN; }, value("softmax_scale"));
  add("softmax_scale_inf", [](F& f) { f.a().softmax_scale = kInf; }, value("softmax_scale"));
  add("softmax_scale_minus_inf", [](F& f) { f.a().softmax_scale = -kInf; },
      value("softmax_scale"));
  add("softmax_scale_3e38", [](F& f) { f.a().softmax_scale = 3e38f; }, value("softmax_scale"));
  add("softmax_scale_2_4e38", [](F& f) { f.a().softmax_scale = 2.4e38f; },
      value("softmax_scale"));
  add("softmax_scale_minus_flt_max", [](F& f) {
    f.a().softmax_scale = -std::numeric_limits<float>::max();
  }, value("softmax_scale"));
  // Probes: finite scales whose log2 form is still finite in fp32, so the contract accepts them.
  // Either reject them or compute finite results.
  // (The backward recomputes P = exp2(s - lse2) with lse2 = lse * log2(e) rounded in fp32; once
  // |logits| ~ 1e9 that rounding error exceeded 128 and exp2 overflowed into NaN gradients,
  // until P was clamped to <= 1.)
  add("softmax_scale_1e12", [](F& f) { f.a().softmax_scale = 1e12f; }, value("softmax_scale"),
      false, true);
  add("softmax_scale_1e38", [](F& f) { f.a().softmax_scale = 1e38f; }, value("softmax_scale"),
      false, true);
  add("softmax_scale_minus_1e38", [](F& f) { f.a().softmax_scale = -1e38f; },
      value("softmax_scale"), false, true);

  // ---- the first bad argument in the documented order wins ----
  add("everything_on_cuda", [](F& f) {
    f.a().q = on_cuda(f.a().q);
    f.a().k = on_cuda(f.a().k);
    f.a().out = on_cuda(f.a().out);
  }, unsupported("q"));
  add("bad_scale_and_bad_cu_seqlens", [](F& f) {
    f.a().softmax_scale = kNaN;
    f.cu_q(0) = 1;
  }, value("cu_seqlens_qo"));
}

std::vector<MhaBadCase> fwd_cases() {
  std::vector<MhaBadCase> c;
  Adder add_case = [&c](std::string name, std::function<void(F&)> m, Expected e, bool same,
                        bool or_finite) {
    c.push_back({std::move(name), std::move(m), std::move(e), same, or_finite});
  };
  add_problem_cases(add_case);
  auto add = [&](std::string name, std::function<void(F&)> m, Expected e, bool same = false) {
    add_case(std::move(name), std::move(m), e, same, false);
  };

  // ---- out (written) ----
  add("out_non_contiguous_accepted", [](F& f) { f.a().out = f.padded(f.a().out, true); },
      kAccept, true);
  add("out_dtype_fp32", [](F& f) { f.a().out = f.output(DType::fp32, {f.tq(), kHq, kDv}); },
      type("out"));
  add("out_dtype_fp16", [](F& f) { f.a().out = with_dtype(f.a().out, DType::fp16); },
      type("out"));
  add("out_rank2", [](F& f) { f.a().out = reshape(f.a().out, {f.tq(), kHq * kDv}); },
      value("out"));
  add("out_rank4", [](F& f) { f.a().out = reshape(f.a().out, {f.tq(), kHq, kDv, 1}); },
      value("out"));
  add("out_d_qk_instead_of_d_v", [](F& f) {
    f.a().out = f.output(DType::bf16, {f.tq(), kHq, kDqk});
  }, value("out"));
  add("out_heads_h_kv", [](F& f) { f.a().out = f.output(DType::bf16, {f.tq(), kHkv, kDv}); },
      value("out"));
  add("out_total_plus_1", [](F& f) {
    f.a().out = f.output(DType::bf16, {f.tq() + 1, kHq, kDv});
  }, value("out"));
  add("out_total_minus_1", [](F& f) { f.a().out.shape[0] -= 1; }, value("out"));
  add("out_negative_size", [](F& f) { f.a().out.shape[1] = -4; }, value("out"));
  add("out_null", [](F& f) { f.a().out = null_data(f.a().out); }, value("out"));
  add("out_cuda", [](F& f) { f.a().out = on_cuda(f.a().out); }, unsupported("out"));
  add("out_last_dim_strided", [](F& f) { f.a().out = f.last_dim_strided(f.a().out, true); },
      value("out"));
  add("out_zero_stride_heads", [](F& f) { f.a().out = restride(f.a().out, {kHq * kDv, 0, 1}); },
      value("out"));
  add("out_zero_stride_tokens", [](F& f) { f.a().out = restride(f.a().out, {0, kDv, 1}); },
      value("out"));
  add("out_overlapping_heads", [](F& f) {  // consecutive heads overlap by half a row
    f.a().out = restride(f.a().out, {kHq * kDv, kDv / 2, 1});
  }, value("out"));
  add("out_token_stride_equals_head_stride", [](F& f) {
    f.a().out = restride(f.a().out, {kDv, kDv, 1});
  }, value("out"));

  // ---- lse (written) ----
  add("lse_row_major_strides_accepted", [](F& f) {  // (h_q, 1) instead of FlashMLA's (1, total_q)
    f.a().lse = f.output(DType::fp32, {f.tq(), kHq});
  }, kAccept, true);
  add("lse_padded_rows_accepted", [](F& f) {
    TensorView big = f.output(DType::fp32, {f.tq(), kHq + 3});
    f.a().lse = TensorView::strided(big.data, DType::fp32, {f.tq(), kHq}, {kHq + 3, 1});
  }, kAccept, true);
  add("lse_dtype_bf16", [](F& f) { f.a().lse = f.output(DType::bf16, {f.tq(), kHq}); },
      type("lse"));
  add("lse_dtype_int32", [](F& f) { f.a().lse = with_dtype(f.a().lse, DType::int32); },
      type("lse"));
  add("lse_rank1", [](F& f) { f.a().lse = reshape(f.a().lse, {f.tq() * kHq}); }, value("lse"));
  add("lse_rank3", [](F& f) { f.a().lse = reshape(f.a().lse, {f.tq(), kHq, 1}); },
      value("lse"));
  add("lse_heads_before_tokens", [](F& f) {  // FlashMLA's storage order passed as the shape
    ASSERT_NE(f.tq(), kHq);
    f.a().lse = f.output(DType::fp32, {kHq, f.tq()});
  }, value("lse"));
  add("lse_total_plus_1", [](F& f) { f.a().lse = f.output(DType::fp32, {f.tq() + 1, kHq}); },
      value("lse"));
  add("lse_heads_h_kv", [](F& f) { f.a().lse.shape[1] = kHkv; }, value("lse"));
  add("lse_null", [](F& f) { f.a().lse = null_data(f.a().lse); }, value("lse"));
  add("lse_cuda", [](F& f) { f.a().lse = on_cuda(f.a().lse); }, unsupported("lse"));
  add("lse_zero_stride_tokens", [](F& f) { f.a().lse = restride(f.a().lse, {0, f.tq()}); },
      value("lse"));
  add("lse_zero_stride_heads", [](F& f) { f.a().lse = restride(f.a().lse, {1, 0}); },
      value("lse"));
  add("lse_all_strides_zero", [](F& f) { f.a().lse = restride(f.a().lse, {0, 0}); },
      value("lse"));
  add("lse_overlapping", [](F& f) { f.a().lse = restride(f.a().lse, {1, 1}); }, value("lse"));
  return c;
}

std::vector<MhaBadCase> bwd_cases() {
  std::vector<MhaBadCase> c;
  Adder add_case = [&c](std::string name, std::function<void(F&)> m, Expected e, bool same,
                        bool or_finite) {
    c.push_back({std::move(name), std::move(m), std::move(e), same, or_finite});
  };
  add_problem_cases(add_case);
  auto add = [&](std::string name, std::function<void(F&)> m, Expected e, bool same = false) {
    add_case(std::move(name), std::move(m), e, same, false);
  };

  // ---- fwd.out / fwd.lse: inputs now ----
  add("out_non_contiguous_accepted", [](F& f) { f.a().out = f.padded(f.a().out, false); },
      kAccept, true);
  add("lse_row_major_strides_accepted", [](F& f) {
    TensorView t = f.alloc(DType::fp32, {f.tq(), kHq});
    copy_values(f.a().lse, t);
    f.a().lse = t;
  }, kAccept, true);
  add("out_dtype_fp32", [](F& f) { f.a().out = f.alloc(DType::fp32, {f.tq(), kHq, kDv}); },
      type("out"));
  add("out_dtype_fp16", [](F& f) { f.a().out = with_dtype(f.a().out, DType::fp16); },
      type("out"));
  add("out_rank2", [](F& f) { f.a().out = reshape(f.a().out, {f.tq(), kHq * kDv}); },
      value("out"));
  add("out_d_qk_instead_of_d_v", [](F& f) { f.a().out = f.bf16({f.tq(), kHq, kDqk}); },
      value("out"));
  add("out_heads_h_kv", [](F& f) { f.a().out = f.bf16({f.tq(), kHkv, kDv}); }, value("out"));
  add("out_total_plus_1", [](F& f) { f.a().out = f.bf16({f.tq() + 1, kHq, kDv}); },
      value("out"));
  add("out_null", [](F& f) { f.a().out = null_data(f.a().out); }, value("out"));
  add("out_cuda", [](F& f) { f.a().out = on_cuda(f.a().out); }, unsupported("out"));
  add("out_last_dim_strided", [](F& f) { f.a().out = f.last_dim_strided(f.a().out, false); },
      value("out"));
  add("lse_dtype_bf16", [](F& f) { f.a().lse = f.alloc(DType::bf16, {f.tq(), kHq}); },
      type("lse"));
  add("lse_rank1", [](F& f) { f.a().lse = reshape(f.a().lse, {f.tq() * kHq}); }, value("lse"));
  add("lse_rank3", [](F& f) { f.a().lse = reshape(f.a().lse, {f.tq(), kHq, 1}); },
      value("lse"));
  add("lse_heads_before_tokens", [](F& f) {
    ASSERT_NE(f.tq(), kHq);
    f.a().lse = f.alloc(DType::fp32, {kHq, f.tq()});
  }, value("lse"));
  add("lse_total_plus_1", [](F& f) { f.a().lse = f.alloc(DType::fp32, {f.tq() + 1, kHq}); },
      value("lse"));
  add("lse_null", [](F& f) { f.a().lse = null_data(f.a().lse); }, value("lse"));
  add("lse_cuda", [](F& f) { f.a().lse = on_cuda(f.a().lse); }, unsupported("lse"));

  // ---- dout ----
  add("dout_non_contiguous_accepted", [](F& f) { f.args.dout = f.padded(f.args.dout, false); },
      kAccept, true);
  add("dout_dtype_fp16", [](F& f) { f.args.dout = with_dtype(f.args.dout, DType::fp16); },
      type("dout"));
  add("dout_dtype_fp32", [](F& f) { f.args.dout = f.alloc(DType::fp32, {f.tq(), kHq, kDv}); },
      type("dout"));
  add("dout_rank2", [](F& f) { f.args.dout = reshape(f.args.dout, {f.tq(), kHq * kDv}); },
      value("dout"));
  add("dout_rank4", [](F& f) { f.args.dout = reshape(f.args.dout, {1, f.tq(), kHq, kDv}); },
      value("dout"));
  add("dout_d_qk_instead_of_d_v", [](F& f) { f.args.dout = f.bf16({f.tq(), kHq, kDqk}); },
      value("dout"));
  add("dout_heads_h_kv", [](F& f) { f.args.dout = f.bf16({f.tq(), kHkv, kDv}); },
      value("dout"));
  add("dout_total_plus_1", [](F& f) { f.args.dout = f.bf16({f.tq() + 1, kHq, kDv}); },
      value("dout"));
  add("dout_total_kv", [](F& f) { f.args.dout = f.bf16({f.tkv(), kHq, kDv}); }, value("dout"));
  add("dout_null", [](F& f) { f.args.dout = null_data(f.args.dout); }, value("dout"));
  add("dout_not_given", [](F& f) { f.args.dout = {}; }, value("dout"));
  add("dout_cuda", [](F& f) { f.args.dout = on_cuda(f.args.dout); }, unsupported("dout"));
  add("dout_last_dim_strided", [](F& f) {
    f.args.dout = f.last_dim_strided(f.args.dout, false);
  }, value("dout"));

  // ---- dq, dk, dv (written) ----
  add("gradients_non_contiguous_accepted", [](F& f) {
    f.args.dq = f.padded(f.args.dq, true);
    f.args.dk = f.padded(f.args.dk, true);
    f.args.dv = f.padded(f.args.dv, true);
  }, kAccept, true);
  struct Grad {
    const char* name;
    TensorView MhaBwdArgs::*member;
    bool kv;       // shaped like k / v (total_kv, h_kv) rather than q (total_q, h_q)
    int64_t dim;   // last dimension
    int64_t other_dim;
  };
  for (const Grad g : {Grad{"dq", &MhaBwdArgs::dq, false, kDqk, kDv},
                       Grad{"dk", &MhaBwdArgs::dk, true, kDqk, kDv},
                       Grad{"dv", &MhaBwdArgs::dv, true, kDv, kDqk}}) {
    const std::string arg = g.name;
    auto n = [&](const std::string& what) { return arg + "_" + what; };
    auto rows = [g](F& f) { return g.kv ? f.tkv() : f.tq(); };
    const int64_t heads = g.kv ? kHkv : kHq, other_heads = g.kv ? kHq : kHkv;
    add(n("dtype_fp32"), [=](F& f) {
      f.args.*g.member = f.output(DType::fp32, {rows(f), heads, g.dim});
    }, type(arg));
    add(n("dtype_fp16"), [=](F& f) {
      f.args.*g.member = with_dtype(f.args.*g.member, DType::fp16);
    }, type(arg));
    add(n("rank2"), [=](F& f) {
      f.args.*g.member = reshape(f.args.*g.member, {rows(f), heads * g.dim});
    }, value(arg));
    add(n("rank4"), [=](F& f) {
      f.args.*g.member = reshape(f.args.*g.member, {rows(f), heads, g.dim, 1});
    }, value(arg));
    add(n("wrong_head_dim"), [=](F& f) {
      f.args.*g.member = f.output(DType::bf16, {rows(f), heads, g.other_dim});
    }, value(arg));
    add(n("wrong_heads"), [=](F& f) {
      f.args.*g.member = f.output(DType::bf16, {rows(f), other_heads, g.dim});
    }, value(arg));
    add(n("total_plus_1"), [=](F& f) {
      f.args.*g.member = f.output(DType::bf16, {rows(f) + 1, heads, g.dim});
    }, value(arg));
    add(n("total_minus_1"), [=](F& f) { (f.args.*g.member).shape[0] -= 1; }, value(arg));
    add(n("negative_size"), [=](F& f) { (f.args.*g.member).shape[1] = -1; }, value(arg));
    add(n("null"), [=](F& f) { f.args.*g.member = null_data(f.args.*g.member); }, value(arg));
    add(n("not_given"), [=](F& f) { f.args.*g.member = {}; }, value(arg));
    add(n("cuda"), [=](F& f) { f.args.*g.member = on_cuda(f.args.*g.member); },
        unsupported(arg));
    add(n("last_dim_strided"), [=](F& f) {
      f.args.*g.member = f.last_dim_strided(f.args.*g.member, true);
    }, value(arg));
    add(n("zero_stride_heads"), [=](F& f) {
      f.args.*g.member = restride(f.args.*g.member, {heads * g.dim, 0, 1});
    }, value(arg));
    add(n("zero_stride_tokens"), [=](F& f) {
      f.args.*g.member = restride(f.args.*g.member, {0, g.dim, 1});
    }, value(arg));
    add(n("overlapping_heads"), [=](F& f) {
      f.args.*g.member = restride(f.args.*g.member, {heads * g.dim, g.dim / 2, 1});
    }, value(arg));
  }
  return c;
}

// Runs one table entry (the fixture already mutated and snapshotted).
void run_mha_case(MhaFixture& f, const MhaBadCase& c) {
  const std::string function = fn_name(f.fn);
  auto call = [&f] {
    if (f.fn == Fn::fwd) {
      flash_attn_varlen_fwd(f.args.fwd, f.ctx);
    } else {
      flash_attn_varlen_bwd(f.args, f.ctx);
    }
  };
  if (!c.want.argument.empty() && !c.or_finite) {
    if (!expect_error(call, function, c.want)) return;
    f.buf.expect_untouched();
    return;
  }
  try {
    call();
  } catch (const Error& e) {
    if (!c.or_finite) {
      ADD_FAILURE() << "rejected; must be accepted: " << e.what();
    } else {  // rejected: then as `want` says, and before any work
      expect_error(call, function, c.want);
      f.buf.expect_untouched();
    }
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-flashmla exception: " << e.what();
    return;
  }
  const std::string why = c.or_finite ? " (accepted; expected finite results or a " +
                                            std::string(kind_name(c.want.kind)) +
                                            " error on argument '" + c.want.argument + "')"
                                      : "";
  const MhaData& base = base_results();
  if (f.fn == Fn::fwd) {
    EXPECT_TRUE(view_all_finite(f.args.fwd.out)) << "out has non-finite values" << why;
    EXPECT_TRUE(view_no_nan(f.args.fwd.lse)) << "lse has NaN values" << why;
    if (c.same_as_base) {
      EXPECT_TRUE(same_values(f.args.fwd.out, base.out.view())) << "out";
      EXPECT_TRUE(same_values(f.args.fwd.lse, base.lse())) << "lse";
    }
    return;
  }
  EXPECT_TRUE(bytes_of(f.d.out) == f.buf.snapshots[0]) << "the backward wrote out";
  EXPECT_TRUE(bytes_of(f.d.lse_storage) == f.buf.snapshots[1]) << "the backward wrote lse";
  EXPECT_TRUE(view_all_finite(f.args.dq)) << "dq has non-finite values" << why;
  EXPECT_TRUE(view_all_finite(f.args.dk)) << "dk has non-finite values" << why;
  EXPECT_TRUE(view_all_finite(f.args.dv)) << "dv has non-finite values" << why;
  if (c.same_as_base) {
    EXPECT_TRUE(same_values(f.args.dq, base.dq.view())) << "dq";
    EXPECT_TRUE(same_values(f.args.dk, base.dk.view())) << "dk";
    EXPECT_TRUE(same_values(f.args.dv, base.dv.view())) << "dv";
  }
}

std::string mha_case_name(const ::testing::TestParamInfo<MhaBadCase>& info) {
  return info.param.name;
}

class MhaFwdBadInput : public ::testing::TestWithParam<MhaBadCase> {};

TEST_P(MhaFwdBadInput, RejectedBeforeAnyWork) {
  const MhaBadCase& c = GetParam();
  MhaFixture f(Fn::fwd);
  c.mutate(f);
  if (::testing::Test::HasFatalFailure()) return;
  f.buf.snapshot();
  run_mha_case(f, c);
}

INSTANTIATE_TEST_SUITE_P(Table, MhaFwdBadInput, ::testing::ValuesIn(fwd_cases()), mha_case_name);

class MhaBwdBadInput : public ::testing::TestWithParam<MhaBadCase> {};

TEST_P(MhaBwdBadInput, RejectedBeforeAnyWork) {
  const MhaBadCase& c = GetParam();
  MhaFixture f(Fn::bwd);
  c.mutate(f);
  if (::testing::Test::HasFatalFailure()) return;
  f.buf.snapshot();
  run_mha_case(f, c);
}

INSTANTIATE_TEST_SUITE_P(Table, MhaBwdBadInput, ::testing::ValuesIn(bwd_cases()), mha_case_name);

// ==========================================================================================
// split_qkv_packed / split_kv_packed
// ==========================================================================================

struct PackedFixture {
  int parts;  // 2: qkv, 1: kv
  Buffers buf;
  int64_t head_dim_qk = 16;
  TensorView t;  // (5, 2, parts * 16 + 8)

  explicit PackedFixture(int p) : parts(p) { t = buf.alloc(DType::bf16, {5, 2, last()}).view(); }
  int64_t last() const { return parts * 16 + 8; }
  const char* arg() const { return parts == 2 ? "qkv" : "kv"; }
  const char* function() const { return parts == 2 ? "split_qkv_packed" : "split_kv_packed"; }
  // The views the split returns, in order (q, k, v or k, v).
  std::vector<TensorView> split() const {
    if (parts == 2) {
      const QkvViews s = split_qkv_packed(t, head_dim_qk);
      return {s.q, s.k, s.v};
    }
    const KvViews s = split_kv_packed(t, head_dim_qk);
    return {s.k, s.v};
  }
};

struct PackedBadCase {
  std::string name;
  std::function<void(PackedFixture&)> mutate;
  Expected want;
};

void PrintTo(const PackedBadCase& c, std::ostream* os) { *os << c.name; }

using P = PackedFixture;

std::vector<PackedBadCase> packed_cases(int parts) {
  std::vector<PackedBadCase> c;
  auto add = [&c](std::string name, std::function<void(P&)> m, Expected e) {
    c.push_back({std::move(name), std::move(m), std::move(e)});
  };
  const std::string arg = parts == 2 ? "qkv" : "kv";
  add("valid_call", [](P&) {}, kAccept);
  add("d_v_1", [](P& f) { f.t = f.buf.alloc(DType::bf16, {5, 2, f.parts * 16 + 1}).view(); },
      kAccept);
  add("head_dim_qk_1", [](P& f) { f.head_dim_qk = 1; }, kAccept);  // the head-dim rule is
                                                                    // checked by the calls
  add("non_contiguous", [](P& f) {
    TensorView big = f.buf.alloc(DType::bf16, {6, 3, f.last() + 8}).view();
    f.t = TensorView::strided(big.data, DType::bf16, {5, 2, f.last()},
                              {3 * (f.last() + 8), f.last() + 8, 1});
  }, kAccept);
  add("total_zero_null", [](P& f) { f.t = null_data(reshape(f.t, {0, 2, f.last()})); }, kAccept);

  add("head_dim_qk_0", [](P& f) { f.head_dim_qk = 0; }, value(arg));
  add("head_dim_qk_minus_1", [](P& f) { f.head_dim_qk = -1; }, value(arg));
  add("head_dim_qk_int64_min", [](P& f) { f.head_dim_qk = kI64Min; }, value(arg));
  add("head_dim_qk_leaves_d_v_0", [](P& f) { f.head_dim_qk = f.last() / f.parts; },
      value(arg));
  add("head_dim_qk_equals_last_dim", [](P& f) { f.head_dim_qk = f.last(); }, value(arg));
  add("head_dim_qk_above_last_dim", [](P& f) { f.head_dim_qk = f.last() + 1; }, value(arg));
  add("head_dim_qk_huge", [](P& f) { f.head_dim_qk = kHuge; }, value(arg));
  // 2 * head_dim_qk would overflow int64: must still be rejected.
  add("head_dim_qk_2pow62", [](P& f) { f.head_dim_qk = int64_t{1} << 62; }, value(arg));
  add("head_dim_qk_int64_max", [](P& f) { f.head_dim_qk = kI64Max; }, value(arg));
  add("rank2", [](P& f) { f.t = reshape(f.t, {5, 2 * f.last()}); }, value(arg));
  add("rank4", [](P& f) { f.t = reshape(f.t, {5, 2, f.last(), 1}); }, value(arg));
  add("rank0", [](P& f) { f.t = reshape(f.t, {}); }, value(arg));
  add("rank7", [](P& f) { f.t.rank = 7; }, value(arg));
  add("dtype_fp16", [](P& f) { f.t = with_dtype(f.t, DType::fp16); }, type(arg));
  add("dtype_fp32", [](P& f) { f.t = f.buf.alloc(DType::fp32, {5, 2, f.last()}).view(); },
      type(arg));
  add("dtype_int32", [](P& f) { f.t = f.buf.alloc(DType::int32, {5, 2, f.last()}).view(); },
      type(arg));
  add("null", [](P& f) { f.t = null_data(f.t); }, value(arg));
  // 2^32 * 2^32 * last overflows int64: a null pointer must not pass as an empty tensor.
  add("null_size_product_overflows", [](P& f) {
    f.t = null_data(f.t);
    f.t.shape[0] = int64_t{1} << 32;
    f.t.shape[1] = int64_t{1} << 32;
  }, value(arg));
  add("cuda", [](P& f) { f.t = on_cuda(f.t); }, unsupported(arg));
  add("last_dim_strided", [](P& f) {
    TensorView big = f.buf.alloc(DType::bf16, {5, 2, 2 * f.last()}).view();
    f.t = TensorView::strided(big.data, DType::bf16, {5, 2, f.last()},
                              {4 * f.last(), 2 * f.last(), 2});
  }, value(arg));
  add("negative_total", [](P& f) { f.t.shape[0] = -1; }, value(arg));
  add("negative_heads", [](P& f) { f.t.shape[1] = -2; }, value(arg));
  return c;
}

void run_packed_case(int parts, const PackedBadCase& c) {
  PackedFixture f(parts);
  c.mutate(f);
  if (::testing::Test::HasFatalFailure()) return;
  if (!c.want.argument.empty()) {
    expect_error([&f] { f.split(); }, f.function(), c.want);
    return;
  }
  std::vector<TensorView> views;
  ASSERT_NO_THROW(views = f.split());
  ASSERT_EQ(views.size(), static_cast<size_t>(parts + 1));
  const int64_t d = f.head_dim_qk;
  for (int i = 0; i < parts + 1; ++i) {
    SCOPED_TRACE("view " + std::to_string(i));
    const TensorView& v = views[i];
    const int64_t begin = i * d, width = i < parts ? d : f.t.shape[2] - parts * d;
    if (f.t.data != nullptr) {  // (an empty view's pointer is not read)
      EXPECT_EQ(v.data, static_cast<void*>(static_cast<char*>(f.t.data) +
                                           begin * f.t.strides[2] * 2));
    }
    EXPECT_EQ(v.dtype, DType::bf16);
    EXPECT_EQ(v.rank, 3);
    EXPECT_EQ(v.shape[0], f.t.shape[0]);
    EXPECT_EQ(v.shape[1], f.t.shape[1]);
    EXPECT_EQ(v.shape[2], width);
    for (int k = 0; k < 3; ++k) EXPECT_EQ(v.strides[k], f.t.strides[k]);
  }
}

std::string packed_case_name(const ::testing::TestParamInfo<PackedBadCase>& info) {
  return info.param.name;
}

class SplitQkvPackedBadInput : public ::testing::TestWithParam<PackedBadCase> {};
TEST_P(SplitQkvPackedBadInput, RejectedOrSplit) { run_packed_case(2, GetParam()); }
INSTANTIATE_TEST_SUITE_P(Table, SplitQkvPackedBadInput, ::testing::ValuesIn(packed_cases(2)),
                         packed_case_name);

class SplitKvPackedBadInput : public ::testing::TestWithParam<PackedBadCase> {};
TEST_P(SplitKvPackedBadInput, RejectedOrSplit) { run_packed_case(1, GetParam()); }
INSTANTIATE_TEST_SUITE_P(Table, SplitKvPackedBadInput, ::testing::ValuesIn(packed_cases(1)),
                         packed_case_name);

// The views of a packed buffer are accepted by both passes and give the unpacked results
// bitwise: kv packed over the base case (GQA), qkv packed over an MHA case with
// total_q = total_kv.
TEST(MhaPackedViews, KvPackedGivesTheUnpackedResults) {
  const MhaData& base = base_results();
  MhaData d = testing::with_fresh_outputs(base_inputs());
  const int64_t tkv = d.total_kv();
  HostTensor kv = HostTensor::empty(DType::bf16, {tkv, kHkv, kDqk + kDv});
  HostTensor dkv = HostTensor::empty(DType::bf16, {tkv, kHkv, kDqk + kDv});
  const KvViews in = split_kv_packed(kv.view(), kDqk);
  copy_values(d.k.view(), in.k);
  copy_values(d.v.view(), in.v);
  const KvViews grad = split_kv_packed(dkv.view(), kDqk);
  MhaBwdArgs args = d.bwd_args();
  args.fwd.k = in.k;
  args.fwd.v = in.v;
  args.dk = grad.k;
  args.dv = grad.v;
  ASSERT_NO_THROW(flash_attn_varlen_fwd(args.fwd));
  EXPECT_TRUE(same_values(args.fwd.out, base.out.view())) << "out";
  EXPECT_TRUE(same_values(args.fwd.lse, base.lse())) << "lse";
  ASSERT_NO_THROW(flash_attn_varlen_bwd(args));
  EXPECT_TRUE(same_values(args.dq, base.dq.view())) << "dq";
  EXPECT_TRUE(same_values(grad.k, base.dk.view())) << "dk";
  EXPECT_TRUE(same_values(grad.v, base.dv.view())) << "dv";
}

TEST(MhaPackedViews, QkvPackedGivesTheUnpackedResults) {
  MhaCase c = kMhaCase;
  c.varlen = false;
  c.num_heads_q = c.num_heads_kv = 2;
  c.kv_len = c.q_len;
  MhaData d = testing::make_mha_data(c);
  ASSERT_NO_THROW(flash_attn_varlen_fwd(d.fwd_args()));
  ASSERT_NO_THROW(flash_attn_varlen_bwd(d.bwd_args()));
  MhaData p = testing::with_fresh_outputs(d);
  const int64_t total = d.total_q();
  ASSERT_EQ(total, d.total_kv());
  HostTensor qkv = HostTensor::empty(DType::bf16, {total, 2, 2 * kDqk + kDv});
  HostTensor dqkv = HostTensor::empty(DType::bf16, {total, 2, 2 * kDqk + kDv});
  const QkvViews in = split_qkv_packed(qkv.view(), kDqk);
  copy_values(d.q.view(), in.q);
  copy_values(d.k.view(), in.k);
  copy_values(d.v.view(), in.v);
  const QkvViews grad = split_qkv_packed(dqkv.view(), kDqk);
  MhaBwdArgs args = p.bwd_args();
  args.fwd.q = in.q;
  args.fwd.k = in.k;
  args.fwd.v = in.v;
  args.dq = grad.q;
  args.dk = grad.k;
  args.dv = grad.v;
  ASSERT_NO_THROW(flash_attn_varlen_fwd(args.fwd));
  EXPECT_TRUE(same_values(args.fwd.out, d.out.view())) << "out";
  EXPECT_TRUE(same_values(args.fwd.lse, d.lse())) << "lse";
  ASSERT_NO_THROW(flash_attn_varlen_bwd(args));
  EXPECT_TRUE(same_values(grad.q, d.dq.view())) << "dq";
  EXPECT_TRUE(same_values(grad.k, d.dk.view())) << "dk";
  EXPECT_TRUE(same_values(grad.v, d.dv.view())) << "dv";
}

TEST(BadInputTables, MhaFwdCaseCount) {
  report_case_count("flash_attn_varlen_fwd", fwd_cases());
  EXPECT_GT(fwd_cases().size(), 150u);
}

TEST(BadInputTables, MhaBwdCaseCount) {
  report_case_count("flash_attn_varlen_bwd", bwd_cases());
  EXPECT_GT(bwd_cases().size(), 150u);
}

TEST(BadInputTables, SplitQkvPackedCaseCount) {
  report_case_count("split_qkv_packed", packed_cases(2));
  EXPECT_GT(packed_cases(2).size(), 20u);
}

TEST(BadInputTables, SplitKvPackedCaseCount) {
  report_case_count("split_kv_packed", packed_cases(1));
  EXPECT_GT(packed_cases(1).size(), 20u);
}

}  // namespace
}  // namespace flashmla
