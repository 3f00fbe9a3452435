#!/usr/bin/env bash
# Arch-specific code is guarded by the feature macros, not by __CUDA_ARCH__ alone: compiles the
# device code of every src/cuda/**/*.cu for the plain (non-"a") targets sm_90 and sm_100, which
# the library itself does not build, to a throw-away cubin. ptxas rejects wgmma / setmaxnreg /
# tcgen05 there ("Instruction 'wgmma...' not supported on .target 'sm_90'"), so a kernel that
# guards them with e.g. `__CUDA_ARCH__ >= 900` or `== 900` instead of
# `defined(__CUDA_ARCH_FEAT_SM90_ALL)` (sm_100a: `__CUDA_ARCH_FEAT_SM100_ALL`) fails here.
# Device side only (no host compilation): about 1 s of CPU per file and target.
#
#   scripts/check_cuda_arch_guards.sh [nvcc] [jobs]
#   (run from anywhere; exit 1 naming each file and target that fails)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
nvcc=${1:-nvcc}
jobs=${2:-$(nproc)}

mapfile -t sources < <(find "$root/src/cuda" -name '*.cu' | sort)
if ((${#sources[@]} == 0)); then
  echo "check_cuda_arch_guards: no src/cuda/**/*.cu"
  exit 0
fi
supported=$("$nvcc" --list-gpu-code 2>/dev/null)
targets=()
for t in sm_90 sm_100; do
  if grep -qx "$t" <<<"$supported"; then targets+=("$t"); fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
compile_one() {  # "<target> <source>"
  local target=${1%% *} src=${1#* } log
  log="$tmp/$(echo "$target ${src#"$root"/}" | tr '/ ' '__').log"
  if ! "$nvcc" -std=c++20 -O3 -arch="$target" -cubin -I "$root/src" -I "$root/include" \
       -o /dev/null "$src" >"$log" 2>&1; then
    echo "check_cuda_arch_guards: FAIL: ${src#"$root"/} for plain $target (arch-specific code not" \
         "guarded by __CUDA_ARCH_FEAT_SM90_ALL / __CUDA_ARCH_FEAT_SM100_ALL?):"
    sed 's/^/    /' "$log"
    return 1
  fi
}
export -f compile_one
export nvcc root tmp
start=$SECONDS
if for t in "${targets[@]}"; do for s in "${sources[@]}"; do echo "$t $s"; done; done |
   xargs -P "$jobs" -I{} bash -c 'compile_one "$1"' _ {}; then
  echo "check_cuda_arch_guards: ok: ${#sources[@]} files compile for plain ${targets[*]}" \
       "($((SECONDS - start)) s)"
else
  exit 1
fi
