#pragma once

#include "core/decode_params.h"

namespace flashmla::cpu::decode {

// Runs every part of the schedule on p.num_threads threads, then combines split requests.
void run_dense_decode(const core::DenseDecodeParams& p);

}  // namespace flashmla::cpu::decode
