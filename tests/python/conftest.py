"""Fixtures of the flash_mla Python test suite.

* `backend`: parametrises a test over the two call paths: NumPy arrays (bf16 as
  ml_dtypes.bfloat16) and torch tensors (CPU torch). Results must come back in the caller's
  framework.
* `rng`: a NumPy Generator seeded from the test's id, so every test is reproducible.
"""
import os
import sys
import zlib

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import BACKENDS  # noqa: E402


@pytest.fixture(params=["numpy", "torch"])
def backend(request):
    return BACKENDS[request.param]


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="session")
def fm():
    import flash_mla
    return flash_mla


@pytest.fixture
def threads(fm, request):
    """Set flash_mla's worker threads (= scheduler parts of new schedules, conventions §5.3) for
    the test, then restore the default. Tests use it to get multi-part schedules with split
    requests (the combine path) even where torch's import left OpenMP at one thread."""
    def set_threads(n):
        fm.set_num_threads(n)
        return n
    yield set_threads
    fm.set_num_threads(0)
