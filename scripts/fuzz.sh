#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/fuzz_*.cpp; clang, with ASan + UBSan over the whole library)
# and runs each for a fixed time, one target per core at a time (FUZZ_JOBS, default nproc). Each
# starts from the inputs that once found a bug (fuzz/corpus/<target>/, kept as regression cases)
# and from a seed corpus
# (fuzz/seeds/<target>.tar.gz: a 3-minute-per-target run minimised with -merge=1, unpacked into
# <build>/corpus-<target>/), then mutates. The committed files are only read; new inputs go to
# <build>/corpus-<target>/. A crash, a sanitizer report or a timeout fails the run and leaves
# the input as <build>/<target>-crash-*.
#
#   scripts/fuzz.sh [seconds per target (default 20)] [build-dir (default build-fuzz)]
# A longer run:  scripts/fuzz.sh 3600 build-fuzz; then, to refresh a seed corpus,
#   <build>/<target> -merge=1 <new-dir> <build>/corpus-<target> and tar <new-dir> into
#   fuzz/seeds/<target>.tar.gz. An input that finds a bug goes into fuzz/corpus/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
build=${2:-build-fuzz}

cmake -S . -B "$build" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DFLASHMLA_SANITIZE=address,undefined,fuzzer-no-link -DFLASHMLA_BUILD_FUZZERS=ON \
      -DFLASHMLA_BUILD_TESTS=OFF -DFLASHMLA_BUILD_TOOLS=OFF -DFLASHMLA_BUILD_BENCH=OFF -DFLASHMLA_CUDA=OFF >/dev/null
cmake --build "$build" -j "$(nproc)"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}  # parallel targets: idle OpenMP threads sleep
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
fuzz_one() {  # <binary> <seconds>: one target; its log printed on failure
  local bin=$1 secs=$2 name build log runs cov
  name=$(basename "$bin")
  build=$(dirname "$bin")
  mkdir -p "fuzz/corpus/$name" "$build/corpus-$name"
  if [ -f "fuzz/seeds/$name.tar.gz" ]; then tar -xzf "fuzz/seeds/$name.tar.gz" -C "$build/corpus-$name"; fi
  log="$build/$name.log"
  if ! "$bin" -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
       -artifact_prefix="$build/$name-" "$build/corpus-$name" "fuzz/corpus/$name" >"$log" 2>&1; then
    echo "fuzz: FAIL $name"; tail -n 80 "$log"; return 1
  fi
  runs=$(grep -Eo 'stat::number_of_executed_units: [0-9]+' "$log" | grep -Eo '[0-9]+$' || echo 0)
  cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 | grep -Eo '[0-9]+' || echo "?")
  echo "fuzz: ok   $name: $runs executions in ${secs} s, coverage $cov edges, no findings"
}
export -f fuzz_one
targets=()
for bin in "$build"/fuzz_*; do
  [ -f "$bin" ] && [ -x "$bin" ] && targets+=("$bin")
done
printf '%s\n' "${targets[@]}" | xargs -P "${FUZZ_JOBS:-$(nproc)}" -I{} bash -c 'fuzz_one "$1" "$2"' _ {} "$secs"
total=0
for bin in "${targets[@]}"; do
  runs=$(grep -Eo 'stat::number_of_executed_units: [0-9]+' "$bin.log" | grep -Eo '[0-9]+$' || echo 0)
  total=$((total + runs))
done
echo "fuzz: $total executions in all (${#targets[@]} targets), no findings"
