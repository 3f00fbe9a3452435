// The main() of every test binary: GoogleTest's, plus one rule for the runs with a FLASHMLA_ISA
// cap (ctest and make sanitize run each kernel suite once per ISA level): a cap that leaves the
// run-time choice where it is without one (avx512bf16 on a CPU whose best level is avx512bf16, a
// level above what the CPU has, amx-emulated without AVX512-BF16) would only repeat the native
// run, so such a run skips every test and says why.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "cpu/common/isa.h"

namespace {

// Why the FLASHMLA_ISA of this process repeats the uncapped run; empty when it does not.
std::string repeats_native_run() {
  using namespace flashmla::cpu;
  const char* env = std::getenv("FLASHMLA_ISA");
  if (env == nullptr || *env == '\0' || std::string_view(env) == "native") return {};
  if (active_isa() != detected_isa() || amx_emulated()) return {};
  return std::string("FLASHMLA_ISA=") + env + " selects the microkernel of the uncapped run (" +
         isa_name(detected_isa()) + " on this CPU), which the native run tests";
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  // GoogleTest 1.12 reports tests skipped from a global environment as passed, so the repeated
  // run stops here, in GoogleTest's words for a skip (ctest's SKIP_REGULAR_EXPRESSION).
  if (std::string why = repeats_native_run(); !why.empty() && !::testing::GTEST_FLAG(list_tests)) {
    std::printf("[  SKIPPED ] every test of this process: %s\n", why.c_str());
    return 0;
  }
  return RUN_ALL_TESTS();
}
