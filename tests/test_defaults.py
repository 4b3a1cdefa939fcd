"""Defaults that finish wherever scikit-learn does, and restarts that never make it worse.

Starts are never degenerate, a collapsing component is restarted (``on_collapse``
defaults to ``"reinit"``), restart 0 is the ``n_init=1`` fit, and a large
``reg_covar`` warns only when it ruins the fit.  The full study behind the default
is ``benchmarks/defaults_study.py``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers import COVARIANCE_TYPES

import mixlab as ml
from mixlab.errors import ConvergenceWarning, FitError


# The default EM finishes wherever scikit-learn does (issue 9).
def _sklearn_random_data(seed: int, covariance_type: str) -> np.ndarray:
    """scikit-learn's own test problem: ``RandomData(RandomState(seed), 50, scale=1)``."""
    from sklearn.mixture.tests.test_gaussian_mixture import RandomData

    return RandomData(np.random.RandomState(seed), n_samples=50, scale=1).X[covariance_type]


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_default_fit_never_raises_on_sklearn_test_problems(covariance_type):
    """15 data sets x 20 keys: a finite fit every time, with every initialisation for
    the full type and with the default kmeans++ for the others (the whole sweep, every
    type x every initialisation, is benchmarks/defaults_study.py).

    Before the new defaults, 8 of 300 kmeans++ fits of the full type raised here
    (a seed on an isolated point left a one-point component).
    """
    for init in ml.em.INIT_METHODS if covariance_type == "full" else ("kmeans++",):
        for seed in range(15):
            X = _sklearn_random_data(seed, covariance_type)
            for key in range(20):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    r = ml.fit(X, 2, ml.EM(init=init), covariance=covariance_type, key=key)
                p = r.params
                finite = [
                    np.isfinite(getattr(p, f)).all() for f in ("weights", "means", "covariances")
                ]
                assert all(finite) and np.isfinite(r.log_likelihood), (init, seed, key)


def test_kmeans_plus_plus_on_an_isolated_point_no_longer_fails():
    """The issue's case: seed 14 put a centre on an isolated point and the one-point
    component raised at iteration 1.  Now it starts with D + 1 points and never collapses,
    so even on_collapse="raise" fits."""
    X = _sklearn_random_data(14, "full")
    # k-means++ in the data's units: the case was found there (standardised starts draw
    # other seeds on these data)
    r = ml.fit(X, 2, ml.EM(on_collapse="raise", standardize=False), key=14)
    assert r.converged and not r.diagnostics["collapses"]
    # the start already holds at least D + 1 = 3 points in each component (weights N_k / N)
    em = ml.EM(max_iter=1, tol=0.0, record_params=True, standardize=False)
    r0 = ml.fit(X, 2, em, key=14)
    assert r0.params_trace.weights[0].min() * len(X) >= 3 - 1e-9


@pytest.mark.parametrize("init", ml.em.INIT_METHODS)
@pytest.mark.parametrize(
    "covariance_type",
    # diag and spherical starts are the full ones' diagonals: benchmarks (pytest -m benchmark)
    [
        "full",
        "tied",
        *(pytest.param(c, marks=pytest.mark.benchmark) for c in ("diag", "spherical")),
    ],
)
def test_starts_are_never_degenerate(init, covariance_type):
    """Duplicated rows and an isolated point: no start has a covariance that is singular
    above reg_covar (the smallest eigenvalue of Sigma_k - reg_covar I stays above
    1e-10 of the data's variance; the old starts put a one-point component, 0 there, on
    the isolated row), for 25 keys."""
    rng = np.random.default_rng(5)
    base = np.r_[rng.normal(0, 1, (12, 3)), rng.normal(5, 1, (12, 3))]
    X = np.r_[base, base[:6], base[:6], [[40.0, -40.0, 40.0]]]
    var = X.var(axis=0).min()
    for key in range(25):
        r = ml.fit(
            X,
            4,
            ml.EM(init=init, max_iter=1, tol=0.0, record_params=True),
            covariance=covariance_type,
            key=key,
        )
        p = r.params_trace
        start = ml.MixtureParams(p.weights[0], p.means[0], p.covariances[0], covariance_type)
        smallest = np.linalg.eigvalsh(start.full_covariances() - 1e-6 * np.eye(3))[:, 0]
        assert smallest.min() > 1e-10 * var, (key, smallest)


def test_thin_components_take_their_nearest_rows():
    """Against a plain NumPy statement of the rule: every component ends with at least
    min_points rows, and seeds keep their own rows."""
    import jax.numpy as jnp

    from mixlab.em.init import give_thin_components_points

    rng = np.random.default_rng(0)
    for trial in range(20):
        n, K, m = 40, 4, int(rng.integers(2, 6))
        Xf = rng.normal(size=(n, 2))
        Xf[0] = [30.0, 30.0]  # an isolated seed
        seeds = np.r_[0, rng.choice(np.arange(1, n), K - 1, replace=False)]
        labels = np.argmin(((Xf[:, None] - Xf[seeds][None]) ** 2).sum(-1), axis=1)
        labels[seeds] = np.arange(K)
        out = np.asarray(
            give_thin_components_points(
                jnp.asarray(Xf),
                jnp.ones(n),
                jnp.asarray(labels),
                jnp.asarray(Xf[seeds]),
                jnp.asarray(seeds),
                m,
            )
        )
        np.testing.assert_array_equal(out[seeds], np.arange(K))
        assert np.bincount(out, minlength=K).min() >= m, trial
        # component 0 (isolated) took exactly its m nearest non-seed rows (and itself)
        d2 = ((Xf - Xf[0]) ** 2).sum(-1)
        d2[seeds[1:]] = np.inf
        np.testing.assert_array_equal(
            np.sort(np.flatnonzero(out == 0)), np.sort(np.argsort(d2)[:m])
        )


def _transient_dip_problem():
    """8 clusters with random linear maps in 4-D, started from 8 random rows with identity
    covariances: one component falls to 0.93 points' worth at iteration 8 and recovers to
    3.5 by iteration 11 (the issue's 100k x 16 x 16 case, scaled down)."""
    rng = np.random.default_rng(144)
    K, D, n = 8, 4, 2000
    centers = rng.normal(0, 4, (K, D))
    maps = rng.normal(0, 1, (K, D, D)) / np.sqrt(D)
    labels = rng.integers(0, K, n)
    X = centers[labels] + np.einsum("nij,nj->ni", maps[labels], rng.normal(size=(n, D)))
    pick = np.random.default_rng(1144).choice(n, K, replace=False)
    start = {
        "weights": np.full(K, 1 / K),
        "means": X[pick],
        "covariances": np.tile(np.eye(D), (K, 1, 1)),
    }
    return X, start


def test_a_transient_dip_is_not_an_error_by_default():
    X, start = _transient_dip_problem()
    ignore = ml.fit(X, 8, ml.EM(init=start, on_collapse="ignore", max_iter=300, record_params=True))
    nk = ignore.params_trace.weights * len(X)
    assert nk.min() < 1.0 and nk[-1].min() > 2.0  # the dip, and the recovery
    with pytest.raises(
        FitError,
        match=r"component \d collapsed at iteration \d+: it holds less than one data point's "
        r"worth of responsibility; increase reg_covar, use fewer components, or rescale the "
        r"data, or pass EM\(on_collapse='reinit'\)",
    ):
        ml.fit(X, 8, ml.EM(init=start, on_collapse="raise", max_iter=300))
    r = ml.fit(X, 8, ml.EM(init=start, max_iter=300))
    assert r.converged and np.isfinite(r.log_likelihood)
    assert all(np.isfinite(getattr(r.params, f)).all() for f in ("weights", "means", "covariances"))
    assert r.diagnostics["reinitialisations"]  # the default restarted the dipping component
    assert r.diagnostics["collapses"][0][2] == "weight"
    # and found a better optimum than carrying on (-5.15 against -6.71 per point)
    assert r.log_likelihood > ignore.log_likelihood + 0.5 * len(X)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_two_distinct_points_ten_components(covariance_type):
    """scikit-learn's test_regularisation: 10 components on 2 distinct points fit with
    reg_covar=1e-6 (the regulariser keeps every covariance positive definite)."""
    X = np.vstack((np.ones((5, 5)), np.zeros((5, 5))))
    with pytest.raises(FitError, match=r"component \d collapsed at iteration 1: it"):
        ml.fit(X, 10, ml.EM(on_collapse="raise"), covariance=covariance_type)
    r = ml.fit(X, 10, covariance=covariance_type)
    assert np.isfinite(r.log_likelihood) and r.converged
    # every component with weight sits on one of the two points
    held = r.params.means[r.params.weights > 1e-3]
    np.testing.assert_allclose(np.sort(np.unique(np.round(held, 6))), [0.0, 1.0])
    sk_like = ml.fit(X, 10, ml.EM(on_collapse="ignore"), covariance=covariance_type)
    assert r.log_likelihood >= sk_like.log_likelihood - 1e-6 * abs(sk_like.log_likelihood)
    # the futile restarts stop: at most one per component
    assert len(r.diagnostics["reinitialisations"]) <= 10


def test_sklearn_deliberately_bad_start_returns_an_unconverged_fit():
    """scikit-learn's test_gaussian_mixture_setting_best_params: reg_covar=0, one
    iteration from a start with two near-empty spikes.  scikit-learn returns an
    unconverged fit; so does mixlab, and with more iterations the default's restarts
    reach the genuine optimum where scikit-learn's behaviour keeps the spikes."""
    rnd = np.random.RandomState(0)
    X = rnd.uniform(size=(30, 3))
    start = {
        "weights": [1 / 30, 1 / 30, 2 / 30, 2 / 30, 0.7, 0.1],
        "means": [
            [0.6706, 0.2104, 0.1289],
            [0.0939, 0.5759, 0.9293],
            [0.5033, 0.9570, 0.0865],
            [0.1858, 0.5531, 0.1939],
            [0.4549, 0.3518, 0.5681],
            [0.6093, 0.7929, 0.9620],
        ],
        "covariances": 1 / np.array([1e6, 1e6, 553.76, 204.79, 15.87, 85.46]),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        r = ml.fit(X, 6, ml.EM(init=start, reg_covar=0, max_iter=1), covariance="spherical")
    assert not r.converged and r.n_iter == 1 and np.isfinite(r.log_likelihood)
    assert np.all(r.params.covariances > 0)
    with pytest.raises(FitError, match="component 0 collapsed at iteration 1"):
        ml.fit(X, 6, ml.EM(init=start, reg_covar=0, on_collapse="raise"), covariance="spherical")


@pytest.mark.parametrize("init", ["kmeans++"])
def test_more_restarts_never_end_worse(init):
    """Restart 0 is the n_init=1 fit and the restarts of n_init=a are the first a of
    n_init=b, so the best log-likelihood can only grow with n_init (many keys)."""
    X = _sklearn_random_data(3, "full")
    for key in range(12):
        lls = [ml.fit(X, 3, ml.EM(n_init=n, init=init), key=key).log_likelihood for n in (1, 4, 10)]
        # equal starts give equal fits up to rounding (batches of 1, 4, 10 restarts
        # compile to different kernels; the stopping iteration can shift by one): 1e-9
        slack = 1e-9 * abs(lls[0])
        assert lls[0] <= lls[1] + slack and lls[1] <= lls[2] + slack, (key, lls)
    r10 = ml.fit(X, 3, ml.EM(n_init=10, init=init), key=7)
    for i in (0, 5):  # any restart's key reproduces it alone
        alone = ml.fit(X, 3, ml.EM(init=init), key=r10.restarts.keys[i])
        assert alone.log_likelihood == pytest.approx(r10.restarts.log_likelihood[i], rel=1e-12)


def test_a_deliberate_large_reg_covar_is_silent_but_recorded():
    """scikit-learn's test_gaussian_mixture_attributes: reg_covar=0.1 on uniform data
    (column variances 0.06-0.08) fits silently, even with warnings as errors."""
    X = np.random.RandomState(0).rand(10, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = ml.fit(X, 2, ml.EM(reg_covar=0.1, n_init=3, init="random", tol=1e-4, max_iter=30))
    assert r.diagnostics["reg_covar_dominates"] == [0, 1]
    assert ml.fit(X, 2).diagnostics["reg_covar_dominates"] == []
