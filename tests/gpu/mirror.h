// Device copies of a call's host tensors (tests/gpu/gpu_device.h's device): each view is
// uploaded whole (the span from its first to its last element, padding included), its device
// view has the same shape and strides, and after the call the outputs are copied back over the
// host tensors, so the tests' host-side comparisons run unchanged.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "flashmla/flashmla.h"

namespace flashmla::gpu_testing {

// Bytes from a view's first element to one past its last (strides are never negative); 0 for
// an undefined or empty view.
size_t span_bytes(const TensorView& v);

class Mirror {
 public:
  // `check_inputs`: keep a copy of every input, so copy_back() can say whether the call wrote
  // into one (the tests; the benchmark, whose inputs are large, does without).
  explicit Mirror(bool check_inputs = true) : check_inputs_(check_inputs) {}
  Mirror(const Mirror&) = delete;
  Mirror& operator=(const Mirror&) = delete;
  ~Mirror();

  // The device view of `v` (undefined stays undefined). Views inside a buffer already uploaded
  // share its device copy; one that overlaps it only partly (or contains it), or has a negative
  // stride, is an error (std::logic_error). An output comes back with copy_back().
  TensorView operator()(const TensorView& v, bool output = false);

  // Every tensor of a decode call (out and lse as outputs; a given schedule as an input).
  MlaDecodeArgs operator()(const MlaDecodeArgs& a);
  SparsePrefillArgs operator()(const SparsePrefillArgs& a);
  MlaCombineArgs operator()(const MlaCombineArgs& a);

  // Copies every host tensor to the device again (the outputs too: before copy_back(), still
  // the host's NaN), e.g. to undo a warm-up call.
  void upload_again();

  // Waits for the device, copies every output back over its host tensor and, with
  // check_inputs, compares every input with what was uploaded: "" when none changed, else what
  // did.
  std::string copy_back();

 private:
  struct Entry {
    uint8_t* host;
    size_t bytes;
    bool output;
    void* device;
    std::vector<uint8_t> before;  // with check_inputs_
  };
  bool check_inputs_;
  std::vector<Entry> entries_;
};

}  // namespace flashmla::gpu_testing
