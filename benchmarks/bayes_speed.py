"""Bayesian speed: mixlab's marginalised mixture against the tutorial-way NumPyro model.

Same data, same priors (mixlab's defaults, in the same standardised units),
same sampler settings:

1. NUTS effective samples per second.  mixlab's model sums the assignments out
   with ``logsumexp`` through the EM engine's log-densities; the tutorial model
   has a discrete ``z`` per row under ``config_enumerate`` that NumPyro
   enumerates (funsor).  Both run through mixlab's compiled NUTS driver, so
   compile time is excluded and only the model formulation differs.  ESS is
   the smallest over all parameter elements (weights, means, covariances in
   data units, labels aligned to the EM solution).
2. What a user waits for, cold: ``ml.fit(..., method=ml.NUTS())`` against
   ``numpyro.infer.MCMC.run`` on the tutorial model (both include compiling).
3. SVI steps per second (mixlab, mean-field guide, compile excluded).
4. The cost of one gradient of mixlab's log density against one EM iteration.

Run: ``python benchmarks/bayes_speed.py`` (needs ``funsor`` for the enumerated
model: ``pip install funsor``).  ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.diagnostics import effective_sample_size
from numpyro.infer.util import potential_energy

import mixlab as ml
from mixlab.align import align_to_reference
from mixlab.bayes import mcmc
from mixlab.bayes.common import build_model
from mixlab.families import get_family


def tutorial_model(X_std, constants, log_jacobian_per_row, features=None, row_weight=None, K=2):
    """The NumPyro tutorial way: a discrete assignment per row, enumerated.

    ``features`` (mixlab's precomputed moments) and ``row_weight`` are accepted and
    ignored, so both models take the same arguments."""
    mean_loc_std = constants["mean_loc"]
    N, D = X_std.shape
    weights = numpyro.sample("weights", dist.Dirichlet(jnp.ones(K)))
    with numpyro.plate("components", K, dim=-1):
        means = numpyro.sample("means_std", dist.Normal(mean_loc_std, 3.0).to_event(1))
        scales = numpyro.sample("scales", dist.HalfNormal(jnp.ones(D)).to_event(1))
        corr = numpyro.sample("corr_chol", dist.LKJCholesky(D, 2.0))
    scale_tril = scales[..., :, None] * corr
    with numpyro.plate("data", N, dim=-1):
        z = numpyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
        numpyro.sample(
            "obs", dist.MultivariateNormal(means[z], scale_tril=scale_tril[z]), obs=X_std
        )
    numpyro.factor("jacobian", N * log_jacobian_per_row)


def min_ess(samples, model, reference):
    draws = model.to_data_units(
        {k: samples[k] for k in ("weights", "means_std", "scales", "corr_chol")}
    )
    draws, _ = align_to_reference(draws, reference, model.standardisation.scale)
    ess = [np.min(effective_sample_size(np.asarray(v, np.float64))) for v in draws.values()]
    return float(min(ess))


def nuts_ess_per_second(X, K, warmup, samples, chains):
    fam = get_family("full")
    em = ml.fit(X, K, ml.EM(n_init=8), key=0)
    model = build_model(X, K, fam, None)
    args = model.model_args(jnp.asarray(model.standardisation.apply(X)))
    method = ml.NUTS(num_warmup=warmup, num_samples=samples, num_chains=chains, progress=False)
    z0 = mcmc.initial_points(
        model, args, method, model.site_values(em.params), jax.random.PRNGKey(1)
    )
    keys = jax.random.split(jax.random.PRNGKey(2), chains)
    settings = mcmc.NUTSSettings(warmup, samples, 0.8, 10, 0)
    from numpyro.contrib.funsor import config_enumerate
    from numpyro.contrib.funsor import enum as enum_handler

    # what NumPyro's MCMC does to an enumerated model (max plate nesting 1)
    tutorial = functools.partial(tutorial_model, K=K)
    enumerated = enum_handler(config_enumerate(tutorial), first_available_dim=-2)
    rows = {}
    for name, m, enum in (
        ("mixlab (z summed out)", model, False),
        ("tutorial (z enumerated)", enumerated, True),
    ):
        spec = ("bench", name, K)
        out, compile_s, run_s = mcmc.run_nuts_program(
            m, args, spec, keys, z0, settings, False, enum=enum
        )
        ess = min_ess(out.samples, model, em.params)
        leapfrogs = int(np.sum(out.num_steps))
        rows[name] = (
            compile_s,
            run_s,
            ess,
            leapfrogs,
            int(np.sum(np.asarray(out.diverging)[:, warmup:])),
        )
    return rows, em


def sampler_floor(n_dims, warmup, samples, chains):
    """Seconds per (batched) leapfrog of the same NUTS driver on a trivial model:
    the part of every step that no model formulation can remove."""

    def normal_model(x0, unused1=None, unused2=None, unused3=None, unused4=None):
        numpyro.sample("x", dist.Normal(0.0, 1.0).expand([n_dims]).to_event(1))

    args = (jnp.zeros(()), None, None, None, None)
    z0 = {"x": jnp.zeros((chains, n_dims))}
    keys = jax.random.split(jax.random.PRNGKey(5), chains)
    settings = mcmc.NUTSSettings(warmup, samples, 0.8, 10, 0)
    out, _, run_s = mcmc.run_nuts_program(
        normal_model, args, ("bench", "floor", n_dims), keys, z0, settings, False
    )
    return run_s / (int(np.sum(out.num_steps)) / chains)


def cold_wall_times(X, K, warmup, samples, chains):
    from numpyro.infer import MCMC, NUTS

    fam = get_family("full")
    model = build_model(X, K, fam, None)
    args = model.model_args(jnp.asarray(model.standardisation.apply(X)))
    start = time.perf_counter()
    mc = MCMC(
        NUTS(functools.partial(tutorial_model, K=K)),
        num_warmup=warmup,
        num_samples=samples,
        num_chains=chains,
        chain_method="vectorized",
        progress_bar=False,
    )
    mc.run(jax.random.PRNGKey(3), *args)
    tutorial = time.perf_counter() - start
    mcmc._PROGRAMS.clear()
    start = time.perf_counter()
    ml.fit(
        X,
        K,
        ml.NUTS(num_warmup=warmup, num_samples=samples, num_chains=chains, progress=False),
        key=3,
    )
    ours = time.perf_counter() - start
    return tutorial, ours


def gradient_vs_em(X, K, repeats=200):
    fam = get_family("full")
    model = build_model(X, K, fam, None)
    args = model.model_args(jnp.asarray(model.standardisation.apply(X)))
    em = ml.fit(X, K, ml.EM(tol=0.0, max_iter=200), key=0)
    values = model.site_values(em.params)
    z = numpyro.infer.util.unconstrain_fn(model, args, {}, values)
    grad = jax.grad(lambda z: potential_energy(model, args, {}, z))

    @jax.jit
    def many(z):
        def body(i, c):
            g = grad(jax.tree_util.tree_map(lambda a: a + c * 1e-30, z))
            return c + jax.tree_util.tree_leaves(g)[0].ravel()[0] * 1e-30

        return jax.lax.fori_loop(0, repeats, body, jnp.zeros((), X.dtype))

    many(z).block_until_ready()
    start = time.perf_counter()
    many(z).block_until_ready()
    grad_s = (time.perf_counter() - start) / repeats
    return grad_s, em.elapsed / em.n_iter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    warmup, samples, chains = (200, 200, 2) if args.quick else (1000, 1000, 4)
    X = ml.datasets.load("faithful")
    K = 2
    print(
        f"full covariance, float64, same priors; {chains} chains x ({warmup} warmup + "
        f"{samples} draws); {os.cpu_count()} cores, jax {jax.__version__}\n"
    )
    datasets = [
        ("faithful", X, 2),
        ("4 clusters", ml.datasets.four_clusters(n_samples=2000 if args.quick else 5000).X, 4),
    ]
    print(
        f"{'data':24s} {'NUTS model':25s} {'compile s':>9s} {'run s':>7s} {'min ESS':>8s} "
        f"{'ESS/s':>8s} {'leapfrogs':>9s} {'us/leapfrog':>11s} {'diverg.':>7s} {'ratio':>6s}"
    )
    floors = []
    for label, data, k in datasets:
        with jax.enable_x64(True):
            rows, _ = nuts_ess_per_second(data, k, warmup, samples, chains)
            n_dims = (k - 1) + 2 * k + 2 * k + k  # weights, means, scales, correlations
            floors.append((n_dims, sampler_floor(n_dims, warmup, samples, chains)))
        rates = {name: ess / r for name, (c, r, ess, lf, div) in rows.items()}
        ratio = rates["mixlab (z summed out)"] / rates["tutorial (z enumerated)"]
        name_data = f"{label} ({len(data)}x{data.shape[1]}, K={k})"
        for name, (c, r, ess, lf, div) in rows.items():
            tail = f"{ratio:5.1f}x" if name.startswith("mixlab") else ""
            per = r / (lf / chains) * 1e6
            print(
                f"{name_data:24s} {name:25s} {c:9.1f} {r:7.2f} {ess:8.0f} {ess / r:8.0f} "
                f"{lf:9d} {per:11.1f} {div:7d} {tail:>6s}"
            )
            name_data = ""
    print(
        "ratio: mixlab's ESS/s over the tutorial model's (target >= 3x); us/leapfrog: per "
        f"step of all {chains} chains together; divergences after warmup"
    )
    for n_dims, floor in floors:
        print(
            f"sampler floor: NUTS on a {n_dims}-d standard normal, same driver: "
            f"{floor * 1e6:.1f} us/leapfrog"
        )
    print()

    with jax.enable_x64(True):
        tutorial, mine = cold_wall_times(X, K, warmup, samples, chains)
        print(
            f"cold wall time, compile included: numpyro MCMC.run on the tutorial model "
            f"{tutorial:.1f} s; ml.fit(method=ml.NUTS()) {mine:.1f} s "
            f"({tutorial / mine:.1f}x)\n"
        )

    svi = ml.fit(X, K, ml.SVI(num_steps=5000, guide="normal", progress=False), key=4)
    svi = ml.fit(X, K, ml.SVI(num_steps=5000, guide="normal", progress=False), key=4)
    print(
        f"SVI (normal guide): {5000 / svi.elapsed:,.0f} steps/s "
        f"(5000 steps in {svi.elapsed:.3f} s, compile excluded)\n"
    )

    print(f"{'data':28s} {'grad of log density':>20s} {'one EM iteration':>17s} {'ratio':>6s}")
    for label, data, k in (
        ("faithful (272 x 2, K=2)", X, 2),
        ("4 clusters (5000 x 2, K=4)", ml.datasets.four_clusters(n_samples=5000).X, 4),
    ):
        with jax.enable_x64(True):
            g, e = gradient_vs_em(data, k)
        print(f"{label:28s} {g * 1e6:17.1f} us {e * 1e6:14.1f} us {g / e:6.1f}")


if __name__ == "__main__":
    main()
