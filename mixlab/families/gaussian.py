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

import warnings
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mixlab.errors import DataScaleWarning
from mixlab.families.base import (
    Family,
    ParamSpec,
    PriorSite,
    Standardisation,
    register,
    weighted_mean_sd,
)
from mixlab.families.covariance import LAYOUTS, Layout, get_layout

Array = jax.Array

#: "auto" uses the expanded formulation only when its worst-case rounding in a
#: variance, about ``eps * max |x - mean|^2``, is at most this fraction of the
#: ``reg_covar`` floor.  ``reg_covar = 0`` therefore always runs centred (exact).
EXPANDED_MAX_REL_ERROR = 1e-4
#: A covariance has collapsed when its smallest eigenvalue above ``reg_covar``, in units
#: of the data's own variance per feature, is below this (by dtype).
COLLAPSE_REL_VARIANCE = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-8}
#: ``reg_covar`` this many times the variance of every varying feature makes every
#: component at least ``sqrt`` of it (10x) as wide as the whole data set in every
#: direction: the mixture density is flat over the data and separates nothing.
SWAMPED_RATIO = 100.0


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


def covariance_collapsed(
    layout: Layout,
    covariances: Array,
    reg: Any,
    data_var: Array,
    n_components: int,
    n_features: int,
) -> Array:
    """Per component: is the covariance singular above ``reg`` relative to the data?

    The smallest eigenvalue of ``Sigma_k - reg I`` in units of the data's
    variance per feature, against :data:`COLLAPSE_REL_VARIANCE`.  Features
    constant in the data are left out (a constant column is no collapse); a
    non-finite covariance is not flagged here (the finiteness check reports it).
    """
    eye = jnp.eye(n_features, dtype=data_var.dtype)
    full = layout.to_full(covariances, n_components, n_features) - reg * eye
    constant = data_var <= 0
    scale = jax.lax.rsqrt(jnp.where(constant, 1.0, data_var))
    normalised = full * scale[:, None] * scale[None, :]
    normalised = jnp.where(constant[:, None] | constant[None, :], eye, normalised)
    finite = jnp.all(jnp.isfinite(normalised), axis=(-2, -1))
    normalised = jnp.where(finite[:, None, None], normalised, eye)
    smallest = jnp.linalg.eigvalsh(normalised)[..., 0]
    return finite & (smallest <= COLLAPSE_REL_VARIANCE[np.dtype(data_var.dtype)])


def check_location_scale(centred_X: np.ndarray, reg_covar: float) -> list[int]:
    """Refuse data whose squares overflow; flag features that ``reg_covar`` dominates.

    Returns the features whose variance is below ``reg_covar`` (every
    component's variance there exceeds the data's, so that feature cannot
    separate components).  Warns with :class:`~mixlab.errors.DataScaleWarning`
    only when the fit is ruined: ``reg_covar`` is at least
    :data:`SWAMPED_RATIO` times the variance of every varying feature, as with
    data in tiny units.  A deliberate large ``reg_covar`` (scikit-learn users
    set 0.1 on unit-scale data) stays silent.
    """
    dtype = centred_X.dtype
    limit = float(np.sqrt(np.finfo(dtype).max)) / 1e4
    biggest = float(np.max(np.abs(centred_X)))
    if biggest > limit:
        raise ValueError(
            f"X deviates from its mean by up to {biggest:.3g}: squares overflow {dtype}; "
            "rescale the data (e.g. divide each column by its standard deviation)"
        )
    var = centred_X.var(axis=0, dtype=np.float64)
    varying = var > 0
    if reg_covar <= 0 or not varying.any():
        return []
    if reg_covar >= SWAMPED_RATIO * float(var[varying].max()):
        warnings.warn(
            f"reg_covar={reg_covar:g} is over {SWAMPED_RATIO:g} times the variance of every "
            f"feature (largest {var[varying].max():.3g}): every component is wider than the "
            "whole data set and the mixture cannot separate anything. Rescale the data "
            "(e.g. divide each column by its standard deviation) or lower reg_covar",
            DataScaleWarning,
            stacklevel=5,
        )
    return [int(j) for j in np.flatnonzero(varying & (var < reg_covar))]


def location_standardisation(
    X: np.ndarray, isotropic: bool, row_weight: np.ndarray | None = None
) -> Standardisation:
    """Centre on the data mean and divide by the data sd (one common sd if isotropic);
    weighted by the rows' frequency weights where given."""
    loc, sd = weighted_mean_sd(X, row_weight)
    if isotropic:
        sd = np.full_like(sd, np.sqrt(np.mean(np.square(sd))))
    sd = np.where(sd > 0, sd, 1.0)  # a constant feature keeps its units
    return Standardisation(loc, sd)


def mean_sites(n_components: int, n_features: int, priors: Any) -> tuple[PriorSite, ...]:
    """``means_std``: Normal(mean_loc, mean_scale) in standardised units (ordered in 1-D)."""
    args = (("loc", "mean_loc"), ("scale", priors.mean_scale))
    if priors.ordered_means:
        return (PriorSite("means_std", "ordered_normal", (n_components,), args),)
    return (PriorSite("means_std", "normal", (n_components, n_features), args),)


def mean_prior_constants(std: Standardisation, priors: Any) -> dict[str, np.ndarray]:
    loc = priors.mean_loc
    if loc is None:
        return {"mean_loc": np.zeros(len(std.loc))}
    if loc.shape != std.loc.shape:
        raise ValueError(
            f"Priors.mean_loc has {loc.size} entries but the data have {len(std.loc)} feature(s)"
        )
    return {"mean_loc": (loc - std.loc) / std.scale}


def means_from_sites(values: dict[str, Array], n_components: int) -> Array:
    means = values["means_std"]
    return means[:, None] if means.ndim == 1 else means


def means_to_sites(means: Array, priors_ordered: bool) -> Array:
    return means[:, 0] if priors_ordered else means


@register
class Gaussian(Family):
    """Multivariate normal components with a covariance layout.

    Parameters
    ----------
    covariance : {"full", "diag", "spherical", "tied"}
        scikit-learn's layouts.

    ``Gaussian(covariance="full")`` returns the layout's own class
    (:class:`FullGaussian`, ...); all are the same family.
    """

    name = "gaussian"
    location = True
    formulations = ("centred", "expanded")
    degeneracy = "covariance"
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

    def coerce(self, name, value, n_components, n_features):
        if name == "covariances":
            return self.layout.coerce(value, n_components, n_features)
        return super().coerce(name, value, n_components, n_features)

    def check_components(self, components):
        self.layout.check(np.asarray(components["covariances"]))

    def min_points(self, n_features: int) -> int:
        return self.layout.min_points(n_features)

    def check_fit_data(self, centred_X: np.ndarray, reg: float) -> list[int]:
        return check_location_scale(centred_X, reg)

    def choose_formulation(self, requested: str, centred_X: np.ndarray, reg: float) -> str:
        """Resolve ``"auto"``: expanded (fast) where its rounding is harmless, else centred.

        The expanded M-step forms a variance as ``E[x^2] - mean^2`` and loses
        about ``eps * max x^2``; that is negligible when ``reg_covar`` keeps
        every variance well above it, and never acceptable in float32.
        """
        if requested != "auto":
            return requested
        if centred_X.dtype != np.float64:
            return "centred"
        worst = float(np.finfo(np.float64).eps) * float(np.max(np.square(centred_X)))
        return "expanded" if worst <= EXPANDED_MAX_REL_ERROR * reg else "centred"

    def work_width(self, n_components: int, n_features: int, formulation: str) -> int:
        if formulation == "expanded":
            return max(self.layout.n_moment_features(n_features), n_components)
        return n_components * n_features

    def row_feature_width(self, n_features: int, formulation: str) -> int:
        return self.layout.n_moment_features(n_features) if formulation == "expanded" else 0

    # ---------------------------------------------------------------- pure JAX
    def precision_cholesky(self, covariances: Array) -> Array:
        return self.layout.precision_cholesky(covariances)

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

    def collapsed(self, components, nk, reg, data_var):
        means = components["means"]
        return covariance_collapsed(
            self.layout, components["covariances"], reg, data_var, *means.shape
        )

    def place(self, components, mask, points):
        return {**components, "means": jnp.where(mask[:, None], points, components["means"])}

    def shift(self, components, delta):
        return {**components, "means": components["means"] + delta}

    def sample(self, key, components, labels):
        means = components["means"]
        n_components, n_features = means.shape
        noise = jax.random.normal(key, (labels.shape[0], n_features), means.dtype)
        chol = jnp.linalg.cholesky(
            self.layout.to_full(components["covariances"], n_components, n_features)
        )

        def add_component(k: int, X: Array) -> Array:
            return jnp.where((labels == k)[:, None], means[k] + noise @ chol[k].T, X)

        return jax.lax.fori_loop(0, n_components, add_component, jnp.zeros_like(noise))

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
    def standardisation(self, X, row_weight=None):
        return location_standardisation(X, self.layout.isotropic, row_weight)

    def to_data_units(self, components, std):
        loc, scale = jnp.asarray(std.loc), jnp.asarray(std.scale)
        return {
            "means": loc + components["means"] * scale,
            "covariances": self.layout.rescale(components["covariances"], scale),
        }

    def from_data_units(self, components, std):
        loc, scale = jnp.asarray(std.loc), jnp.asarray(std.scale)
        return {
            "means": (components["means"] - loc) / scale,
            "covariances": self.layout.rescale(components["covariances"], 1.0 / scale),
        }

    def prior_constants(self, X_std, std, priors, row_weight=None):
        return mean_prior_constants(std, priors)

    def prior_sites(self, n_components, n_features, priors):
        return mean_sites(n_components, n_features, priors) + self.layout.prior_sites(
            n_components, n_features, priors
        )

    def components_from_sites(self, values, n_components, n_features):
        return {
            "means": means_from_sites(values, n_components),
            "covariances": self.layout.covariance_from_factors(values),
        }

    def sites_from_components(self, components, n_components, n_features, priors):
        return {
            "means_std": means_to_sites(components["means"], bool(priors.ordered_means)),
            **self.layout.factors_from_covariance(components["covariances"]),
        }


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
