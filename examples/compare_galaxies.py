"""EM, SVI and NUTS on the galaxies data for K = 2..6 components, with BIC, AIC, ICL and LOO.

The 82 galaxy velocities of Roeder (1990) are the classic test where the
number of components is in doubt: published analyses put it anywhere from 3
to 7.  For each K this script fits the same one-dimensional Gaussian mixture
three ways, by EM (maximum likelihood, best of ``--n-init`` k-means++
restarts), by SVI (mean-field normal guide) and by NUTS, one ``ml.select`` per
method over K, prints EM against the posterior (``ml.compare(em, svi, nuts)``:
the parameter table, one row per method and a verdict), and then compares the
values of K:

* BIC, AIC and ICL of the EM fits (``ml.select``'s table; lower is better);
* the PSIS-LOO estimate of the expected log predictive density of the NUTS
  fits (``ml.select(..., method=ml.NUTS(...), criterion="loo")``, whose table
  holds it on the deviance scale, -2 elpd), ranked by ``arviz.compare``
  (higher elpd is better), with the standard error of each difference to the
  best.

What the numbers show: with 82 points the criteria disagree and LOO cannot
separate several K.  At the default settings (seed 0) BIC, which charges
log(82) = 4.4 per parameter (3K - 1 of them), prefers K = 3 with K = 5 a
quarter of a point behind; AIC prefers K = 5; ICL, which adds twice the
entropy of the classification, prefers K = 3 clearly (1574.5 against 1603.9
for K = 5: the extra components overlap); LOO ranks K = 6 first but K =
3, 4 and 5 lie within two standard errors of it (elpd differences of 0.2 to
1.5 with standard errors of 0.4 to 2.5), and only K = 2 is clearly worse.
PSIS flags single observations with high Pareto k (a point that a small
component covers on its own), so LOO itself is uncertain there.  From K = 4
on, components with weights near zero make the posterior awkward: NUTS may
report divergences (K = 4: about 70 of 2000 draws), and the mean-field SVI
guide, which cannot represent the posterior's multiple modes, no longer
contains EM.  The honest answer is a range of K, not one number; the forest
plot of the LOO-best K shows which weights and means the data pin down and
which they do not.

All Bayesian fits use mixlab's default weakly informative priors, scaled to
the data (``ml.Priors``).  The first NUTS and SVI fit of each K compiles for
some seconds; the sampling itself is quick.

Run: ``python examples/compare_galaxies.py [--k-min 2 --k-max 6] [--warmup 500 --samples 500]
[--chains 4] [--svi-steps 3000] [--methods em,svi,nuts] [--plot-dir DIR]``
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import mixlab as ml
from mixlab.arviz_io import import_arviz, psis_loo

METHODS = ("em", "svi", "nuts")


def _quiet(fn, *args, **kwargs):
    """ArviZ warns about high Pareto k on 82 points; the table reports them instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _select(*args, **kwargs) -> ml.Selection:
    """``ml.select`` without its warning about high Pareto k (reported per K below)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PSIS-LOO")
        return ml.select(*args, **kwargs)


def _parameter_table(cmp: ml.Comparison) -> pd.DataFrame:
    """Weights and means: EM and each method's posterior mean (and NUTS's HDI)."""
    table = cmp.table
    keep = [i for i in table.index if i.startswith(("weights", "means"))]
    wanted = ("_mean", "_hdi_low", "_hdi_high")
    cols = ["em"] + [c for c in table.columns if c.endswith(wanted) and not c.startswith("svi")]
    cols += [c for c in table.columns if c.startswith("svi") and c.endswith("_mean")]
    return table.loc[keep, cols]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k-min", type=int, default=2)
    parser.add_argument("--k-max", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=500, help="NUTS warm-up draws per chain")
    parser.add_argument("--samples", type=int, default=500, help="NUTS draws kept per chain")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--svi-steps", type=int, default=3000)
    parser.add_argument("--n-init", type=int, default=16, help="EM restarts")
    parser.add_argument(
        "--methods",
        default="em,svi,nuts",
        help="comma-separated subset of em,svi,nuts (EM always runs: it is the reference)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--plot-dir", help="write the criteria against K and the forest plot of the LOO-best K here"
    )
    args = parser.parse_args(argv)
    methods = {m.strip() for m in args.methods.split(",") if m.strip()} | {"em"}
    unknown = methods - set(METHODS)
    if unknown:
        parser.error(f"unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
    if not 1 <= args.k_min <= args.k_max:
        parser.error("need 1 <= --k-min <= --k-max")
    az = import_arviz()

    X = ml.datasets.load("galaxies")
    n = len(X)
    print(f"Galaxy velocities: {n} values, {X.min():.0f} to {X.max():.0f} km/s")
    ks = range(args.k_min, args.k_max + 1)
    # One EM setting for the EM fits and for the starts of SVI and NUTS, so that each
    # K compiles one EM program (centred: the Bayesian start runs on standardised data).
    em_method = ml.EM(n_init=args.n_init, formulation="centred")
    # One ml.select per method: each K is ml.fit(X, K, method, key=...) with the same key.
    selections = {"em": ml.select(X, ks, method=em_method, key=args.seed)}
    if "svi" in methods:
        svi = ml.SVI(num_steps=args.svi_steps, guide="normal", em=em_method, progress=False)
        selections["svi"] = _select(X, ks, method=svi, key=args.seed + 1)
    if "nuts" in methods:
        nuts = ml.NUTS(
            num_warmup=args.warmup,
            num_samples=args.samples,
            num_chains=args.chains,
            em=em_method,
            progress=False,
        )
        selections["nuts"] = _select(X, ks, method=nuts, key=args.seed + 2, criterion="loo")
    fits: dict[int, dict[str, ml.FitResult]] = {
        k: {m: sel.results[("gaussian", "full", k)] for m, sel in selections.items()} for k in ks
    }

    comparisons: dict[int, ml.Comparison] = {}
    loo_rows, idata = [], {}
    em_table = selections["em"].table.set_index("n_components")
    for k in ks:
        fit = fits[k]
        em = fit["em"]
        print(f"\n=== K = {k} ===")
        ll = em.restarts.log_likelihood
        print(
            f"EM: log-likelihood {em.log_likelihood:.3f}, BIC {em_table.loc[k, 'bic']:.2f}, AIC "
            f"{em_table.loc[k, 'aic']:.2f}; {np.mean(ll >= np.nanmax(ll) - 1.0):.0%} of {len(ll)} "
            "restarts reach the best"
        )
        if "nuts" in fit:
            idata[k] = _quiet(fit["nuts"].to_arviz)
            loo = psis_loo(fit["nuts"])
            loo_rows.append(
                {
                    "K": k,
                    "elpd_loo": loo.elpd,
                    "se": loo.se / 2.0,  # psis_loo's se is on the deviance scale
                    "p_loo": loo.p_loo,
                    "high_pareto_k": loo.n_high_pareto_k,
                }
            )
            print(
                f"NUTS: elpd_loo {loo.elpd:.2f} (se {loo.se / 2.0:.2f}), p_loo {loo.p_loo:.2f}, "
                f"{loo.n_high_pareto_k} point(s) with Pareto k > {loo.good_k:.2f}, "
                f"{fit['nuts'].diagnostics['divergences']} divergence(s)"
            )
        others = [fit[m] for m in ("svi", "nuts") if m in fit]
        if others:
            cmp = ml.compare(em, *others)
            comparisons[k] = cmp
            with pd.option_context("display.width", 160, "display.float_format", "{:.4g}".format):
                print(_parameter_table(cmp))
                print(cmp.methods.drop(columns=["seconds", "compile_seconds"]))
            print(cmp.summary)

    print("\n=== Choosing K ===")
    for name, sel in selections.items():
        print(f"\n{name.upper()} fits:")
        print(sel)
    bic = em_table[["log_likelihood", "n_parameters", "bic", "aic", "icl"]].rename(
        columns={"bic": "BIC", "aic": "AIC", "icl": "ICL"}
    )
    bic.index.name = "K"
    out = {"bic": bic, "fits": fits, "comparisons": comparisons, "selections": selections}
    out["bic_best"] = int(bic["BIC"].idxmin())
    out["aic_best"] = int(bic["AIC"].idxmin())
    out["icl_best"] = int(bic["ICL"].idxmin())
    print(
        f"\nBIC prefers K = {out['bic_best']}, AIC prefers K = {out['aic_best']}, "
        f"ICL prefers K = {out['icl_best']}."
    )
    if idata:
        loo_table = pd.DataFrame(loo_rows).set_index("K")
        ranked = _quiet(az.compare, {f"K={k}": v for k, v in idata.items()})
        out["loo"] = loo_table
        out["loo_compare"] = ranked
        with pd.option_context("display.width", 160, "display.float_format", "{:.2f}".format):
            print("\nPSIS-LOO of the NUTS fits, arviz.compare (higher elpd is better):")
            print(ranked.drop(columns=["scale"], errors="ignore"))
        best = int(str(ranked.index[0]).split("=")[1])
        close = [
            int(str(name).split("=")[1])
            for name, r in ranked.iterrows()
            if r["elpd_diff"] <= 2.0 * max(float(r["dse"]), 1.0)
        ]
        out["loo_best"], out["loo_close"] = best, sorted(close)
        print(
            f"LOO ranks K = {best} first; within two standard errors of it: "
            f"K = {', '.join(map(str, sorted(close)))}."
        )
        if len(close) > 1:
            print("The number of components is in doubt: LOO cannot separate these K.")
    if args.plot_dir:
        import matplotlib.pyplot as plt

        from mixlab import plot

        folder = Path(args.plot_dir)
        folder.mkdir(parents=True, exist_ok=True)
        panels = [("em", "bic"), ("em", "icl")] + (
            [("nuts", "loo")] if "nuts" in selections else []
        )
        fig, axes = plt.subplots(
            1, len(panels), figsize=(4.5 * len(panels), 3.8), layout="constrained"
        )
        for ax, (name, criterion) in zip(axes, panels):
            plot.selection(selections[name], criterion=criterion, ax=ax)
            ax.set_title(f"{name.upper()} fits")
        figures = [("galaxies_selection.png", fig)]
        k = out.get("loo_best", out["bic_best"])
        if k in comparisons:
            em, *others = (fits[k][m] for m in METHODS if m in fits[k])
            figures += [
                (f"galaxies_forest_K{k}.png", plot.forest(em, *others)),
                (f"galaxies_density_K{k}.png", plot.density_1d(em, X, bins=30)),
            ]
        for name, figure in figures:
            figure.savefig(folder / name)
            plt.close(figure)
            print(f"wrote {folder / name}")
    return out


if __name__ == "__main__":
    main()
