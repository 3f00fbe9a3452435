// The index lists of a dense call run by the sparse decode kernel (dense_token_slots.h): one
// thread per (request, query token, column), 256 columns per block.
#include "cuda/decode/dense_token_slots.h"

#include <cstdint>
#include <string>

#include "cuda/common/portable.h"
#include "flashmla/error.h"

FMLA_CUDA_NS_BEGIN

namespace {

constexpr int kThreads = 256;

struct SlotArgs {
  const int32_t* block_table;
  int64_t block_table_stride, page, num_blocks, q_len, topk;
  const int32_t* cache_seqlens;
  int causal;
  int32_t* indices;
};

}  // namespace

__global__ void __launch_bounds__(kThreads)
    dense_token_slots__sm80(const SlotArgs a) {
  const int64_t row = blockIdx.x;  // request * q_len + query token
  const int64_t j = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  if (j >= a.topk) return;
  const int64_t req = row / a.q_len, s = row % a.q_len;
  int64_t len = a.cache_seqlens[req];
  len = len < 0 ? 0 : (len > a.topk ? a.topk : len);
  const int64_t visible = a.causal ? len - a.q_len + s + 1 : len;
  int32_t slot = -1;
  if (j < visible) {
    const int64_t block = a.block_table[req * a.block_table_stride + j / a.page];
    if (block >= 0 && block < a.num_blocks) slot = static_cast<int32_t>(block * a.page + j % a.page);
  }
  a.indices[row * a.topk + j] = slot;
}

void run_dense_token_slots(const int32_t* block_table, int64_t block_table_stride,
                           int64_t max_blocks_per_seq, const int32_t* cache_seqlens,
                           int64_t page_block_size, int64_t num_blocks, int64_t batch,
                           int64_t q_len, bool causal, int32_t* indices, void* stream) {
  const int64_t topk = max_blocks_per_seq * page_block_size;
  const int64_t rows = batch * q_len, col_blocks = (topk + kThreads - 1) / kThreads;
  if (num_blocks * page_block_size > INT32_MAX || rows > INT32_MAX || col_blocks > 65535) {
    throw Error(ErrorKind::unsupported, "flash_mla_with_kvcache", "k_cache",
                "an FP8 V32 cache of at most 2^31 - 1 token slots, batch * q_len < 2^31 and "
                "block_table columns * page_block_size < 2^24 on the GPU",
                std::to_string(num_blocks) + " x " + std::to_string(page_block_size) +
                    " slots, " + std::to_string(rows) + " rows, " + std::to_string(topk) +
                    " columns");
  }
  if (rows == 0 || topk == 0) return;
  const SlotArgs a{block_table, block_table_stride, page_block_size, num_blocks, q_len, topk,
                   cache_seqlens, causal ? 1 : 0, indices};
  FMLA_LAUNCH(dense_token_slots__sm80, dim3(static_cast<unsigned>(rows),
                                            static_cast<unsigned>(col_blocks)),
              dim3(kThreads), 0, stream, a);
}

FMLA_CUDA_NS_END
