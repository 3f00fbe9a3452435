#include "gpu/mirror.h"

#include <algorithm>
#include <stdexcept>

#include "gpu/gpu_device.h"

namespace flashmla::gpu_testing {

size_t span_bytes(const TensorView& v) {
  if (!v.defined()) return 0;
  int64_t last = 0;
  for (int d = 0; d < v.rank; ++d) {
    if (v.shape[d] == 0) return 0;
    last += (v.shape[d] - 1) * v.strides[d];
  }
  return static_cast<size_t>(last + 1) * dtype_size(v.dtype);
}

Mirror::~Mirror() {
  for (const Entry& e : entries_) release(e.device);
}

TensorView Mirror::operator()(const TensorView& v, bool output) {
  if (!v.defined()) return v;
  for (int d = 0; d < v.rank; ++d) {
    if (v.strides[d] < 0) {  // span_bytes() would miss the elements below `data`
      throw std::logic_error("Mirror: a view with a negative stride");
    }
  }
  auto* begin = static_cast<uint8_t*>(v.data);
  const size_t bytes = std::max<size_t>(span_bytes(v), 1);
  TensorView d = v;
  d.device = Device::cuda;
  for (Entry& e : entries_) {
    if (begin >= e.host && begin + bytes <= e.host + e.bytes) {
      e.output |= output;
      d.data = static_cast<uint8_t*>(e.device) + (begin - e.host);
      return d;
    }
    if (begin < e.host + e.bytes && e.host < begin + bytes) {
      // Two device copies of the same bytes would lose the aliasing, and copy_back() could
      // write stale bytes over results.
      throw std::logic_error("Mirror: a view overlaps a buffer uploaded before without lying "
                             "inside it; upload the enclosing view first");
    }
  }
  Entry e{.host = begin, .bytes = bytes, .output = output, .device = allocate(bytes)};
  if (check_inputs_ && !output) e.before.assign(begin, begin + bytes);
  entries_.push_back(std::move(e));  // first, so that the destructor releases it
  copy_to_device(entries_.back().device, begin, bytes);
  d.data = entries_.back().device;
  return d;
}

MlaDecodeArgs Mirror::operator()(const MlaDecodeArgs& a) {
  MlaDecodeArgs d = a;
  for (TensorView* t : {&d.q, &d.k_cache, &d.block_table, &d.cache_seqlens,
                        &d.tile_scheduler_metadata, &d.num_splits, &d.indices, &d.topk_length,
                        &d.attn_sink, &d.extra_k_cache, &d.extra_indices_in_kvcache,
                        &d.extra_topk_length}) {
    *t = (*this)(*t);
  }
  d.out = (*this)(a.out, /*output=*/true);
  d.lse = (*this)(a.lse, /*output=*/true);
  return d;
}

SparsePrefillArgs Mirror::operator()(const SparsePrefillArgs& a) {
  SparsePrefillArgs d = a;
  for (TensorView* t : {&d.q, &d.kv, &d.indices, &d.attn_sink, &d.topk_length}) *t = (*this)(*t);
  for (TensorView* t : {&d.out, &d.max_logits, &d.lse}) *t = (*this)(*t, /*output=*/true);
  return d;
}

MlaCombineArgs Mirror::operator()(const MlaCombineArgs& a) {
  MlaCombineArgs d = a;
  for (TensorView* t : {&d.lse_accum, &d.o_accum, &d.num_splits, &d.attn_sink}) {
    *t = (*this)(*t);
  }
  d.out = (*this)(a.out, /*output=*/true);
  d.lse = (*this)(a.lse, /*output=*/true);
  return d;
}

void Mirror::upload_again() {
  for (const Entry& e : entries_) copy_to_device(e.device, e.host, e.bytes);
}

std::string Mirror::copy_back() {
  std::string changed;
  for (Entry& e : entries_) {
    if (e.output) {
      copy_to_host(e.host, e.device, e.bytes);
    } else if (check_inputs_) {
      std::vector<uint8_t> after(e.bytes);
      copy_to_host(after.data(), e.device, e.bytes);
      if (after != e.before) {
        changed += (changed.empty() ? "" : "; ") + std::string("an input of ") +
                   std::to_string(e.bytes) + " bytes was written to";
      }
    }
  }
  return changed;
}

}  // namespace flashmla::gpu_testing
