#!/usr/bin/env bash
# Installs what the build and the tests need and is missing; does nothing when all is present.
# Debian packages only (apt-get), so a fresh machine of the project's kind gets everything.
set -euo pipefail

# python3-torch is Debian's CPU build of PyTorch (PyPI's default torch is a multi-GB CUDA build);
# the Python tests use it with Debian's python3 through a venv (scripts/setup-python.sh).
# clang, its compiler-rt (libFuzzer, sanitizers) and libomp build the fuzzers (scripts/fuzz.sh).
# Boost.Context runs each CUDA thread as a fiber in the CUDA harness (tests/cuda_harness).
packages=(cmake make g++ libgtest-dev libcli11-dev libbenchmark-dev python3 python3-venv python3-dev python3-torch
          clang libclang-rt-14-dev libomp-dev libboost-context-dev)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi
