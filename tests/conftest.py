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

sys.path.insert(0, os.path.dirname(__file__))


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
