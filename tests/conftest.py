"""Test configuration.

The global ``jax_enable_x64`` flag is deliberately left off: mixlab must give
float64 results through its own scoped x64 handling.
"""

from __future__ import annotations

import os
import sys

import matplotlib
import pytest
from hypothesis import settings

matplotlib.use("Agg")
# Property tests draw the same examples on every run: a CI failure can be rerun here.
settings.register_profile("mixlab", derandomize=True, database=None)
settings.load_profile("mixlab")
os.environ.setdefault("MPLBACKEND", "Agg")
# No persistent compilation cache in the tests (writing every program costs ~6% of
# the suite and CI starts cold anyway); tests/test_process.py gives its processes
# their own cache directories.  An explicit MIXLAB_CACHE_DIR is kept (to time a warm
# run, say).
os.environ.setdefault("MIXLAB_CACHE_DIR", "off")
# Compiling dominates the suite's time: XLA's backend (LLVM) optimisation level 0
# compiles about a fifth faster for slower code, and the suite's fits are small.
# It changes code generation, not the program: results differ from the optimised
# build's in the last bits only (Old Faithful, K=3: log-likelihood 9e-16 relative),
# far inside every tolerance here.  Subprocesses inherit it; an explicit
# JAX_DISABLE_MOST_OPTIMIZATIONS=0 is kept.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

sys.path.insert(0, os.path.dirname(__file__))


# The README runs the suite with ``-n 2 --dist loadfile``: each test module stays in
# one worker, so its tests share compiled programs and session-scoped fits.  (With
# pytest 9, xdist 3.8's ``loadgroup`` no longer groups: it renames ``item._nodeid``,
# which pytest 9 does not read.)


@pytest.fixture(scope="session")
def faithful():
    import mixlab as ml

    return ml.datasets.load("faithful")
