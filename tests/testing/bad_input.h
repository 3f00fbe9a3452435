// Shared machinery of the bad-input tests (tests/test_bad_input_*.cpp).
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
// library forgot makes the case fail instead of reading out of bounds.
#pragma once

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

namespace flashmla::testing::bad_input {

using testing::CombineCase;
using testing::CombineData;
using testing::DenseDecodeCase;
using testing::DenseDecodeData;
using testing::HostTensor;

inline constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
inline constexpr float kInf = std::numeric_limits<float>::infinity();
inline constexpr int32_t kI32Min = std::numeric_limits<int32_t>::min();
inline constexpr int32_t kI32Max = std::numeric_limits<int32_t>::max();
inline constexpr int kParts = 4;  // parts of the explicit schedules the tables use
inline constexpr int32_t kSentinel = -7;  // prefill of int32 outputs (get_mla_metadata)

// A view of the same memory with another shape (row-major strides), dtype and device kept.
inline TensorView reshape(const TensorView& v, std::initializer_list<int64_t> shape) {
  return TensorView::contiguous(v.data, v.dtype, shape, v.device);
}

inline TensorView restride(const TensorView& v, std::initializer_list<int64_t> strides) {
  TensorView t = v;
  int d = 0;
  for (int64_t s : strides) t.strides[d++] = s;
  return t;
}

inline TensorView on_cuda(TensorView v) {
  v.device = Device::cuda;
  return v;
}

inline TensorView with_dtype(TensorView v, DType dtype) {
  v.dtype = dtype;
  return v;
}

inline TensorView null_data(TensorView v) {
  v.data = nullptr;
  return v;
}

inline std::vector<std::byte> bytes_of(const HostTensor& t) {
  const auto* p = static_cast<const std::byte*>(t.view().data);
  return std::vector<std::byte>(p, p + t.numel() * static_cast<int64_t>(dtype_size(t.dtype())));
}

inline bool all_nan(const HostTensor& t) {
  bool ok = true;
  testing::for_each_element(t.view(), [&](const int64_t*, int64_t off) {
    ok = ok && std::isnan(testing::load_float(t.view(), off));
  });
  return ok;
}

inline bool all_finite(const HostTensor& t) {
  bool ok = true;
  testing::for_each_element(t.view(), [&](const int64_t*, int64_t off) {
    ok = ok && std::isfinite(testing::load_float(t.view(), off));
  });
  return ok;
}

inline const char* kind_name(ErrorKind k) {
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

inline Expected value(std::string arg) { return {std::move(arg), ErrorKind::value}; }
inline Expected type(std::string arg) { return {std::move(arg), ErrorKind::type}; }
inline Expected unsupported(std::string arg) { return {std::move(arg), ErrorKind::unsupported}; }
inline const Expected kAccept{};

// The call's leading argument (whose device the call runs on) as a CUDA tensor among CPU ones:
// unsupported without a CUDA backend; with one, the device mismatch of `next`, the first
// argument checked after it.
inline Expected cuda_lead(std::string lead, std::string next) {
  return has_cuda_backend() ? value(std::move(next)) : unsupported(std::move(lead));
}

// Runs `call`; checks that it throws the expected flashmla::Error. Returns its message.
inline std::optional<std::string> expect_error(const std::function<void()>& call,
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


// Prints and records the size of one function's table.
template <class Case>
void report_case_count(const char* function, const std::vector<Case>& cases) {
  size_t accepted = 0;
  for (const Case& c : cases) accepted += c.want.argument.empty();
  ::testing::Test::RecordProperty("cases", static_cast<int>(cases.size()));
  ::testing::Test::RecordProperty("rejection_cases", static_cast<int>(cases.size() - accepted));
  std::cout << "bad-input cases of " << function << ": " << cases.size() << " ("
            << cases.size() - accepted << " must be rejected, " << accepted
            << " must be accepted)\n";
}

}  // namespace flashmla::testing::bad_input
