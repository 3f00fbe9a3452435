#!/usr/bin/env bash
# The C++ suites once more under AddressSanitizer + UndefinedBehaviorSanitizer (make test runs
# this after the plain suites): builds the library and the test binaries with
# -fsanitize=address,undefined (undefined behaviour aborts), then runs every test binary whole,
# and each kernel suite once per ISA level the run-time choice offers (native, avx512bf16,
# avx512, avx2, portable, amx-emulated; a level the CPU lacks, or its own best level, would
# repeat the native run, and such a run skips its tests: tests/main.cpp). The reference the
# kernel suites compare against is built uninstrumented (CMakeLists.txt; test_ref* link an
# instrumented copy). Binaries run whole rather than one process per test (as ctest runs the
# plain level), because a sanitized process takes ~0.5 s to start and the suites have ~2100
# tests, the kernel suites' once per level. The CUDA kernels run
# here through the CPU harness (test_cuda_*, host-compiled); nvcc's device build is left to the
# plain build (FLASHMLA_CUDA=OFF), where ptxas checks it.
# Then the concurrency suite (many threads calling every operation at once) under
# ThreadSanitizer, built with clang: LLVM's OpenMP runtime is what clang links, and tests/tsan.supp
# leaves out only the accesses made inside that (uninstrumented) runtime.
#
#   scripts/test-sanitizers.sh [asan-build-dir [tsan-build-dir]]
#   (defaults build-asan, build-tsan; SAN_JOBS parallel binaries)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-asan}
tsan_build=${2:-build-tsan}
jobs=${SAN_JOBS:-$(nproc)}

# -g1: line tables only (the sanitizers' stack traces keep file:line; ~16% less compile time).
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG" \
      -DFLASHMLA_SANITIZE=address,undefined -DFLASHMLA_BUILD_BENCH=OFF -DFLASHMLA_BUILD_TOOLS=OFF \
      -DFLASHMLA_CUDA=OFF >/dev/null
cmake --build "$build" -j "$jobs"

kernel_suites=" test_dense_decode test_sparse_decode test_sparse_prefill test_mha test_isa test_kv_codec test_online_softmax test_concurrency "
runs=()
for bin in "$build"/test_*; do
  [ -x "$bin" ] || continue
  name=$(basename "$bin")
  if [[ "$kernel_suites" == *" $name "* ]]; then
    for isa in native avx512bf16 avx512 avx2 portable amx-emulated; do runs+=("$isa $bin"); done
  else
    runs+=("native $bin")
  fi
done

# SAN_JOBS processes at once, each with an OpenMP team: idle OpenMP threads sleep rather than
# spin on the cores the other processes need (26% less time for two processes on 2 cores).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
export FLASHMLA_TEST_SIZE=small  # shorter long-sequence / wide-batch grid cases (tests/testing/test_size.h)
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
logs=$(mktemp -d)
run_one() {  # "<isa> <binary>": one whole binary with FLASHMLA_ISA=<isa>; log kept on failure
  local isa=${1%% *} bin=${1#* } log start=$SECONDS
  log="$2/$(basename "$bin").$isa.log"
  if FLASHMLA_ISA=$isa "$bin" --gtest_brief=1 >"$log" 2>&1; then
    if grep -q "selects the microkernel of the uncapped run" "$log"; then
      echo "sanitizers: skip $(basename "$bin") [$isa]: the same microkernel as [native] on this CPU"
      return 0
    fi
    echo "sanitizers: ok   $(basename "$bin") [$isa] $(grep -Eo '[0-9]+ tests? from [0-9]+ test suites? ran' "$log" | head -1) in $((SECONDS - start)) s"
  else
    echo "sanitizers: FAIL $(basename "$bin") [$isa]"; tail -n 60 "$log"; return 1
  fi
}
export -f run_one
start=$SECONDS
printf '%s\n' "${runs[@]}" | xargs -P "$jobs" -I{} bash -c 'run_one "$1" "$2"' _ {} "$logs"
binaries=$(printf '%s\n' "${runs[@]}" | cut -d' ' -f2 | sort -u | wc -l)
echo "sanitizers: ${#runs[@]} runs of $binaries test binaries passed under ASan + UBSan in $((SECONDS - start)) s"

# ThreadSanitizer: the concurrency suite.
cmake -S . -B "$tsan_build" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DFLASHMLA_SANITIZE=thread -DFLASHMLA_BUILD_BENCH=OFF -DFLASHMLA_BUILD_TOOLS=OFF \
      -DFLASHMLA_CUDA=OFF >/dev/null
cmake --build "$tsan_build" -j "$jobs" --target test_concurrency
if TSAN_OPTIONS="suppressions=$PWD/tests/tsan.supp halt_on_error=1" \
   "$tsan_build/test_concurrency" --gtest_brief=1 >"$logs/tsan.log" 2>&1; then
  echo "sanitizers: ok   test_concurrency under ThreadSanitizer (no race reported)"
else
  echo "sanitizers: FAIL test_concurrency under ThreadSanitizer"; tail -n 80 "$logs/tsan.log"; exit 1
fi
