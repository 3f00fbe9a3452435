#pragma once

#include "core/sparse_decode_params.h"

namespace flashmla::cpu::decode {

// Runs every part of the sparse-mode schedule on p.num_threads threads, then combines split
// requests (applying the attention sink there).
void run_sparse_decode(const core::SparseDecodeParams& p);

}  // namespace flashmla::cpu::decode
