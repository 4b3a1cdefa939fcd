"""Poisson mixtures: log-densities against scipy, EM against a NumPy reference, recovery."""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln, logsumexp
from scipy.stats import poisson

import mixlab as ml

#: The guard mixlab adds to every component count (scikit-learn's ``10 * eps``).
GUARD = 10 * np.finfo(np.float64).eps

# One data shape for the reference checks, so the EM program compiles once.
N, D, K = 240, 3, 3
T = 15


def _counts(seed: int) -> np.ndarray:
    """Counts from three overlapping Poisson components (so EM takes many steps)."""
    rng = np.random.default_rng(seed)
    rates = np.array([[0.5, 4.0, 2.0], [3.0, 1.0, 6.0], [8.0, 5.0, 0.7]])
    labels = rng.choice(K, N, p=[0.3, 0.45, 0.25])
    return rng.poisson(rates[labels]).astype(np.float64)


def _start(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"weights": rng.dirichlet(np.full(K, 3.0)), "rates": rng.uniform(0.5, 6.0, (K, D))}


def _params(start: dict) -> ml.MixtureParams:
    return ml.MixtureParams(start["weights"], family="poisson", rates=start["rates"])


def _np_log_prob(X: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Component log-pmfs written out: ``x log lambda - lambda - log x!`` summed over features."""
    return X @ np.log(rates).T - rates.sum(axis=1) - gammaln(X + 1.0).sum(axis=1)[:, None]


def _np_em(X: np.ndarray, weights: np.ndarray, rates: np.ndarray, n_iter: int):
    """Plain EM: log-sum-exp E-step, closed-form M-step with mixlab's count guard.

    Returns the parameters after each iteration (0 = start) and their log-likelihoods.
    """
    ws, rs, lls = [weights], [rates], []
    for _ in range(n_iter + 1):
        log_joint = _np_log_prob(X, rates) + np.log(weights)
        log_norm = logsumexp(log_joint, axis=1)
        lls.append(log_norm.sum())
        if len(lls) == n_iter + 1:
            break
        resp = np.exp(log_joint - log_norm[:, None])
        nk = resp.sum(axis=0) + GUARD
        weights = nk / nk.sum()
        rates = resp.T @ X / nk[:, None]
        ws.append(weights)
        rs.append(rates)
    return np.array(ws), np.array(rs), np.array(lls)


def test_log_prob_matches_scipy():
    X = _counts(0)
    rates = np.random.default_rng(1).uniform(0.05, 9.0, (K, D))
    params = _params({"weights": np.full(K, 1 / K), "rates": rates})
    got = ml.log_prob_components(X, params)
    want = np.stack([poisson.logpmf(X, rates[k]).sum(axis=1) for k in range(K)], axis=1)
    assert got.shape == (N, K)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=0)


def test_rate_of_exactly_zero():
    """A zero rate gives rows with zero counts there their exact probability, never NaN."""
    X = np.array([[0, 3, 1], [0, 0, 0], [0, 7, 2], [2, 1, 0], [5, 0, 4]], dtype=np.float64)
    rates = np.array([[0.0, 2.5, 1.5], [1.2, 0.0, 0.0]])
    params = ml.MixtureParams([0.4, 0.6], family="poisson", rates=rates)
    got = ml.log_prob_components(X, params)
    assert np.all(np.isfinite(got))
    with np.errstate(divide="ignore"):
        want = np.stack([poisson.logpmf(X, rates[k]).sum(axis=1) for k in range(2)], axis=1)
    agree = np.isfinite(want)
    assert agree.sum() == 4 and (~agree).sum() == 6  # both cases are exercised
    np.testing.assert_allclose(got[agree], want[agree], rtol=1e-10, atol=0)
    np.testing.assert_array_equal(got[1], [-4.0, -1.2])  # an all-zero row: exactly -sum(rates)
    # a count where the rate is zero: about log(tiny) = -708 per unit count, finite
    assert np.all(got[~agree] < -700)
    log_resp, log_norm = ml.e_step(X, params)
    assert np.all(np.isfinite(log_resp)) and np.all(np.isfinite(log_norm))
    np.testing.assert_allclose(np.exp(log_resp).sum(axis=1), 1.0, rtol=1e-12)


def test_em_equals_numpy_em_every_iteration():
    X = _counts(2)
    for seed in (3, 4):
        start = _start(seed)
        r = ml.fit(
            X,
            K,
            method=ml.EM(init=start, tol=0.0, max_iter=T, record_params=True),
            family="poisson",
            key=0,
        )
        ws, rs, lls = _np_em(X, start["weights"], start["rates"], T)
        assert r.n_iter == T and len(r.trace) == T + 1
        assert r.params_trace.rates.shape == (T + 1, K, D)
        # the start is not a fixed point: the iterates move appreciably
        assert np.max(np.abs(rs[-1] - rs[0])) > 0.5 and lls[-1] - lls[0] > 10.0
        for t in range(T + 1):
            p_t = r.params_trace[t]
            np.testing.assert_allclose(p_t.rates, rs[t], rtol=1e-10, atol=0, err_msg=f"t={t}")
            np.testing.assert_allclose(p_t.weights, ws[t], rtol=1e-10, atol=0, err_msg=f"t={t}")
        np.testing.assert_allclose(r.trace, lls, rtol=1e-10, atol=0)
        np.testing.assert_allclose(r.params.rates, rs[-1], rtol=1e-10, atol=0)


def test_elbo_identity_for_random_q():
    X = _counts(5)
    params = _params(_start(6))
    rng = np.random.default_rng(7)
    q = rng.dirichlet(np.full(K, 0.7), size=N)
    elbo, kl, ll = ml.elbo(X, params, q)
    log_joint = _np_log_prob(X, params.rates) + np.log(params.weights)
    log_norm = logsumexp(log_joint, axis=1)
    want_elbo = np.sum(q * (log_joint - np.log(q)))
    want_kl = np.sum(q * (np.log(q) - (log_joint - log_norm[:, None])))
    np.testing.assert_allclose(ll, log_norm.sum(), rtol=1e-10)
    np.testing.assert_allclose(elbo + kl, ll, rtol=1e-10)
    np.testing.assert_allclose(elbo, want_elbo, rtol=1e-10)
    np.testing.assert_allclose(kl, want_kl, rtol=1e-10)
    assert kl > 1.0  # a random q is far from the posterior
    # at the posterior the gap closes
    post = np.exp(ml.e_step(X, params).log_resp)
    elbo_post, kl_post, ll_post = ml.elbo(X, params, post)
    assert abs(kl_post) < 1e-9 * abs(ll_post)
    np.testing.assert_allclose(elbo_post, ll_post, rtol=1e-10)


def test_fit_recovers_known_rates():
    true_w = np.array([0.3, 0.45, 0.25])
    true_rates = np.array([[1.0, 12.0, 4.0, 0.5], [9.0, 2.0, 15.0, 3.0], [20.0, 7.0, 1.0, 10.0]])
    rng = np.random.default_rng(8)
    n = 3000
    labels = rng.choice(3, n, p=true_w)
    X = rng.poisson(true_rates[labels]).astype(np.float64)
    r = ml.fit(X, 3, method=ml.EM(n_init=3, tol=1e-8, max_iter=500), family="poisson", key=1)
    assert r.converged
    order = [int(np.argmin(np.abs(r.params.rates - lam).sum(axis=1))) for lam in true_rates]
    assert sorted(order) == [0, 1, 2]
    # The components barely overlap, so the estimates have about the sampling error of
    # the per-component means and proportions; allow four standard errors.
    n_k = true_w * n
    se_rates = np.sqrt(true_rates / n_k[:, None])
    se_w = np.sqrt(true_w * (1 - true_w) / n)
    assert np.all(np.abs(r.params.rates[order] - true_rates) < 4 * se_rates)
    assert np.all(np.abs(r.params.weights[order] - true_w) < 4 * se_w)
