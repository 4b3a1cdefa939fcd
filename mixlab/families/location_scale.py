"""What every family with a location and a scale matrix shares (Gaussian, Student-t).

Means ``(K, D)`` and covariances in one of scikit-learn's layouts
(:mod:`mixlab.families.covariance`): the degeneracy test, the data-scale
checks against ``reg_covar``, restarts at a point, translation, the Bayesian
standardisation (centre on the data mean, divide by its standard deviation)
and the prior sites of the means.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mixlab.errors import DataScaleWarning
from mixlab.families.base import DataSummary, PriorSite, Standardisation, weighted_mean_sd
from mixlab.families.covariance import Layout

Array = jax.Array

#: A covariance has collapsed when its smallest eigenvalue above ``reg_covar``, in units
#: of the data's own variance per feature, is below this (by dtype).
COLLAPSE_REL_VARIANCE = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-8}
#: ``reg_covar`` this many times the variance of every varying feature makes every
#: component at least ``sqrt`` of it (10x) as wide as the whole data set in every
#: direction: the mixture density is flat over the data and separates nothing.
SWAMPED_RATIO = 100.0


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


def check_location_scale(summary: DataSummary, reg_covar: float) -> list[int]:
    """Refuse data whose squares overflow; flag features that ``reg_covar`` dominates.

    Returns the features whose variance is below ``reg_covar`` (every
    component's variance there exceeds the data's, so that feature cannot
    separate components).  Warns with :class:`~mixlab.errors.DataScaleWarning`
    only when the fit is ruined: ``reg_covar`` is at least
    :data:`SWAMPED_RATIO` times the variance of every varying feature, as with
    data in tiny units.  A deliberate large ``reg_covar`` (scikit-learn users
    set 0.1 on unit-scale data) stays silent.
    """
    dtype = summary.dtype
    limit = float(np.sqrt(np.finfo(dtype).max)) / 1e4
    biggest = summary.max_abs
    if biggest > limit:
        raise ValueError(
            f"X deviates from its mean by up to {biggest:.3g}: squares overflow {dtype}; "
            "rescale the data (e.g. divide each column by its standard deviation)"
        )
    var = summary.var
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


class LocationScale:
    """Mixin for families whose components have ``means`` and ``covariances`` in a
    :class:`~mixlab.families.covariance.Layout` (``self.layout``)."""

    location = True
    degeneracy = "covariance"
    layout: Layout

    def coerce(self, name, value, n_components, n_features):
        if name == "covariances":
            return self.layout.coerce(value, n_components, n_features)
        return super().coerce(name, value, n_components, n_features)  # type: ignore[misc]

    def min_points(self, n_features: int) -> int:
        return self.layout.min_points(n_features)

    def check_fit_data(self, summary, reg):
        return check_location_scale(summary, reg)

    def precision_cholesky(self, covariances: Array) -> Array:
        return self.layout.precision_cholesky(covariances)

    def collapsed(self, components, nk, reg, data_var):
        means = components["means"]
        return covariance_collapsed(
            self.layout, components["covariances"], reg, data_var, *means.shape
        )

    def place(self, components, mask, points):
        return {**components, "means": jnp.where(mask[:, None], points, components["means"])}

    def shift(self, components, delta):
        return {**components, "means": components["means"] + delta}

    def standardisation(self, X, row_weight=None):
        return location_standardisation(X, self.layout.isotropic, row_weight)

    def to_data_units(self, components, std):
        loc, scale = jnp.asarray(std.loc), jnp.asarray(std.scale)
        return {
            **components,
            "means": loc + components["means"] * scale,
            "covariances": self.layout.rescale(components["covariances"], scale),
        }

    def from_data_units(self, components, std):
        loc, scale = jnp.asarray(std.loc), jnp.asarray(std.scale)
        return {
            **components,
            "means": (components["means"] - loc) / scale,
            "covariances": self.layout.rescale(components["covariances"], 1.0 / scale),
        }

    def prior_constants(self, X_std, std, priors, row_weight=None):
        return mean_prior_constants(std, priors)

    def location_scale_sites(self, n_components, n_features, priors) -> tuple[PriorSite, ...]:
        return mean_sites(n_components, n_features, priors) + self.layout.prior_sites(
            n_components, n_features, priors
        )

    def location_scale_from_sites(self, values, n_components) -> dict[str, Array]:
        return {
            "means": means_from_sites(values, n_components),
            "covariances": self.layout.covariance_from_factors(values),
        }

    def location_scale_to_sites(self, components, priors) -> dict[str, Array]:
        return {
            "means_std": means_to_sites(components["means"], bool(priors.ordered_means)),
            **self.layout.factors_from_covariance(components["covariances"]),
        }
