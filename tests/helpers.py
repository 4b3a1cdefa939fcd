"""Shared problems and references for the tests."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.mixture import GaussianMixture

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")


def blobs(
    n_samples: int = 300,
    n_features: int = 2,
    n_components: int = 3,
    seed: int = 0,
    spread: float = 4.0,
) -> np.ndarray:
    """Well separated anisotropic clusters."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, spread, (n_components, n_features))
    scales = rng.uniform(0.5, 1.5, (n_components, n_features))
    labels = rng.integers(0, n_components, n_samples)
    return centers[labels] + rng.normal(size=(n_samples, n_features)) * scales[labels]


def random_start(X: np.ndarray, n_components: int, covariance_type: str, seed: int) -> dict:
    """A valid, imperfect start: one scikit-learn iteration from random data points."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = GaussianMixture(
            n_components,
            covariance_type=covariance_type,
            max_iter=1,
            init_params="random_from_data",
            random_state=seed,
        ).fit(X)
    return {"weights": gm.weights_, "means": gm.means_, "covariances": gm.covariances_}


def sklearn_from_start(
    X: np.ndarray, start: dict, covariance_type: str, **kwargs
) -> GaussianMixture:
    """scikit-learn fitted from exactly the given parameters."""
    K = len(start["weights"])
    cov = np.asarray(start["covariances"])
    if covariance_type in ("full", "tied"):
        prec = np.linalg.inv(cov)
    else:
        prec = 1.0 / cov
    gm = GaussianMixture(
        K,
        covariance_type=covariance_type,
        weights_init=start["weights"],
        means_init=start["means"],
        precisions_init=prec,
        **kwargs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gm.fit(X)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))
