// Dense MHA varlen prefill on the CPU: flash-attention tiling (no s_q x s_k matrix in memory)
// through the microkernel seam, multithreaded over independent tiles.
#pragma once

#include "core/mha_params.h"

namespace flashmla::cpu::mha {

// Forward: one task per (query tile, query head); writes p.out and p.lse.
void run_mha_fwd(const core::MhaParams& p);

// Backward in three passes, each over tasks that own their outputs (so every gradient is
// bitwise deterministic for any thread count): D = rowsum(dO * O); dK, dV per (KV tile, KV
// head), summing the group's query heads in order; dQ per (query tile, query head).
void run_mha_bwd(const core::MhaParams& p);

}  // namespace flashmla::cpu::mha
