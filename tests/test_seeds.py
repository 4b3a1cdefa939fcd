"""The seed studies' settings, redone with mixlab and checked against references."""

from __future__ import annotations

import numpy as np
from helpers import rel_err, sklearn_from_start
from scipy.stats import norm

import mixlab as ml

# Seed 000 printed these after its 100th iteration (k=99).
SEED000_PRINTED_K99 = {
    "mus": [-0.01561799, 1.8740544],
    "sigmas": [1.09142269, 0.9042894],
    "priors": [0.43, 0.57],
}
SEED000_START = {"weights": [0.5, 0.5], "means": [0.0, 1.0], "covariances": [4.0, 4.0]}


def study000_flawed_em(x, n_iter):
    """Seed 000's update as written: hard-count weights, variances about the old means."""
    mus, sigmas, priors = np.array([0.0, 1.0]), np.array([2.0, 2.0]), np.array([0.5, 0.5])
    for _ in range(n_iter):
        w = priors[:, None] * norm.pdf(x[None, :], mus[:, None], sigmas[:, None])
        w /= w.sum(axis=0)
        new_mus = (w @ x) / w.sum(axis=1)
        sigmas = np.sqrt((w * (x[None, :] - mus[:, None]) ** 2).sum(axis=1) / w.sum(axis=1))
        mus = new_mus
        dens = norm.pdf(x[:, None], mus[None, :], sigmas[None, :])
        priors = np.bincount(dens.argmax(axis=1), minlength=2) / len(x)
    return mus, sigmas, priors


def test_seed000_data_are_the_studys_exact_draws():
    x = ml.datasets.cs229().X[:, 0]
    mus, sigmas, priors = study000_flawed_em(x, 100)
    np.testing.assert_allclose(mus, SEED000_PRINTED_K99["mus"], atol=1e-8)
    np.testing.assert_allclose(sigmas, SEED000_PRINTED_K99["sigmas"], atol=1e-8)
    np.testing.assert_allclose(priors, SEED000_PRINTED_K99["priors"], atol=1e-12)


def test_generators_neither_read_nor_change_the_global_numpy_state():
    # This test is about the legacy global state, so it uses it on purpose.
    legacy = np.random
    legacy.seed(123)
    before = legacy.get_state()[1].copy()
    generators = [
        ml.datasets.cs229,
        ml.datasets.four_clusters,
        ml.datasets.breuel,
        ml.datasets.three_d,
        ml.datasets.two_gaussians_2d,
    ]
    first = [g(seed=0).X for g in generators]
    np.testing.assert_array_equal(legacy.get_state()[1], before)
    legacy.seed(999)  # a different global state gives the same data
    for g, X in zip(generators, first, strict=True):
        np.testing.assert_array_equal(g(seed=0).X, X)
    # the seed-000 draws are the global generator's after np.random.seed(0)
    legacy.seed(0)
    expected = np.r_[legacy.normal(0, 1, 50), legacy.normal(2, 1, 50)]
    np.testing.assert_array_equal(first[0][:, 0], expected)


def test_seed000_correct_em_from_the_studys_start_matches_sklearn():
    X = ml.datasets.cs229().X
    r = ml.fit(
        X,
        2,
        ml.EM(init=SEED000_START, tol=0.0, max_iter=100, record_params=True),
        covariance="spherical",
    )
    gm = sklearn_from_start(
        X,
        {
            k: np.asarray(v, float).reshape(2, -1) if k == "means" else np.asarray(v, float)
            for k, v in SEED000_START.items()
        },
        "spherical",
        tol=0.0,
        max_iter=100,
    )
    assert rel_err(r.params.means, gm.means_) < 1e-6
    assert rel_err(r.params.covariances, gm.covariances_) < 1e-6
    assert rel_err(r.params.weights, gm.weights_) < 1e-6
    assert r.params_trace.means.shape == (101, 2, 1)  # the start and all 100 iterates
    assert np.all(np.diff(r.trace) >= -1e-9 * np.abs(r.trace[1:]))


def test_seed000_studys_answer_is_not_a_fixed_point_of_em():
    """The study's two mistakes change the answer, not just the path."""
    X = ml.datasets.cs229().X
    flawed = ml.MixtureParams(
        SEED000_PRINTED_K99["priors"],
        SEED000_PRINTED_K99["mus"],
        np.square(SEED000_PRINTED_K99["sigmas"]),
        "spherical",
    )
    # One exact EM step from the study's answer raises the likelihood: not stationary.
    step = ml.m_step(X, np.exp(ml.e_step(X, flawed).log_resp), covariance_type="spherical")
    assert ml.log_likelihood(X, step) > ml.log_likelihood(X, flawed) + 1e-5
    # Converged EM from the study's start ends far from it: weight 0.527, not 0.43.
    r = ml.fit(X, 2, ml.EM(init=SEED000_START, tol=1e-10, max_iter=5000), covariance="spherical")
    assert r.converged
    np.testing.assert_allclose(r.params.weights, [0.527, 0.473], atol=0.005)
    np.testing.assert_allclose(r.params.means[:, 0], [0.222, 1.995], atol=0.005)
    assert r.log_likelihood > ml.log_likelihood(X, flawed)


def test_seed002_estimates_are_within_sampling_error_of_the_truth():
    data = ml.datasets.breuel(seed=0)
    start = {"weights": [0.5, 0.5], "means": [0.0, 1.0], "covariances": [1.0, 1.0]}
    r = ml.fit(data.X, 2, ml.EM(init=start, tol=0.0, max_iter=100), covariance="spherical")
    # n = 10000 (3000 + 7000).  Standard errors: weight 0.005, means 0.02 and 0.03,
    # variances 0.03 and 0.07 (inflated a little by the overlap); about 5 of them here.
    np.testing.assert_allclose(r.params.weights, [0.3, 0.7], atol=0.025)
    np.testing.assert_allclose(r.params.means[:, 0], [0.0, 5.0], atol=0.12)
    np.testing.assert_allclose(r.params.covariances[0], 1.0, atol=0.15)
    np.testing.assert_allclose(r.params.covariances[1], 4.0, atol=0.35)


def test_seed004_sklearn_agreement_at_iterations_1_5_10_15():
    X = ml.datasets.two_gaussians_2d().X
    rng = np.random.default_rng(0)
    start = {
        "weights": [0.5, 0.5],
        "means": X[rng.choice(len(X), 2, replace=False)],
        "covariances": np.tile(np.cov(X.T), (2, 1, 1)),
    }
    r = ml.fit(X, 2, ml.EM(init=start, tol=0.0, max_iter=15, record_params=True))
    for n in (1, 5, 10, 15):
        gm = sklearn_from_start(X, start, "full", tol=0.0, max_iter=n)
        assert rel_err(r.params_trace.means[n], gm.means_) < 1e-6
        assert rel_err(r.params_trace.covariances[n], gm.covariances_) < 1e-6
