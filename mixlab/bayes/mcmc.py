"""NUTS on the Bayesian mixture: NumPyro's kernel, driven by one compiled program.

NumPyro's ``MCMC`` wrapper recompiles its collection loop on every ``run``
(and per chain when chains run one after another); on a 2-core CPU that cost
~5-30 s per fit against well under a second of actual sampling.  mixlab
drives NumPyro's NUTS kernel itself, as the EM driver owns its loop: all
chains are ``vmap``-ed inside one ``lax.scan`` over warmup and sampling, the
data and data-derived constants are arguments rather than constants, and the
program is compiled ahead of time once per (model spec, shapes, settings) and
cached.  Compile time is reported apart from run time.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.infer.hmc import hmc
from numpyro.infer.initialization import init_to_sample
from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn

from mixlab._jaxutil import CompiledCache, Progress
from mixlab.bayes.common import (
    BayesRun,
    align,
    build_model,
    convergence_summary,
    point_log_likelihood,
    posterior_mean,
    reference_fit,
)
from mixlab.density import log_likelihood_draws
from mixlab.families import Family
from mixlab.methods import NUTS

Array = jax.Array


class NUTSSettings(NamedTuple):
    """Static settings of one compiled NUTS program."""

    num_warmup: int
    num_samples: int
    target_accept: float
    max_tree_depth: int
    progress_every: int  # 0: no progress reports


class NUTSOutput(NamedTuple):
    samples: dict[str, Array]  # constrained sites, (chain, draw, ...)
    diverging: Array  # (chain, warmup + samples)
    num_steps: Array
    step_size: Array
    potential_energy: Array
    accept_prob: Array


def _program(
    keys: Array,
    z0: Any,
    model_args: tuple,
    *,
    potential_gen: Any,
    postprocess_gen: Any,
    settings: NUTSSettings,
) -> NUTSOutput:
    init_fn, sample_fn = hmc(potential_fn_gen=potential_gen, algo="NUTS")
    total = settings.num_warmup + settings.num_samples

    def init_one(key: Array, z: Any) -> Any:
        return init_fn(
            z,
            num_warmup=settings.num_warmup,
            target_accept_prob=settings.target_accept,
            max_tree_depth=settings.max_tree_depth,
            model_args=model_args,
            rng_key=key,
        )

    states = jax.vmap(init_one)(keys, z0)
    sample_all = jax.vmap(sample_fn, in_axes=(0, None, None))

    def step(states: Any, i: Array) -> tuple[Any, tuple]:
        states = sample_all(states, model_args, {})
        Progress.report(i, settings.progress_every, total)
        return states, (
            states.z,
            states.diverging,
            states.num_steps,
            states.adapt_state.step_size,
            states.potential_energy,
            states.mean_accept_prob,
        )

    _, (z, diverging, num_steps, step_size, energy, accept) = jax.lax.scan(
        step, states, jnp.arange(total)
    )
    postprocess = postprocess_gen(*model_args)
    kept = jax.tree_util.tree_map(lambda a: jnp.swapaxes(a[settings.num_warmup :], 0, 1), z)
    samples = jax.vmap(jax.vmap(postprocess))(kept)
    t = lambda a: jnp.swapaxes(a, 0, 1)  # noqa: E731
    return NUTSOutput(samples, t(diverging), t(num_steps), t(step_size), t(energy), t(accept))


_PROGRAMS = CompiledCache(size=16)


def _generators(model: Any, enum: bool = False) -> tuple[Any, Any]:
    """Potential-energy and postprocessing generators taking the model's arguments
    (NumPyro's ``initialize_model`` would run the model eagerly: slow on first use).
    ``enum``: sum out enumerated discrete sites (needs funsor; benchmarks only)."""

    def potential_gen(*args: Any) -> Any:
        return lambda z: potential_energy(model, args, {}, z, enum=enum)

    def postprocess_gen(*args: Any) -> Any:
        return lambda z: constrain_fn(model, args, {}, z)

    return potential_gen, postprocess_gen


_HELPERS: dict[Any, Any] = {}


def _spec_jit(name: str, model: Any, make: Any) -> Any:
    """A jitted helper for ``model``, built once per model spec."""
    key = (name, model.spec)
    if key not in _HELPERS:
        _HELPERS[key] = jax.jit(make(model))
    return _HELPERS[key]


def _make_unconstrain(model: Any) -> Any:
    return lambda values, args: unconstrain_fn(model, args, {}, values)


def _make_prior_points(model: Any) -> Any:
    def one(key: Array, args: tuple) -> Any:
        seeded = handlers.substitute(handlers.seed(model, key), substitute_fn=init_to_sample)
        trace = handlers.trace(seeded).get_trace(*args)
        values = {
            name: site["value"]
            for name, site in trace.items()
            if site["type"] == "sample" and not site["is_observed"]
        }
        return unconstrain_fn(model, args, {}, values)

    return jax.vmap(one, in_axes=(0, None))


def run_nuts_program(
    model: Any,
    model_args: tuple,
    spec: Any,
    keys: Array,
    z0: Any,
    settings: NUTSSettings,
    progress: bool,
    enum: bool = False,
) -> tuple[NUTSOutput, float, float]:
    """Run (compiling on first use) the NUTS program for ``model``.

    ``spec`` must determine the model's code completely given ``model_args``;
    it keys the cache of compiled programs.  Returns the output, the compile
    seconds and the run seconds.
    """
    args = (keys, z0, model_args)
    potential_gen, postprocess_gen = _generators(model, enum)
    fn = functools.partial(
        _program, potential_gen=potential_gen, postprocess_gen=postprocess_gen, settings=settings
    )
    compiled, compile_time, _ = _PROGRAMS.get((spec, settings, enum), fn, args)
    desc = f"NUTS ({keys.shape[0]} chain(s), {settings.num_warmup} warmup)"
    out, elapsed = Progress.run(
        compiled, args, settings.num_warmup + settings.num_samples, desc, progress
    )
    return out, compile_time, elapsed


def initial_points(
    model: Any, model_args: tuple, method: NUTS, start_values: dict | None, key: Array
) -> Any:
    """Unconstrained starting points, one per chain (leading chain axis).

    From ``start_values`` (the EM solution) jittered by ``init_jitter`` in the
    unconstrained space, or drawn from the prior.
    """
    if start_values is None:
        prior_points = _spec_jit("prior_points", model, _make_prior_points)
        return prior_points(jax.random.split(key, method.num_chains), model_args)
    z = _spec_jit("unconstrain", model, _make_unconstrain)(start_values, model_args)
    leaves, treedef = jax.tree_util.tree_flatten(z)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef,
        [
            leaf[None]
            + method.init_jitter
            * jax.random.normal(k, (method.num_chains, *leaf.shape), leaf.dtype)
            for leaf, k in zip(leaves, keys)
        ],
    )


def run_nuts(
    X: np.ndarray,
    n_components: int,
    family: Family,
    method: NUTS,
    key: jax.Array,
    sample_weight: np.ndarray | None = None,
) -> BayesRun:
    key_em, key_run, key_init = jax.random.split(key, 3)
    model = build_model(X, n_components, family, method.priors, sample_weight)
    reference = reference_fit(
        X, n_components, family, method.em, key_em, model.standardisation, sample_weight
    )
    model_args = model.model_args(jnp.asarray(model.standardisation.apply(X)), sample_weight)
    start = model.site_values(reference.params) if method.init == "em" else None
    z0 = initial_points(model, model_args, method, start, key_init)
    chain_keys = jax.random.split(key_run, method.num_chains)
    total = method.num_warmup + method.num_samples
    settings = NUTSSettings(
        method.num_warmup,
        method.num_samples,
        float(method.target_accept),
        method.max_tree_depth,
        Progress.every(total, method.progress),
    )
    if method.chain_method == "vectorized":
        out, compile_time, elapsed = run_nuts_program(
            model, model_args, model.spec, chain_keys, z0, settings, method.progress
        )
    else:  # sequential: the same one-chain program, chain after chain
        parts, compile_time, elapsed = [], 0.0, 0.0
        for c in range(method.num_chains):
            z_c = jax.tree_util.tree_map(lambda a, c=c: a[c : c + 1], z0)
            o, ct, el = run_nuts_program(
                model,
                model_args,
                model.spec,
                chain_keys[c : c + 1],
                z_c,
                settings,
                method.progress,
            )
            parts.append(o)
            compile_time, elapsed = compile_time + ct, elapsed + el
        out = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *parts)

    draws = model.to_data_units(out.samples)
    draws, perms = align(draws, reference.params, model)
    summary = convergence_summary(draws)
    draw_ll = log_likelihood_draws(X, draws, family, row_weight=sample_weight)
    point = posterior_mean(draws, family)
    ll_point = point_log_likelihood(X, point, sample_weight)
    kept = slice(method.num_warmup, None)
    diverging = np.asarray(out.diverging)[:, kept]
    divergences = int(diverging.sum())
    converged = divergences == 0 and (
        method.num_chains == 1
        or not np.isfinite(summary["max_r_hat"])
        or summary["max_r_hat"] < 1.01
    )
    return BayesRun(
        params=point,
        log_likelihood=ll_point,
        trace=draw_ll.reshape(-1),
        converged=bool(converged),
        n_iter=method.num_samples,
        elapsed=elapsed,
        compile_time=compile_time,
        posterior=draws,
        diagnostics={
            "divergences": divergences,
            "diverging": diverging,
            "step_size": np.asarray(out.step_size)[:, -1],
            "num_steps": np.asarray(out.num_steps)[:, kept],
            "accept_prob": np.asarray(out.accept_prob)[:, kept],
            "potential_energy": np.asarray(out.potential_energy)[:, kept],
            "warmup_divergences": int(np.asarray(out.diverging)[:, : method.num_warmup].sum()),
            "draw_log_likelihood": draw_ll,
            "label_permutations": perms,
            "reference_log_likelihood": reference.log_likelihood,
            "reference_params": reference.params,
            **summary,
        },
    )
