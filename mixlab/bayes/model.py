"""The Bayesian finite mixture: one NumPyro model for every family.

The component assignment is summed out exactly, ``log p(x_i | theta) =
logsumexp_k (log pi_k + log p(x_i | theta_k))``, with the family's own
log-density and the shared ``logsumexp`` (:mod:`mixlab.density`), so NUTS and
SVI see a smooth density and no discrete site is ever sampled.

The weights are ``Dirichlet(weight_concentration)``; the components come from
the prior sites their family declares (:meth:`mixlab.families.Family.prior_sites`),
which this module turns into NumPyro distributions.  Families with a location
and a scale (Gaussian, Student-t) are fitted on *standardised* data: centred
on the data mean and divided by the data standard deviation (one common scale
for isotropic layouts), with priors stated in those units; the log-likelihood
is that of the data in their own units (the Jacobian of the standardisation is
included), so ELBOs and log joints are comparable with EM's log-likelihood and
rescaling the data rescales the posterior exactly.  Count and binary families
use the data as they are.

Row weights (``sample_weight``) multiply each row's log-likelihood: an
integer weight is the same as that many copies of the row.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints, transforms

from mixlab.density import log_joint, normalise
from mixlab.families import Family, PriorSite, Standardisation
from mixlab.params import MixtureParams
from mixlab.priors import Priors

Array = jax.Array


def _resolve(value: Any, constants: dict[str, Array]) -> Any:
    """A site argument: a number, or the name of a data-derived constant."""
    return constants[value] if isinstance(value, str) else value


def _batched(d: dist.Distribution, shape: tuple[int, ...]) -> dist.Distribution:
    d = d.expand(shape) if shape != d.batch_shape else d
    return d.to_event(len(shape)) if shape else d


def _normal(site: PriorSite, c: dict[str, Array]) -> dist.Distribution:
    return _batched(
        dist.Normal(_resolve(site.arg("loc"), c), _resolve(site.arg("scale"), c)), site.shape
    )


def _half_normal(site: PriorSite, c: dict[str, Array]) -> dist.Distribution:
    return _batched(dist.HalfNormal(_resolve(site.arg("scale"), c)), site.shape)


def _lkj_cholesky(site: PriorSite, c: dict[str, Array]) -> dist.Distribution:
    return _batched(dist.LKJCholesky(site.dimension, _resolve(site.arg("eta"), c)), site.shape)


def _gamma(site: PriorSite, c: dict[str, Array]) -> dist.Distribution:
    return _batched(
        dist.Gamma(_resolve(site.arg("concentration"), c), _resolve(site.arg("rate"), c)),
        site.shape,
    )


def _beta(site: PriorSite, c: dict[str, Array]) -> dist.Distribution:
    return _batched(
        dist.Beta(_resolve(site.arg("concentration1"), c), _resolve(site.arg("concentration0"), c)),
        site.shape,
    )


def _shifted_gamma(site: PriorSite, c: dict[str, Array]) -> dist.Distribution:
    base = dist.Gamma(_resolve(site.arg("concentration"), c), _resolve(site.arg("rate"), c))
    shifted = dist.TransformedDistribution(
        base, transforms.AffineTransform(_resolve(site.arg("low"), c), 1.0)
    )
    return _batched(shifted, site.shape)


#: How each kind of prior site declared by a family becomes a distribution.
SITE_DISTRIBUTIONS: dict[str, Callable[[PriorSite, dict[str, Array]], dist.Distribution]] = {
    "normal": _normal,
    "half_normal": _half_normal,
    "lkj_cholesky": _lkj_cholesky,
    "gamma": _gamma,
    "beta": _beta,
    "shifted_gamma": _shifted_gamma,
}


def _sample_site(site: PriorSite, constants: dict[str, Array]) -> Array:
    if site.kind == "ordered_normal":  # an increasing vector with a Normal prior on each entry
        value = numpyro.sample(
            site.name, dist.ImproperUniform(constraints.ordered_vector, (), site.shape)
        )
        loc = _resolve(site.arg("loc"), constants)
        prior = dist.Normal(jnp.reshape(loc, (-1,))[0], _resolve(site.arg("scale"), constants))
        numpyro.factor(f"{site.name}_prior", jnp.sum(prior.log_prob(value)))
        return value
    if site.kind not in SITE_DISTRIBUTIONS:
        raise ValueError(
            f"prior site {site.name!r} has unknown kind {site.kind!r}; known: "
            f"{', '.join(sorted(SITE_DISTRIBUTIONS))}, ordered_normal"
        )
    return numpyro.sample(site.name, SITE_DISTRIBUTIONS[site.kind](site, constants))


class MixtureModel:
    """The NumPyro model of a K-component mixture of ``family``.

    Calling the instance with (standardised) data runs the model: sample sites
    ``weights`` and the family's prior sites, and the summed-out likelihood.
    """

    def __init__(
        self,
        family: Family,
        n_components: int,
        standardisation: Standardisation,
        priors: Priors | None = None,
        formulation: str = "centred",
        constants: dict[str, np.ndarray] | None = None,
    ) -> None:
        if formulation not in family.formulations:
            raise ValueError(
                f"formulation must be one of {family.formulations} for {family!r}, "
                f"got {formulation!r}"
            )
        self.formulation = formulation
        self.family = family
        self.n_components = n_components
        self.standardisation = standardisation
        self.n_features = len(standardisation.loc)
        self.priors = priors or Priors()
        if self.priors.ordered_means and self.n_features != 1:
            raise ValueError(
                f"ordered_means needs one feature, the data have {self.n_features}; "
                "use the default label alignment instead"
            )
        self.constants = dict(constants or {})
        self.log_jacobian_per_row = -float(np.sum(np.log(standardisation.scale)))
        self.sites = family.prior_sites(n_components, self.n_features, self.priors)

    # ------------------------------------------------------------------ model
    @property
    def spec(self) -> tuple[Any, ...]:
        """Everything that shapes the compiled model (hashable); the data-derived
        constants travel as arguments (:meth:`model_args`)."""
        return (
            self.family,
            self.n_components,
            self.n_features,
            self.priors.key(),
            self.formulation,
            tuple(sorted(self.constants)),
        )

    def model_args(self, X_std: Array, row_weight: Array | None = None) -> tuple[Any, ...]:
        """``(X_std, constants, log_jacobian_per_row, features, row_weight)``.

        ``features`` are the family's row features (the Gaussian expanded
        formulation's pair products), computed once here rather than at every
        gradient (``None`` where the family needs none).
        """
        dtype = X_std.dtype
        features = _row_features(X_std, family=self.family, formulation=self.formulation)
        return (
            X_std,
            {k: jnp.asarray(v, dtype) for k, v in self.constants.items()},
            jnp.asarray(self.log_jacobian_per_row, dtype),
            features,
            None if row_weight is None else jnp.asarray(row_weight, dtype),
        )

    def sample_params(self, constants: dict[str, Array]) -> MixtureParams:
        """Sample the weights and the components (standardised units)."""
        K, D = self.n_components, self.n_features
        weights = numpyro.sample(
            "weights", dist.Dirichlet(jnp.full(K, self.priors.weight_concentration))
        )
        values = {site.name: _sample_site(site, constants) for site in self.sites}
        components = self.family.components_from_sites(values, K, D)
        return MixtureParams.trusted(weights, components, self.family)

    def __call__(
        self,
        X_std: Array,
        constants: dict[str, Array] | None = None,
        log_jacobian_per_row: Array | float | None = None,
        features: Array | None = None,
        row_weight: Array | None = None,
    ) -> None:
        if constants is None:
            constants = {k: jnp.asarray(v, X_std.dtype) for k, v in self.constants.items()}
        if log_jacobian_per_row is None:
            log_jacobian_per_row = self.log_jacobian_per_row
        params = self.sample_params(constants)
        prepared = self.family.prepare(params.components, self.formulation)
        lj = log_joint(X_std, self.family, prepared, jnp.log(params.weights), features)
        _, log_norm = normalise(lj)
        if row_weight is None:
            total = jnp.sum(log_norm) + X_std.shape[0] * log_jacobian_per_row
        else:
            total = jnp.sum(row_weight * log_norm) + jnp.sum(row_weight) * log_jacobian_per_row
        numpyro.factor("log_likelihood", total)

    # ------------------------------------------------------------ conversions
    # Eager JAX compiles every primitive separately (tens of ms each), so every
    # conversion below is one jitted function, compiled once per model spec.
    def to_data_units(self, samples: dict[str, Array]) -> dict[str, np.ndarray]:
        """Draws of the sample sites (leading axes ``(chain, draw)``) in data units:
        ``{"weights": ..., <component parameters>...}``."""
        out = _to_data_units(
            {k: jnp.asarray(v) for k, v in samples.items()},
            jnp.asarray(self.standardisation.loc),
            jnp.asarray(self.standardisation.scale),
            family=self.family,
            n_components=self.n_components,
            n_features=self.n_features,
            site_names=tuple(site.name for site in self.sites),
        )
        return {k: np.asarray(v) for k, v in out.items()}

    def site_values(self, params: MixtureParams) -> dict[str, Array]:
        """Constrained values of the sample sites that represent ``params`` (data units)."""
        return _site_values(
            jnp.asarray(params.weights),
            {k: jnp.asarray(v) for k, v in params.components.items()},
            jnp.asarray(self.standardisation.loc),
            jnp.asarray(self.standardisation.scale),
            family=self.family,
            n_components=self.n_components,
            n_features=self.n_features,
            priors=dataclasses.replace(self.priors, mean_loc=None),  # hashable: a static arg
        )


@functools.partial(jax.jit, static_argnames=("family", "formulation"))
def _row_features_jit(X: Array, *, family: Family, formulation: str) -> Array | None:
    return family.row_features(X, formulation)


def _row_features(X: Array, *, family: Family, formulation: str) -> Array | None:
    if family.row_feature_width(X.shape[1], formulation) == 0:
        return None
    return _row_features_jit(X, family=family, formulation=formulation)


@functools.partial(jax.jit, static_argnames=("family", "n_components", "n_features", "site_names"))
def _to_data_units(
    samples: dict[str, Array],
    loc: Array,
    scale: Array,
    *,
    family: Family,
    n_components: int,
    n_features: int,
    site_names: tuple[str, ...],
) -> dict[str, Array]:
    K, D = n_components, n_features
    weights = samples["weights"]
    lead = weights.shape[:-1]
    flat = {
        name: samples[name].reshape((-1, *samples[name].shape[len(lead) :])) for name in site_names
    }
    std = Standardisation(loc, scale)

    def one(values: dict[str, Array]) -> dict[str, Array]:
        return family.to_data_units(family.components_from_sites(values, K, D), std)

    components = jax.vmap(one)(flat)
    out = {"weights": weights}
    out.update({k: v.reshape((*lead, *v.shape[1:])) for k, v in components.items()})
    return out


@functools.partial(jax.jit, static_argnames=("family", "n_components", "n_features", "priors"))
def _site_values(
    weights: Array,
    components: dict[str, Array],
    loc: Array,
    scale: Array,
    *,
    family: Family,
    n_components: int,
    n_features: int,
    priors: Priors,
) -> dict[str, Array]:
    std_components = family.from_data_units(components, Standardisation(loc, scale))
    if priors.ordered_means:  # components in increasing order of their (1-D) mean
        order = jnp.argsort(family.moments(std_components)[0][:, 0])
        weights = weights[order]
        std_components = {
            spec.name: (
                std_components[spec.name][order]
                if spec.per_component
                else std_components[spec.name]
            )
            for spec in family.param_specs()
        }
    values = {"weights": weights}
    values.update(family.sites_from_components(std_components, n_components, n_features, priors))
    return values
