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

# The package itself (scikit-build-core keeps its CMake build in build/python/ between runs).
"$py" -m pip install -q --no-build-isolation .
"$py" -c "import flash_mla, torch; print('setup-python: flash_mla', flash_mla.__version__, '| torch', torch.__version__)"
