// FlashMLA's work counting (reference §7, shared/design/performance.md), shared by the
// command-line program and the benchmark: FLOPs and bytes of one call on a generated case.
#pragma once

#include "flashmla/flashmla.h"
#include "testing/decode_case.h"
#include "testing/mha_case.h"
#include "testing/prefill_case.h"
#include "testing/sparse_decode_case.h"

namespace flashmla::testing {

struct Work {
  double flops = 0, bytes = 0;
};

// Dense decode: 2·h_q·s_q·Σseqlens·(576 + 512) FLOPs; the cache read once per KV head plus q and
// out, in the case's dtype — or, with `fp8_v32`, 656 bytes per cached token.
Work dense_decode_work(const DenseDecodeCase& c, const DenseDecodeData& d, bool fp8_v32 = false);

// Sparse decode: attended (valid) tokens and distinct referenced slots of the call's index
// lists (main and extra): 2·h_q·attended·(d_qk + 512) FLOPs; unique slots × bytes per token
// (656 V32, 584 MODEL1, 2·d_qk bf16) plus q and out.
Work sparse_decode_work(const SparseDecodeCase& c, const MlaDecodeArgs& a);

// Sparse prefill: T valid (query, key) pairs and N distinct valid rows: 2·T·h_q·(d_qk + 512)
// FLOPs; N·d_qk bf16 plus q and out.
Work sparse_prefill_work(const SparsePrefillCase& c, const SparsePrefillData& d);

// Dense MHA: A unmasked (q, k) pairs; forward 2·A·h·(d_qk + d_v), backward 2·A·h·(3·d_qk + 2·d_v)
// FLOPs; bytes: q, k, v and out once (forward), plus dout, dq, dk, dv (backward).
struct MhaWork {
  Work fwd, bwd;
};
MhaWork mha_work(const MhaCase& c, const MhaData& d);

}  // namespace flashmla::testing
