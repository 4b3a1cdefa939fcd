"""Progress bars: off where nobody watches, forward-only where somebody does (issue 14)."""

from __future__ import annotations

import io
import re
import sys

import pytest

import mixlab as ml
from mixlab._jaxutil import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_bar_by_default_when_stderr_is_not_a_terminal(faithful, capfd):
    ml.fit(faithful, 2, ml.EM(n_init=3, progress=None, max_iter=20), key=0)
    ml.fit(faithful, 2, ml.EM(n_init=3, max_iter=20), key=0)  # EM's default: off
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_on_a_terminal_one_bar_that_never_goes_back(faithful, monkeypatch):
    """progress=None shows a bar on a terminal; batched restarts report their own
    iterations, and the bar's counts only grow to the last one (the forward-only rule
    itself: test_update_moves_forward_only)."""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    r = ml.fit(faithful, 2, ml.EM(n_init=4, progress=None, tol=0.0, max_iter=60), key=0)
    counts = [int(n) for n in re.findall(r"\| *(\d+)/60 \[", terminal.getvalue())]
    assert counts, terminal.getvalue()
    assert counts == sorted(counts)
    assert counts[-1] == r.n_iter == 60


def test_update_moves_forward_only():
    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    bar = Progress.bar = Bar()
    try:
        for i, expected in [(4, 5), (1, 5), (4, 5), (9, 10)]:
            Progress.update(i)
            assert bar.n == expected
    finally:
        Progress.bar = None


def test_progress_setting_is_checked():
    with pytest.raises(TypeError, match="progress must be True, False or None"):
        ml.SVI(progress="yes")
    assert Progress.wanted(True) and not Progress.wanted(False)


def test_bootstrap_bar_on_a_terminal(faithful, monkeypatch):
    """The bootstrap's refits report their iterations to one forward-only bar on a
    terminal (progress=None; off elsewhere by the same rule as EM's, tested above)."""
    em = ml.fit(faithful, 2, ml.EM(n_init=3, max_iter=20), key=0)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    em.bootstrap(n_boot=8, key=1, progress=None)
    assert "bootstrap (8 refits, iterations)" in terminal.getvalue()
    counts = [int(n) for n in re.findall(r"\| *(\d+)/1000 \[", terminal.getvalue())]
    assert counts and counts == sorted(counts)
