// flash_mla_sparse_fwd up to the kernel call: the validated params exactly as the library hands
// them to a kernel. Used by the call itself (sparse_prefill_api.cpp) and by the CUDA backend's
// tests, which run their kernel on the same params as the CPU one.
#pragma once

#include "core/sparse_prefill_params.h"
#include "flashmla/flashmla.h"

namespace flashmla::core {

// Validates `args` (throws flashmla::Error naming the argument, as flash_mla_sparse_fwd does;
// nothing is written) and returns the params pointing into args' tensors.
SparsePrefillParams prepare_sparse_prefill(const SparsePrefillArgs& args, const Context& ctx);

}  // namespace flashmla::core
