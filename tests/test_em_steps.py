"""The EM building blocks used alone: e_step, m_step, elbo (seeds 003 and 004)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import COVARIANCE_TYPES, blobs, random_start, rel_err
from sklearn.mixture import GaussianMixture
from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters

import mixlab as ml


def _setup(covariance_type, seed=0, n=250, d=3, k=3):
    X = blobs(n, d, k, seed=seed)
    start = random_start(X, k, covariance_type, seed)
    return X, start, ml.MixtureParams(**start, covariance_type=covariance_type)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_e_step_matches_sklearn(covariance_type):
    X, start, params = _setup(covariance_type)
    gm = GaussianMixture(3, covariance_type=covariance_type)
    gm.weights_, gm.means_, gm.covariances_ = start["weights"], start["means"], start["covariances"]
    from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

    gm.precisions_cholesky_ = _compute_precision_cholesky(start["covariances"], covariance_type)
    want_norm, want_resp = gm._estimate_log_prob_resp(X)
    got = ml.e_step(X, params)
    np.testing.assert_allclose(got.log_prob_norm, want_norm, rtol=1e-10)
    np.testing.assert_allclose(got.log_resp, want_resp, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_m_step_matches_sklearn(covariance_type):
    X, _, params = _setup(covariance_type, seed=1)
    resp = np.exp(ml.e_step(X, params).log_resp)
    nk, means, covs = _estimate_gaussian_parameters(X, resp, 1e-6, covariance_type)
    got = ml.m_step(X, resp, covariance_type=covariance_type, reg_covar=1e-6)
    assert rel_err(got.weights, nk / nk.sum()) < 1e-12
    assert rel_err(got.means, means) < 1e-10
    assert rel_err(got.covariances, covs) < 1e-10


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_elbo_plus_kl_is_log_likelihood_for_any_q(covariance_type):
    X, _, params = _setup(covariance_type, seed=2)
    rng = np.random.default_rng(0)
    for q in (rng.dirichlet(np.ones(3), len(X)), np.eye(3)[rng.integers(0, 3, len(X))]):
        out = ml.elbo(X, params, q)
        assert abs((out.elbo + out.kl) - out.log_likelihood) <= 1e-10 * abs(out.log_likelihood)
        assert out.kl > 0
        assert out.elbo < out.log_likelihood
    ll = ml.log_likelihood(X, params)
    np.testing.assert_allclose(out.log_likelihood, ll, rtol=1e-14)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_kl_vanishes_after_e_step_and_elbo_rises_after_m_step(covariance_type):
    X, _, params = _setup(covariance_type, seed=3)
    q = np.exp(ml.e_step(X, params).log_resp)
    after_e = ml.elbo(X, params, q)
    assert abs(after_e.kl) <= 1e-9 * abs(after_e.log_likelihood)
    np.testing.assert_allclose(after_e.elbo, after_e.log_likelihood, rtol=1e-12)
    new = ml.m_step(X, q, covariance_type=covariance_type)
    after_m = ml.elbo(X, new, q)
    assert after_m.elbo >= after_e.elbo - 1e-9 * abs(after_e.elbo)  # M-step maximises L
    assert after_m.log_likelihood >= after_e.log_likelihood  # hence the likelihood rises
    assert after_m.kl >= -1e-9


def test_steps_return_float64_numpy_without_global_x64():
    assert not jax.config.jax_enable_x64
    X, _, params = _setup("full")
    out = ml.e_step(X, params)
    assert isinstance(out.log_resp, np.ndarray) and out.log_resp.dtype == np.float64


def test_steps_compose_inside_the_callers_jit():
    X, _, params = _setup("diag")
    p32 = params.astype(np.float32)

    @jax.jit
    def one_iteration(X, p):
        resp = jnp.exp(ml.e_step(X, p).log_resp)
        return ml.m_step(X, resp, covariance_type="diag")

    new = one_iteration(jnp.asarray(X, jnp.float32), p32)
    ref = ml.m_step(X, np.exp(ml.e_step(X, params).log_resp), covariance_type="diag")
    np.testing.assert_allclose(np.asarray(new.means), ref.means, rtol=1e-4, atol=1e-4)


def test_one_dimensional_input_is_one_feature():
    x = np.array([0.1, -0.3, 2.2, 1.9, 2.5])
    params = ml.MixtureParams([0.5, 0.5], [0.0, 2.0], [1.0, 1.0], "full")
    a = ml.e_step(x, params)
    b = ml.e_step(x[:, None], params)
    np.testing.assert_array_equal(a.log_resp, b.log_resp)


@pytest.mark.parametrize(
    ("resp", "message"),
    [
        (np.full((5, 2), 0.3), "row 0 sums to 0.6"),
        (np.full((4, 2), 0.5), r"resp must have shape \(5, 2\)"),
        (np.log(np.full((5, 2), 0.5)), "non-negative"),
    ],
)
def test_bad_responsibilities_are_rejected(resp, message):
    x = np.arange(5.0)
    params = ml.MixtureParams([0.5, 0.5], [0.0, 2.0], [1.0, 1.0], "full")
    with pytest.raises(ValueError, match=message):
        ml.elbo(x, params, resp)


def test_feature_mismatch_is_reported():
    params = ml.MixtureParams([0.5, 0.5], [[0.0, 0], [2.0, 0]], [1.0, 1.0], "spherical")
    with pytest.raises(ValueError, match="X has 3 feature"):
        ml.e_step(np.zeros((4, 3)), params)
