// get_mla_metadata on the GPU (reference §5.2-5.3): one block of 256 threads.
//  1. every thread computes the token counts of a strided share of the requests (dense: the
//     cache lengths; sparse: §5.3 step 1), caches them in shared memory (batches up to
//     kMaxCachedRequests) and adds up its cost n_blk + F; a shuffle + shared-memory reduction
//     gives the total (integers: exact in any order);
//  2. thread 0 runs the greedy walk of core::schedule_split_kv, statement for statement, over
//     the cached counts until every request is placed;
//  3. the remaining parts all get the same idle record, written by the whole block.
// The records and num_splits are bit-identical to core::schedule_split_kv.
#include "cuda/decode/scheduler.h"

#include <cstdint>

#include "cuda/common/portable.h"

FMLA_CUDA_NS_BEGIN

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxCachedRequests = 8192;  // 32 KiB of token counts

// Where the token counts come from (reference §5.3 step 1).
struct TokenSource {
  const int32_t* lengths = nullptr;        // dense: cache_seqlens; sparse: topk_length or null
  const int32_t* extra_lengths = nullptr;  // sparse: extra_topk_length or null
  int64_t topk = 0;                        // 0: dense mode
  int64_t extra_topk = 0;
};

__device__ __forceinline__ int32_t token_count(const TokenSource& src, int64_t i) {
  if (src.topk == 0) return src.lengths[i];
  int64_t t = src.lengths != nullptr ? src.lengths[i] : src.topk;
  if (t == 0) t = 1;
  if (src.extra_topk > 0) {
    t = (t + 63) / 64 * 64 + (src.extra_lengths != nullptr ? src.extra_lengths[i] : src.extra_topk);
  }
  return static_cast<int32_t>(t);
}

// core::sched_num_blocks: at least one block, even for 0 tokens.
__device__ __forceinline__ int64_t num_blocks(int64_t n_tok, int64_t block_size) {
  return (n_tok > 0 ? n_tok - 1 : 0) / block_size + 1;
}

// Head of the dynamic shared memory; the cached token counts follow it.
struct Shared {
  int64_t warp_cost[kWarps];
  core::SchedRecord idle;  // the record of every part after the last request is placed
  int32_t idle_from;       // first such part
  int32_t unused;
};

// State of the greedy walk between parts.
struct Walk {
  int64_t req = 0, blk = 0, split = 0, cum = 0;
};

// One part of the walk (the loop body of core::schedule_split_kv).
template <class Tok>
__device__ __forceinline__ core::SchedRecord walk_part(Walk& w, const Tok& tok, int64_t batch,
                                                       int64_t block_size, int64_t F,
                                                       int64_t payload, int32_t* num_splits) {
  core::SchedRecord r{};
  r.begin_req_idx = static_cast<int32_t>(w.req);
  r.begin_block_idx = static_cast<int32_t>(w.blk);
  r.begin_split_idx = static_cast<int32_t>(w.split);
  const bool first_split = w.blk != 0;
  int64_t budget = payload;
  while (w.req < batch) {
    const int64_t remaining = num_blocks(tok(w.req), block_size) - w.blk;
    if (budget >= remaining + F) {  // the request finishes in this part
      w.cum += w.split + 1;
      num_splits[w.req + 1] = static_cast<int32_t>(w.cum);
      budget -= remaining + F;
      ++w.req;
      w.blk = w.split = 0;
    } else {  // the part ends inside the request
      if (budget - F > 0) {
        w.blk += budget - F;
        ++w.split;
      }
      break;
    }
  }
  const int64_t end_req = w.blk > 0 ? w.req : w.req - 1;
  int64_t end_block;
  if (w.blk > 0) {
    end_block = w.blk;
  } else {
    end_block = tok(w.req - 1) == 0 ? 0 : num_blocks(tok(w.req - 1), block_size);
  }
  bool last_split = end_block != num_blocks(tok(end_req), block_size) && tok(end_req) != 0;
  bool first = first_split;
  if (r.begin_req_idx == end_req) first = last_split = first_split || last_split;
  r.end_req_idx = static_cast<int32_t>(end_req);
  r.end_block_idx = static_cast<int32_t>(end_block);
  r.is_first_req_splitted = first;
  r.is_last_req_splitted = last_split;
  return r;
}

}  // namespace

__global__ void __launch_bounds__(kThreads, 1)
    get_mla_metadata__sm80(const TokenSource src, int64_t batch, int block_size,
                           int fixed_overhead, int num_parts, int cached,
                           core::SchedRecord* records, int32_t* num_splits) {
  Shared& sh = *reinterpret_cast<Shared*>(dynamic_smem());
  int32_t* tok_cache = reinterpret_cast<int32_t*>(dynamic_smem() + sizeof(Shared));
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t F = fixed_overhead;

  int64_t cost = 0;
  for (int64_t i = tid; i < batch; i += kThreads) {
    const int32_t t = token_count(src, i);
    if (cached) tok_cache[i] = t;
    cost += num_blocks(t, block_size) + F;
  }
  for (int off = 16; off > 0; off >>= 1) cost += __shfl_xor_sync(kFullMask, cost, off);
  if (lane_id() == 0) sh.warp_cost[warp_id()] = cost;
  __syncthreads();

  if (tid == 0) {
    num_splits[0] = 0;
    if (batch == 0) {  // nothing to schedule: every part idle
      sh.idle = core::SchedRecord{0, -1, 0, 0, 0, 0, 0, 0};
      sh.idle_from = 0;
    } else {
      int64_t total = 0;
      for (int w = 0; w < kWarps; ++w) total += sh.warp_cost[w];
      const int64_t payload = (total + num_parts - 1) / num_parts + F;
      const auto tok = [&](int64_t i) { return cached ? tok_cache[i] : token_count(src, i); };
      Walk w;
      int p = 0;
      for (; p < num_parts && w.req < batch; ++p) {
        records[p] = walk_part(w, tok, batch, block_size, F, payload, num_splits);
      }
      sh.idle_from = p;
      // Every later part starts with req == batch and writes nothing to num_splits.
      if (p < num_parts) sh.idle = walk_part(w, tok, batch, block_size, F, payload, num_splits);
    }
  }
  __syncthreads();
  for (int64_t p = int64_t{sh.idle_from} + tid; p < num_parts; p += kThreads) records[p] = sh.idle;
}

namespace {

void launch(const TokenSource& src, int64_t batch, int block_size, int fixed_overhead,
            int num_parts, core::SchedRecord* records, int32_t* num_splits, void* stream) {
  const int cached = batch <= kMaxCachedRequests ? 1 : 0;
  const size_t smem = sizeof(Shared) + (cached ? static_cast<size_t>(batch) * sizeof(int32_t) : 0);
  FMLA_LAUNCH(get_mla_metadata__sm80, dim3(1), dim3(kThreads), smem, stream, src, batch,
              block_size, fixed_overhead, num_parts, cached, records, num_splits);
}

}  // namespace

void run_get_mla_metadata(const int32_t* seqlens_k, int64_t batch, int block_size,
                          int fixed_overhead, int num_parts, core::SchedRecord* records,
                          int32_t* num_splits, void* stream) {
  TokenSource src;
  src.lengths = seqlens_k;
  launch(src, batch, block_size, fixed_overhead, num_parts, records, num_splits, stream);
}

void run_get_mla_metadata_sparse(int64_t batch, int64_t topk, const int32_t* topk_length,
                                 int64_t extra_topk, const int32_t* extra_topk_length,
                                 int block_size, int fixed_overhead, int num_parts,
                                 core::SchedRecord* records, int32_t* num_splits, void* stream) {
  TokenSource src;
  src.lengths = topk_length;
  src.extra_lengths = extra_topk_length;
  src.topk = topk;
  src.extra_topk = extra_topk;
  launch(src, batch, block_size, fixed_overhead, num_parts, records, num_splits, stream);
}

FMLA_CUDA_NS_END
