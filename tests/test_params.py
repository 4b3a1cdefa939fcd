"""MixtureParams: validation, layouts, pytree behaviour, sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import COVARIANCE_TYPES

import mixlab as ml

GOOD = {
    "full": np.array([[[1.0, 0.3], [0.3, 2.0]], [[0.5, 0.0], [0.0, 0.5]]]),
    "diag": np.array([[1.0, 2.0], [0.5, 0.5]]),
    "spherical": np.array([1.0, 0.5]),
    "tied": np.array([[1.0, 0.3], [0.3, 2.0]]),
}
MEANS = np.array([[0.0, 0.0], [3.0, 1.0]])


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_valid_params_compute_precision_cholesky(covariance_type):
    p = ml.MixtureParams([0.4, 0.6], MEANS, GOOD[covariance_type], covariance_type)
    full = p.full_covariances()
    prec = np.linalg.inv(full)
    with jax.enable_x64(True):
        prec_chol = np.asarray(p.family.precision_cholesky(jnp.asarray(p.covariances)))
    if covariance_type in ("full", "tied"):
        P = prec_chol if covariance_type == "full" else np.broadcast_to(prec_chol, (2, 2, 2))
        np.testing.assert_allclose(P @ np.swapaxes(P, -1, -2), prec, rtol=1e-12)
    else:
        diag = np.diagonal(prec, axis1=1, axis2=2)
        P2 = np.square(prec_chol)
        np.testing.assert_allclose(np.broadcast_to(P2.reshape(2, -1), diag.shape), diag, rtol=1e-12)


BAD = [
    (dict(weights=[0.4, 0.5]), "weights sum to 0.9"),
    (dict(weights=[-0.1, 1.1]), r"weights\[0\] = -0.1 is negative"),
    (dict(weights=[[0.5, 0.5]]), "weights must be a non-empty 1-D array"),
    (dict(weights=[np.nan, 1.0]), "weights contains NaN"),
    (dict(means=[[0.0, 0.0]]), r"means must have shape \(2, 2\) \(component, feature\)"),
    (dict(means=[["a", "b"], ["c", "d"]]), "means must be numeric"),
    (dict(covariances=np.ones((2, 3, 3))), r"must have shape \(2, 2, 2\), got \(2, 3, 3\)"),
    (
        dict(covariances=np.array([[[1.0, 2.0], [2.0, 1.0]], np.eye(2)])),
        r"covariances\[0\] \(component 0\) is not positive definite.*increase reg_covar",
    ),
    (
        dict(covariances=np.array([[[1.0, 0.5], [0.0, 1.0]], np.eye(2)])),
        r"covariances\[0\] \(component 0\) is not symmetric",
    ),
    (
        dict(covariance_type="diag", covariances=[[1.0, -1.0], [1.0, 1.0]]),
        r"covariances\[0, 1\] = -1 must be a positive finite variance",
    ),
    (
        dict(covariance_type="spherical", covariances=[1.0, 0.0]),
        r"covariances\[1\] = 0 must be a positive finite variance",
    ),
    (dict(covariance_type="bogus"), "unknown covariance type 'bogus'"),
]


@pytest.mark.parametrize(("changes", "message"), BAD)
def test_invalid_params_raise_naming_the_field(changes, message):
    args = {
        "weights": [0.4, 0.6],
        "means": MEANS,
        "covariances": GOOD["full"],
        "covariance_type": "full",
    }
    args.update(changes)
    with pytest.raises((ValueError, TypeError), match=message):
        ml.MixtureParams(**args)


def test_one_feature_shortcuts_for_every_layout():
    for ct in COVARIANCE_TYPES:
        cov = [4.0] if ct == "tied" else [4.0, 4.0]
        p = ml.MixtureParams([0.5, 0.5], [0.0, 1.0], cov, ct)
        assert p.means.shape == (2, 1)
        np.testing.assert_allclose(p.full_covariances()[:, 0, 0], 4.0)


def test_from_dict_and_to_dict_round_trip():
    d = {"weights": [0.4, 0.6], "means": MEANS, "covariances": GOOD["diag"]}
    p = ml.MixtureParams.from_dict(d, covariance_type="diag")
    back = p.to_dict()
    assert back["covariance_type"] == "diag"
    np.testing.assert_array_equal(back["covariances"], GOOD["diag"])
    with pytest.raises(ValueError, match="missing"):
        ml.MixtureParams.from_dict({"weights": [1.0]})
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \[.precisions.\]"):
        ml.MixtureParams.from_dict({**d, "precisions": 1})


def test_inputs_are_copied_not_aliased():
    means = MEANS.copy()
    p = ml.MixtureParams([0.4, 0.6], means, GOOD["full"])
    means[0, 0] = 99.0
    assert p.means[0, 0] == 0.0


def test_pytree_round_trip_and_jit():
    p = ml.MixtureParams([0.4, 0.6], MEANS, GOOD["full"])
    leaves, treedef = jax.tree_util.tree_flatten(p)
    assert len(leaves) == 3  # weights, means, covariances (precision factors are derived in jit)
    q = jax.tree_util.tree_unflatten(treedef, leaves)
    assert q.covariance_type == "full"
    doubled = jax.jit(lambda params: params.means * 2)(p)
    np.testing.assert_allclose(doubled, MEANS * 2)


def test_float32_parameters_stay_float32():
    p = ml.MixtureParams(
        np.array([0.4, 0.6], np.float32), MEANS.astype(np.float32), GOOD["full"].astype(np.float32)
    )
    assert p.dtype == np.float32 and p.covariances.dtype == np.float32


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_sample_has_the_right_moments(covariance_type):
    p = ml.MixtureParams([0.3, 0.7], MEANS, GOOD[covariance_type], covariance_type)
    X, labels = p.sample(0, 200_000)
    assert X.shape == (200_000, 2) and labels.dtype.kind == "i"
    # Standard errors at n = 200k are ~0.001 for the weight and ~0.005 for means
    # and variances; 5 standard errors of tolerance.
    assert abs(np.mean(labels == 0) - 0.3) < 0.005
    full = p.full_covariances()
    for k in range(2):
        sel = X[labels == k]
        np.testing.assert_allclose(sel.mean(0), MEANS[k], atol=0.02)
        np.testing.assert_allclose(np.cov(sel.T), full[k], atol=0.05)


def test_sample_is_reproducible_by_key():
    p = ml.MixtureParams([0.3, 0.7], MEANS, GOOD["full"])
    a, _ = p.sample(3, 50)
    b, _ = p.sample(jax.random.PRNGKey(3), 50)
    c, _ = p.sample(4, 50)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_jax_leaves_are_accepted():
    p = ml.MixtureParams(jnp.array([0.5, 0.5]), jnp.zeros((2, 2)), jnp.ones((2, 2)), "diag")
    assert isinstance(p.means, np.ndarray)


def test_rank_deficient_covariance_is_refused_whatever_the_rounding():
    rng = np.random.default_rng(0)
    for _ in range(20):
        A = rng.normal(size=(3, 2))
        cov = A @ A.T  # rank 2: singular, though rounding may make eigvalsh slightly positive
        with pytest.raises(ValueError, match="not positive definite"):
            ml.MixtureParams([1.0], np.zeros((1, 3)), cov[None], "full")
