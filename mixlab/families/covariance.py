"""Covariance layouts: scikit-learn's full, diag, spherical and tied, shared by every
family with a location and a scale matrix (Gaussian, Student-t).

Densities go through the Cholesky factor ``P_k`` of the precision:
``y = x P_k - mu_k P_k``; the squared Mahalanobis distance is ``|y|^2`` and the
log-determinant term ``sum log diag P_k``.  For full covariances the K factors
are stacked into one ``D x KD`` matrix so that all distances are a single
matrix product.

Scatter statistics are centred on the new means (``x - mu_k`` is formed before
any product), so variances cannot come out negative in float32 as the
uncentred ``E[x x^T] - mu mu^T`` formula can.  The expanded ("moments") route
writes the quadratic form on the data's pair products instead: one pass and
one matrix product, used in float64 where its rounding is harmless.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from mixlab.families.base import ParamSpec, PriorSite

Array = jax.Array
LOG_2PI = math.log(2.0 * math.pi)

PD_ADVICE = "increase reg_covar, use fewer components, or rescale the data"


def cholesky_precision(covariances: Array) -> Array:
    """Upper factors ``P`` with ``P @ P.T = inv(C)`` for a stack of SPD matrices."""
    chol = jnp.linalg.cholesky(covariances)
    eye = jnp.broadcast_to(jnp.eye(covariances.shape[-1], dtype=covariances.dtype), chol.shape)
    inv_chol = jax.scipy.linalg.solve_triangular(chol, eye, lower=True)
    return jnp.swapaxes(inv_chol, -1, -2)


def _log_det_upper(prec_chol: Array) -> Array:
    return jnp.sum(jnp.log(jnp.diagonal(prec_chol, axis1=-2, axis2=-1)), axis=-1)


def _upper_pairs(n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the upper triangle (diagonal included)."""
    return np.triu_indices(n_features)


def _pair_products(X: Array) -> Array:
    """``x_d * x_e`` for every ``d <= e``: shape ``(n_samples, D (D + 1) / 2)``."""
    rows, cols = _upper_pairs(X.shape[-1])
    return X[:, rows] * X[:, cols]


def _quadratic_coefficients(prec: Array) -> Array:
    """Coefficients of ``-0.5 x^T prec x`` on the pair products, shape ``(T, K)``."""
    rows, cols = _upper_pairs(prec.shape[-1])
    scale = np.where(rows == cols, -0.5, -1.0)
    return (prec[..., rows, cols] * scale).T


def _symmetric_from_pairs(values: Array, n_features: int) -> Array:
    """Inverse of the pair layout: ``(..., T)`` to symmetric ``(..., D, D)``."""
    rows, cols = _upper_pairs(n_features)
    out = jnp.zeros((*values.shape[:-1], n_features, n_features), values.dtype)
    return out.at[..., rows, cols].set(values).at[..., cols, rows].set(values)


def _from_scaled_correlation(scales: Array, corr_chol: Array | None) -> Array:
    """Covariance ``diag(s) R diag(s)`` with ``R = corr_chol corr_chol^T``."""
    if corr_chol is None:  # one feature: the correlation matrix is [[1]]
        cov_chol = scales[..., :, None]
    else:
        cov_chol = scales[..., :, None] * corr_chol
    return cov_chol @ jnp.swapaxes(cov_chol, -1, -2)


def _to_scaled_correlation(covariances: Array) -> dict[str, Array]:
    scales = jnp.sqrt(jnp.diagonal(covariances, axis1=-2, axis2=-1))
    out = {"scales": scales}
    if covariances.shape[-1] > 1:
        corr = covariances / (scales[..., :, None] * scales[..., None, :])
        out["corr_chol"] = jnp.linalg.cholesky(corr)
    return out


def _scaled_correlation_sites(
    batch: tuple[int, ...], n_features: int, priors: Any
) -> tuple[PriorSite, ...]:
    sites = [PriorSite("scales", "half_normal", (*batch, n_features), (("scale", priors.scale),))]
    if n_features > 1:
        sites.append(
            PriorSite("corr_chol", "lkj_cholesky", batch, (("eta", priors.lkj_eta),), n_features)
        )
    return tuple(sites)


def _check_spd(matrix: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{what} contains NaN or infinite values")
    scale = max(float(np.max(np.abs(matrix))), np.finfo(np.float64).tiny)
    if not np.allclose(matrix, matrix.T, rtol=1e-6, atol=1e-10 * scale):
        raise ValueError(f"{what} is not symmetric; pass (C + C.T) / 2")
    eig = np.linalg.eigvalsh(np.asarray(matrix, dtype=np.float64))
    # Singular up to rounding counts as singular: a rank-deficient A @ A.T can come out
    # with a tiny positive smallest eigenvalue and would give precisions of 1e16.
    floor = 10 * len(eig) * np.finfo(np.float64).eps * float(np.max(np.abs(eig)))
    if eig[0] <= floor:
        raise ValueError(
            f"{what} is not positive definite (smallest eigenvalue {eig[0]:.3g}, largest "
            f"{eig[-1]:.3g}); {PD_ADVICE}"
        )


def _check_positive(values: np.ndarray, what: str, index_name: str) -> None:
    values = np.asarray(values)
    bad = ~np.isfinite(values) | (values <= 0)
    if bad.any():
        idx = np.argwhere(bad)[0]
        loc = ", ".join(str(int(i)) for i in idx)
        raise ValueError(
            f"{what}[{loc}] = {float(values[tuple(idx)]):.6g} must be a positive finite "
            f"variance (indexed by {index_name})"
        )


class Layout(ABC):
    """One covariance layout: shapes, factorisation, distances and scatter M-steps."""

    name: ClassVar[str]
    #: False when all components share one covariance (no leading component axis).
    per_component: ClassVar[bool] = True
    #: True when a covariance is the same in every direction: standardise the data
    #: with one scale for all features.
    isotropic: ClassVar[bool] = False

    @abstractmethod
    def spec(self, name: str = "covariances", display: str = "covariance") -> ParamSpec:
        """The parameter spec of covariances in this layout."""

    def min_points(self, n_features: int) -> int:
        return 2

    def coerce(self, covariances: np.ndarray, n_components: int, n_features: int) -> np.ndarray:
        shape = self.spec().shape(n_components, n_features)
        if n_features == 1 and covariances.size == n_components and self.per_component:
            covariances = covariances.reshape(shape)
        if covariances.shape != shape:
            raise ValueError(
                f"covariances for covariance_type={self.name!r} must have shape "
                f"{shape}, got {covariances.shape}"
            )
        return covariances

    def component_ok(self, prec_chol: Array, n_components: int) -> Array:
        """Per component: are its precision factors finite? Shape ``(n_components,)``."""
        finite = jnp.isfinite(prec_chol)
        if not self.per_component:
            return jnp.broadcast_to(jnp.all(finite), (n_components,))
        return jnp.all(finite.reshape(n_components, -1), axis=1)

    def log_gauss(self, X: Array, means: Array, prec_chol: Array) -> Array:
        """Gaussian log-densities, ``(n, K)``."""
        n_features = means.shape[1]
        sq = self.sq_distance(X, means, prec_chol)
        return -0.5 * (n_features * LOG_2PI + sq) + self.log_det(prec_chol, n_features)

    def draw(self, noise: Array, labels: Array, means: Array, covariances: Array) -> Array:
        """``means[z] + L_z noise`` per row, ``L_z`` the Cholesky factor of component
        ``z``'s covariance: standard normal noise to component draws (one pass per
        component, no ``(n, D, D)`` gather)."""
        n_components, n_features = means.shape
        chol = jnp.linalg.cholesky(self.to_full(covariances, n_components, n_features))

        def add_component(k: int, X: Array) -> Array:
            return jnp.where((labels == k)[:, None], means[k] + noise @ chol[k].T, X)

        return jax.lax.fori_loop(0, n_components, add_component, jnp.zeros_like(noise))

    def m_step_covariances(
        self, X: Array, resp: Array, nk: Array, means: Array, reg_covar: Any
    ) -> Array:
        """Whole-data M-step for the covariances."""
        return self.covariances_from_stats(self.covariance_stats(X, resp, means), nk, reg_covar)


class FullCovariance(Layout):
    """Each component has its own full covariance matrix, shape ``(K, D, D)``."""

    name = "full"

    def spec(self, name="covariances", display="covariance"):
        return ParamSpec(name, ("component", "feature", "feature_"), "positive_definite", display)

    def min_points(self, n_features):
        return n_features + 1

    def check(self, covariances, name="covariances"):
        for k, cov in enumerate(covariances):
            _check_spd(cov, f"{name}[{k}] (component {k})")

    def precision_cholesky(self, covariances):
        return cholesky_precision(covariances)

    def log_det(self, prec_chol, n_features):
        return _log_det_upper(prec_chol)

    def sq_distance(self, X, means, prec_chol):
        n_components, n_features = means.shape
        # One matrix product for all components: columns k*D..(k+1)*D hold P_k.
        stacked = jnp.transpose(prec_chol, (1, 0, 2)).reshape(n_features, n_components * n_features)
        offset = jnp.einsum("kd,kde->ke", means, prec_chol).reshape(-1)
        y = (X @ stacked - offset).reshape(X.shape[0], n_components, n_features)
        return jnp.sum(jnp.square(y), axis=-1)

    def covariance_stats(self, X, resp, means):
        diff = X[None, :, :] - means[:, None, :]  # (K, N, D), centred on the new means
        weighted = diff * resp.T[:, :, None]
        return jnp.einsum("knd,kne->kde", weighted, diff)

    def covariances_from_stats(self, stats, nk, reg_covar):
        cov = stats / nk[:, None, None]
        cov = 0.5 * (cov + jnp.swapaxes(cov, -1, -2))
        return cov + reg_covar * jnp.eye(cov.shape[-1], dtype=cov.dtype)

    def moment_features(self, X):
        return _pair_products(X)

    def n_moment_features(self, n_features):
        return n_features * (n_features + 1) // 2

    def expanded_coefficients(self, means, prec_chol):
        n_features = means.shape[1]
        prec = jnp.einsum("kde,kfe->kdf", prec_chol, prec_chol)
        lin = jnp.einsum("kde,ke->kd", prec, means)
        const = (
            -0.5 * jnp.sum(lin * means, axis=1)
            + _log_det_upper(prec_chol)
            - 0.5 * n_features * LOG_2PI
        )
        return _quadratic_coefficients(prec), lin.T, const

    def covariances_from_moments(self, moments, nk, mean_x, means, reg_covar):
        n_features = means.shape[1]
        second = _symmetric_from_pairs(moments / nk[:, None], n_features)
        shift = mean_x - means  # parallel-axis term; zero unless means are held fixed
        cov = (
            second - mean_x[:, :, None] * mean_x[:, None, :] + shift[:, :, None] * shift[:, None, :]
        )
        return cov + reg_covar * jnp.eye(n_features, dtype=cov.dtype)

    def prior_sites(self, n_components, n_features, priors):
        return _scaled_correlation_sites((n_components,), n_features, priors)

    def covariance_from_factors(self, factors):
        return _from_scaled_correlation(factors["scales"], factors.get("corr_chol"))

    def factors_from_covariance(self, covariances):
        return _to_scaled_correlation(covariances)

    def rescale(self, covariances, scale):
        return covariances * scale[:, None] * scale[None, :]

    def to_full(self, covariances, n_components, n_features):
        return covariances


class DiagCovariance(Layout):
    """Each component has a diagonal covariance, stored as variances ``(K, D)``."""

    name = "diag"

    def spec(self, name="covariances", display="variance"):
        return ParamSpec(name, ("component", "feature"), "positive", display)

    def check(self, covariances, name="covariances"):
        _check_positive(covariances, name, "component, feature")

    def precision_cholesky(self, covariances):
        return jax.lax.rsqrt(covariances)

    def log_det(self, prec_chol, n_features):
        return jnp.sum(jnp.log(prec_chol), axis=1)

    def sq_distance(self, X, means, prec_chol):
        y = (X[:, None, :] - means[None, :, :]) * prec_chol[None, :, :]
        return jnp.sum(jnp.square(y), axis=-1)

    def covariance_stats(self, X, resp, means):
        diff = X[:, None, :] - means[None, :, :]  # (N, K, D)
        return jnp.einsum("nk,nkd->kd", resp, jnp.square(diff))

    def covariances_from_stats(self, stats, nk, reg_covar):
        return stats / nk[:, None] + reg_covar

    def moment_features(self, X):
        return jnp.square(X)

    def n_moment_features(self, n_features):
        return n_features

    def expanded_coefficients(self, means, prec_chol):
        n_features = means.shape[1]
        prec = jnp.square(prec_chol)
        const = (
            -0.5 * jnp.sum(jnp.square(means) * prec, axis=1)
            + jnp.sum(jnp.log(prec_chol), axis=1)
            - 0.5 * n_features * LOG_2PI
        )
        return -0.5 * prec.T, (means * prec).T, const

    def covariances_from_moments(self, moments, nk, mean_x, means, reg_covar):
        return moments / nk[:, None] - jnp.square(mean_x) + jnp.square(mean_x - means) + reg_covar

    def prior_sites(self, n_components, n_features, priors):
        return (
            PriorSite(
                "scales", "half_normal", (n_components, n_features), (("scale", priors.scale),)
            ),
        )

    def covariance_from_factors(self, factors):
        return jnp.square(factors["scales"])

    def factors_from_covariance(self, covariances):
        return {"scales": jnp.sqrt(covariances)}

    def rescale(self, covariances, scale):
        return covariances * jnp.square(scale)

    def to_full(self, covariances, n_components, n_features):
        return covariances[:, :, None] * jnp.eye(n_features, dtype=covariances.dtype)


class SphericalCovariance(DiagCovariance):
    """Each component has one variance for all features, stored as ``(K,)``."""

    name = "spherical"
    isotropic = True

    def spec(self, name="covariances", display="variance"):
        return ParamSpec(name, ("component",), "positive", display)

    def coerce(self, covariances, n_components, n_features):
        if covariances.shape == (n_components, 1):
            covariances = covariances.reshape(n_components)
        return super().coerce(covariances, n_components, n_features)

    def check(self, covariances, name="covariances"):
        _check_positive(covariances, name, "component")

    def log_det(self, prec_chol, n_features):
        return n_features * jnp.log(prec_chol)

    def sq_distance(self, X, means, prec_chol):
        sq = jnp.sum(jnp.square(X[:, None, :] - means[None, :, :]), axis=-1)
        return sq * jnp.square(prec_chol)[None, :]

    def covariances_from_stats(self, stats, nk, reg_covar):
        # Mean over features of the diagonal estimate, as scikit-learn does.
        return jnp.mean(stats / nk[:, None] + reg_covar, axis=1)

    def moment_features(self, X):
        return jnp.sum(jnp.square(X), axis=1, keepdims=True)

    def n_moment_features(self, n_features):
        return 1

    def expanded_coefficients(self, means, prec_chol):
        n_features = means.shape[1]
        prec = jnp.square(prec_chol)
        const = (
            -0.5 * prec * jnp.sum(jnp.square(means), axis=1)
            + n_features * jnp.log(prec_chol)
            - 0.5 * n_features * LOG_2PI
        )
        return -0.5 * prec[None, :], (means * prec[:, None]).T, const

    def covariances_from_moments(self, moments, nk, mean_x, means, reg_covar):
        n_features = means.shape[1]
        total = (
            moments[:, 0] / nk
            - jnp.sum(jnp.square(mean_x), axis=1)
            + jnp.sum(jnp.square(mean_x - means), axis=1)
        )
        return total / n_features + reg_covar

    def prior_sites(self, n_components, n_features, priors):
        return (PriorSite("scales", "half_normal", (n_components,), (("scale", priors.scale),)),)

    def rescale(self, covariances, scale):
        # isotropic: every entry of ``scale`` is the same
        return covariances * jnp.square(scale[0])

    def to_full(self, covariances, n_components, n_features):
        return covariances[:, None, None] * jnp.eye(n_features, dtype=covariances.dtype)


class TiedCovariance(Layout):
    """All components share one full covariance matrix, shape ``(D, D)``."""

    name = "tied"
    per_component = False

    def spec(self, name="covariances", display="covariance"):
        return ParamSpec(name, ("feature", "feature_"), "positive_definite", display)

    def min_points(self, n_features):
        return 1

    def coerce(self, covariances, n_components, n_features):
        if n_features == 1 and covariances.size == 1:
            covariances = covariances.reshape(1, 1)
        return super().coerce(covariances, n_components, n_features)

    def check(self, covariances, name="covariances"):
        _check_spd(covariances, f"{name} (the tied covariance)")

    def precision_cholesky(self, covariances):
        return cholesky_precision(covariances)

    def log_det(self, prec_chol, n_features):
        return _log_det_upper(prec_chol)

    def sq_distance(self, X, means, prec_chol):
        y = (X @ prec_chol)[:, None, :] - (means @ prec_chol)[None, :, :]
        return jnp.sum(jnp.square(y), axis=-1)

    def covariance_stats(self, X, resp, means):
        diff = X[None, :, :] - means[:, None, :]
        weighted = diff * resp.T[:, :, None]
        return jnp.einsum("knd,kne->de", weighted, diff)

    def covariances_from_stats(self, stats, nk, reg_covar):
        cov = stats / jnp.sum(nk)
        cov = 0.5 * (cov + cov.T)
        return cov + reg_covar * jnp.eye(cov.shape[-1], dtype=cov.dtype)

    def moment_features(self, X):
        return _pair_products(X)

    def n_moment_features(self, n_features):
        return n_features * (n_features + 1) // 2

    def expanded_coefficients(self, means, prec_chol):
        n_components, n_features = means.shape
        prec = prec_chol @ prec_chol.T
        lin = means @ prec
        const = (
            -0.5 * jnp.sum(lin * means, axis=1)
            + _log_det_upper(prec_chol)
            - 0.5 * n_features * LOG_2PI
        )
        quad = _quadratic_coefficients(prec)  # (T,): the quadratic form is shared
        return jnp.broadcast_to(quad[:, None], (quad.shape[0], n_components)), lin.T, const

    def covariances_from_moments(self, moments, nk, mean_x, means, reg_covar):
        n_features = means.shape[1]
        second = _symmetric_from_pairs(jnp.sum(moments, axis=0), n_features)
        shift = mean_x - means
        between = jnp.einsum("k,kd,ke->de", nk, mean_x, mean_x)
        offset = jnp.einsum("k,kd,ke->de", nk, shift, shift)
        cov = (second - between + offset) / jnp.sum(nk)
        return cov + reg_covar * jnp.eye(n_features, dtype=cov.dtype)

    def prior_sites(self, n_components, n_features, priors):
        return _scaled_correlation_sites((), n_features, priors)

    def covariance_from_factors(self, factors):
        return _from_scaled_correlation(factors["scales"], factors.get("corr_chol"))

    def factors_from_covariance(self, covariances):
        return _to_scaled_correlation(covariances)

    def rescale(self, covariances, scale):
        return covariances * scale[:, None] * scale[None, :]

    def to_full(self, covariances, n_components, n_features):
        return jnp.broadcast_to(covariances, (n_components, n_features, n_features))


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (FullCovariance(), DiagCovariance(), SphericalCovariance(), TiedCovariance())
}


def get_layout(covariance: str) -> Layout:
    try:
        return LAYOUTS[covariance]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown covariance type {covariance!r}; use one of {', '.join(map(repr, LAYOUTS))}"
        ) from None
