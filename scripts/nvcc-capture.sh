#!/usr/bin/env bash
# The CUDA compiler launcher of flashmla_cuda (cmake/cuda.cmake sets it as the target's
# CUDA_COMPILER_LAUNCHER): runs the nvcc command it is given and keeps the ptxas resource report
# (nvcc --resource-usage, on stderr) of the translation unit in
#   <log dir>/<source path relative to the source root>.log     e.g. ptxas/decode/combine.cu.log
# which scripts/check_cuda_resources.py reads. The log is replaced only when the compile
# succeeds (a failed compile removes it, so no stale report survives); ptxas's "info" lines go
# to the log only, everything else nvcc prints (warnings, errors) still reaches the build output.
# FLASHMLA_PTXAS_ECHO=1 echoes the whole report to the build output as well.
#
#   nvcc-capture.sh <log dir> <source root> <compiler command...>
set -uo pipefail
if (($# < 3)); then
  echo "usage: nvcc-capture.sh <log dir> <source root> <compiler command...>" >&2
  exit 2
fi
logdir=$1 srcroot=$2
shift 2

# The source (the .cu argument) and whether this is a real compile (not a -M/-E pass).
src="" capture=1
for arg in "$@"; do
  case "$arg" in
    -M | -MM | -E | --preprocess | --generate-dependencies | --generate-nonsystem-dependencies)
      capture=0 ;;
    *.cu) src=$arg ;;
  esac
done
if ((capture == 0)) || [ -z "$src" ]; then
  exec "$@"
fi

case "$src" in
  /*) abs=$src ;;
  *) abs=$PWD/$src ;;
esac
case "$abs" in
  "$srcroot"/*) rel=${abs#"$srcroot"/} ;;
  *) rel=$(basename "$abs") ;;
esac
log=$logdir/$rel.log
mkdir -p "$(dirname "$log")"
tmp=$(mktemp "$log.XXXXXX")

"$@" 2>"$tmp"
rc=$?
if [ "${FLASHMLA_PTXAS_ECHO:-0}" = 1 ]; then
  cat "$tmp" >&2
else
  # ptxas info lines and the "N bytes stack frame, ..." lines that follow them stay in the log.
  grep -Ev '^ptxas info +:|^ +[0-9]+ bytes stack frame' "$tmp" >&2
fi
if ((rc == 0)); then
  { echo "# source: $abs"; cat "$tmp"; } >"$log"
else
  rm -f "$log"
fi
rm -f "$tmp"
exit $rc
