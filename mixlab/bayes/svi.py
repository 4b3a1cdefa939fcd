"""SVI on the Bayesian mixture with NumPyro's automatic guides, in one compiled program.

NumPyro's ``SVI.run`` initialises eagerly and compiles its loop on every call;
mixlab builds the guide, initialises it, runs every step in a ``lax.scan``,
estimates the final ELBO from many particles and draws from the guide inside
one program, compiled ahead of time once per (model spec, guide settings,
shapes) and cached.  The starting values (the EM solution) are arguments, so a
cached program serves any data set of the same shape.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro.infer import SVI as NumPyroSVI
from numpyro.infer import Trace_ELBO, autoguide
from numpyro.infer.initialization import init_to_median, init_to_value

from mixlab._jaxutil import CompiledCache, Progress
from mixlab.bayes.common import (
    BayesRun,
    align,
    build_model,
    point_log_likelihood,
    posterior_mean,
    reference_fit,
)
from mixlab.bayes.model import MixtureModel
from mixlab.errors import FitError
from mixlab.families import Family
from mixlab.methods import SVI

Array = jax.Array

GUIDES = {
    "delta": autoguide.AutoDelta,
    "normal": autoguide.AutoNormal,
    "mvn": autoguide.AutoMultivariateNormal,
    "lowrank": autoguide.AutoLowRankMultivariateNormal,
}


class SVISettings(NamedTuple):
    """Static settings of one compiled SVI program."""

    guide: str
    rank: int | None
    learning_rate: float
    optimizer: Any  # a user optimizer object, or None for Adam(learning_rate)
    num_particles: int
    num_steps: int
    num_draws: int
    elbo_particles: int
    progress_every: int


class SVIOutput(NamedTuple):
    params: dict[str, Array]  # guide parameters
    losses: Array  # (num_steps,) negative ELBO per step
    elbo_values: Array  # (elbo_particles,) single-particle ELBOs at the fitted guide
    draws: dict[str, Array]  # constrained sample sites, leading (n_draws,)


def make_guide(
    name: str, model: MixtureModel, init_values: dict[str, Any] | None, rank: int | None = None
) -> Any:
    """An automatic guide started at ``init_values`` (or at the prior median)."""
    init_loc = init_to_median() if init_values is None else init_to_value(values=init_values)
    kwargs: dict[str, Any] = {"init_loc_fn": init_loc}
    if name == "lowrank" and rank is not None:
        kwargs["rank"] = rank
    return GUIDES[name](model, **kwargs)


def _program(
    key: Array,
    model_args: tuple,
    init_values: dict[str, Array] | None,
    *,
    model: MixtureModel,
    settings: SVISettings,
) -> SVIOutput:
    key_init, key_elbo, key_draws = jax.random.split(key, 3)
    guide = make_guide(settings.guide, model, init_values, settings.rank)
    optimizer = settings.optimizer or numpyro.optim.Adam(step_size=settings.learning_rate)
    svi = NumPyroSVI(model, guide, optimizer, Trace_ELBO(num_particles=settings.num_particles))
    state = svi.init(key_init, *model_args)

    def step(state: Any, i: Array) -> tuple[Any, Array]:
        state, loss = svi.update(state, *model_args)
        Progress.report(i, settings.progress_every, settings.num_steps)
        return state, loss

    state, losses = jax.lax.scan(step, state, jnp.arange(settings.num_steps))
    params = svi.get_params(state)
    single = Trace_ELBO(num_particles=1)
    elbo_values = jax.vmap(lambda k: -single.loss(k, params, model, guide, *model_args))(
        jax.random.split(key_elbo, settings.elbo_particles)
    )
    if settings.guide == "delta":
        draws = {k: v[None] for k, v in guide.median(params).items()}
    else:
        draws = guide.sample_posterior(
            key_draws, params, *model_args, sample_shape=(settings.num_draws,)
        )
    return SVIOutput(params, losses, elbo_values, draws)


_PROGRAMS = CompiledCache(size=16)


def _converged(elbo_trace: np.ndarray) -> bool:
    """ELBO flat over the last fifth of the steps: the mean of the last 10 %
    differs from the mean of the 10 % before by less than 3 standard errors
    plus 1e-4 relative."""
    n = len(elbo_trace) // 10
    if n < 5:
        return False
    last, prev = elbo_trace[-n:], elbo_trace[-2 * n : -n]
    se = np.sqrt(np.var(last) / n + np.var(prev) / n)
    return bool(abs(last.mean() - prev.mean()) < 3 * se + 1e-4 * abs(last.mean()))


def run_svi(
    X: np.ndarray,
    n_components: int,
    family: Family,
    method: SVI,
    key: jax.Array,
    sample_weight: np.ndarray | None = None,
) -> BayesRun:
    key_em, key_run = jax.random.split(key)
    model = build_model(X, n_components, family, method.priors, sample_weight)
    reference = reference_fit(
        X, n_components, family, method.em, key_em, model.standardisation, sample_weight
    )
    model_args = model.model_args(jnp.asarray(model.standardisation.apply(X)), sample_weight)
    init_values = model.site_values(reference.params) if method.init == "em" else None
    settings = SVISettings(
        method.guide,
        method.rank,
        float(method.learning_rate),
        method.optimizer,
        method.num_particles,
        method.num_steps,
        method.num_draws,
        method.elbo_particles,
        Progress.every(method.num_steps, method.progress),
    )
    args = (key_run, model_args, init_values)
    fn = functools.partial(_program, model=model, settings=settings)
    optimizer_key = None if method.optimizer is None else id(method.optimizer)
    compiled, compile_time, _ = _PROGRAMS.get(
        (model.spec, settings._replace(optimizer=optimizer_key)), fn, args
    )
    out, elapsed = Progress.run(
        compiled, args, method.num_steps, f"SVI ({method.guide} guide)", method.progress
    )
    losses = np.asarray(out.losses, dtype=np.float64)
    if not np.all(np.isfinite(losses[-max(1, len(losses) // 10) :])):
        raise FitError(
            "SVI diverged: the ELBO became non-finite; lower learning_rate, use more "
            "num_particles, or start from EM (init='em')"
        )
    draws = model.to_data_units({k: jnp.asarray(v)[None] for k, v in out.draws.items()})
    draws, perms = align(draws, reference.params, model)
    point = posterior_mean(draws, family)
    elbo_values = np.asarray(out.elbo_values, dtype=np.float64)
    n = len(elbo_values)
    return BayesRun(
        params=point,
        log_likelihood=point_log_likelihood(X, point, sample_weight),
        trace=-losses,
        converged=_converged(-losses),
        n_iter=method.num_steps,
        elapsed=elapsed,
        compile_time=compile_time,
        posterior=draws,
        diagnostics={
            "elbo": float(np.mean(elbo_values)),
            "elbo_se": float(np.std(elbo_values, ddof=1) / np.sqrt(n)) if n > 1 else 0.0,
            "guide": method.guide,
            "label_permutations": perms,
            "reference_log_likelihood": reference.log_likelihood,
            "reference_params": reference.params,
            "guide_params": {k: np.asarray(v) for k, v in out.params.items()},
        },
    )
