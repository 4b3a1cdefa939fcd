"""Test configuration.

The global ``jax_enable_x64`` flag is deliberately left off: mixlab must give
float64 results through its own scoped x64 handling.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import matplotlib
import pytest
from hypothesis import settings

matplotlib.use("Agg")
# Property tests draw the same examples on every run: a CI failure can be rerun here.
settings.register_profile("mixlab", derandomize=True, database=None)
settings.load_profile("mixlab")
os.environ.setdefault("MPLBACKEND", "Agg")
# Compiled programs persist in a directory of this test process (each xdist worker its
# own: JAX writes cache entries non-atomically), which the subprocesses it starts (CLI)
# share; the per-user cache directory is never touched.  An explicit MIXLAB_CACHE_DIR
# is kept (to time a warm run, say).
_CACHE = None
if "MIXLAB_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="mixlab-test-cache-")
    os.environ["MIXLAB_CACHE_DIR"] = _CACHE

sys.path.insert(0, os.path.dirname(__file__))


def pytest_unconfigure(config):
    if _CACHE is not None:
        shutil.rmtree(_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Keep each test module in one xdist worker (``--dist loadgroup``).

    Modules share compiled programs and module-scoped fits between their tests;
    a test can join another module's group with ``@pytest.mark.xdist_group``.
    """
    for item in items:
        if not any(m.name == "xdist_group" for m in item.iter_markers()):
            item.add_marker(pytest.mark.xdist_group(item.path.stem))


@pytest.fixture(scope="session")
def faithful():
    import mixlab as ml

    return ml.datasets.load("faithful")
