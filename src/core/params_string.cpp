// to_string of the params structs: for error messages, test names and benchmark rows.
#include <sstream>

#include "core/combine_params.h"
#include "core/decode_params.h"
#include "core/mha_params.h"
#include "core/sparse_decode_params.h"
#include "core/sparse_prefill_params.h"

namespace flashmla::core {

std::string DenseDecodeParams::to_string() const {
  std::ostringstream os;
  os << "dense_decode{batch=" << batch << ", q_len=" << q_len << ", num_heads_q=" << num_heads_q
     << ", num_heads_kv=" << num_heads_kv << ", d_qk=" << d_qk << ", d_v=" << d_v
     << ", page_block_size=" << page_block_size << ", num_blocks=" << num_blocks
     << ", dtype=" << dtype_name(dtype) << ", causal=" << causal << ", num_parts=" << num_parts
     << ", threads=" << num_threads << "}";
  return os.str();
}

std::string CombineParams::to_string() const {
  std::ostringstream os;
  os << "combine{batch=" << batch << ", q_len=" << q_len << ", num_heads_q=" << num_heads_q
     << ", d_v=" << d_v << ", sink=" << (attn_sink != nullptr)
     << ", out_dtype=" << dtype_name(out_dtype) << ", threads=" << num_threads << "}";
  return os.str();
}

std::string SparseDecodeParams::to_string() const {
  static const char* kinds[] = {"bf16", "fp8_v32", "fp8_model1"};
  std::ostringstream os;
  os << "sparse_decode{batch=" << batch << ", q_len=" << q_len << ", num_heads_q=" << num_heads_q
     << ", d_qk=" << d_qk << ", cache=" << kinds[static_cast<int>(main.kind)]
     << ", topk=" << main.topk << ", extra_topk=" << (extra.indices ? extra.topk : 0)
     << ", sink=" << (attn_sink != nullptr) << ", num_parts=" << num_parts
     << ", threads=" << num_threads << "}";
  return os.str();
}

std::string SparsePrefillParams::to_string() const {
  std::ostringstream os;
  os << "sparse_prefill{q_len=" << q_len << ", kv_len=" << kv_len << ", num_heads_q="
     << num_heads_q << ", d_qk=" << d_qk << ", d_v=" << d_v << ", topk=" << topk
     << ", topk_length=" << (topk_length != nullptr) << ", sink=" << (attn_sink != nullptr)
     << ", threads=" << num_threads << "}";
  return os.str();
}

std::string MhaParams::to_string() const {
  std::ostringstream os;
  os << "mha{batch=" << batch << ", total_q=" << q_start.back() << ", total_kv="
     << kv_start.back() << ", num_heads_q=" << num_heads_q << ", num_heads_kv=" << num_heads_kv
     << ", d_qk=" << d_qk << ", d_v=" << d_v << ", causal=" << causal
     << ", backward=" << (dout != nullptr) << ", threads=" << num_threads << "}";
  return os.str();
}

}  // namespace flashmla::core
