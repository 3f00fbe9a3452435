// Test sizes: the full grids, or smaller ones where each test runs many times slower (the
// sanitizer build: scripts/test-sanitizers.sh sets FLASHMLA_TEST_SIZE=small). Every test and
// every grid case still runs; only long sequences and wide batches get shorter.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string_view>

namespace flashmla::testing {

inline bool small_test_sizes() {
  static const bool small = [] {
    const char* env = std::getenv("FLASHMLA_TEST_SIZE");
    return env != nullptr && std::string_view(env) == "small";
  }();
  return small;
}

// `full`, or `small` under FLASHMLA_TEST_SIZE=small.
inline int64_t sized(int64_t full, int64_t small) { return small_test_sizes() ? small : full; }

}  // namespace flashmla::testing
