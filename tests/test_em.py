"""The EM driver through ml.fit: scikit-learn parity, monotonicity, restarts, options."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest
from helpers import COVARIANCE_TYPES, blobs, random_start, rel_err, sklearn_from_start
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans

import mixlab as ml
from mixlab.em import data as em_data
from mixlab.errors import ConvergenceWarning, FitError

PARITY_X = blobs(400, 3, 3, seed=11)


@pytest.mark.parametrize("formulation", ["centred", "expanded"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_parity_with_sklearn_from_the_same_start(covariance_type, formulation):
    start = random_start(PARITY_X, 3, covariance_type, seed=5)
    gm = sklearn_from_start(PARITY_X, start, covariance_type, tol=1e-3, max_iter=300)
    r = ml.fit(
        PARITY_X,
        3,
        ml.EM(init=start, max_iter=300, formulation=formulation, criterion="change"),
        covariance=covariance_type,
    )
    assert r.converged and gm.converged_
    assert r.n_iter == gm.n_iter_
    assert rel_err(r.params.weights, gm.weights_) < 1e-6
    assert rel_err(r.params.means, gm.means_) < 1e-6
    assert rel_err(r.params.covariances, gm.covariances_) < 1e-6
    np.testing.assert_allclose(r.log_likelihood, gm.score(PARITY_X) * len(PARITY_X), rtol=1e-9)
    np.testing.assert_allclose(r.predict_proba(PARITY_X), gm.predict_proba(PARITY_X), atol=1e-6)
    np.testing.assert_allclose(r.score_samples(PARITY_X), gm.score_samples(PARITY_X), rtol=1e-8)
    np.testing.assert_allclose(r.bic(PARITY_X), gm.bic(PARITY_X), rtol=1e-8)
    np.testing.assert_allclose(r.aic(PARITY_X), gm.aic(PARITY_X), rtol=1e-8)
    assert (r.predict(PARITY_X) == gm.predict(PARITY_X)).mean() > 0.999


def test_trace_is_the_log_likelihood_of_each_iterate():
    X = blobs(300, 2, 3, seed=1)
    r = ml.fit(X, 3, ml.EM(tol=0.0, max_iter=12, record_params=True), key=2)
    assert len(r.trace) == r.n_iter + 1 == 13
    assert r.params_trace.means.shape == (13, 3, 2)
    for t in (0, 5, 12):
        p_t = r.params_trace[t]
        np.testing.assert_allclose(r.trace[t], ml.log_likelihood(X, p_t), rtol=1e-10)
    np.testing.assert_allclose(r.trace[-1], r.log_likelihood, rtol=1e-12)
    np.testing.assert_array_equal(r.params_trace.means[-1], r.params.means)


def _random_problem(seed, covariance_type):
    rng = np.random.default_rng(seed)
    K = 3
    centers = rng.normal(0, rng.uniform(0.5, 4.0), (K, 2))
    labels = rng.integers(0, K, 90)
    X = centers[labels] + rng.normal(size=(90, 2)) * rng.uniform(0.2, 2.0, (K, 2))[labels]
    return X


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), covariance_type=st.sampled_from(COVARIANCE_TYPES))
def test_trace_never_decreases(seed, covariance_type):
    """Exact EM (reg_covar=0) on random data from random starting responsibilities.

    Shapes are fixed so the compiled programs are reused across examples.
    """
    X = _random_problem(seed, covariance_type)
    try:
        r = ml.fit(
            X,
            3,
            ml.EM(tol=0.0, max_iter=40, init="random", reg_covar=0.0),
            covariance=covariance_type,
            key=seed,
        )
    except FitError:  # a component may collapse on a random problem: an error, never NaN
        return
    steps = np.diff(r.trace)
    assert np.all(np.isfinite(r.trace))
    assert np.all(steps >= -1e-9 * np.abs(r.trace[1:]))


def test_auto_formulation_is_expanded_only_where_its_rounding_is_harmless():
    family = ml.families.Gaussian()
    X = blobs(100, 2, 2)
    Xc = X - X.mean(0)

    def choose_formulation(requested, Xc, reg):
        summary, _ = em_data.summarize(Xc, None, family)  # the data the driver sees
        return family.choose_formulation(requested, summary, reg)

    assert choose_formulation("auto", Xc, 1e-6) == "expanded"
    assert choose_formulation("auto", Xc, 0.0) == "centred"  # exact EM stays exact
    assert choose_formulation("auto", Xc.astype(np.float32), 1e-6) == "centred"
    assert choose_formulation("auto", Xc * 1e4, 1e-6) == "centred"
    assert choose_formulation("expanded", Xc, 0.0) == "expanded"


def test_reg_covar_dip_is_second_order():
    """With reg_covar > 0 a dip is possible but bounded by the documented second-order term."""
    X = _random_problem(133932, "diag")
    lam = 1e-4
    r = ml.fit(
        X,
        3,
        ml.EM(tol=0.0, max_iter=40, init="random", reg_covar=lam, record_params=True),
        covariance="diag",
        key=133932,
    )
    for t in range(1, r.n_iter + 1):
        var = r.params_trace.covariances[t] - lam  # the unregularised maximiser
        nk = r.params_trace.weights[t] * len(X)
        bound = lam**2 / 4 * np.sum(nk * np.sum(var**-2.0, axis=1))
        assert r.trace[t] - r.trace[t - 1] >= -bound - 1e-9 * abs(r.trace[t])


def test_tol_zero_runs_exactly_max_iter_without_warning():
    X = blobs(200, 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = ml.fit(X, 2, ml.EM(tol=0.0, max_iter=17))
    assert r.n_iter == 17 and not r.converged


def test_converged_comes_from_the_stopping_rule():
    X = blobs(200, 2, 2)
    with pytest.warns(ConvergenceWarning, match="did not converge within max_iter=2"):
        r = ml.fit(X, 2, ml.EM(tol=1e-12, max_iter=2))
    assert not r.converged and r.n_iter == 2
    r = ml.fit(X, 2, ml.EM(tol=1e-3, max_iter=500))
    assert r.converged and r.n_iter < 500
    change = (r.trace[-2] - r.trace[-3]) / len(X)  # the rule compares the last two E-steps
    assert abs(change) < 1e-3


def test_restarts_are_batched_and_best_wins():
    X = ml.datasets.four_clusters(seed=1, n_samples=1500).X
    r = ml.fit(X, 4, ml.EM(n_init=12, init="random"), key=3)
    restarts = r.restarts
    assert len(restarts) == 12 and restarts.converged.dtype == bool
    assert r.log_likelihood == np.nanmax(restarts.log_likelihood)
    assert restarts.log_likelihood[restarts.best] == r.log_likelihood
    # restart i run alone from its key gives the same answer
    # restart 0 is the n_init=1 fit; restart i uses fold_in(key, i)
    key = jax.random.PRNGKey(3)
    expected = [key] + [jax.random.fold_in(key, i) for i in range(1, 12)]
    np.testing.assert_array_equal(restarts.keys, np.stack(expected))
    i = int(np.argmin(restarts.log_likelihood))
    single = ml.fit(X, 4, ml.EM(init="random"), key=restarts.keys[i])
    np.testing.assert_allclose(single.log_likelihood, restarts.log_likelihood[i], rtol=1e-10)
    assert single.n_iter == restarts.n_iter[i]


def test_same_key_same_result_bit_for_bit():
    X = blobs(500, 2, 3, seed=4)
    a = ml.fit(X, 3, ml.EM(n_init=3), key=7)
    b = ml.fit(X, 3, ml.EM(n_init=3), key=7)
    c = ml.fit(X, 3, ml.EM(n_init=3, init="random"), key=8)
    np.testing.assert_array_equal(a.params.means, b.params.means)
    np.testing.assert_array_equal(a.trace, b.trace)
    np.testing.assert_array_equal(a.restarts.log_likelihood, b.restarts.log_likelihood)
    assert not np.array_equal(a.trace, c.trace)


def test_caller_data_is_not_modified():
    X = blobs(200, 2, 2)
    before = X.copy()
    start = random_start(X, 2, "full", 0)
    start_before = {k: v.copy() for k, v in start.items()}
    ml.fit(X, 2, ml.EM(init=start))
    np.testing.assert_array_equal(X, before)
    for k in start:
        np.testing.assert_array_equal(start[k], start_before[k])


FOUR = ml.datasets.four_clusters(seed=0, n_samples=2000)
# The maximum likelihood for FOUR, reached by every init below (checked with 64 restarts).
FOUR_BEST_LL = -731.68


@pytest.mark.parametrize("init", ["kmeans++", "kmeans", "random_from_data", "random"])
def test_every_init_reaches_the_maximum_likelihood(init):
    r = ml.fit(FOUR.X, 4, ml.EM(init=init, n_init=8, tol=1e-6, max_iter=1000), key=0)
    assert r.converged
    assert abs(r.log_likelihood - FOUR_BEST_LL) < 0.01
    truth = FOUR.truth
    order = [int(np.argmin(np.linalg.norm(r.params.means - m, axis=1))) for m in truth.means]
    assert sorted(order) == [0, 1, 2, 3]
    # Sampling error: the widest cluster has sd 0.26 and ~530 points, so a mean's
    # standard error is 0.011 and a weight's 0.009; allow about 4.5 of them.
    np.testing.assert_allclose(r.params.means[order], truth.means, atol=0.05)
    np.testing.assert_allclose(r.params.weights[order], truth.weights, atol=0.04)


def test_hard_em_with_fixed_equal_spherical_covariances_is_kmeans():
    data = ml.datasets.two_gaussians_2d()
    X = data.X
    centers0 = X[[3, 700]]
    start = {"weights": [0.5, 0.5], "means": centers0, "covariances": [1.0, 1.0]}
    r = ml.fit(
        X,
        2,
        ml.EM(
            init=start, assignment="hard", fixed=("weights", "covariances"), tol=0.0, max_iter=50
        ),
        covariance="spherical",
    )
    km = KMeans(2, init=centers0, n_init=1, tol=0.0, max_iter=50, algorithm="lloyd").fit(X)
    np.testing.assert_allclose(r.params.means, km.cluster_centers_, rtol=1e-10)
    np.testing.assert_array_equal(r.predict(X), km.labels_)
    # hard EM's objective, the classification log-likelihood, never decreases
    assert np.all(np.diff(r.trace) >= -1e-9 * np.abs(r.trace[1:]))


def test_hard_em_free_parameters_is_classification_em():
    X = blobs(300, 2, 3, seed=9)
    r = ml.fit(X, 3, ml.EM(assignment="hard", tol=0.0, max_iter=30), key=1)
    labels = r.predict(X)
    # at a fixed point of CEM the parameters are the per-cluster ML estimates
    for k in range(3):
        sel = X[labels == k]
        np.testing.assert_allclose(r.params.means[k], sel.mean(0), atol=1e-6)
    assert np.all(np.diff(r.trace) >= -1e-9 * np.abs(r.trace[1:]))


def test_chunked_run_equals_single_chunk():
    X = blobs(1000, 3, 3, seed=2)
    # (the expanded formulation's one pass against chunks: test_device_path.py)
    for formulation in ("centred",):
        one = ml.fit(X, 3, ml.EM(tol=0, max_iter=15, formulation=formulation), key=1)
        many = ml.fit(
            X, 3, ml.EM(tol=0, max_iter=15, formulation=formulation, chunk_size=96), key=1
        )
        np.testing.assert_allclose(many.params.means, one.params.means, rtol=1e-10)
        np.testing.assert_allclose(many.trace, one.trace, rtol=1e-12)


def test_float32_fit_matches_float64():
    X = blobs(500, 2, 3, seed=3)
    start = random_start(X, 3, "full", 1)
    r64 = ml.fit(X, 3, ml.EM(init=start, tol=0, max_iter=30))
    r32 = ml.fit(X.astype(np.float32), 3, ml.EM(init=start, tol=0, max_iter=30))
    assert r32.params.means.dtype == np.float32
    np.testing.assert_allclose(r32.params.means, r64.params.means, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(r32.log_likelihood, r64.log_likelihood, rtol=1e-5)


def test_fixed_means_stay_put():
    X = blobs(300, 2, 2, seed=1)
    start = random_start(X, 2, "full", 2)
    r = ml.fit(X, 2, ml.EM(init=start, fixed=("means",)))
    # exact up to the rounding of centring the data and shifting back
    np.testing.assert_allclose(r.params.means, start["means"], rtol=1e-14, atol=1e-15)
    free = ml.fit(X, 2, ml.EM(init=start))
    assert np.max(np.abs(free.params.means - start["means"])) > 1e-3


def test_collapsed_component_is_an_error_not_nan():
    X = np.r_[np.zeros((20, 2)), np.ones((20, 2))]  # two points repeated
    start = {
        "weights": [0.5, 0.5],
        "means": [[0.0, 0.0], [1.0, 1.0]],
        "covariances": np.tile(np.eye(2), (2, 1, 1)),
    }
    with pytest.raises(FitError, match=r"component \d collapsed at iteration \d+.*reg_covar"):
        ml.fit(X, 2, ml.EM(init=start, reg_covar=0.0, formulation="centred"))


def test_fit_result_sample_and_summary():
    r = ml.fit(blobs(300, 2, 2, seed=5), 2, key=0)
    Xs, labels = r.sample(1, 400)
    assert Xs.shape == (400, 2) and set(np.unique(labels)) <= {0, 1}
    text = r.summary()
    assert "log-likelihood" in text and "component 1" in text
