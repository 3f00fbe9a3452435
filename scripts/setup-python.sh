#!/usr/bin/env bash
# Creates the project's Python environment (default .venv) and installs the flash_mla package
# into it with `pip install .`. The venv is made from Debian's python3 with its system site
# packages, so it sees Debian's CPU build of PyTorch (python3-torch, installed by
# scripts/install-deps.sh) and NumPy; the rest comes from PyPI. Re-running only rebuilds what
# changed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"

if [ ! -x "$venv/bin/python" ]; then
  echo "setup-python: creating $venv (Debian python3, system site packages for torch)"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
py="$venv/bin/python"

# Build and test requirements. numpy < 2: Debian's torch is built against NumPy 1.x.
need=()
"$py" -c "import nanobind" 2>/dev/null || need+=("nanobind>=2.0")
"$py" -c "import scikit_build_core" 2>/dev/null || need+=("scikit-build-core>=0.10")
"$py" -c "import ml_dtypes" 2>/dev/null || need+=("ml_dtypes")
"$py" -c "import pytest" 2>/dev/null || need+=("pytest")
"$py" -c "import matplotlib" 2>/dev/null || need+=("matplotlib")  # make bench's plot
if ((${#need[@]})); then
  echo "setup-python: pip installing ${need[*]}"
  "$py" -m pip install -q "${need[@]}" "numpy<2"
fi

# On a machine with an NVIDIA GPU, Debian's CPU build of torch cannot make the CUDA tensors the
# Python GPU tests (tests/python/test_cuda.py) hand to flash_mla: install PyPI's torch, a CUDA
# build, into the venv (FLASHMLA_GPU_TORCH=0 keeps Debian's). Without it those tests skip;
# ctest's test_gpu_ops checks every operation on the GPU without torch either way.
if [ "${FLASHMLA_GPU_TORCH:-1}" != 0 ] && [ -e /dev/nvidia0 ] &&
   ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "setup-python: NVIDIA GPU present, torch without CUDA: pip installing PyPI's torch into $venv"
  # --ignore-installed: the venv sees Debian's torch, which pip would take as already satisfied.
  "$py" -m pip install -q --ignore-installed torch "numpy<2" || true
  if "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "setup-python: torch sees the GPU; the Python GPU tests will run"
  else
    echo "setup-python: torch still sees no GPU; the Python GPU tests will skip (ctest's" \
         "test_gpu_ops covers the GPU without torch)"
  fi
fi

# The package itself (scikit-build-core keeps its CMake build in build/python/ between runs).
"$py" -m pip install -q --no-build-isolation .
"$py" -c "import flash_mla, torch; print('setup-python: flash_mla', flash_mla.__version__, '| torch', torch.__version__)"
