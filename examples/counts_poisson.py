"""Counts: a Poisson mixture for days absent from school (Quine 1975, R's ``MASS::quine``).

146 Australian children's days absent in a school year: mean 16.5, variance
264, far more spread than one Poisson distribution (variance = mean) allows.
A mixture of Poisson components captures that overdispersion: its variance is
``E[lambda] + Var[lambda]``.  EM fits K = 1..``--max-k`` components (batched
restarts each), BIC chooses K, and NUTS fits the chosen mixture under
Gamma priors scaled to the data, to see whether EM's rates hold up under the
posterior.

Two facts the numbers show: every EM iterate of a Poisson mixture keeps the
weighted mean of the rates equal to the data mean, and the one-component fit
is the sample mean exactly.

Run: ``python examples/counts_poisson.py [--max-k 4] [--n-init 10] [--samples 500] [--plot FILE]``
"""

from __future__ import annotations

import argparse

import numpy as np

import mixlab as ml


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-k", type=int, default=4)
    parser.add_argument("--n-init", type=int, default=10)
    parser.add_argument("--samples", type=int, default=500, help="NUTS draws per chain")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", help="write the histogram with the fitted mixture here")
    args = parser.parse_args(argv)

    days = ml.datasets.load("quine")  # (146, 1)
    x = days[:, 0]
    print(f"quine: {len(x)} children, days absent mean {x.mean():.2f}, variance {x.var():.1f}")
    fits = {}
    print(f"\n{'K':>2} {'log-lik':>10} {'BIC':>9}  weights / rates")
    for k in range(1, args.max_k + 1):
        em = ml.EM(n_init=args.n_init, tol=1e-8, max_iter=2000)
        fit = ml.fit(days, k, em, family="poisson", key=args.seed)
        fits[k] = fit
        order = np.argsort(fit.params.rates[:, 0])
        pairs = "  ".join(
            f"{w:.2f}/{r:.1f}"
            for w, r in zip(fit.params.weights[order], fit.params.rates[order, 0])
        )
        print(f"{k:>2} {fit.log_likelihood:10.2f} {fit.bic(days):9.2f}  {pairs}")
    best = min(fits, key=lambda k: fits[k].bic(days))
    fit = fits[best]
    w, rates = fit.params.weights, fit.params.rates[:, 0]
    mix_mean = float(w @ rates)
    mix_var = float(w @ rates + w @ np.square(rates) - mix_mean**2)
    print(
        f"\nBIC chooses K={best}: mixture mean {mix_mean:.2f} (data {x.mean():.2f}), "
        f"variance {mix_var:.1f} (data {x.var():.1f})"
    )
    nuts = ml.fit(
        days,
        best,
        ml.NUTS(
            num_warmup=args.samples,
            num_samples=args.samples,
            num_chains=args.chains,
            progress=False,
        ),
        family="poisson",
        key=args.seed + 1,
    )
    comparison = ml.compare(fit, nuts)
    print()
    print(
        comparison.table[["em", "nuts_mean", "nuts_sd", "nuts_hdi_low", "nuts_hdi_high"]]
        .round(3)
        .to_string()
    )
    print(comparison.summary)
    if args.plot:
        from mixlab import plot

        plot.density_1d(fit, days).savefig(args.plot)
        print(f"wrote {args.plot}")
    return {
        "fits": fits,
        "best": best,
        "mixture_mean": mix_mean,
        "mixture_variance": mix_var,
        "nuts": nuts,
        "comparison": comparison,
    }


if __name__ == "__main__":
    main()
