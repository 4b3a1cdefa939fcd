"""What SVI and NUTS share: the EM reference, draws in data units, alignment, summaries."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mixlab.align import align_to_reference
from mixlab.bayes.model import MixtureModel, Standardisation
from mixlab.em.driver import EMRun, fit_em
from mixlab.em.steps import log_likelihood_draws
from mixlab.families import Family
from mixlab.methods import EM
from mixlab.params import MixtureParams

Array = jax.Array


class BayesRun(NamedTuple):
    """Host-side outcome of an SVI or NUTS fit."""

    params: MixtureParams
    log_likelihood: float
    trace: np.ndarray
    converged: bool
    n_iter: int
    elapsed: float
    compile_time: float
    posterior: dict[str, np.ndarray]
    diagnostics: dict[str, Any]


def reference_fit(
    X: np.ndarray,
    n_components: int,
    family: Family,
    em: EM | None,
    key: Array,
    standardisation: Standardisation,
) -> EMRun:
    """The EM fit that starts the Bayesian method and anchors label alignment.

    It runs on the standardised data (so ``reg_covar`` is in data standard
    deviations and the whole Bayesian fit is scale-free) and its parameters
    are returned in data units.
    """
    em = em or EM(n_init=4)
    loc, scale = standardisation
    init = em.init
    if not isinstance(init, str):
        p = MixtureParams.from_dict(init, covariance_type=family.covariance_type)
        init = p.replace(
            means=(np.asarray(p.means) - loc) / scale,
            covariances=np.asarray(family.rescale_covariances(p.covariances, 1.0 / scale)),
        ).astype(X.dtype)
    run = fit_em(
        standardisation.apply(X), n_components, family, key=key, init=init, **em.engine_options()
    )
    p = run.params
    cov = np.asarray(family.rescale_covariances(jnp.asarray(p.covariances), jnp.asarray(scale)))
    params = MixtureParams.trusted(
        p.weights,
        loc + np.asarray(p.means) * scale,
        cov,
        np.asarray(_precision_cholesky(jnp.asarray(cov), family=family)),
        family.covariance_type,
        family.family,
    )
    log_jacobian = X.shape[0] * float(np.sum(np.log(scale)))
    return run._replace(params=params, log_likelihood=run.log_likelihood - log_jacobian)


@functools.partial(jax.jit, static_argnames=("family",))
def _precision_cholesky(covariances: Array, *, family: Family) -> Array:
    return family.precision_cholesky(covariances)


def build_model(X: np.ndarray, n_components: int, family: Family, priors: Any) -> MixtureModel:
    """The Bayesian model for ``X``: expanded likelihood in float64, centred in float32.

    On standardised data the expanded formulation's rounding (about
    ``eps * max z^2 / variance``) is negligible in float64 and the likelihood
    and its gradient cost two small matrix products.
    """
    formulation = "expanded" if X.dtype == np.float64 else "centred"
    return MixtureModel(family, n_components, Standardisation.of(X, family), priors, formulation)


def posterior_mean(draws: dict[str, np.ndarray], family: Family) -> MixtureParams:
    """Point estimate: the mean of the aligned draws (averaged covariances stay PD)."""
    axes = (0, 1)
    weights = np.mean(draws["weights"], axis=axes)
    cov = np.mean(draws["covariances"], axis=axes)
    return MixtureParams.trusted(
        weights / weights.sum(),
        np.mean(draws["means"], axis=axes),
        cov,
        np.asarray(_precision_cholesky(jnp.asarray(cov), family=family)),
        family.covariance_type,
        family.family,
    )


def point_log_likelihood(X: np.ndarray, params: MixtureParams) -> float:
    """Total log-likelihood at one parameter set (through the same compiled program)."""
    draws = {
        k: np.asarray(getattr(params, k))[None, None] for k in ("weights", "means", "covariances")
    }
    return float(log_likelihood_draws(X, draws, params.covariance_type)[0, 0])


def align(
    draws: dict[str, np.ndarray], reference: MixtureParams, model: MixtureModel
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Relabel draws against the EM reference (ordered-means models are already identified)."""
    if model.priors.ordered_means:
        perms = np.broadcast_to(np.arange(model.n_components), (*draws["weights"].shape,))
        return dict(draws), perms
    ref = {"means": np.asarray(reference.means), "covariances": np.asarray(reference.covariances)}
    return align_to_reference(draws, ref, reference.covariance_type, model.standardisation.scale)


def convergence_summary(draws: dict[str, np.ndarray]) -> dict[str, Any]:
    """Split r-hat and effective sample size of every parameter element."""
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

    r_hat, ess = {}, {}
    for name, value in draws.items():
        value = np.asarray(value, dtype=np.float64)
        if value.shape[0] > 1 and value.shape[1] > 3:
            r_hat[name] = np.asarray(split_gelman_rubin(value))
        else:
            r_hat[name] = np.full(value.shape[2:], np.nan)
        ess[name] = (
            np.asarray(effective_sample_size(value))
            if value.shape[1] > 3
            else (np.full(value.shape[2:], np.nan))
        )
    finite_r = [np.nanmax(v) for v in r_hat.values() if np.isfinite(v).any()]
    finite_e = [np.nanmin(v) for v in ess.values() if np.isfinite(v).any()]
    return {
        "r_hat": r_hat,
        "ess": ess,
        "max_r_hat": float(max(finite_r)) if finite_r else float("nan"),
        "min_ess": float(min(finite_e)) if finite_e else float("nan"),
    }
