"""Families: log-densities against scipy, both formulations against each other."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import COVARIANCE_TYPES, blobs, random_start
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture

import mixlab as ml
from mixlab.families import get_family


def _params(covariance_type: str, seed: int = 0, n_features: int = 3, n_components: int = 4):
    X = blobs(200, n_features, n_components, seed=seed)
    start = random_start(X, n_components, covariance_type, seed)
    return X, ml.MixtureParams(**start, covariance_type=covariance_type)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_prob_matches_scipy(covariance_type):
    X, params = _params(covariance_type)
    got = ml.log_prob_components(X, params)
    full = params.full_covariances()
    for k in range(params.n_components):
        want = multivariate_normal(params.means[k], full[k]).logpdf(X)
        np.testing.assert_allclose(got[:, k], want, rtol=1e-10, atol=0)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_expanded_log_density_equals_centred(covariance_type):
    X, params = _params(covariance_type, seed=1)
    fam = get_family(covariance_type)
    with jax.enable_x64(True):
        Xj = jnp.asarray(X)
        components = {k: jnp.asarray(v) for k, v in params.components.items()}
        centred = fam.log_prob(Xj, fam.prepare(components, "centred"))
        features = fam.row_features(Xj, "expanded")
        expanded = fam.log_prob(Xj, fam.prepare(components, "expanded"), features)
        assert features.shape[1] == fam.row_feature_width(X.shape[1], "expanded")
    np.testing.assert_allclose(np.asarray(expanded), np.asarray(centred), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("fixed_means", [False, True])
def test_moment_m_step_equals_centred(covariance_type, fixed_means):
    X, params = _params(covariance_type, seed=2)
    resp = np.exp(ml.e_step(X, params).log_resp)
    fam = get_family(covariance_type).layout
    with jax.enable_x64(True):
        Xj, rj = jnp.asarray(X), jnp.asarray(resp)
        nk = rj.sum(0)
        mean_x = rj.T @ Xj / nk[:, None]
        means = jnp.asarray(params.means) if fixed_means else mean_x
        centred = fam.m_step_covariances(Xj, rj, nk, means, 1e-6)
        moments = rj.T @ fam.moment_features(Xj)
        expanded = fam.covariances_from_moments(moments, nk, mean_x, means, 1e-6)
    np.testing.assert_allclose(np.asarray(expanded), np.asarray(centred), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_parameter_count_matches_sklearn(covariance_type):
    X = blobs(100, 3, 2)
    gm = GaussianMixture(2, covariance_type=covariance_type, random_state=0).fit(X)
    assert get_family(covariance_type).n_parameters(2, 3) == gm._n_parameters()


def test_unknown_covariance_type_names_the_choices():
    with pytest.raises(ValueError, match="unknown covariance type 'fulll'.*'full'"):
        get_family("gaussian", covariance="fulll")
    with pytest.raises(ValueError, match="unknown family 'fulll'; use one of .*'gaussian'"):
        get_family("fulll")


def test_family_instances_are_interchangeable_static_args():
    assert get_family("full") == get_family("full")
    assert hash(get_family("diag")) == hash(get_family("diag"))
    assert get_family("full") != get_family("tied")
