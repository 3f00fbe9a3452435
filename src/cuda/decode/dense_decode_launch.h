// What the dense decode launchers (SM80 and SM90 generations) share: the grid and the choice of
// the kernel instance by operand type.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/common/portable.h"
#include "cuda/decode/decode_grid.h"
#include "cuda/decode/dense_decode_sm80.h"
#include "flashmla/error.h"

FMLA_CUDA_NS_BEGIN

// x: (KV head, tile of `rows` query rows) pairs, where a KV head has q_len * hpk rows; y: the
// schedule's parts. `what` names the x tiles in the error check_decode_grid raises.
inline dim3 dense_decode_grid(const DenseDecodeArgs& a, int rows, const char* what) {
  const int64_t rows_per_kv = int64_t{a.q_len} * (a.num_heads_q / a.num_heads_kv);
  const int64_t blocks_x = a.num_heads_kv * ((rows_per_kv + rows - 1) / rows);
  check_decode_grid(a.num_parts, blocks_x, what);
  return dim3(static_cast<unsigned>(blocks_x), static_cast<unsigned>(a.num_parts));
}

// launch(std::bool_constant<fp16>{}) for the arguments' operand type; with
// FLASH_MLA_DISABLE_FP16 the fp16 instance is never instantiated and fp16 is an error.
template <class Launch>
inline void launch_for_dtype(const DenseDecodeArgs& a, Launch&& launch) {
  if (!a.fp16) return launch(std::false_type{});
#if defined(FLASH_MLA_DISABLE_FP16)
  throw Error(ErrorKind::unsupported, "flash_mla_with_kvcache", "q",
              "bf16 (this build leaves out fp16 kernels: FLASH_MLA_DISABLE_FP16)", "fp16");
#else
  launch(std::true_type{});
#endif
}

FMLA_CUDA_NS_END
