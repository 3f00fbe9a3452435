// Tests of the split-KV decode scheduler (reference §5.2-5.4): the internal
// flashmla::core::schedule_split_kv / schedule_mismatch and the public flashmla::get_mla_metadata.
//
// Three kinds of checks:
//  * exact records for small inputs worked out by hand from §5.3 (the worked example of the
//    reference and a few boundary cases);
//  * invariants on many random inputs, checked by an independent and deliberately simple
//    re-derivation of what each part covers (it reads the records the way a decode kernel does,
//    §5.4, and never re-implements the greedy walk);
//  * schedule_mismatch (accepting / rejecting a caller's precomputed schedule) and the public
//    API's contract (same records, argument errors).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/scheduler.h"
#include "flashmla/flashmla.h"

namespace {

using flashmla::core::SchedRecord;

constexpr int kBS = 64;  // block size of the dense decode (and of every FlashMLA scheduler)
constexpr int kF = 5;    // fixed overhead of SM90 dense decode, in blocks

struct Schedule {
  std::vector<SchedRecord> records;
  std::vector<int32_t> num_splits;
};

Schedule run_schedule(const std::vector<int32_t>& n_tok, int parts, int bs = kBS, int f = kF) {
  Schedule s;
  // Poison the outputs so that a field the scheduler forgets to write is noticed.
  SchedRecord poison{};
  std::fill_n(&poison.begin_req_idx, flashmla::core::kSchedRecordInts, -7);
  s.records.assign(parts, poison);
  s.num_splits.assign(n_tok.size() + 1, -7);
  flashmla::core::schedule_split_kv(n_tok, bs, f, parts, s.records.data(), s.num_splits.data());
  return s;
}

// A record as the 7 meaningful ints in field order, for readable comparisons:
// {begin_req, end_req, begin_block, end_block, begin_split, first_splitted, last_splitted}.
std::vector<int32_t> fields(const SchedRecord& r) {
  return {r.begin_req_idx,   r.end_req_idx,           r.begin_block_idx,     r.end_block_idx,
          r.begin_split_idx, r.is_first_req_splitted, r.is_last_req_splitted};
}

std::vector<std::vector<int32_t>> all_fields(const Schedule& s) {
  std::vector<std::vector<int32_t>> out;
  for (const SchedRecord& r : s.records) out.push_back(fields(r));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Independent re-derivation of the coverage.

// Blocks holding at least one real token: ceil(n / bs) (0 for an empty request).
int64_t token_blocks(int64_t n, int64_t bs) { return (n + bs - 1) / bs; }
// Blocks the scheduler charges for a request: at least one, even for 0 tokens (§5.3 step 2).
int64_t charged_blocks(int64_t n, int64_t bs) { return std::max<int64_t>(token_blocks(n, bs), 1); }

// One (part, request) pair of the schedule, read per §5.4.
struct Piece {
  int part;
  int64_t req;
  int64_t lo, hi;   // block range [lo, hi) as stated by the record
  int64_t ordinal;  // split ordinal the part uses for this piece
  bool no_split;    // whether the part writes the output directly (flag says "not splitted")
};

// Reads every part's records like a decode kernel and lists the pieces in part order.
std::vector<Piece> read_pieces(const std::vector<int32_t>& n_tok, const Schedule& s, int64_t bs) {
  const int64_t b = static_cast<int64_t>(n_tok.size());
  std::vector<Piece> pieces;
  for (int p = 0; p < static_cast<int>(s.records.size()); ++p) {
    const SchedRecord& r = s.records[p];
    if (r.begin_req_idx >= b) continue;  // idle part
    for (int64_t q = r.begin_req_idx; q <= r.end_req_idx; ++q) {
      Piece pc{};
      pc.part = p;
      pc.req = q;
      pc.lo = q == r.begin_req_idx ? r.begin_block_idx : 0;
      pc.hi = q == r.end_req_idx ? r.end_block_idx : charged_blocks(n_tok[q], bs);
      pc.ordinal = q == r.begin_req_idx ? r.begin_split_idx : 0;
      if (q == r.begin_req_idx) {
        pc.no_split = !r.is_first_req_splitted;
      } else if (q == r.end_req_idx) {
        pc.no_split = !r.is_last_req_splitted;
      } else {
        pc.no_split = true;
      }
      pieces.push_back(pc);
    }
  }
  return pieces;
}

// Checks every property of a schedule that does not depend on where the greedy walk cuts.
// `expand_blocks` additionally lists every (request, block) pair one by one.
void check_invariants(const std::vector<int32_t>& n_tok, int parts, const Schedule& s,
                      int bs = kBS, int f = kF, bool expand_blocks = true) {
  const int64_t b = static_cast<int64_t>(n_tok.size());
  ASSERT_EQ(static_cast<int>(s.records.size()), parts);
  ASSERT_EQ(static_cast<int64_t>(s.num_splits.size()), b + 1);

  // --- num_splits: exclusive prefix sum, at least one piece per request, bounded slot count.
  ASSERT_EQ(s.num_splits[0], 0);
  for (int64_t i = 0; i < b; ++i) {
    ASSERT_GE(s.num_splits[i + 1] - s.num_splits[i], 1) << "request " << i << " has no piece";
  }
  EXPECT_LE(s.num_splits[b], b + parts) << "more pieces than accumulator slots (b + parts)";
  // Each of the parts - 1 boundaries between consecutive parts splits at most one request.
  EXPECT_LE(s.num_splits[b], b + parts - 1);

  // --- records: field ranges, idle parts, the walk's state only moves forward.
  int32_t prev_begin = 0;
  for (int p = 0; p < parts; ++p) {
    const SchedRecord& r = s.records[p];
    SCOPED_TRACE("part " + std::to_string(p));
    EXPECT_EQ(r.padding, 0);
    ASSERT_GE(r.begin_req_idx, prev_begin);
    ASSERT_LE(r.begin_req_idx, b);
    prev_begin = r.begin_req_idx;
    if (r.begin_req_idx == b) {  // idle: nothing to do, no flags, no split ordinal
      EXPECT_EQ(r.begin_block_idx, 0);
      EXPECT_EQ(r.begin_split_idx, 0);
      EXPECT_EQ(r.is_first_req_splitted, 0);
      EXPECT_EQ(r.is_last_req_splitted, 0);
      EXPECT_LT(r.end_req_idx, r.begin_req_idx);  // an empty request range
      continue;
    }
    ASSERT_GE(r.end_req_idx, r.begin_req_idx);
    ASSERT_LT(r.end_req_idx, b);
    EXPECT_TRUE(r.is_first_req_splitted == 0 || r.is_first_req_splitted == 1);
    EXPECT_TRUE(r.is_last_req_splitted == 0 || r.is_last_req_splitted == 1);
  }

  // Final state of the walk (§5.3 step 5): the last part ends exactly at the end of the last
  // request, whether it is idle or not.
  if (parts > 0 && b > 0) {
    const SchedRecord& last = s.records[parts - 1];
    EXPECT_EQ(last.end_req_idx, b - 1);
    EXPECT_EQ(last.end_block_idx, token_blocks(n_tok[b - 1], bs));
  }

  const std::vector<Piece> pieces = read_pieces(n_tok, s, bs);

  // --- per-request pieces: count, consecutive ordinals, flags, ranges, intervals in order.
  std::vector<int64_t> count(b, 0), next_block(b, 0);
  std::vector<int> last_part(b, -1);
  for (const Piece& pc : pieces) {
    SCOPED_TRACE("part " + std::to_string(pc.part) + " request " + std::to_string(pc.req));
    const int64_t real = token_blocks(n_tok[pc.req], bs);
    ASSERT_LE(pc.lo, pc.hi);
    ASSERT_LE(pc.hi, charged_blocks(n_tok[pc.req], bs));
    if (real > 0) {
      EXPECT_LT(pc.lo, pc.hi) << "a piece of a non-empty request covers no block";
      // The pieces of one request tile [0, real) in part order, without gap or overlap.
      EXPECT_EQ(pc.lo, next_block[pc.req]);
      next_block[pc.req] = pc.hi;
    } else {
      EXPECT_EQ(pc.lo, 0);  // an empty request is visited once, to write out 0 / lse +inf
    }
    EXPECT_GT(pc.part, last_part[pc.req]);
    last_part[pc.req] = pc.part;
    EXPECT_EQ(pc.ordinal, count[pc.req]) << "split ordinals must be 0, 1, 2, ...";
    ++count[pc.req];
  }
  for (int64_t i = 0; i < b; ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    const int64_t n = s.num_splits[i + 1] - s.num_splits[i];
    EXPECT_EQ(count[i], n) << "pieces differ from num_splits";
    EXPECT_EQ(next_block[i], token_blocks(n_tok[i], bs)) << "blocks not all covered";
    if (n_tok[i] == 0) {
      EXPECT_EQ(n, 1) << "an empty request is never split";
    }
  }
  for (const Piece& pc : pieces) {
    const bool split = s.num_splits[pc.req + 1] - s.num_splits[pc.req] > 1;
    EXPECT_EQ(pc.no_split, !split) << "flag of request " << pc.req << " in part " << pc.part;
  }

  // --- load: no part is charged more than payload = ceil(total / parts) + F (§5.3 step 3),
  // where a piece costs its blocks plus F and an empty request one block plus F.
  int64_t total = 0;
  for (int32_t n : n_tok) total += charged_blocks(n, bs) + f;
  const int64_t payload = (total + parts - 1) / parts + f;
  std::vector<int64_t> cost(parts, 0);
  for (const Piece& pc : pieces) {
    cost[pc.part] += (n_tok[pc.req] == 0 ? 1 : pc.hi - pc.lo) + f;
  }
  for (int p = 0; p < parts; ++p) EXPECT_LE(cost[p], payload) << "part " << p;

  // --- the simplest possible coverage check: expand every piece into (request, block) pairs
  // and compare with the list of all (request, block) pairs holding tokens.
  if (expand_blocks) {
    std::vector<std::pair<int64_t, int64_t>> covered, wanted;
    for (const Piece& pc : pieces) {
      for (int64_t blk = pc.lo; blk < pc.hi; ++blk) {
        if (blk < token_blocks(n_tok[pc.req], bs)) covered.emplace_back(pc.req, blk);
      }
    }
    for (int64_t i = 0; i < b; ++i) {
      for (int64_t blk = 0; blk < token_blocks(n_tok[i], bs); ++blk) wanted.emplace_back(i, blk);
    }
    EXPECT_TRUE(covered == wanted) << "covered " << covered.size() << " blocks, want "
                                   << wanted.size();
  }
}

// ---------------------------------------------------------------------------------------------
// Hand-computed schedules.

TEST(Scheduler, WorkedExampleOfReference) {
  // §5.3: seqlens [100, 1000, 0] -> n_blk [2, 16, 1], total 34, payload 14.
  const std::vector<int32_t> n_tok = {100, 1000, 0};
  Schedule s = run_schedule(n_tok, 4);
  const std::vector<std::vector<int32_t>> want = {
      {0, 1, 0, 2, 0, 0, 1}, {1, 1, 2, 11, 1, 1, 1}, {1, 1, 11, 16, 2, 1, 1}, {2, 2, 0, 0, 0, 0, 0}};
  EXPECT_EQ(all_fields(s), want);
  EXPECT_EQ(s.num_splits, (std::vector<int32_t>{0, 1, 4, 5}));
  check_invariants(n_tok, 4, s);
}

TEST(Scheduler, OnePartTakesEverything) {
  // total 34, payload 39: everything fits; the part ends on the empty request 2 (end_block 0).
  Schedule s = run_schedule({100, 1000, 0}, 1);
  EXPECT_EQ(all_fields(s), (std::vector<std::vector<int32_t>>{{0, 2, 0, 0, 0, 0, 0}}));
  EXPECT_EQ(s.num_splits, (std::vector<int32_t>{0, 1, 2, 3}));

  // 5000 tokens -> 79 blocks; total 84, payload 89.
  s = run_schedule({5000}, 1);
  EXPECT_EQ(all_fields(s), (std::vector<std::vector<int32_t>>{{0, 0, 0, 79, 0, 0, 0}}));
  EXPECT_EQ(s.num_splits, (std::vector<int32_t>{0, 1}));
}

TEST(Scheduler, TwoPartsOneLongRequest) {
  // 4096 tokens -> 64 blocks; total 69, payload ceil(69/2) + 5 = 40. Part 0 takes 35 blocks,
  // part 1 the remaining 29 (cost 34 <= 40). Both parts see a split request.
  Schedule s = run_schedule({4096}, 2);
  EXPECT_EQ(all_fields(s),
            (std::vector<std::vector<int32_t>>{{0, 0, 0, 35, 0, 1, 1}, {0, 0, 35, 64, 1, 1, 1}}));
  EXPECT_EQ(s.num_splits, (std::vector<int32_t>{0, 2}));
  check_invariants({4096}, 2, s);
}

TEST(Scheduler, BudgetMinusOverheadIsZero) {
  // seqlens [640, 576] -> n_blk [10, 9]; total 29, payload 15 + 5 = 20. After request 0
  // (cost 15) the budget is 5 = F: no block of request 1 is taken (budget - F == 0), so part 0
  // ends on request 0 and part 1 starts request 1 at block 0, unsplit.
  Schedule s = run_schedule({640, 576}, 2);
  EXPECT_EQ(all_fields(s),
            (std::vector<std::vector<int32_t>>{{0, 0, 0, 10, 0, 0, 0}, {1, 1, 0, 9, 0, 0, 0}}));
  EXPECT_EQ(s.num_splits, (std::vector<int32_t>{0, 1, 2}));
  check_invariants({640, 576}, 2, s);
}

TEST(Scheduler, BudgetMinusOverheadIsOne) {
  // seqlens [640, 768] -> n_blk [10, 12]; total 32, payload 16 + 5 = 21. After request 0 the
  // budget is 6: exactly one block of request 1 goes to part 0.
  Schedule s = run_schedule({640, 768}, 2);
  EXPECT_EQ(all_fields(s),
            (std::vector<std::vector<int32_t>>{{0, 1, 0, 1, 0, 0, 1}, {1, 1, 1, 12, 1, 1, 1}}));
  EXPECT_EQ(s.num_splits, (std::vector<int32_t>{0, 1, 3}));
  check_invariants({640, 768}, 2, s);
}

TEST(Scheduler, RequestEndingExactlyOnTheBudget) {
  // 320 tokens -> 5 blocks: total 10, payload 10 = 5 + F, the request just fits (>=).
  Schedule s = run_schedule({320}, 2);
  EXPECT_EQ(all_fields(s),
            (std::vector<std::vector<int32_t>>{{0, 0, 0, 5, 0, 0, 0}, {1, 0, 0, 5, 0, 0, 0}}));
  EXPECT_EQ(s.num_splits, (std::vector<int32_t>{0, 1}));

  // 384 tokens -> exactly 6 blocks: total 11, payload 11, still unsplit.
  s = run_schedule({384}, 2);
  EXPECT_EQ(all_fields(s),
            (std::vector<std::vector<int32_t>>{{0, 0, 0, 6, 0, 0, 0}, {1, 0, 0, 6, 0, 0, 0}}));
  EXPECT_EQ(s.num_splits, (std::vector<int32_t>{0, 1}));

  // 385 tokens -> 7 blocks: total 12, payload 11; part 0 takes 6 blocks, part 1 the last one.
  s = run_schedule({385}, 2);
  EXPECT_EQ(all_fields(s),
            (std::vector<std::vector<int32_t>>{{0, 0, 0, 6, 0, 1, 1}, {0, 0, 6, 7, 1, 1, 1}}));
  EXPECT_EQ(s.num_splits, (std::vector<int32_t>{0, 2}));
}

TEST(Scheduler, IdlePartsAfterTheLastRequest) {
  // 1 token: total 6, payload 2 + 5 = 7. Parts 1-3 are idle: begin_req = b = 1 and the end
  // fields repeat the end of the last request (end_block 1), as FlashMLA writes them.
  Schedule s = run_schedule({1}, 4);
  EXPECT_EQ(all_fields(s), (std::vector<std::vector<int32_t>>{{0, 0, 0, 1, 0, 0, 0},
                                                                {1, 0, 0, 1, 0, 0, 0},
                                                                {1, 0, 0, 1, 0, 0, 0},
                                                                {1, 0, 0, 1, 0, 0, 0}}));
  EXPECT_EQ(s.num_splits, (std::vector<int32_t>{0, 1}));

  // An empty last request: end_block 0 everywhere.
  s = run_schedule({0}, 3);
  EXPECT_EQ(all_fields(s), (std::vector<std::vector<int32_t>>{
                               {0, 0, 0, 0, 0, 0, 0}, {1, 0, 0, 0, 0, 0, 0}, {1, 0, 0, 0, 0, 0, 0}}));
  EXPECT_EQ(s.num_splits, (std::vector<int32_t>{0, 1}));
}

TEST(Scheduler, AllEmptyRequestsOnePerPart) {
  // 3 empty requests, 64 parts: total 18, payload 1 + 5 = 6 = one empty request per part.
  const std::vector<int32_t> n_tok = {0, 0, 0};
  Schedule s = run_schedule(n_tok, 64);
  for (int p = 0; p < 3; ++p) {
    EXPECT_EQ(fields(s.records[p]), (std::vector<int32_t>{p, p, 0, 0, 0, 0, 0})) << p;
  }
  for (int p = 3; p < 64; ++p) {
    EXPECT_EQ(fields(s.records[p]), (std::vector<int32_t>{3, 2, 0, 0, 0, 0, 0})) << p;
  }
  EXPECT_EQ(s.num_splits, (std::vector<int32_t>{0, 1, 2, 3}));
  check_invariants(n_tok, 64, s);
}

TEST(Scheduler, BlockBoundaries) {
  // 64 tokens is one block, 65 two; 0 and 1 token both charge one block.
  for (auto [n, blocks] : std::vector<std::pair<int32_t, int32_t>>{
           {1, 1}, {63, 1}, {64, 1}, {65, 2}, {128, 2}, {129, 3}}) {
    Schedule s = run_schedule({n}, 1);
    EXPECT_EQ(s.records[0].end_block_idx, blocks) << n << " tokens";
  }
  EXPECT_EQ(flashmla::core::sched_num_blocks(0, 64), 1);
  EXPECT_EQ(flashmla::core::sched_num_blocks(64, 64), 1);
  EXPECT_EQ(flashmla::core::sched_num_blocks(65, 64), 2);
  EXPECT_EQ(flashmla::core::sched_num_blocks(std::numeric_limits<int32_t>::max(), 64), 1 << 25);
}

// ---------------------------------------------------------------------------------------------
// Invariants on random and extreme inputs.

std::vector<int32_t> random_lengths(std::mt19937_64& rng, int64_t b, int32_t max_len,
                                    double zero_fraction) {
  std::uniform_real_distribution<double> coin(0.0, 1.0);
  std::uniform_int_distribution<int32_t> len(1, max_len);
  std::vector<int32_t> n(b);
  for (auto& x : n) x = coin(rng) < zero_fraction ? 0 : len(rng);
  return n;
}

TEST(SchedulerInvariants, RandomMixed) {
  std::mt19937_64 rng(20260401);
  std::uniform_int_distribution<int> batch(1, 40), parts(1, 200), kind(0, 3);
  for (int iter = 0; iter < 3000; ++iter) {
    const int b = batch(rng), p = parts(rng);
    const int32_t max_len = std::vector<int32_t>{64, 700, 5000, 40000}[kind(rng)];
    const double zeros = std::vector<double>{0.0, 0.1, 0.5, 0.9}[kind(rng)];
    const std::vector<int32_t> n_tok = random_lengths(rng, b, max_len, zeros);
    SCOPED_TRACE("iter " + std::to_string(iter) + " b " + std::to_string(b) + " parts " +
                 std::to_string(p));
    check_invariants(n_tok, p, run_schedule(n_tok, p));
    if (HasFatalFailure() || HasNonfatalFailure()) return;
  }
}

TEST(SchedulerInvariants, OtherConstants) {
  // The walk is the same for the other implementations' constants (F = 3 for SM100 MODEL1
  // head-128) and for any block size.
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int> batch(1, 20), parts(1, 70);
  for (auto [bs, f] : std::vector<std::pair<int, int>>{{64, 3}, {64, 0}, {1, 5}, {16, 1}, {128, 9}}) {
    for (int iter = 0; iter < 300; ++iter) {
      const int b = batch(rng), p = parts(rng);
      const std::vector<int32_t> n_tok = random_lengths(rng, b, 3000, 0.2);
      SCOPED_TRACE("bs " + std::to_string(bs) + " F " + std::to_string(f) + " iter " +
                   std::to_string(iter));
      check_invariants(n_tok, p, run_schedule(n_tok, p, bs, f), bs, f);
      if (HasFatalFailure() || HasNonfatalFailure()) return;
    }
  }
}

TEST(SchedulerInvariants, LargeBatch) {
  std::mt19937_64 rng(11);
  for (int p : {1, 7, 66, 132, 160, 1000}) {
    const std::vector<int32_t> n_tok = random_lengths(rng, 10000, 4096, 0.1);
    SCOPED_TRACE("parts " + std::to_string(p));
    check_invariants(n_tok, p, run_schedule(n_tok, p));
  }
}

TEST(SchedulerInvariants, AllLengthsZero) {
  for (int b : {1, 2, 3, 17, 1000}) {
    for (int p : {1, 2, 3, 5, 64, 132}) {
      const std::vector<int32_t> n_tok(b, 0);
      SCOPED_TRACE("b " + std::to_string(b) + " parts " + std::to_string(p));
      check_invariants(n_tok, p, run_schedule(n_tok, p));
    }
  }
}

TEST(SchedulerInvariants, MorePartsThanRequests) {
  std::mt19937_64 rng(3);
  for (int iter = 0; iter < 200; ++iter) {
    const std::vector<int32_t> n_tok = random_lengths(rng, 3, 3000, 0.3);
    SCOPED_TRACE("iter " + std::to_string(iter));
    check_invariants(n_tok, 64, run_schedule(n_tok, 64));
  }
  // Even tiny requests: 3 requests of one block each spread over 64 parts.
  check_invariants({1, 1, 1}, 64, run_schedule({1, 1, 1}, 64));
}

TEST(SchedulerInvariants, HugeRequests) {
  constexpr int32_t kMax = std::numeric_limits<int32_t>::max();
  // One request of 2^31 - 1 tokens (2^25 blocks) over 132 parts: every part takes a share.
  {
    const std::vector<int32_t> n_tok = {kMax};
    Schedule s = run_schedule(n_tok, 132);
    check_invariants(n_tok, 132, s, kBS, kF, /*expand_blocks=*/false);  // 2^25 pairs: too many
    EXPECT_EQ(s.num_splits[1], 132);
    EXPECT_EQ(s.records[131].end_block_idx, 1 << 25);
  }
  // Many huge requests: the total exceeds 2^31 blocks and the per-part payload 2^25.
  {
    std::vector<int32_t> n_tok(200, kMax);
    n_tok[17] = 0;
    n_tok[100] = 1;
    for (int p : {1, 132, 1000}) {
      SCOPED_TRACE("parts " + std::to_string(p));
      check_invariants(n_tok, p, run_schedule(n_tok, p), kBS, kF, /*expand_blocks=*/false);
    }
  }
  // Huge mixed with small.
  {
    std::mt19937_64 rng(5);
    std::vector<int32_t> n_tok = random_lengths(rng, 50, 10000, 0.2);
    n_tok[3] = kMax;
    n_tok[49] = kMax;
    check_invariants(n_tok, 132, run_schedule(n_tok, 132), kBS, kF, /*expand_blocks=*/false);
  }
}

TEST(SchedulerInvariants, Deterministic) {
  std::mt19937_64 rng(13);
  const std::vector<int32_t> n_tok = random_lengths(rng, 500, 8000, 0.1);
  Schedule a = run_schedule(n_tok, 66), b = run_schedule(n_tok, 66);
  EXPECT_EQ(all_fields(a), all_fields(b));
  EXPECT_EQ(a.num_splits, b.num_splits);
}

// ---------------------------------------------------------------------------------------------
// schedule_mismatch: accepting a caller's precomputed schedule.

std::string mismatch(const std::vector<int32_t>& n_tok, const Schedule& s) {
  return flashmla::core::schedule_mismatch(n_tok, kBS, kF, s.records, s.num_splits);
}

TEST(ScheduleMismatch, AcceptsTheComputedSchedule) {
  std::mt19937_64 rng(17);
  for (int iter = 0; iter < 200; ++iter) {
    const std::vector<int32_t> n_tok = random_lengths(rng, 1 + iter % 30, 5000, 0.2);
    const int p = 1 + iter % 90;
    EXPECT_EQ(mismatch(n_tok, run_schedule(n_tok, p)), "") << "iter " << iter;
  }
}

TEST(ScheduleMismatch, NamesTheTamperedRecordAndField) {
  const std::vector<int32_t> n_tok = {100, 1000, 0};
  const Schedule good = run_schedule(n_tok, 4);
  for (int p = 0; p < 4; ++p) {
    for (int f = 0; f < flashmla::core::kSchedRecordInts - 1; ++f) {
      Schedule bad = good;
      (&bad.records[p].begin_req_idx)[f] += 1;
      const std::string msg = mismatch(n_tok, bad);
      EXPECT_NE(msg.find("record " + std::to_string(p)), std::string::npos) << msg;
      EXPECT_NE(msg.find("field " + std::to_string(f)), std::string::npos) << msg;
    }
  }
  // The padding int is not part of the schedule.
  Schedule padded = good;
  padded.records[2].padding = 12345;
  EXPECT_EQ(mismatch(n_tok, padded), "");
}

TEST(ScheduleMismatch, NamesTheTamperedNumSplitsEntry) {
  const std::vector<int32_t> n_tok = {100, 1000, 0};
  const Schedule good = run_schedule(n_tok, 4);
  for (int i = 0; i <= 3; ++i) {
    Schedule bad = good;
    bad.num_splits[i] -= 1;
    const std::string msg = mismatch(n_tok, bad);
    EXPECT_NE(msg.find("num_splits[" + std::to_string(i) + "]"), std::string::npos) << msg;
  }
}

TEST(ScheduleMismatch, StaleScheduleIsRejected) {
  const std::vector<int32_t> n_tok = {100, 1000, 0};
  const Schedule s = run_schedule(n_tok, 4);
  // Lengths that keep every block count and every empty/non-empty status: same schedule.
  EXPECT_EQ(mismatch({128, 1024, 0}, s), "");
  // A request growing into a new block moves the cuts.
  EXPECT_NE(mismatch({100, 1025, 0}, s), "");
  EXPECT_NE(mismatch({129, 1000, 0}, s), "");
  // An empty request getting its first token changes its end block (0 -> 1).
  EXPECT_NE(mismatch({100, 1000, 1}, s), "");
  // The schedule of 4 parts is not that of 3 parts.
  const std::vector<SchedRecord> three(s.records.begin(), s.records.begin() + 3);
  EXPECT_NE(flashmla::core::schedule_mismatch(n_tok, kBS, kF, three, s.num_splits), "");
  // Nor is it the schedule of other constants.
  EXPECT_NE(flashmla::core::schedule_mismatch(n_tok, kBS, 3, s.records, s.num_splits), "");
}

// ---------------------------------------------------------------------------------------------
// The public API: flashmla::get_mla_metadata and flashmla::mla_num_sm_parts.

using flashmla::DType;
using flashmla::Error;
using flashmla::ErrorKind;
using flashmla::TensorView;

// Public call with contiguous buffers; returns the schedule it wrote.
Schedule public_schedule(const std::vector<int32_t>& n_tok, int parts) {
  const int64_t b = static_cast<int64_t>(n_tok.size());
  Schedule s;
  s.records.assign(parts, SchedRecord{-7, -7, -7, -7, -7, -7, -7, 0});
  s.num_splits.assign(b + 1, -7);
  flashmla::get_mla_metadata(
      {.cache_seqlens = TensorView::contiguous(n_tok.data(), DType::int32, {b}),
       .num_sm_parts = parts,
       .tile_scheduler_metadata =
           TensorView::contiguous(s.records.data(), DType::int32, {parts, 8}),
       .num_splits = TensorView::contiguous(s.num_splits.data(), DType::int32, {b + 1})});
  return s;
}

TEST(GetMlaMetadata, WorkedExample) {
  EXPECT_EQ(flashmla::kSchedulerBlockSize, 64);
  EXPECT_EQ(flashmla::kSchedulerFixedOverhead, 5);
  Schedule s = public_schedule({100, 1000, 0}, 4);
  const std::vector<std::vector<int32_t>> want = {
      {0, 1, 0, 2, 0, 0, 1}, {1, 1, 2, 11, 1, 1, 1}, {1, 1, 11, 16, 2, 1, 1}, {2, 2, 0, 0, 0, 0, 0}};
  EXPECT_EQ(all_fields(s), want);
  EXPECT_EQ(s.num_splits, (std::vector<int32_t>{0, 1, 4, 5}));
}

TEST(GetMlaMetadata, SameAsTheCoreScheduler) {
  std::mt19937_64 rng(19);
  for (int iter = 0; iter < 100; ++iter) {
    const std::vector<int32_t> n_tok = random_lengths(rng, 1 + iter % 50, 20000, 0.2);
    const int p = 1 + (iter * 7) % 160;
    Schedule pub = public_schedule(n_tok, p);
    Schedule core = run_schedule(n_tok, p, flashmla::kSchedulerBlockSize,
                                 flashmla::kSchedulerFixedOverhead);
    EXPECT_EQ(all_fields(pub), all_fields(core)) << "iter " << iter;
    EXPECT_EQ(pub.num_splits, core.num_splits) << "iter " << iter;
    EXPECT_EQ(mismatch(n_tok, pub), "");
  }
}

// Runs get_mla_metadata on (possibly broken) arguments and returns the Error it throws.
template <class Mutate>
Error metadata_error(Mutate mutate) {
  std::vector<int32_t> seqlens = {100, 1000, 0};
  std::vector<int32_t> meta(4 * 8), splits(4);
  flashmla::MlaMetadataArgs args{
      .cache_seqlens = TensorView::contiguous(seqlens.data(), DType::int32, {3}),
      .num_sm_parts = 4,
      .tile_scheduler_metadata = TensorView::contiguous(meta.data(), DType::int32, {4, 8}),
      .num_splits = TensorView::contiguous(splits.data(), DType::int32, {4})};
  mutate(args, seqlens);
  try {
    flashmla::get_mla_metadata(args);
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "get_mla_metadata accepted invalid arguments";
  return Error(ErrorKind::value, "", "", "", "");
}

void expect_error(const Error& e, ErrorKind kind, const std::string& argument) {
  EXPECT_EQ(e.kind(), kind) << e.what();
  EXPECT_EQ(e.argument(), argument) << e.what();
  EXPECT_NE(e.function().find("get_mla_metadata"), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find(argument), std::string::npos) << e.what();
}

TEST(GetMlaMetadata, ArgumentErrors) {
  using Args = flashmla::MlaMetadataArgs;
  using Lens = std::vector<int32_t>;
  expect_error(metadata_error([](Args& a, Lens&) { a.num_sm_parts = 0; }), ErrorKind::value,
               "num_sm_parts");
  expect_error(metadata_error([](Args& a, Lens&) { a.num_sm_parts = -3; }), ErrorKind::value,
               "num_sm_parts");
  expect_error(metadata_error([](Args& a, Lens&) { a.cache_seqlens.dtype = DType::fp32; }),
               ErrorKind::type, "cache_seqlens");
  expect_error(metadata_error([](Args& a, Lens&) { a.cache_seqlens.rank = 2; }),
               ErrorKind::value, "cache_seqlens");
  expect_error(metadata_error([](Args& a, Lens&) { a.cache_seqlens.data = nullptr; }),
               ErrorKind::value, "cache_seqlens");
  expect_error(metadata_error([](Args& a, Lens& l) {
                 a.cache_seqlens = TensorView::contiguous(l.data(), DType::int32, {2});
               }),
               ErrorKind::value, "num_splits");  // b = 2 now, so num_splits must have 3 entries
  expect_error(metadata_error([](Args& a, Lens& l) { l[1] = -1; }), ErrorKind::value,
               "cache_seqlens");
  expect_error(
      metadata_error([](Args& a, Lens&) { a.tile_scheduler_metadata.dtype = DType::fp32; }),
      ErrorKind::type, "tile_scheduler_metadata");
  expect_error(metadata_error([](Args& a, Lens&) { a.tile_scheduler_metadata.shape[1] = 7; }),
               ErrorKind::value, "tile_scheduler_metadata");
  expect_error(metadata_error([](Args& a, Lens&) { a.tile_scheduler_metadata.shape[0] = 3; }),
               ErrorKind::value, "tile_scheduler_metadata");
  expect_error(metadata_error([](Args& a, Lens&) { a.num_splits.shape[0] = 3; }),
               ErrorKind::value, "num_splits");
  expect_error(metadata_error([](Args& a, Lens&) { a.num_splits.dtype = DType::fp32; }),
               ErrorKind::type, "num_splits");
}

TEST(GetMlaMetadata, EmptyBatchIsRejected) {
  // FlashMLA's decode needs b > 0; the scheduler's records are undefined for b = 0.
  using Args = flashmla::MlaMetadataArgs;
  using Lens = std::vector<int32_t>;
  expect_error(metadata_error([](Args& a, Lens& l) {
                 a.cache_seqlens = TensorView::contiguous(l.data(), DType::int32, {0});
                 a.num_splits.shape[0] = 1;
               }),
               ErrorKind::value, "cache_seqlens");
}

TEST(GetMlaMetadata, NonContiguousArgumentsAreRejected) {
  using Args = flashmla::MlaMetadataArgs;
  using Lens = std::vector<int32_t>;
  std::vector<int32_t> wide(8 * 16);
  expect_error(metadata_error([](Args& a, Lens& l) {
                 l.resize(6);
                 a.cache_seqlens = TensorView::strided(l.data(), DType::int32, {3}, {2});
               }),
               ErrorKind::value, "cache_seqlens");
  expect_error(metadata_error([&](Args& a, Lens&) {
                 a.tile_scheduler_metadata =
                     TensorView::strided(wide.data(), DType::int32, {4, 8}, {16, 1});
               }),
               ErrorKind::value, "tile_scheduler_metadata");
  expect_error(metadata_error([&](Args& a, Lens&) {
                 a.num_splits = TensorView::strided(wide.data(), DType::int32, {4}, {2});
               }),
               ErrorKind::value, "num_splits");
}

TEST(MlaNumSmParts, OnePartPerWorkerThread) {
  // The CPU rule does not depend on the shape: each part processes all heads of its range.
  for (int threads : {1, 2, 7, 64, 200}) {
    const flashmla::Context ctx{.num_threads = threads};
    for (auto shape : std::vector<flashmla::MlaDecodeShape>{
             {.batch = 1, .q_len = 1, .num_heads_q = 128, .num_heads_kv = 1},
             {.batch = 64, .q_len = 2, .num_heads_q = 16, .num_heads_kv = 1},
             {.batch = 3, .q_len = 4, .num_heads_q = 63, .num_heads_kv = 3}}) {
      EXPECT_EQ(flashmla::mla_num_sm_parts(shape, ctx), threads);
    }
  }
  const flashmla::MlaDecodeShape shape{.batch = 2, .q_len = 1, .num_heads_q = 128,
                                       .num_heads_kv = 1};
  EXPECT_EQ(flashmla::mla_num_sm_parts(shape), flashmla::resolved_num_threads({}));
  EXPECT_GE(flashmla::mla_num_sm_parts(shape), 1);
}

TEST(MlaNumSmParts, ArgumentErrors) {
  const flashmla::MlaDecodeShape empty{.batch = 0, .q_len = 1, .num_heads_q = 128,
                                       .num_heads_kv = 1};
  try {
    (void)flashmla::mla_num_sm_parts(empty);
    ADD_FAILURE() << "batch 0 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::value);
    EXPECT_EQ(e.function(), "mla_num_sm_parts");
  }
  const flashmla::MlaDecodeShape shape{.batch = 1, .q_len = 1, .num_heads_q = 128,
                                       .num_heads_kv = 1};
  EXPECT_THROW((void)flashmla::mla_num_sm_parts(shape, flashmla::Context{.num_threads = -1}),
               Error);
}

}  // namespace
