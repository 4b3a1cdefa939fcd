"""Bernoulli mixtures: log-densities against scipy, EM against a NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import bernoulli

import mixlab as ml

#: The guard mixlab adds to every component count (scikit-learn's ``10 * eps``).
GUARD = 10 * np.finfo(np.float64).eps

# One data shape for the reference checks, so each EM program compiles once.
N, D, K = 300, 6, 3
T = 15


def _binary(seed: int) -> np.ndarray:
    """Binary rows from three overlapping latent classes."""
    rng = np.random.default_rng(seed)
    probs = np.array(
        [
            [0.9, 0.8, 0.2, 0.1, 0.7, 0.5],
            [0.2, 0.3, 0.8, 0.9, 0.6, 0.4],
            [0.6, 0.1, 0.5, 0.7, 0.1, 0.9],
        ]
    )
    labels = rng.choice(K, N, p=[0.4, 0.35, 0.25])
    return (rng.random((N, D)) < probs[labels]).astype(np.float64)


def _start(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"weights": rng.dirichlet(np.full(K, 3.0)), "probs": rng.uniform(0.15, 0.85, (K, D))}


def _params(start: dict) -> ml.MixtureParams:
    return ml.MixtureParams(start["weights"], family="bernoulli", probs=start["probs"])


def _np_log_prob(X: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``sum_d x_d log p_d + (1 - x_d) log(1 - p_d)`` for probabilities inside (0, 1)."""
    return X @ np.log(probs).T + (1.0 - X) @ np.log1p(-probs).T


def _np_em(X: np.ndarray, weights: np.ndarray, probs: np.ndarray, n_iter: int, a: float = 0.0):
    """Plain EM: log-sum-exp E-step, M-step ``(sum r x + a) / (N_k + 2a)`` with the guard.

    Returns the parameters after each iteration (0 = start) and their log-likelihoods.
    """
    ws, ps, lls = [weights], [probs], []
    for t in range(n_iter + 1):
        log_joint = _np_log_prob(X, probs) + np.log(weights)
        log_norm = logsumexp(log_joint, axis=1)
        lls.append(log_norm.sum())
        if t == n_iter:
            break
        resp = np.exp(log_joint - log_norm[:, None])
        nk = resp.sum(axis=0) + GUARD
        weights = nk / nk.sum()
        probs = (resp.T @ X + a) / (nk[:, None] + 2 * a)
        ws.append(weights)
        ps.append(probs)
    return np.array(ws), np.array(ps), np.array(lls)


def test_log_prob_matches_scipy():
    X = _binary(0)
    probs = np.random.default_rng(1).uniform(0.01, 0.99, (K, D))
    params = _params({"weights": np.full(K, 1 / K), "probs": probs})
    got = ml.log_prob_components(X, params)
    want = np.stack([bernoulli.logpmf(X, probs[k]).sum(axis=1) for k in range(K)], axis=1)
    assert got.shape == (N, K)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=0)


@pytest.mark.parametrize("pseudo_count", [0.0, 0.5])
def test_em_equals_numpy_em_every_iteration(pseudo_count):
    X = _binary(2)
    family = ml.families.Bernoulli(pseudo_count=pseudo_count)
    for seed in (3, 4):
        start = _start(seed)
        r = ml.fit(
            X,
            K,
            method=ml.EM(init=start, tol=0.0, max_iter=T, record_params=True),
            family=family,
            key=0,
        )
        ws, ps, lls = _np_em(X, start["weights"], start["probs"], T, pseudo_count)
        assert r.n_iter == T and len(r.trace) == T + 1
        assert r.params_trace.probs.shape == (T + 1, K, D)
        # the start is not a fixed point: the iterates move appreciably
        assert np.max(np.abs(ps[-1] - ps[0])) > 0.2 and lls[-1] - lls[0] > 10.0
        for t in range(T + 1):
            p_t = r.params_trace[t]
            np.testing.assert_allclose(p_t.probs, ps[t], rtol=1e-10, atol=0, err_msg=f"t={t}")
            np.testing.assert_allclose(p_t.weights, ws[t], rtol=1e-10, atol=0, err_msg=f"t={t}")
        np.testing.assert_allclose(r.trace, lls, rtol=1e-10, atol=0)
        np.testing.assert_allclose(r.params.probs, ps[-1], rtol=1e-10, atol=0)
        # plain EM never decreases the log-likelihood; with a > 0 it is MAP-EM, whose
        # objective includes the prior, so only the ML case is checked here
        if pseudo_count == 0.0:
            assert np.all(np.diff(r.trace) >= -1e-9 * np.abs(r.trace[1:]))


def test_pseudo_count_keeps_probabilities_inside_the_unit_interval():
    """A feature that is 0 in every row: ML gives p = 0, a pseudo-count a gives a / (N_k + 2a)."""
    X = _binary(9)
    X[:, 2] = 0.0
    start = _start(10)
    ml_fit = ml.fit(X, K, ml.EM(init=start, tol=0.0, max_iter=T), family="bernoulli")
    a = 0.5
    map_fit = ml.fit(
        X, K, ml.EM(init=start, tol=0.0, max_iter=T), family=ml.families.Bernoulli(pseudo_count=a)
    )
    np.testing.assert_array_equal(ml_fit.params.probs[:, 2], 0.0)
    nk = map_fit.params.weights * N  # weights = N_k / N up to the negligible guard
    np.testing.assert_allclose(map_fit.params.probs[:, 2], a / (nk + 2 * a), rtol=1e-10)


def test_probabilities_of_exactly_zero_and_one():
    """No NaN: the exact log-probability where the data agree, about -708 per contradiction."""
    probs = np.array([[0.0, 0.3, 1.0, 0.6], [1.0, 1.0, 0.25, 0.0]])
    X = np.array(
        [
            [0, 1, 1, 0],  # agrees with component 0
            [0, 0, 1, 1],  # agrees with component 0
            [1, 1, 0, 0],  # agrees with component 1
            [1, 1, 1, 0],  # agrees with component 1
            [1, 0, 0, 1],  # contradicts both
        ],
        dtype=np.float64,
    )
    params = ml.MixtureParams([0.5, 0.5], family="bernoulli", probs=probs)
    got = ml.log_prob_components(X, params)
    assert np.all(np.isfinite(got))
    with np.errstate(divide="ignore"):
        want = np.stack([bernoulli.logpmf(X, probs[k]).sum(axis=1) for k in range(2)], axis=1)
    agree = np.isfinite(want)
    np.testing.assert_array_equal(
        agree, [[True, False], [True, False], [False, True], [False, True], [False, False]]
    )
    # exact up to the rounding of adding and removing log(tiny) ~ -708 (ulp ~1e-13)
    np.testing.assert_allclose(got[agree], want[agree], rtol=1e-10, atol=1e-12)
    assert np.all(got[~agree] < -700)
    # rows that agree with a component belong to it with certainty
    log_resp, log_norm = ml.e_step(X, params)
    assert np.all(np.isfinite(log_resp)) and np.all(np.isfinite(log_norm))
    resp = np.exp(log_resp)
    np.testing.assert_allclose(resp[:4], [[1, 0], [1, 0], [0, 1], [0, 1]], atol=1e-300)
    np.testing.assert_allclose(resp.sum(axis=1), 1.0, rtol=1e-12)
    # EM from such a start stays finite and keeps the rows that agree where they are
    Xr = np.repeat(X[:4], 5, axis=0)
    r = ml.fit(
        Xr,
        2,
        ml.EM(init={"weights": [0.5, 0.5], "probs": probs}, tol=0.0, max_iter=5),
        family="bernoulli",
    )
    assert np.all(np.isfinite(r.trace)) and np.all(np.isfinite(r.params.probs))
    np.testing.assert_allclose(r.params.probs, [[0, 0.5, 1, 0.5], [1, 1, 0.5, 0]], atol=1e-12)
    # each row: log 1/2 for its weight, log 1/2 per uncertain feature (two in component 0,
    # one in component 1), ten rows per component
    np.testing.assert_allclose(r.trace[-1], 10 * 3 * np.log(0.5) + 10 * 2 * np.log(0.5), rtol=1e-12)


def test_elbo_identity_for_random_q():
    X = _binary(5)
    params = _params(_start(6))
    rng = np.random.default_rng(7)
    q = rng.dirichlet(np.full(K, 0.7), size=N)
    elbo, kl, ll = ml.elbo(X, params, q)
    log_joint = _np_log_prob(X, params.probs) + np.log(params.weights)
    log_norm = logsumexp(log_joint, axis=1)
    want_elbo = np.sum(q * (log_joint - np.log(q)))
    want_kl = np.sum(q * (np.log(q) - (log_joint - log_norm[:, None])))
    np.testing.assert_allclose(ll, log_norm.sum(), rtol=1e-10)
    np.testing.assert_allclose(elbo + kl, ll, rtol=1e-10)
    np.testing.assert_allclose(elbo, want_elbo, rtol=1e-10)
    np.testing.assert_allclose(kl, want_kl, rtol=1e-10)
    assert kl > 1.0  # a random q is far from the posterior
    post = np.exp(ml.e_step(X, params).log_resp)
    elbo_post, kl_post, ll_post = ml.elbo(X, params, post)
    assert abs(kl_post) < 1e-9 * abs(ll_post)
    np.testing.assert_allclose(elbo_post, ll_post, rtol=1e-10)
