// Reference implementations: plain C++, accumulating in double, written for clarity rather than
// speed. They define the numbers the kernels are tested against; the edge-case rules they follow
// are those of docs/conventions.md. Arguments are assumed valid (the tests and tools build them).
#pragma once

#include "flashmla/flashmla.h"

namespace flashmla::ref {

// Dense MLA decode (reference §3.1-3.2): writes args.out (rounded once to its dtype) and
// args.lse. Tokens at or past cache_seqlens[i] are never read; empty rows give out 0, lse +inf.
// args.tile_scheduler_metadata / num_splits are ignored.
void dense_decode(const MlaDecodeArgs& args);

// Sparse MLA decode (reference §3.1, §3.3, §6.3): the `indices` mode of MlaDecodeArgs. FP8 caches
// are read through the format's dequantizer (cpu/common/kv_codec.h); entries that are -1 or at
// columns >= topk_length (extra: extra_topk_length) are never read; the sink scales out only;
// empty rows give out 0 and lse +inf.
void sparse_decode(const MlaDecodeArgs& args);

// Combine of split pieces (reference §5.6), in double: same contract as flashmla::mla_combine.
void combine(const MlaCombineArgs& args);

// Sparse MLA prefill (reference §3.4, §6.4): writes args.out (rounded once to bf16),
// args.max_logits and args.lse. Invalid entries (< 0, >= s_kv, or at a column >= topk_length)
// are never read; empty rows give out 0, max_logits -inf, lse +inf; the sink scales out only.
void sparse_prefill(const SparsePrefillArgs& args);

// Dense MHA varlen prefill forward (reference §2.5, §3.5), in double: writes args.out (rounded
// once to its dtype) and args.lse (natural log), both through any strides. Sequences come from
// cu_seqlens (is_varlen) or are total / b each; query head h uses KV head h / (h_q / h_kv);
// causal is bottom-right aligned; a row that sees no key gets out 0 and lse -inf. The
// per-(sequence, head) core is ref::mha_head_fwd (ref/mha_head.h).
void mha_fwd(const MhaFwdArgs& args);

// Dense MHA varlen backward, in double: writes args.dq, args.dk, args.dv, the exact gradients of
// sum(dout * out) (no gradient through lse), P recomputed from q and k (args.fwd.out and
// args.fwd.lse are not read). dk / dv of a KV head sum over the query heads of its group. Rows
// that see no key get dq 0; keys no row sees get dk = dv = 0. Core: ref::mha_head_bwd.
void mha_bwd(const MhaBwdArgs& args);

}  // namespace flashmla::ref
