"""The Bayesian finite mixture: one NumPyro model for every family.

The component assignment is summed out exactly, ``log p(x_i | theta) =
logsumexp_k (log pi_k + log p(x_i | theta_k))``, with the family's own
log-density and the EM engine's ``logsumexp`` (``mixlab.em.steps``), so NUTS
and SVI see a smooth density and no discrete site is ever sampled.

The model samples *standardised* parameters: the data are centred on their
mean and divided by their standard deviation (per feature; one common scale
for isotropic families), and the priors of :class:`mixlab.Priors` are stated
in those units.  The log-likelihood is that of the data in their own units
(the constant Jacobian of the standardisation is included), so ELBOs and
log joints are comparable with EM's log-likelihood.  Rescaling the data
leaves the sampler's space unchanged: the posterior rescales exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from mixlab.em.steps import FORMULATIONS, log_joint_fn, normalise
from mixlab.families import Family, PriorSite
from mixlab.params import MixtureParams
from mixlab.priors import Priors

Array = jax.Array


class Standardisation(NamedTuple):
    """``z = (x - loc) / scale`` per feature."""

    loc: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)

    @classmethod
    def of(cls, X: np.ndarray, family: Family) -> Standardisation:
        loc = X.mean(axis=0)
        sd = X.std(axis=0)
        if family.isotropic:
            sd = np.full_like(sd, np.sqrt(np.mean(np.square(sd))))
        sd = np.where(sd > 0, sd, 1.0)  # a constant feature keeps its units
        return cls(loc, sd)

    def apply(self, X: np.ndarray) -> np.ndarray:
        return (X - self.loc) / self.scale


def _half_normal(site: PriorSite, priors: Priors) -> dist.Distribution:
    d = dist.HalfNormal(priors.scale)
    return d.expand(site.shape).to_event(len(site.shape)) if site.shape else d


def _lkj_cholesky(site: PriorSite, priors: Priors) -> dist.Distribution:
    d = dist.LKJCholesky(site.dimension, priors.lkj_eta)
    return d.expand(site.shape).to_event(len(site.shape)) if site.shape else d


#: How each kind of prior site declared by a family becomes a distribution.
SITE_DISTRIBUTIONS: dict[str, Callable[[PriorSite, Priors], dist.Distribution]] = {
    "half_normal": _half_normal,
    "lkj_cholesky": _lkj_cholesky,
}


class MixtureModel:
    """The NumPyro model of a K-component mixture of ``family`` on standardised data.

    Calling the instance with standardised data runs the model (sample sites
    ``weights``, ``means_std`` and the family's prior sites).
    """

    def __init__(
        self,
        family: Family,
        n_components: int,
        standardisation: Standardisation,
        priors: Priors | None = None,
        formulation: str = "expanded",
    ) -> None:
        if formulation not in FORMULATIONS:
            raise ValueError(f"formulation must be one of {FORMULATIONS}, got {formulation!r}")
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
        loc = self.priors.mean_loc
        if loc is None:
            self.mean_loc_std = np.zeros(self.n_features)
        else:
            if loc.shape != (self.n_features,):
                raise ValueError(
                    f"Priors.mean_loc has {loc.size} entries but the data have "
                    f"{self.n_features} feature(s)"
                )
            self.mean_loc_std = (loc - standardisation.loc) / standardisation.scale
        self.log_jacobian_per_row = -float(np.sum(np.log(standardisation.scale)))
        self.sites = family.prior_sites(n_components, self.n_features)

    # ------------------------------------------------------------------ model
    @property
    def spec(self) -> tuple[Any, ...]:
        """Everything that shapes the compiled model (hashable); the data-derived
        constants travel as arguments (:meth:`model_args`)."""
        p = self.priors
        return (
            self.family,
            self.n_components,
            self.n_features,
            p.weight_concentration,
            p.mean_scale,
            p.scale,
            p.lkj_eta,
            bool(p.ordered_means),
            self.formulation,
        )

    def model_args(self, X_std: Array) -> tuple[Any, ...]:
        """``(X_std, mean_loc_std, log_jacobian_per_row, features)``: the model's arguments.

        ``features`` are the expanded formulation's moment features of the data,
        computed once here rather than at every gradient (``None`` when centred).
        """
        dtype = X_std.dtype
        features = None
        if self.formulation == "expanded":
            features = _moment_features(X_std, family=self.family)
        return (
            X_std,
            jnp.asarray(self.mean_loc_std, dtype),
            jnp.asarray(self.log_jacobian_per_row, dtype),
            features,
        )

    def _sample_parameters(self, mean_loc_std: Array) -> MixtureParams:
        K, D, p = self.n_components, self.n_features, self.priors
        weights = numpyro.sample("weights", dist.Dirichlet(jnp.full(K, p.weight_concentration)))
        loc = mean_loc_std
        if p.ordered_means:
            means = numpyro.sample(
                "means_std", dist.ImproperUniform(constraints.ordered_vector, (), (K,))
            )
            prior = dist.Normal(loc[0], p.mean_scale)
            numpyro.factor("means_prior", jnp.sum(prior.log_prob(means)))
            means = means[:, None]
        else:
            means = numpyro.sample(
                "means_std", dist.Normal(loc, p.mean_scale).expand((K, D)).to_event(2)
            )
        factors = {
            site.name: numpyro.sample(site.name, SITE_DISTRIBUTIONS[site.kind](site, p))
            for site in self.sites
        }
        covariances, prec_chol = self.family.covariance_from_factors(factors, K, D)
        return MixtureParams.trusted(
            weights, means, covariances, prec_chol, self.family.covariance_type, self.family.family
        )

    def __call__(
        self,
        X_std: Array,
        mean_loc_std: Array | None = None,
        log_jacobian_per_row: Array | float | None = None,
        features: Array | None = None,
    ) -> None:
        if mean_loc_std is None:
            mean_loc_std = jnp.asarray(self.mean_loc_std, X_std.dtype)
        if log_jacobian_per_row is None:
            log_jacobian_per_row = self.log_jacobian_per_row
        params = self._sample_parameters(mean_loc_std)
        # The EM engine's log joint (either formulation) and logsumexp: z summed out.
        log_joint = log_joint_fn(params, self.formulation)(X_std, features)
        _, log_norm = normalise(log_joint)
        numpyro.factor("log_likelihood", jnp.sum(log_norm) + X_std.shape[0] * log_jacobian_per_row)

    # ------------------------------------------------------------ conversions
    # Eager JAX compiles every primitive separately (tens of ms each), so every
    # conversion below is one jitted function, compiled once per model spec.
    def to_data_units(self, samples: dict[str, Array]) -> dict[str, np.ndarray]:
        """Draws of the sample sites (leading axes ``(chain, draw)``) in data units."""
        out = _to_data_units(
            {k: jnp.asarray(v) for k, v in samples.items()},
            jnp.asarray(self.standardisation.loc),
            jnp.asarray(self.standardisation.scale),
            family=self.family,
            n_components=self.n_components,
            n_features=self.n_features,
            ordered=bool(self.priors.ordered_means),
        )
        return {k: np.asarray(v) for k, v in out.items()}

    def site_values(self, params: MixtureParams) -> dict[str, Array]:
        """Constrained values of the sample sites that represent ``params`` (data units)."""
        return _site_values(
            jnp.asarray(params.weights),
            jnp.asarray(params.means),
            jnp.asarray(params.covariances),
            jnp.asarray(self.standardisation.loc),
            jnp.asarray(self.standardisation.scale),
            family=self.family,
            n_components=self.n_components,
            n_features=self.n_features,
            ordered=bool(self.priors.ordered_means),
        )


_STATIC = ("family", "n_components", "n_features", "ordered")


@functools.partial(jax.jit, static_argnames=("family",))
def _moment_features(X: Array, *, family: Family) -> Array:
    return family.moment_features(X)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _to_data_units(
    samples: dict[str, Array],
    loc: Array,
    scale: Array,
    *,
    family: Family,
    n_components: int,
    n_features: int,
    ordered: bool,
) -> dict[str, Array]:
    K, D = n_components, n_features
    weights = samples["weights"]
    lead = weights.shape[:-1]
    means_std = samples["means_std"].reshape((*lead, K, D))
    flat = {
        s.name: samples[s.name].reshape((-1, *samples[s.name].shape[len(lead) :]))
        for s in family.prior_sites(K, D)
    }
    cov_std = jax.vmap(lambda f: family.covariance_from_factors(f, K, D)[0])(flat)
    cov = jax.vmap(lambda c: family.rescale_covariances(c, scale))(cov_std)
    return {
        "weights": weights,
        "means": loc + means_std * scale,
        "covariances": cov.reshape((*lead, *cov.shape[1:])),
    }


@functools.partial(jax.jit, static_argnames=_STATIC)
def _site_values(
    weights: Array,
    means: Array,
    covariances: Array,
    loc: Array,
    scale: Array,
    *,
    family: Family,
    n_components: int,
    n_features: int,
    ordered: bool,
) -> dict[str, Array]:
    means_std = (means - loc) / scale
    cov_std = family.rescale_covariances(covariances, 1.0 / scale)
    if ordered:
        order = jnp.argsort(means_std[:, 0])
        weights, means_std = weights[order], means_std[order]
        if family.per_component_covariance:
            cov_std = cov_std[order]
    values = {"weights": weights, "means_std": means_std[:, 0] if ordered else means_std}
    values.update(family.factors_from_covariance(cov_std, n_components, n_features))
    return values
