// flash_mla._C: the nanobind binding of the C++ API. It only converts: arrays (anything with
// DLPack or the buffer protocol: torch, NumPy, ...) become TensorViews without a copy, the
// argument structs are exposed field by field, and flashmla::Error becomes ValueError /
// TypeError / RuntimeError by its kind. FlashMLA's Python API (defaults, output allocation,
// schedule objects, autograd) lives in python/flash_mla/.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "flashmla/flashmla.h"
#include "flashmla/kv_format.h"

namespace nb = nanobind;
using namespace flashmla;

namespace {

using Array = nb::ndarray<nb::ro>;  // any dtype, shape, strides and device; never copied

std::optional<DType> dtype_from_name(const std::string& name) {
  for (DType d : {DType::bf16, DType::fp16, DType::fp32, DType::fp8_e4m3, DType::int32,
                  DType::uint8}) {
    if (name == dtype_name(d)) return d;
  }
  return std::nullopt;
}

// The DLPack dtype as a DType; int8 is read as uint8 (FP8 caches may be int8 or uint8).
std::optional<DType> dtype_from_dlpack(nb::dlpack::dtype t) {
  using Code = nb::dlpack::dtype_code;
  if (t.lanes != 1) return std::nullopt;
  const auto code = static_cast<Code>(t.code);
  if (code == Code::Bfloat && t.bits == 16) return DType::bf16;
  if (code == Code::Float && t.bits == 16) return DType::fp16;
  if (code == Code::Float && t.bits == 32) return DType::fp32;
  if (code == Code::Int && t.bits == 32) return DType::int32;
  if ((code == Code::UInt || code == Code::Int) && t.bits == 8) return DType::uint8;
  return std::nullopt;
}

// A TensorView onto the array's memory. `dtype` overrides the array's own element type (same
// element size), e.g. "bf16" for a NumPy uint16 view of an ml_dtypes.bfloat16 array, or
// "fp8_e4m3" for a uint8 view of a float8 cache.
TensorView view(const Array& a, const std::optional<std::string>& dtype) {
  std::optional<DType> d = dtype ? dtype_from_name(*dtype) : dtype_from_dlpack(a.dtype());
  if (!d) {
    throw Error(ErrorKind::type, "flash_mla._C.view", "dtype",
                "bf16, fp16, fp32, fp8_e4m3, int32, uint8 or int8",
                dtype ? *dtype : "DLPack code " + std::to_string(a.dtype().code) + " with " +
                                     std::to_string(a.dtype().bits) + " bits");
  }
  if (dtype_size(*d) * 8 != a.dtype().bits) {
    throw Error(ErrorKind::type, "flash_mla._C.view", "dtype",
                std::string(dtype_name(*d)) + " over an array of the same element size",
                std::to_string(a.dtype().bits) + "-bit elements");
  }
  if (a.ndim() > static_cast<size_t>(kMaxRank)) {
    throw Error(ErrorKind::value, "flash_mla._C.view", "array",
                "rank <= " + std::to_string(kMaxRank), "rank " + std::to_string(a.ndim()));
  }
  TensorView t;
  t.data = const_cast<void*>(a.data());
  t.dtype = *d;
  t.rank = static_cast<int>(a.ndim());
  for (int i = 0; i < t.rank; ++i) {
    t.shape[i] = static_cast<int64_t>(a.shape(i));
    t.strides[i] = a.stride(i);
  }
  t.device = a.device_type() == nb::device::cuda::value ? Device::cuda : Device::cpu;
  return t;
}

void translate_errors(const std::exception_ptr& p, void*) {
  try {
    std::rethrow_exception(p);
  } catch (const Error& e) {
    PyObject* type = e.kind() == ErrorKind::type    ? PyExc_TypeError
                     : e.kind() == ErrorKind::value ? PyExc_ValueError
                                                    : PyExc_RuntimeError;
    PyErr_SetString(type, e.what());
  }
}

// Operations run without the GIL: other Python threads keep going, and concurrent calls work.
using NoGil = nb::call_guard<nb::gil_scoped_release>;

void bind_views(nb::module_& m) {
  nb::enum_<DType>(m, "DType")
      .value("bf16", DType::bf16).value("fp16", DType::fp16).value("fp32", DType::fp32)
      .value("fp8_e4m3", DType::fp8_e4m3).value("int32", DType::int32)
      .value("uint8", DType::uint8);
  nb::class_<TensorView>(m, "TensorView")
      .def(nb::init<>())
      .def_ro("dtype", &TensorView::dtype)
      .def_prop_ro("shape", [](const TensorView& t) {
        return std::vector<int64_t>(t.shape, t.shape + t.rank);
      })
      .def_prop_ro("strides", [](const TensorView& t) {
        return std::vector<int64_t>(t.strides, t.strides + t.rank);
      })
      .def("__repr__", [](const TensorView& t) {
        return std::string("TensorView(") + dtype_name(t.dtype) + ", shape " + t.shape_string() +
               ", strides " + t.strides_string() + ")";
      });
  m.def("view", &view, nb::arg("array"), nb::arg("dtype") = nb::none(),
        "A TensorView onto `array` (no copy); `dtype` reinterprets same-size elements.");
  nb::enum_<Device>(m, "Device").value("cpu", Device::cpu).value("cuda", Device::cuda);
  nb::class_<Context>(m, "Context")
      .def(nb::init<>())
      .def_rw("num_threads", &Context::num_threads)
      .def_prop_rw(  // a cudaStream_t as an integer (torch.cuda.Stream.cuda_stream); 0 = default
          "cuda_stream",
          [](const Context& c) { return reinterpret_cast<uintptr_t>(c.cuda_stream); },
          [](Context& c, uintptr_t s) { c.cuda_stream = reinterpret_cast<void*>(s); });
  m.def("has_cuda_backend", &has_cuda_backend);
  m.def("resolved_num_threads", &resolved_num_threads, nb::arg("ctx") = Context{});
  m.def("cpu_microkernel_name", &cpu_microkernel_name);
}

void bind_decode(nb::module_& m) {
  nb::class_<MlaDecodeShape>(m, "MlaDecodeShape")
      .def(nb::init<>())
      .def_rw("batch", &MlaDecodeShape::batch)
      .def_rw("q_len", &MlaDecodeShape::q_len)
      .def_rw("num_heads_q", &MlaDecodeShape::num_heads_q)
      .def_rw("num_heads_kv", &MlaDecodeShape::num_heads_kv);
  m.def("mla_num_sm_parts", &mla_num_sm_parts, nb::arg("shape"), nb::arg("ctx") = Context{},
        nb::arg("device") = Device::cpu);

  nb::class_<MlaMetadataArgs>(m, "MlaMetadataArgs")
      .def(nb::init<>())
      .def_rw("cache_seqlens", &MlaMetadataArgs::cache_seqlens)
      .def_rw("batch", &MlaMetadataArgs::batch)
      .def_rw("topk", &MlaMetadataArgs::topk)
      .def_rw("topk_length", &MlaMetadataArgs::topk_length)
      .def_rw("extra_topk", &MlaMetadataArgs::extra_topk)
      .def_rw("extra_topk_length", &MlaMetadataArgs::extra_topk_length)
      .def_rw("num_sm_parts", &MlaMetadataArgs::num_sm_parts)
      .def_rw("tile_scheduler_metadata", &MlaMetadataArgs::tile_scheduler_metadata)
      .def_rw("num_splits", &MlaMetadataArgs::num_splits);
  m.def("get_mla_metadata", &get_mla_metadata, nb::arg("args"), nb::arg("ctx") = Context{},
        NoGil());

  nb::class_<MlaDecodeArgs>(m, "MlaDecodeArgs")
      .def(nb::init<>())
      .def_rw("q", &MlaDecodeArgs::q)
      .def_rw("k_cache", &MlaDecodeArgs::k_cache)
      .def_rw("block_table", &MlaDecodeArgs::block_table)
      .def_rw("cache_seqlens", &MlaDecodeArgs::cache_seqlens)
      .def_rw("head_dim_v", &MlaDecodeArgs::head_dim_v)
      .def_rw("softmax_scale", &MlaDecodeArgs::softmax_scale)
      .def_rw("causal", &MlaDecodeArgs::causal)
      .def_rw("tile_scheduler_metadata", &MlaDecodeArgs::tile_scheduler_metadata)
      .def_rw("num_splits", &MlaDecodeArgs::num_splits)
      .def_rw("out", &MlaDecodeArgs::out)
      .def_rw("lse", &MlaDecodeArgs::lse)
      .def_rw("indices", &MlaDecodeArgs::indices)
      .def_rw("topk_length", &MlaDecodeArgs::topk_length)
      .def_rw("attn_sink", &MlaDecodeArgs::attn_sink)
      .def_rw("extra_k_cache", &MlaDecodeArgs::extra_k_cache)
      .def_rw("extra_indices_in_kvcache", &MlaDecodeArgs::extra_indices_in_kvcache)
      .def_rw("extra_topk_length", &MlaDecodeArgs::extra_topk_length);
  m.def("flash_mla_with_kvcache", &flash_mla_with_kvcache, nb::arg("args"),
        nb::arg("ctx") = Context{}, NoGil());

  nb::class_<MlaCombineArgs>(m, "MlaCombineArgs")
      .def(nb::init<>())
      .def_rw("lse_accum", &MlaCombineArgs::lse_accum)
      .def_rw("o_accum", &MlaCombineArgs::o_accum)
      .def_rw("num_splits", &MlaCombineArgs::num_splits)
      .def_rw("attn_sink", &MlaCombineArgs::attn_sink)
      .def_rw("out", &MlaCombineArgs::out)
      .def_rw("lse", &MlaCombineArgs::lse);
  m.def("mla_combine", &mla_combine, nb::arg("args"), nb::arg("ctx") = Context{}, NoGil());
}

void bind_prefill(nb::module_& m) {
  nb::class_<SparsePrefillArgs>(m, "SparsePrefillArgs")
      .def(nb::init<>())
      .def_rw("q", &SparsePrefillArgs::q)
      .def_rw("kv", &SparsePrefillArgs::kv)
      .def_rw("indices", &SparsePrefillArgs::indices)
      .def_rw("sm_scale", &SparsePrefillArgs::sm_scale)
      .def_rw("d_v", &SparsePrefillArgs::d_v)
      .def_rw("attn_sink", &SparsePrefillArgs::attn_sink)
      .def_rw("topk_length", &SparsePrefillArgs::topk_length)
      .def_rw("out", &SparsePrefillArgs::out)
      .def_rw("max_logits", &SparsePrefillArgs::max_logits)
      .def_rw("lse", &SparsePrefillArgs::lse);
  m.def("flash_mla_sparse_fwd", &flash_mla_sparse_fwd, nb::arg("args"),
        nb::arg("ctx") = Context{}, NoGil());

  nb::class_<MhaFwdArgs>(m, "MhaFwdArgs")
      .def(nb::init<>())
      .def_rw("q", &MhaFwdArgs::q)
      .def_rw("k", &MhaFwdArgs::k)
      .def_rw("v", &MhaFwdArgs::v)
      .def_rw("cu_seqlens_qo", &MhaFwdArgs::cu_seqlens_qo)
      .def_rw("cu_seqlens_kv", &MhaFwdArgs::cu_seqlens_kv)
      .def_rw("max_seqlen_qo", &MhaFwdArgs::max_seqlen_qo)
      .def_rw("max_seqlen_kv", &MhaFwdArgs::max_seqlen_kv)
      .def_rw("dropout_p", &MhaFwdArgs::dropout_p)
      .def_rw("softmax_scale", &MhaFwdArgs::softmax_scale)
      .def_rw("causal", &MhaFwdArgs::causal)
      .def_rw("deterministic", &MhaFwdArgs::deterministic)
      .def_rw("is_varlen", &MhaFwdArgs::is_varlen)
      .def_rw("out", &MhaFwdArgs::out)
      .def_rw("lse", &MhaFwdArgs::lse);
  m.def("flash_attn_varlen_fwd", &flash_attn_varlen_fwd, nb::arg("args"),
        nb::arg("ctx") = Context{}, NoGil());
  nb::class_<MhaBwdArgs>(m, "MhaBwdArgs")
      .def(nb::init<>())
      .def_rw("fwd", &MhaBwdArgs::fwd)
      .def_rw("dout", &MhaBwdArgs::dout)
      .def_rw("dq", &MhaBwdArgs::dq)
      .def_rw("dk", &MhaBwdArgs::dk)
      .def_rw("dv", &MhaBwdArgs::dv);
  m.def("flash_attn_varlen_bwd", &flash_attn_varlen_bwd, nb::arg("args"),
        nb::arg("ctx") = Context{}, NoGil());
}

void bind_kv_format(nb::module_& m) {
  nb::enum_<KvFormat>(m, "KvFormat").value("v32", KvFormat::v32).value("model1", KvFormat::model1);
  nb::class_<KvFormatInfo>(m, "KvFormatInfo")
      .def_ro("d_qk", &KvFormatInfo::d_qk)
      .def_ro("d_nope", &KvFormatInfo::d_nope)
      .def_ro("d_rope", &KvFormatInfo::d_rope)
      .def_ro("tile", &KvFormatInfo::tile)
      .def_ro("num_tiles", &KvFormatInfo::num_tiles)
      .def_ro("bytes_per_token", &KvFormatInfo::bytes_per_token);
  m.def("kv_format_info", &kv_format_info, nb::arg("format"));
  nb::class_<KvQuantizeArgs>(m, "KvQuantizeArgs")
      .def(nb::init<>())
      .def_rw("format", &KvQuantizeArgs::format)
      .def_rw("k", &KvQuantizeArgs::k)
      .def_rw("cache", &KvQuantizeArgs::cache);
  m.def("quantize_kv_cache", &quantize_kv_cache, nb::arg("args"), NoGil());
  m.def("dequantize_kv_cache", &dequantize_kv_cache, nb::arg("args"), NoGil());
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "flash_mla's binding of the flashmla C++ API (see include/flashmla/)";
  m.attr("__version__") = kVersion;
  nb::register_exception_translator(translate_errors);
  bind_views(m);
  bind_decode(m);
  bind_prefill(m);
  bind_kv_format(m);
}
