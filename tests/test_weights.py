"""Sample weights are frequency weights in EM: an integer weight is the same as that many
copies of the row, a zero weight the same as leaving the row out, for every family."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as st

import mixlab as ml

FAMILIES = ("gaussian", "poisson", "bernoulli", "student_t")


def _data(family: str, n: int = 120) -> np.ndarray:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, n)
    if family == "poisson":
        return rng.poisson(np.array([[2.0, 7.0], [9.0, 1.0]])[labels]).astype(float)
    if family == "bernoulli":
        probs = np.array([[0.85, 0.8, 0.2], [0.15, 0.3, 0.75]])
        return (rng.random((n, 3)) < probs[labels]).astype(float)
    noise = st.multivariate_t(np.zeros(2), np.eye(2), df=5).rvs(n, random_state=4)
    return np.array([[0.0, 0.0], [5.0, 3.0]])[labels] + noise


def _start(X: np.ndarray, family: str) -> dict:
    """A fixed explicit start (random starts draw differently from duplicated rows)."""
    p = ml.fit(X, 2, ml.EM(max_iter=2, tol=0.0), family=family, key=0).params.to_dict()
    return {k: v for k, v in p.items() if isinstance(v, np.ndarray)}


def _assert_same_fit(a: ml.FitResult, b: ml.FitResult) -> None:
    assert a.n_iter == b.n_iter
    np.testing.assert_allclose(a.trace, b.trace, rtol=1e-10)
    np.testing.assert_allclose(a.params.weights, b.params.weights, rtol=1e-10)
    for name, value in a.params.components.items():
        # covariances: sums of many cross products in another order, 1e-10 of their scale
        scale = np.max(np.abs(b.params.components[name]))
        np.testing.assert_allclose(value, b.params.components[name], rtol=1e-10, atol=1e-10 * scale)


@pytest.mark.parametrize("family", FAMILIES)
def test_integer_weights_equal_duplicated_rows(family):
    X = _data(family)
    w = np.random.default_rng(5).integers(1, 4, len(X)).astype(float)
    start = _start(X, family)
    em = ml.EM(init=start, tol=1e-10, criterion="change", max_iter=300)
    weighted = ml.fit(X, 2, em, family=family, sample_weight=w)
    duplicated = ml.fit(np.repeat(X, w.astype(int), axis=0), 2, em, family=family)
    _assert_same_fit(weighted, duplicated)
    # information criteria count sum(w) observations
    dup = np.repeat(X, w.astype(int), axis=0)
    assert weighted.n_observations == len(dup)
    np.testing.assert_allclose(weighted.bic(X, sample_weight=w), duplicated.bic(dup), rtol=1e-10)
    np.testing.assert_allclose(weighted.aic(X, sample_weight=w), duplicated.aic(dup), rtol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_weights_equal_dropping_the_rows(family):
    X = _data(family)
    w = (np.arange(len(X)) % 3 != 0).astype(float)
    start = _start(X, family)
    em = ml.EM(init=start, tol=1e-10, criterion="change", max_iter=300)
    weighted = ml.fit(X, 2, em, family=family, sample_weight=w)
    dropped = ml.fit(X[w > 0], 2, em, family=family)
    _assert_same_fit(weighted, dropped)


def test_the_tolerance_uses_the_weighted_mean_log_likelihood():
    """Doubling every weight doubles the log-likelihood but not its mean per observation:
    the stopping iteration is the same."""
    X = _data("gaussian")
    start = _start(X, "gaussian")
    em = ml.EM(init=start, tol=1e-4, criterion="change", max_iter=300)
    one = ml.fit(X, 2, em, sample_weight=np.ones(len(X)))
    two = ml.fit(X, 2, em, sample_weight=np.full(len(X), 2.0))
    assert one.n_iter == two.n_iter
    np.testing.assert_allclose(two.log_likelihood, 2 * one.log_likelihood, rtol=1e-12)


@pytest.mark.parametrize("init", ml.em.INIT_METHODS)
def test_initialisations_use_the_weights(init):
    """Rows of zero weight never seed or start a component: a far cluster of zero-weight
    rows leaves every starting mean with the weighted data."""
    rng = np.random.default_rng(6)
    X = np.r_[rng.normal(0, 1, (80, 2)), rng.normal(100, 1, (40, 2))]
    w = np.r_[np.ones(80), np.zeros(40)]
    for key in range(5):
        r = ml.fit(
            X,
            3,
            ml.EM(init=init, max_iter=1, tol=0.0, record_params=True),
            sample_weight=w,
            key=key,
        )
        assert np.all(np.abs(r.params_trace.means[0]) < 10), (init, key)


BAD_WEIGHTS = [
    (np.ones(5), ValueError, "sample_weight has 5 entries but X has 120 rows"),
    (np.ones((120, 1)), ValueError, r"sample_weight must be 1-D"),
    (np.r_[-1.0, np.ones(119)], ValueError, r"sample_weight\[0\] = -1 is negative"),
    (np.r_[np.nan, np.ones(119)], ValueError, "sample_weight contains NaN or infinite"),
    (np.r_[np.inf, np.ones(119)], ValueError, "sample_weight contains NaN or infinite"),
    (np.zeros(120), ValueError, "sample_weight is zero for every row"),
    (np.r_[1.0, np.zeros(119)], ValueError, "only 1 row\\(s\\) have a positive sample_weight"),
    (np.array(["a"] * 120), TypeError, "sample_weight must be numeric"),
]


@pytest.mark.parametrize(("weights", "exc", "message"), BAD_WEIGHTS)
def test_bad_weights_name_the_problem(weights, exc, message):
    with pytest.raises(exc, match=message):
        ml.fit(_data("gaussian"), 2, sample_weight=weights)


def test_weights_are_not_modified():
    X = _data("poisson")
    w = np.ones(len(X))
    w_before = w.copy()
    ml.fit(X, 2, family="poisson", sample_weight=w)
    np.testing.assert_array_equal(w, w_before)


def test_arviz_export_of_a_weighted_fit_is_the_expanded_data():
    X = _data("bernoulli")
    w = np.random.default_rng(7).integers(0, 3, len(X)).astype(float)
    start = _start(X, "bernoulli")
    em = ml.EM(init=start, tol=1e-10, max_iter=300)
    weighted = ml.fit(X, 2, em, family="bernoulli", sample_weight=w).to_arviz()
    duplicated = ml.fit(np.repeat(X, w.astype(int), axis=0), 2, em, family="bernoulli").to_arviz()
    a, b = weighted.log_likelihood["obs"].values, duplicated.log_likelihood["obs"].values
    assert a.shape == b.shape == (1, 1, int(w.sum()))
    np.testing.assert_allclose(a, b, rtol=1e-10)
    # non-integer weights: one entry per row, the weights beside the data
    halves = ml.fit(X, 2, family="bernoulli", sample_weight=w + 0.5).to_arviz()
    np.testing.assert_array_equal(halves.observed_data["sample_weight"].values, w + 0.5)
