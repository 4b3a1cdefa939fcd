"""Test configuration.

The global ``jax_enable_x64`` flag is deliberately left off: mixlab must give
float64 results through its own scoped x64 handling.
"""

from __future__ import annotations

import os
import sys

import matplotlib
import pytest

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope="session")
def faithful():
    import mixlab as ml

    return ml.datasets.load("faithful")
