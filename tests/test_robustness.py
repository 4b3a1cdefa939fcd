"""Robustness: degenerate data, float32, collapsing components, reproducibility."""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest
from helpers import COVARIANCE_TYPES, random_start, rel_err
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mixlab as ml
from mixlab.errors import ConvergenceWarning, DataScaleWarning, FitError

# ----------------------------------------------------------------------------- fuzz suite
PATHOLOGIES = (
    "none",
    "duplicated_rows",
    "constant_column",
    "far_outlier",
    "scale_1e8",
    "scale_1e-8",
    "n_barely_above_k",
    "one_component",
)
OUTCOMES: collections.Counter = collections.Counter()
FIXES = ("reg_covar", "fewer components", "rescale")


def _data(pathology: str, seed: int) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    k = 1 if pathology == "one_component" else 3
    n = 4 if pathology == "n_barely_above_k" else 60
    centers = rng.normal(0, 3, (3, 3))
    X = centers[rng.integers(0, 3, n)] + rng.normal(size=(n, 3)) * rng.uniform(0.3, 1.5)
    if pathology == "duplicated_rows":
        X[n // 2 :] = X[rng.integers(0, n // 2, n - n // 2)]
    elif pathology == "constant_column":
        X[:, 1] = 7.0
    elif pathology == "far_outlier":
        X[0] = 1e5
    elif pathology == "scale_1e8":
        X = X * 1e8
    elif pathology == "scale_1e-8":
        X = X * 1e-8
    return X, k


def _reg_dip_bound(result: ml.FitResult, X: np.ndarray, reg: float) -> np.ndarray:
    """How far reg_covar can make the trace dip at each iteration.

    Using S + reg I instead of the ELBO's maximiser S loses, per eigenvalue s of S,
    exactly (n_k / 2) (log(1 + reg / s) - reg / (s + reg)) (about reg^2 / (4 s^2)).
    Features constant in the data add the same term every iteration and are left out.
    """
    p = result.params_trace
    ct = result.params.covariance_type
    keep = np.flatnonzero(np.asarray(X, np.float64).var(axis=0) > 0)
    bounds = []
    for t in range(1, result.n_iter + 1):
        p_t = p[t]
        full = p_t.full_covariances().astype(np.float64)[:, keep][:, :, keep]
        s = np.clip(np.linalg.eigvalsh(full - reg * np.eye(len(keep))), 1e-300, None)
        nk = p.weights[t] * result.n_samples
        if ct == "tied":  # one shared covariance: count it once, for all the data
            s, nk = s[:1], np.array([result.n_samples])
        loss = 0.5 * (np.log1p(reg / s) - reg / (s + reg))
        bounds.append(float(np.sum(nk * np.sum(loss, axis=-1))))
    return np.asarray(bounds)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    covariance_type=st.sampled_from(COVARIANCE_TYPES),
    dtype=st.sampled_from(["float64", "float32"]),
    pathology=st.sampled_from(PATHOLOGIES),
    seed=st.integers(0, 2**31 - 1),
)
def fuzz_case(covariance_type, dtype, pathology, seed):
    """One fuzz case: a finite fit with a never-decreasing trace, or a clear error."""
    X, k = _data(pathology, seed)
    X = X.astype(dtype)
    X_before = X.copy()
    # A random start from the data, drawn here: explicit starts share compiled programs.
    rng = np.random.default_rng(seed)
    var = X.astype(np.float64).var(axis=0) + 1e-6  # + reg_covar, as every M-step adds
    layout = {
        "full": np.diag(var)[None].repeat(k, 0),
        "diag": np.tile(var, (k, 1)),
        "spherical": np.full(k, var.mean()),
        "tied": np.diag(var),
    }[covariance_type]
    start = {
        "weights": np.full(k, 1.0 / k),
        "means": X[rng.choice(len(X), k, replace=False)],
        "covariances": layout,
    }
    method = ml.EM(tol=0.0, max_iter=25, record_params=True, init=start)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", DataScaleWarning)  # checked in its own test
            r = ml.fit(X, k, method, covariance=covariance_type, key=seed)
    except (FitError, ValueError) as exc:
        message = str(exc)
        assert any(fix in message for fix in FIXES), message  # names the fix
        OUTCOMES["clear error"] += 1
        OUTCOMES[f"error: {pathology}"] += 1
        return
    finally:
        np.testing.assert_array_equal(X, X_before)  # the caller's data are untouched
    p = r.params
    assert all(np.all(np.isfinite(getattr(p, f))) for f in ("weights", "means", "covariances"))
    assert np.all(np.isfinite(r.trace)) and np.isfinite(r.log_likelihood)
    rounding = (1e-5 if dtype == "float32" else 1e-9) * np.abs(r.trace[1:])
    bound = _reg_dip_bound(r, X, 1e-6)
    # Exact EM never lowers the trace while every component holds data.  A restart (the
    # default on_collapse="reinit") may lower it, and so may the M-step of a component
    # left with next to no responsibility (its mean is a ratio of two near-zeros): from
    # a component's first collapse on, only finiteness is asserted.
    collapses = [t for _, t, _ in r.diagnostics["collapses"]]
    checked = min(collapses) - 1 if collapses else len(bound)
    diffs = np.diff(r.trace)[:checked]
    assert np.all(diffs >= -(bound + rounding)[:checked]), (diffs, bound)
    OUTCOMES["with a collapse"] += bool(collapses)
    OUTCOMES["finite, monotone fit"] += 1
    OUTCOMES[f"{dtype} {covariance_type}"] += 1


def test_fuzz_finite_monotone_or_a_clear_error():
    """Runs the hypothesis search, then checks it covered every kind of case."""
    OUTCOMES.clear()
    fuzz_case()
    total = OUTCOMES["finite, monotone fit"] + OUTCOMES["clear error"]
    print(f"\nfuzz cases: {total}; " + ", ".join(f"{k}: {v}" for k, v in sorted(OUTCOMES.items())))
    assert total >= 18  # hypothesis may stop a little early on repeated examples
    for dtype in ("float64", "float32"):
        for ct in COVARIANCE_TYPES:
            assert OUTCOMES[f"{dtype} {ct}"] > 0, f"no successful {dtype} {ct} case"


def test_reg_covar_swamping_the_data_is_flagged():
    X = np.random.default_rng(0).normal(size=(100, 2)) * 1e-8
    with pytest.warns(DataScaleWarning, match="(?i)rescale the data"):
        ml.fit(X, 2, ml.EM(max_iter=5, tol=0.0))


def test_values_whose_squares_overflow_are_refused():
    X = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32) * 1e17
    with pytest.raises(ValueError, match="squares overflow float32; rescale the data"):
        ml.fit(X, 2)


# ----------------------------------------------------------------------------- float32
def test_float32_where_the_uncentred_formula_breaks():
    """Two unit-variance clusters 10,000 from the origin: E[x^2] - mean^2 in float32 has
    lost every digit of the variance; mixlab's centred statistics have not."""
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(1e4, 1.0, (500, 1)), rng.normal(1e4 + 6, 0.5, (500, 1))]
    x32 = X[:, 0].astype(np.float32)
    uncentred = np.mean(x32 * x32, dtype=np.float32) - np.mean(x32, dtype=np.float32) ** 2
    true_var = X[:, 0].var()
    assert abs(uncentred - true_var) / true_var > 0.05  # the textbook formula fails here
    start = {"weights": [0.5, 0.5], "means": [[1e4 - 1], [1e4 + 7]], "covariances": [2.0, 2.0]}
    r64 = ml.fit(X, 2, ml.EM(init=start, tol=0.0, max_iter=50), covariance="spherical")
    r32 = ml.fit(
        X.astype(np.float32), 2, ml.EM(init=start, tol=0.0, max_iter=50), covariance="spherical"
    )
    assert r32.params.covariances.dtype == np.float32
    assert np.all(r32.params.covariances > 0)
    # float32 precision: ~1e-7 relative on the data, amplified by iteration to ~1e-4
    assert rel_err(r32.params.covariances, r64.params.covariances) < 1e-3
    assert rel_err(r32.params.weights, r64.params.weights) < 1e-4
    np.testing.assert_allclose(r32.params.means, r64.params.means, rtol=1e-6)


# ----------------------------------------------------------------------------- collapse
def test_collapse_raise_names_component_and_iteration():
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(0, 1, (100, 2)), rng.normal(6, 1, (100, 2)), np.full((5, 2), 20.0)]
    start = {
        "weights": [0.3, 0.3, 0.4],
        "means": [[0, 0], [6, 6], [20, 20]],
        "covariances": np.tile(np.eye(2), (3, 1, 1)),
    }
    with pytest.raises(
        FitError,
        match=r"component 2 collapsed at iteration 1: its covariance "
        r"became singular.*on_collapse='reinit'",
    ):
        ml.fit(X, 3, ml.EM(init=start, on_collapse="raise"))
    r = ml.fit(X, 3, ml.EM(init=start, on_collapse="ignore"))  # scikit-learn's behaviour
    np.testing.assert_allclose(r.params.covariances[2], 1e-6 * np.eye(2), rtol=1e-6, atol=1e-11)


def test_collapse_reinit_restarts_the_component_and_records_it():
    rng = np.random.default_rng(1)
    X = np.r_[
        rng.normal(0, 1, (100, 2)),
        rng.normal(6, 1, (100, 2)),
        rng.normal(-6, 1, (100, 2)),
        [[30.0, 30.0]],
    ]
    start = {
        "weights": [0.25] * 4,
        "means": [[0, 0], [6, 6], [0.5, 0.5], [30, 30]],
        "covariances": np.tile(np.eye(2), (4, 1, 1)),
    }
    with pytest.raises(FitError, match="component 3 collapsed at iteration 1"):
        ml.fit(X, 4, ml.EM(init=start, on_collapse="raise"))
    r = ml.fit(X, 4, ml.EM(init=start, max_iter=500))  # reinit is the default
    assert r.converged
    assert r.diagnostics["reinitialisations"][0] == (1, 3)
    found = sorted(np.round(r.params.means[r.params.weights > 0.1, 0]))
    assert found == [-6.0, 0.0, 6.0]  # the third cluster is found after the restart


def test_weight_collapse_is_reported_as_such():
    X = np.r_[np.random.default_rng(2).normal(0, 1, (50, 1))]
    start = {"weights": [0.5, 0.5], "means": [[0.0], [1e3]], "covariances": [1.0, 1.0]}
    with pytest.raises(FitError, match="less than one data point's worth"):
        ml.fit(X, 2, ml.EM(init=start, on_collapse="raise"), covariance="spherical")


# ----------------------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_restarts_are_bit_identical_per_key(covariance_type):
    X = np.random.default_rng(3).normal(size=(200, 2))
    em = ml.EM(n_init=4, init="random", max_iter=100, criterion="change")
    a = ml.fit(X, 3, em, covariance=covariance_type, key=11)
    b = ml.fit(X, 3, em, covariance=covariance_type, key=11)
    for f in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(getattr(a.params, f), getattr(b.params, f))
    np.testing.assert_array_equal(a.restarts.log_likelihood, b.restarts.log_likelihood)


def test_explicit_start_is_not_modified():
    X = np.random.default_rng(4).normal(size=(100, 2))
    start = random_start(X, 2, "diag", 0)
    copy = {k: v.copy() for k, v in start.items()}
    ml.fit(X, 2, ml.EM(init=start), covariance="diag")
    for k in start:
        np.testing.assert_array_equal(start[k], copy[k])
