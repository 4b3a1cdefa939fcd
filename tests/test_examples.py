"""Every example runs with small sizes and gives the numbers its study is about."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_seed000_reproduces_the_study_and_separates_its_mistakes(capsys):
    out = load("seed000_cs229").main(["--iterations", "100", "--every", "50"])
    printed = capsys.readouterr().out
    assert "reproduces the study's printed k=99 line: True" in printed
    s = out["summary"]
    study, hard_only = s["both mistakes (the study)"], s["mistake 1 only (hard-count weights)"]
    np.testing.assert_allclose(hard_only["means"], study["means"], atol=1e-6)
    np.testing.assert_allclose(study["weights"], [0.43, 0.57])
    old_only, correct = s["mistake 2 only (variance about old means)"], s["correct EM (mixlab)"]
    np.testing.assert_allclose(old_only["means"], correct["means"], atol=0.02)
    assert out["gain_from_one_step"] > 1e-5 and out["monotone"]


def test_seed002_estimates_near_truth_with_small_data():
    out = load("seed002_breuel").main(
        ["--n0", "600", "--n1", "1400", "--iterations", "60", "--bootstrap", "3"]
    )
    z = (out["estimate"] - out["truth"]) / out["se"]
    assert np.all(np.isfinite(out["se"])) and np.all(out["se"] > 0)
    assert np.all(np.abs(z) < 6)


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.py")))
def test_every_example_has_main_and_docstring(name):
    module = load(name)
    assert callable(module.main) and module.__doc__ and "Run:" in module.__doc__
