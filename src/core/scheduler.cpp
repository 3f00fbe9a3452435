#include "core/scheduler.h"

#include <vector>

namespace flashmla::core {

void schedule_split_kv(std::span<const int32_t> n_tok, int block_size, int fixed_overhead,
                       int num_parts, SchedRecord* records, int32_t* num_splits) {
  const int64_t batch = static_cast<int64_t>(n_tok.size());
  const int64_t F = fixed_overhead;
  num_splits[0] = 0;
  if (batch == 0) {  // nothing to schedule: every part idle
    for (int p = 0; p < num_parts; ++p) records[p] = SchedRecord{0, -1, 0, 0, 0, 0, 0, 0};
    return;
  }
  std::vector<int64_t> n_blk(batch);
  int64_t total = 0;
  for (int64_t i = 0; i < batch; ++i) {
    n_blk[i] = sched_num_blocks(n_tok[i], block_size);
    total += n_blk[i] + F;
  }
  const int64_t payload = (total + num_parts - 1) / num_parts + F;

  int64_t req = 0, blk = 0, split = 0, cum = 0;
  for (int p = 0; p < num_parts; ++p) {
    SchedRecord r{};
    r.begin_req_idx = static_cast<int32_t>(req);
    r.begin_block_idx = static_cast<int32_t>(blk);
    r.begin_split_idx = static_cast<int32_t>(split);
    const bool first_split = blk != 0;
    int64_t budget = payload;
    while (req < batch) {
      const int64_t remaining = n_blk[req] - blk;
      if (budget >= remaining + F) {  // the request finishes in this part
        cum += split + 1;
        num_splits[req + 1] = static_cast<int32_t>(cum);
        budget -= remaining + F;
        ++req;
        blk = split = 0;
      } else {  // the part ends inside the request
        if (budget - F > 0) {
          blk += budget - F;
          ++split;
        }
        break;
      }
    }
    const int64_t end_req = blk > 0 ? req : req - 1;
    int64_t end_block;
    if (blk > 0) {
      end_block = blk;
    } else {
      end_block = n_tok[req - 1] == 0 ? 0 : n_blk[req - 1];
    }
    bool last_split = end_block != n_blk[end_req] && n_tok[end_req] != 0;
    bool first = first_split;
    if (r.begin_req_idx == end_req) first = last_split = first_split || last_split;
    r.end_req_idx = static_cast<int32_t>(end_req);
    r.end_block_idx = static_cast<int32_t>(end_block);
    r.is_first_req_splitted = first;
    r.is_last_req_splitted = last_split;
    records[p] = r;
  }
}

std::vector<int32_t> sparse_token_counts(int64_t batch, int64_t topk, const int32_t* topk_length,
                                         int64_t extra_topk, const int32_t* extra_topk_length) {
  std::vector<int32_t> n_tok(batch);
  for (int64_t i = 0; i < batch; ++i) {
    int64_t t = topk_length ? topk_length[i] : topk;
    if (t == 0) t = 1;
    if (extra_topk > 0) {
      t = (t + 63) / 64 * 64 + (extra_topk_length ? extra_topk_length[i] : extra_topk);
    }
    n_tok[i] = static_cast<int32_t>(t);
  }
  return n_tok;
}

std::string schedule_mismatch(std::span<const int32_t> n_tok, int block_size, int fixed_overhead,
                              std::span<const SchedRecord> records,
                              std::span<const int32_t> num_splits) {
  const int parts = static_cast<int>(records.size());
  if (num_splits.size() != n_tok.size() + 1) {
    return "num_splits has " + std::to_string(num_splits.size()) + " entries where " +
           std::to_string(n_tok.size() + 1) + " are needed";
  }
  std::vector<SchedRecord> want(parts);
  std::vector<int32_t> want_splits(n_tok.size() + 1);
  schedule_split_kv(n_tok, block_size, fixed_overhead, parts, want.data(), want_splits.data());
  for (int p = 0; p < parts; ++p) {
    const int32_t* a = &records[p].begin_req_idx;
    const int32_t* b = &want[p].begin_req_idx;
    for (int f = 0; f < kSchedRecordInts - 1; ++f) {  // the padding int is not compared
      if (a[f] != b[f]) {
        return "record " + std::to_string(p) + " field " + std::to_string(f) + " is " +
               std::to_string(a[f]) + " where the schedule of these lengths has " +
               std::to_string(b[f]);
      }
    }
  }
  for (size_t i = 0; i < want_splits.size(); ++i) {
    if (num_splits[i] != want_splits[i]) {
      return "num_splits[" + std::to_string(i) + "] is " + std::to_string(num_splits[i]) +
             " where the schedule of these lengths has " + std::to_string(want_splits[i]);
    }
  }
  return {};
}

}  // namespace flashmla::core
