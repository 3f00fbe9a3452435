// The command-line program's case runners: build random data like the tests, time the
// operation, count work with FlashMLA's formulas, and check a sample against the reference.
#pragma once

#include <string>
#include <vector>

#include "testing/decode_case.h"
#include "testing/mha_case.h"
#include "testing/prefill_case.h"
#include "testing/sparse_decode_case.h"

namespace flashmla::cli {

struct RunOptions {
  int threads = 0, warmup = 2, iters = 5;
  int check = 2;  // requests (decode) or query tokens (prefill) checked against the reference
  // Run on the CUDA device (tests/gpu/gpu_device.h, opened by the caller): the case's tensors are
  // copied there once, each call is timed with device events, and the outputs are copied back
  // for the check.
  bool cuda = false;
};

struct Row {
  std::string name;
  double us = 0, tflops = 0, gbps = 0, max_err = 0;
  bool ok = true;
};

Row run_dense_decode_case(const testing::DenseDecodeCase& cs, const RunOptions& opt);
Row run_sparse_decode_case(const testing::SparseDecodeCase& cs, const RunOptions& opt);
Row run_sparse_prefill_case(const testing::SparsePrefillCase& cs, const RunOptions& opt);
// Dense MHA prefill: two rows, forward then backward. opt.check sequences are checked, on the
// query heads of the first KV head.
std::vector<Row> run_mha_case(const testing::MhaCase& cs, const RunOptions& opt);

}  // namespace flashmla::cli
