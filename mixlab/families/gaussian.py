"""Gaussian components in scikit-learn's four covariance layouts.

Components: ``means (K, D)`` and ``covariances`` laid out as scikit-learn does
for the covariance type (``full (K, D, D)``, ``diag (K, D)``, ``spherical
(K,)``, ``tied (D, D)``).  Log-densities go through the Cholesky factor of the
precision (:mod:`mixlab.families.covariance`).

Two EM formulations of the same maths:

``"centred"``
    Distances ``x P_k - mu_k P_k`` and covariances centred on the new means in
    an exact second pass over the data.  Exact in float32 and with
    ``reg_covar=0``.
``"expanded"``
    Quadratic forms on the data's pair products (``row_features``), computed
    once: one pass and two matrix products per iteration, two to three times
    faster; uncentred, so a variance loses about ``eps * max |x - mean|^2``.
    ``"auto"`` uses it in float64 only where that loss is under 1e-4 of
    ``reg_covar`` (:meth:`Gaussian.choose_formulation`).
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mixlab.families.base import (
    Family,
    ParamSpec,
    register,
)
from mixlab.families.covariance import LAYOUTS, Layout, get_layout
from mixlab.families.location_scale import LocationScale

Array = jax.Array

#: "auto" uses the expanded formulation only when its worst-case rounding in a
#: variance, about ``eps * max |x - mean|^2``, is at most this fraction of the
#: ``reg_covar`` floor.  ``reg_covar = 0`` therefore always runs centred (exact).
EXPANDED_MAX_REL_ERROR = 1e-4


class GaussianPrepared(NamedTuple):
    """Per-iteration quantities: precision factors and, expanded, the quadratic form."""

    means: Array
    prec_chol: Array
    quad: Array | None = None  # (T, K) coefficients on the pair products
    lin: Array | None = None  # (D, K)
    const: Array | None = None  # (K,)


class GaussianStats(NamedTuple):
    """Sums over rows: ``resp.T @ X`` and, expanded, ``resp.T @ pair_products``."""

    sum_x: Array
    moments: Array | None = None


@register
class Gaussian(LocationScale, Family):
    """Multivariate normal components with a covariance layout.

    Parameters
    ----------
    covariance : {"full", "diag", "spherical", "tied"}
        scikit-learn's layouts.

    ``Gaussian(covariance="full")`` returns the layout's own class
    (:class:`FullGaussian`, ...); all are the same family.
    """

    second_pass_quadratic = True  # covariance sums about a centre (quadratic in it)

    name = "gaussian"
    formulations = ("centred", "expanded")
    degeneracy_message = "its covariance became singular (it sits on too few distinct points)"
    COVARIANCE_TYPES: ClassVar[tuple[str, ...]] = tuple(LAYOUTS)
    layout: ClassVar[Layout]

    def __new__(cls, covariance: str | None = None) -> Gaussian:
        if cls is Gaussian:
            cls = _CLASSES[get_layout(covariance or "full").name]
        return super().__new__(cls)

    def __init__(self, covariance: str | None = None) -> None:
        if covariance is not None and get_layout(covariance) is not self.layout:
            raise ValueError(
                f"{type(self).__name__} has covariance {self.layout.name!r}, not {covariance!r}"
            )

    def options(self) -> dict[str, Any]:
        return {"covariance": self.layout.name}

    def __repr__(self) -> str:
        return f"Gaussian(covariance={self.layout.name!r})"

    # ------------------------------------------------------------------ layout
    def param_specs(self) -> tuple[ParamSpec, ...]:
        return (
            ParamSpec("means", ("component", "feature"), "real", "mean"),
            self.layout.spec(),
        )

    def check_components(self, components):
        self.layout.check(np.asarray(components["covariances"]))

    def choose_formulation(self, requested, summary, reg):
        """Resolve ``"auto"``: expanded (fast) where its rounding is harmless, else centred.

        The expanded M-step forms a variance as ``E[x^2] - mean^2`` and loses
        about ``eps * max x^2``; that is negligible when ``reg_covar`` keeps
        every variance well above it, and never acceptable in float32.
        """
        if requested != "auto":
            return requested
        if summary.dtype != np.float64:
            return "centred"
        worst = float(np.finfo(np.float64).eps) * summary.max_abs**2
        return "expanded" if worst <= EXPANDED_MAX_REL_ERROR * reg else "centred"

    def work_width(self, n_components: int, n_features: int, formulation: str) -> int:
        if formulation == "expanded":
            return max(self.layout.n_moment_features(n_features), n_components)
        return n_components * n_features

    def row_feature_width(self, n_features: int, formulation: str) -> int:
        return self.layout.n_moment_features(n_features) if formulation == "expanded" else 0

    # ---------------------------------------------------------------- pure JAX
    def prepare(self, components, formulation="centred"):
        means = components["means"]
        prec_chol = self.layout.precision_cholesky(components["covariances"])
        if formulation == "expanded":
            quad, lin, const = self.layout.expanded_coefficients(means, prec_chol)
            return GaussianPrepared(means, prec_chol, quad, lin, const)
        return GaussianPrepared(means, prec_chol)

    def row_features(self, X, formulation="centred"):
        return self.layout.moment_features(X) if formulation == "expanded" else None

    def log_prob(self, X, prepared, features=None):
        if prepared.quad is not None:
            features = self.layout.moment_features(X) if features is None else features
            return features @ prepared.quad + X @ prepared.lin + prepared.const
        return self.layout.log_gauss(X, prepared.means, prepared.prec_chol)

    def summarize(self, X, resp, prepared, features=None, aux=None):
        if prepared is not None and prepared.quad is not None:
            features = self.layout.moment_features(X) if features is None else features
            return GaussianStats(resp.T @ X, resp.T @ features)
        return GaussianStats(resp.T @ X)

    def two_pass(self, formulation):
        return formulation == "centred"

    def second_pass(self, stats, nk, components, fixed):
        if "means" in fixed:
            return components["means"]
        return stats.sum_x / nk[:, None]

    def summarize_second(self, X, resp, centre):
        return self.layout.covariance_stats(X, resp, centre)

    def m_step(self, stats, nk, components, reg, fixed=(), second=None):
        mean_x = stats.sum_x / nk[:, None]
        means = components["means"] if "means" in fixed else mean_x
        if "covariances" in fixed:
            covariances = components["covariances"]
        elif second is not None:
            covariances = self.layout.covariances_from_stats(second, nk, reg)
        else:
            covariances = self.layout.covariances_from_moments(
                stats.moments, nk, mean_x, means, reg
            )
        return {"means": means, "covariances": covariances}

    def component_ok(self, components, prepared):
        n = components["means"].shape[0]
        return self.layout.component_ok(prepared.prec_chol, n) & jnp.all(
            jnp.isfinite(components["means"]), axis=1
        )

    def sample(self, key, components, labels):
        means = components["means"]
        noise = jax.random.normal(key, (labels.shape[0], means.shape[1]), means.dtype)
        return self.layout.draw(noise, labels, means, components["covariances"])

    def marginal(self, components, feature):
        with jax.enable_x64(True):
            _, cov = self.moments({k: jnp.asarray(v) for k, v in components.items()})
        variances = np.asarray(cov)[:, feature, feature][:, None]
        means = np.asarray(components["means"])[:, [feature]]
        return DiagGaussian(), {"means": means, "covariances": variances}

    def moments(self, components):
        means = components["means"]
        return means, self.layout.to_full(components["covariances"], *means.shape)

    # ------------------------------------------------ Bayesian parameterisation
    def prior_sites(self, n_components, n_features, priors):
        return self.location_scale_sites(n_components, n_features, priors)

    def components_from_sites(self, values, n_components, n_features):
        return self.location_scale_from_sites(values, n_components)

    def sites_from_components(self, components, n_components, n_features, priors):
        return self.location_scale_to_sites(components, priors)


class FullGaussian(Gaussian):
    """Each component has its own full covariance matrix, shape ``(K, D, D)``."""

    layout = LAYOUTS["full"]


class DiagGaussian(Gaussian):
    """Each component has a diagonal covariance, stored as variances ``(K, D)``."""

    layout = LAYOUTS["diag"]


class SphericalGaussian(Gaussian):
    """Each component has one variance for all features, stored as ``(K,)``."""

    layout = LAYOUTS["spherical"]


class TiedGaussian(Gaussian):
    """All components share one full covariance matrix, shape ``(D, D)``."""

    layout = LAYOUTS["tied"]


_CLASSES: dict[str, type[Gaussian]] = {
    "full": FullGaussian,
    "diag": DiagGaussian,
    "spherical": SphericalGaussian,
    "tied": TiedGaussian,
}
