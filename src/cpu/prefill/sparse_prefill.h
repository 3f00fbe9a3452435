#pragma once

#include "core/sparse_prefill_params.h"

namespace flashmla::cpu::prefill {

// Sparse MLA prefill on p.num_threads threads: one task per (query token, tile of heads).
void run_sparse_prefill(const core::SparsePrefillParams& p);

}  // namespace flashmla::cpu::prefill
