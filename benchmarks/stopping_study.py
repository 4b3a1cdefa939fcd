"""How far from the maximum does a default EM fit stop?  (issue: default fits that find it)

For every shipped data set and simulated mixtures of 2-8 components, fit with each
stopping rule, continue EM from the estimate to a tight tolerance (the maximum that
fit climbs to), and report the largest distance of any parameter from that maximum
in standard errors (computed at the maximum), with the iterations each rule took.

    python benchmarks/stopping_study.py [--seeds 3]

Reading the table: ``worst SE`` is the largest ``|theta - theta_max| / SE`` over all
parameters and cases; ``median it`` / ``worst it`` the iterations of the best restart.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

import mixlab as ml

RULES = {
    "change 1e-3 (scikit-learn, old default)": dict(criterion="change", tol=1e-3, max_iter=100),
    "gap 1e-4 (default)": dict(),
    "gap 1e-5": dict(criterion="gap", tol=1e-5),
}


def simulated(seed: int, k: int, d: int, family: str) -> tuple[np.ndarray, dict]:
    """A mixture of ``k`` moderately overlapping components."""
    rng = np.random.default_rng([seed, k, d])
    n = 150 * k
    z = rng.integers(0, k, n)
    if family == "poisson":
        rates = np.sort(rng.uniform(1.0, 5.0, k)) * np.arange(1, k + 1)
        return rng.poisson(rates[z])[:, None].astype(float), {}
    means = rng.normal(0.0, 2.5, (k, d)) * np.array([1.0, 20.0, 0.2, 5.0][:d] + [1.0] * (d - 4))[:d]
    scale = np.array([1.0, 20.0, 0.2, 5.0][:d] + [1.0] * (d - 4))[:d]
    X = means[z] + rng.normal(size=(n, d)) * scale
    return X, {}


def cases(seeds: int):
    X = np.asarray(ml.datasets.load("faithful"))
    yield "faithful K=2", X, 2, {}
    yield "faithful K=3", X, 3, {}
    G = np.asarray(ml.datasets.load("galaxies"))
    yield "galaxies K=3", G, 3, {}
    Q = np.asarray(ml.datasets.load("quine"))
    yield "quine poisson K=2", Q, 2, {"family": "poisson"}
    L, w = ml.datasets.load("lsat6", with_weights=True)
    yield "lsat6 bernoulli K=2", np.asarray(L), 2, {"family": "bernoulli", "sample_weight": w}
    for seed in range(seeds):
        for k in range(2, 9):
            X, _ = simulated(seed, k, 2, "gaussian")
            yield f"sim gaussian full K={k} s{seed}", X, k, {}
            yield f"sim gaussian diag K={k} s{seed}", X, k, {"covariance": "diag"}
            P, _ = simulated(seed, k, 1, "poisson")
            yield f"sim poisson K={k} s{seed}", P, k, {"family": "poisson"}


def flat(params: ml.MixtureParams) -> np.ndarray:
    return np.concatenate(
        [np.ravel(params.weights)] + [np.ravel(v) for v in params.components.values()]
    )


def distance_in_se(result: ml.FitResult) -> tuple[float, float] | None:
    """Largest |theta - theta_max| / SE and the log-likelihood gap, or None without SEs."""
    s = result.settings
    top = ml.fit(
        result.data,
        result.n_components,
        ml.EM(init=result.params, tol=1e-11, max_iter=100000, reg_covar=s["reg_covar"]),
        family=result.params.family,
        sample_weight=result.sample_weight,
        order=None,
    )
    try:
        se = flat(top.standard_errors())
    except ml.FitError:
        return None
    delta = np.abs(flat(result.params) - flat(top.params))
    z = np.where(se > 0, delta / np.where(se > 0, se, 1.0), 0.0)
    return float(np.max(z)), top.log_likelihood - result.log_likelihood


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args(argv)
    rows = {name: [] for name in RULES}
    for label, X, k, kw in cases(args.seeds):
        for name, rule in RULES.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = ml.fit(X, k, ml.EM(n_init=5, **rule), key=0, **kw)
                got = distance_in_se(r)
            rows[name].append((label, r.n_iter, got))
    print(
        "| rule | cases | with SEs | worst SE | cases > 0.05 SE | median gap | worst gap "
        "| median it | worst it |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, got in rows.items():
        ok = [g for _, _, g in got if g is not None]
        z = np.array([g[0] for g in ok])
        gap = np.array([g[1] for g in ok])
        it = np.array([n for _, n, _ in got])
        print(
            f"| {name} | {len(got)} | {len(ok)} | {z.max():.3g} | {(z > 0.05).sum()} | "
            f"{np.median(gap):.2g} | {gap.max():.2g} | {np.median(it):.0f} | {it.max()} |"
        )
    worst = max(rows["gap 1e-4 (default)"], key=lambda t: -1 if t[2] is None else t[2][0])
    print(f"\nworst case of the default: {worst[0]} ({worst[2][0]:.3g} SE, {worst[1]} iterations)")
    old = rows["change 1e-3 (scikit-learn, old default)"]
    bad = [(lab, g) for lab, _, g in old if g is None or g[0] > 0.05]
    print(f"old default: {len(bad)} of {len(old)} cases beyond 0.05 SE or without SEs")


if __name__ == "__main__":
    main()
