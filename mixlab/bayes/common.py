"""What SVI and NUTS share: the EM reference, draws in data units, alignment, summaries."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from mixlab.align import align_to_reference
from mixlab.bayes.model import MixtureModel
from mixlab.density import log_likelihood_draws
from mixlab.em.driver import EMRun, fit_em
from mixlab.families import Family, Standardisation
from mixlab.methods import EM
from mixlab.params import MixtureParams
from mixlab.priors import Priors

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


def _convert(params: MixtureParams, std: Standardisation, to_data: bool) -> MixtureParams:
    family = params.family
    with jax.enable_x64(params.dtype == np.float64):
        convert = family.to_data_units if to_data else family.from_data_units
        components = convert({k: jax.numpy.asarray(v) for k, v in params.components.items()}, std)
        components = {k: np.asarray(v) for k, v in components.items()}
    return MixtureParams.trusted(np.asarray(params.weights), components, family)


def reference_fit(
    X: np.ndarray,
    n_components: int,
    family: Family,
    em: EM | None,
    key: Array,
    standardisation: Standardisation,
    sample_weight: np.ndarray | None = None,
) -> EMRun:
    """The EM fit that starts the Bayesian method and anchors label alignment.

    It runs on the standardised data (so ``reg_covar`` is in data standard
    deviations and the whole Bayesian fit is scale-free) and its parameters
    are returned in data units.
    """
    em = em or EM(n_init=4)
    em.check_for(family)
    init = em.init
    if not isinstance(init, str):
        start = MixtureParams.from_dict(init, family=family).astype(X.dtype)
        init = _convert(start, standardisation, to_data=False)
    run = fit_em(
        standardisation.apply(X),
        n_components,
        family,
        key=key,
        init=init,
        sample_weight=sample_weight,
        **em.engine_options(),
    )
    params = _convert(run.params, standardisation, to_data=True)
    n_obs = X.shape[0] if sample_weight is None else float(np.sum(sample_weight))
    log_jacobian = n_obs * float(np.sum(np.log(standardisation.scale)))
    return run._replace(params=params, log_likelihood=run.log_likelihood - log_jacobian)


def build_model(
    X: np.ndarray,
    n_components: int,
    family: Family,
    priors: Priors | None,
    sample_weight: np.ndarray | None = None,
) -> MixtureModel:
    """The Bayesian model for ``X``: the family's fast formulation in float64.

    On standardised data the Gaussian expanded formulation's rounding (about
    ``eps * max z^2 / variance``) is negligible in float64, and the likelihood
    and its gradient cost two small matrix products; float32 runs centred.
    """
    formulation = (
        "expanded"
        if X.dtype == np.float64 and "expanded" in family.formulations
        else family.formulations[0]
    )
    std = family.standardisation(X, sample_weight)
    priors = priors or Priors()
    constants = family.prior_constants(std.apply(X), std, priors, sample_weight)
    return MixtureModel(family, n_components, std, priors, formulation, constants)


def posterior_mean(draws: dict[str, np.ndarray], family: Family) -> MixtureParams:
    """Point estimate: the mean of the aligned draws (averages of covariances stay PD,
    of rates positive, of probabilities in [0, 1])."""
    axes = (0, 1)
    weights = np.mean(draws["weights"], axis=axes)
    components = {name: np.mean(draws[name], axis=axes) for name in family.param_names()}
    return MixtureParams.trusted(weights / weights.sum(), components, family)


def point_log_likelihood(
    X: np.ndarray, params: MixtureParams, sample_weight: np.ndarray | None = None
) -> float:
    """Total log-likelihood at one parameter set (through the same compiled program)."""
    draws = {"weights": np.asarray(params.weights)[None, None]}
    draws.update({k: np.asarray(v)[None, None] for k, v in params.components.items()})
    return float(log_likelihood_draws(X, draws, params.family, row_weight=sample_weight)[0, 0])


def align(
    draws: dict[str, np.ndarray], reference: MixtureParams, model: MixtureModel
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Relabel draws against the EM reference (ordered-means models are already identified)."""
    if model.priors.ordered_means:
        perms = np.broadcast_to(np.arange(model.n_components), (*draws["weights"].shape,))
        return dict(draws), perms
    return align_to_reference(draws, reference, model.standardisation.scale)


def convergence_summary(draws: dict[str, np.ndarray]) -> dict[str, Any]:
    """Split r-hat and effective sample size of every parameter element (NaN for an
    element that does not vary, such as the weight of a one-component mixture)."""
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

    r_hat, ess = {}, {}
    for name, value in draws.items():
        value = np.asarray(value, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):  # constant: 0 / 0
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
