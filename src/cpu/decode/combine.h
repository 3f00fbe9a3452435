#pragma once

#include "core/combine_params.h"

namespace flashmla::cpu::decode {

// Merges the pieces of every request with two or more pieces (reference §5.6); rows of requests
// with one piece are not touched. The order of the pieces is fixed, so the result does not
// depend on the number of threads.
void run_combine(const core::CombineParams& p);

}  // namespace flashmla::cpu::decode
