"""Simulation-based calibration of mixlab's NUTS and SVI fits (Talts et al. 2018).

For each (method, dimension): draw the parameters of a K=2 Gaussian mixture
(full covariances) from the prior, ``n_obs`` rows from them, fit with
``ml.fit(..., method=ml.NUTS(...) | ml.SVI(guide="normal"))`` under the same
priors, and rank the truth among ``L`` posterior draws, for label-invariant
quantities (components ordered by their mean on the first feature; see
:mod:`mixlab.calibration`).  Ranks of an exact posterior are uniform: each
quantity gets a chi-square test, Bonferroni-corrected over the quantities.

The fits use :class:`mixlab.calibration.UnstandardisedGaussian`: mixlab's
model and ``ml.fit`` path with the data standardisation off, so that the
priors do not depend on the data (the default model scales its priors to the
data's mean and sd, which no ``ml.Priors`` setting removes).  A config with
the suffix ``:data-scaled`` fits the ordinary family instead, to see what
that empirical-Bayes prior does to calibration against the same simulations.

Run (about 30 minutes on 2 shared CPU cores with the defaults; 27 min measured)::

    nice -n 19 python benchmarks/sbc.py > /tmp/sbc.log 2>&1 &

``--replicates 20`` for a smoke run.  Writes the rank-histogram figure and a
Markdown report (defaults ``docs/sbc_ranks.png``, ``docs/sbc.md``) and keeps
each config's ranks under ``--work-dir`` so that ``--reuse`` redraws the
figure and the report without refitting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np
import pandas as pd

import mixlab as ml
from mixlab import calibration

METHOD_NAMES = {"nuts": "NUTS", "svi": "SVI"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicates", type=int, default=500, help="SBC replicates per config")
    p.add_argument("--n-obs", type=int, default=100, help="rows per simulated data set")
    p.add_argument("--components", type=int, default=2)
    p.add_argument(
        "--configs",
        nargs="+",
        default=["nuts:1", "nuts:2", "svi:1", "svi:2"],
        help="method:dims[:data-scaled], e.g. nuts:1 svi:2 nuts:1:data-scaled",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-draws", type=int, default=99, help="L: ranks run from 0 to L")
    p.add_argument("--thin", type=int, default=20, help="NUTS: keep every thin-th draw")
    p.add_argument("--bins", type=int, default=20, help="histogram / chi-square bins")
    p.add_argument("--warmup", type=int, default=1000, help="NUTS warmup iterations")
    p.add_argument("--chains", type=int, default=1, help="NUTS chains")
    p.add_argument("--svi-steps", type=int, default=2000)
    p.add_argument("--svi-lr", type=float, default=0.01)
    p.add_argument("--alpha", type=float, default=0.01, help="Bonferroni-corrected level")
    p.add_argument("--figure", default="docs/sbc_ranks.png")
    p.add_argument("--report", default="docs/sbc.md")
    p.add_argument("--work-dir", default="/tmp/sbc_work", help="per-config ranks and tables")
    p.add_argument("--reuse", action="store_true", help="load configs already in --work-dir")
    return p.parse_args(argv)


def parse_config(text: str) -> tuple[str, int, bool]:
    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[0] not in METHOD_NAMES:
        raise SystemExit(f"bad config {text!r}: use method:dims[:data-scaled], e.g. nuts:1")
    if len(parts) == 3 and parts[2] != "data-scaled":
        raise SystemExit(f"bad config {text!r}: the only suffix is ':data-scaled'")
    return parts[0], int(parts[1]), len(parts) == 3


def label(config: tuple[str, int, bool]) -> str:
    method, dims, scaled = config
    return f"{METHOD_NAMES[method]} {dims}-D" + (" (data-scaled priors)" if scaled else "")


def make_method(method: str, args: argparse.Namespace) -> ml.NUTS | ml.SVI:
    if method == "nuts":
        return ml.NUTS(num_warmup=args.warmup, num_chains=args.chains)
    return ml.SVI(
        num_steps=args.svi_steps, guide="normal", learning_rate=args.svi_lr, elbo_particles=100
    )


def run_config(config: tuple[str, int, bool], args: argparse.Namespace) -> dict[str, Any]:
    method, dims, scaled = config
    priors = ml.Priors(mean_loc=np.zeros(dims))  # Normal(0, 3) means, HalfNormal(1) sds
    family = ml.families.Gaussian("full") if scaled else None
    name = label(config)
    start = time.perf_counter()

    def progress(r: int, row: dict[str, Any]) -> None:
        if (r + 1) % 50 == 0 or r == 0:
            print(
                f"  {name}: replicate {r + 1}/{args.replicates}, "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )

    result = calibration.sbc(
        make_method(method, args),
        args.components,
        dims,
        args.replicates,
        args.n_obs,
        key=args.seed,
        priors=priors,
        n_draws=args.n_draws,
        thin=args.thin,
        n_bins=args.bins,
        alpha=args.alpha,
        family=family,
        callback=progress,
    )
    return {
        "label": name,
        "ranks": result.ranks,
        "summary": result.summary,
        "replicates": result.replicates,
        "passed": result.passed,
        "seconds": result.seconds,
        "settings": result.settings,
    }


def _slug(config: tuple[str, int, bool]) -> str:
    method, dims, scaled = config
    return f"{method}_{dims}d" + ("_scaled" if scaled else "")


def save(out: dict[str, Any], config: tuple[str, int, bool], work_dir: str) -> None:
    os.makedirs(work_dir, exist_ok=True)
    base = os.path.join(work_dir, _slug(config))
    out["ranks"].to_csv(base + "_ranks.csv")
    out["replicates"].to_csv(base + "_replicates.csv")
    meta = {k: out[k] for k in ("label", "passed", "seconds", "settings")}
    with open(base + "_meta.json", "w") as fh:
        json.dump(meta, fh, indent=1, default=str)


def load(config: tuple[str, int, bool], work_dir: str, args: argparse.Namespace) -> dict | None:
    base = os.path.join(work_dir, _slug(config))
    if not os.path.exists(base + "_meta.json"):
        return None
    with open(base + "_meta.json") as fh:
        meta = json.load(fh)
    ranks = pd.read_csv(base + "_ranks.csv", index_col="replicate")
    replicates = pd.read_csv(base + "_replicates.csv", index_col="replicate").fillna(
        {"warning": "", "error": ""}
    )
    if "min_count" not in replicates:  # tables written before the column existed
        st = meta["settings"]
        priors = ml.Priors(mean_loc=np.zeros(st["n_features"]))
        replicates.insert(
            0,
            "min_count",
            [
                np.bincount(
                    calibration.simulate(
                        calibration.replicate_keys(args.seed, r)[0],
                        st["n_components"],
                        st["n_features"],
                        st["n_obs"],
                        priors,
                    ).labels,
                    minlength=st["n_components"],
                ).min()
                for r in replicates.index
            ],
        )
    n_draws, n_bins = meta["settings"]["n_draws"], meta["settings"]["n_bins"]
    summary = calibration.summarise_ranks(ranks, n_draws, n_bins)
    passed = bool(np.all(summary["p_bonferroni"] >= args.alpha))
    return {**meta, "ranks": ranks, "replicates": replicates, "summary": summary, "passed": passed}


# --------------------------------------------------------------------------- figure
def figure(results: list[dict[str, Any]], path: str, alpha: float = 0.01, columns: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layout = []  # (result, quantities on this figure row)
    for out in results:
        names = list(out["ranks"].columns)
        for start in range(0, len(names), columns):
            layout.append((out, names[start : start + columns]))
    fig, axes = plt.subplots(
        len(layout), columns, figsize=(2.1 * columns, 1.75 * len(layout)), squeeze=False
    )
    for row, (out, names) in enumerate(layout):
        n_draws, n_bins = out["settings"]["n_draws"], out["settings"]["n_bins"]
        bins = (np.arange(n_draws + 1) * n_bins) // (n_draws + 1)
        for col in range(columns):
            ax = axes[row, col]
            if col >= len(names):
                ax.axis("off")
                continue
            name = names[col]
            ranks = out["ranks"][name].dropna().to_numpy().astype(int)
            counts = np.bincount(bins[ranks], minlength=n_bins)
            expected, low, high = calibration.rank_band(len(ranks), n_draws, n_bins)
            x = np.arange(n_bins)
            edges = np.append(x, n_bins) - 0.5
            p_bonf = out["summary"].loc[name, "p_bonferroni"]
            bad = p_bonf < alpha
            ax.bar(x, counts, width=1.0, color="C3" if bad else "C0", alpha=0.55, zorder=1)
            ax.fill_between(
                edges,
                np.append(low, low[-1]),
                np.append(high, high[-1]),
                step="post",
                color="0.3",
                alpha=0.25,
                lw=0,
                zorder=2,
            )
            ax.axhline(expected[0], color="0.2", lw=0.7, zorder=3)
            ax.set_xlim(-0.5, n_bins - 0.5)
            ax.set_ylim(0, max(counts.max(), high.max()) * 1.1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}\np={p_bonf:.2g}", fontsize=7.5, color="C3" if bad else "k")
            if col == 0:
                ax.set_ylabel(out["label"].replace(" (", "\n("), fontsize=8)
    fig.suptitle(
        f"SBC rank histograms (grey band: 99% of uniform ranks per bin, line: expected count; "
        f"red: Bonferroni p < {alpha:g}; "
        "p shown is Bonferroni-corrected)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- report
def _fmt_p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def _iid_min_ess(n_quantities: int, n_draws: int, n_sets: int = 500) -> float:
    """Median over sets of the smallest estimated ESS among ``n_quantities``
    independent series of ``n_draws`` iid normal draws (the estimator's floor)."""
    from numpyro.diagnostics import effective_sample_size

    rng = np.random.default_rng(0)
    draws = rng.normal(size=(n_sets, n_quantities, 1, n_draws))
    ess = [[effective_sample_size(q) for q in one] for one in draws]
    return float(np.median(np.min(ess, axis=1)))


def _shape(row: pd.Series) -> str:
    """Read a rank histogram from its mean and spread."""
    parts = []
    if row["sd_ratio"] > 1.05:
        parts.append("U-shaped (posteriors too narrow: overconfident)")
    elif row["sd_ratio"] < 0.95:
        parts.append("hump-shaped (posteriors too wide)")
    if row["mean_rank"] > 0.53:
        parts.append("ranks high (posterior mass below the truth: underestimates)")
    elif row["mean_rank"] < 0.47:
        parts.append("ranks low (posterior mass above the truth: overestimates)")
    return ", ".join(parts) or "uneven without a clear direction"


def config_section(out: dict[str, Any], alpha: float) -> str:
    s = out["summary"]
    reps = out["replicates"]
    settings = out["settings"]
    m = len(s)
    ok = reps["error"].fillna("").eq("")
    lines = [f"### {out['label']}", ""]
    verdict = "passes" if out["passed"] else "fails"
    lines.append(
        f"**{verdict}**: smallest Bonferroni-corrected p = {_fmt_p(s['p_bonferroni'].min())} "
        f"over {m} quantities (level {alpha}); {int(ok.sum())} of {len(reps)} replicates fitted."
    )
    lines += [
        "",
        "| quantity | p-value | Bonferroni p | mean rank / L | rank sd / uniform sd | "
        "truth outside all draws |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in s.iterrows():
        flag = " **✗**" if row["p_bonferroni"] < alpha else ""
        lines.append(
            f"| `{name}` | {_fmt_p(row['p_value'])} | {_fmt_p(row['p_bonferroni'])}{flag} | "
            f"{row['mean_rank']:.3f} | {row['sd_ratio']:.3f} | {100 * row['outside']:.1f}% |"
        )
    failing = s[s["p_bonferroni"] < alpha]
    if len(failing):
        lines += [
            "",
            "Shape of the failures: "
            + "; ".join(f"`{name}` {_shape(row)}" for name, row in failing.iterrows())
            + ".",
        ]
    fit_seconds = reps["seconds"]
    compile_s = reps["compile_time"].fillna(0).sum()
    lines += [
        "",
        f"- wall time {out['seconds'] / 60:.1f} min; compile {compile_s:.1f} s "
        f"(programs compiled {int((reps['compile_time'] > 0.5).sum())} time(s)); "
        f"median fit {fit_seconds.median():.2f} s, 95th percentile "
        f"{fit_seconds.quantile(0.95):.2f} s, slowest {fit_seconds.max():.1f} s",
    ]
    if settings["method"]["method"] == "nuts":
        div = reps["divergences"]
        lines.append(
            f"- divergences after warmup: {int((div > 0).sum())} of {len(reps)} replicates "
            f"({int(div.sum())} divergent transitions in all, most in one replicate "
            f"{int(div.max())}); {int((reps['warmup_divergences'] > 0).sum())} replicates "
            "had divergences during warmup (early adaptation; those draws are discarded)"
        )
        lines.append(
            f"- smallest ESS over the quantities, per replicate, of the "
            f"{settings['method']['num_samples']} kept draws: median "
            f"{reps['min_ess'].median():.0f}, 5th percentile {reps['min_ess'].quantile(0.05):.0f}"
            f"; of the {settings['n_draws']} ranked (thinned) draws: median "
            f"{reps['min_ess_thinned'].median():.0f}, 5th percentile "
            f"{reps['min_ess_thinned'].quantile(0.05):.0f} (independent draws, the same "
            f"estimator and the same {m} quantities: median "
            f"{_iid_min_ess(m, settings['n_draws']):.0f}: the thinned draws are as good "
            "as independent when these agree)"
        )
    else:
        lines.append(
            f"- SVI `converged` flag (flat ELBO at the end): {int(reps['converged'].sum())} of "
            f"{len(reps)}"
        )
    n_warn = int((reps["n_warnings"] > 0).sum())
    if n_warn:
        first = reps.loc[reps["n_warnings"] > 0, "warning"].iloc[0]
        lines.append(f"- {n_warn} replicate(s) raised warnings, e.g. {first!r}")
    if (~ok).any():
        lines.append(f"- failed fits: {int((~ok).sum())}, e.g. {reps.loc[~ok, 'error'].iloc[0]!r}")
    return "\n".join(lines)


COMPONENT_PREFIXES = ("mean[", "weight[", "sd[", "corr[")


def where_section(results: list[dict[str, Any]]) -> str:
    """Share of replicates whose truth lies outside all the draws of some component
    quantity, by how many rows the smaller component got."""
    groups = [(0, 2), (3, 10), (11, 10**9)]
    head = ["config", "all replicates"] + [
        f"{lo}-{hi} rows" if hi < 10**9 else f"> {lo - 1} rows" for lo, hi in groups
    ]
    lines = [
        "## Where the misses are",
        "",
        "Share of replicates whose truth lies outside all L draws (rank 0 or L) for at least "
        "one component quantity (`mean`, `weight`, `sd`, `corr`), by the number of rows the "
        "simulation drew from its smaller component (counts in brackets). The grouping uses "
        "the simulation's latent labels, not the data alone, so even exact posteriors need "
        "not give the same share in every column: read each method against NUTS, which "
        "passes.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for out in results:
        ranks, reps = out["ranks"], out["replicates"]
        n_draws = out["settings"]["n_draws"]
        comp = [c for c in ranks.columns if c.startswith(COMPONENT_PREFIXES)]
        outside = ((ranks[comp] == 0) | (ranks[comp] == n_draws)).any(axis=1)
        fitted = ranks[comp].notna().all(axis=1)
        cells = [f"{100 * outside[fitted].mean():.1f}% ({int(fitted.sum())})"]
        for lo, hi in groups:
            sel = fitted & reps["min_count"].between(lo, hi)
            share = 100 * outside[sel].mean() if sel.any() else float("nan")
            cells.append(f"{share:.1f}% ({int(sel.sum())})")
        lines.append(f"| {out['label']} | " + " | ".join(cells) + " |")
    nuts = [out for out in results if out["settings"]["method"]["method"] == "nuts"]
    if nuts:
        lines += [
            "",
            "NUTS replicates with divergent transitions after warmup, same grouping:",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for out in nuts:
            reps = out["replicates"]
            div = reps["divergences"] > 0
            cells = [f"{int(div.sum())} of {len(reps)}"]
            for lo, hi in groups:
                sel = reps["min_count"].between(lo, hi)
                cells.append(f"{int(div[sel].sum())} of {int(sel.sum())}")
            lines.append(f"| {out['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(results: list[dict[str, Any]], args: argparse.Namespace, total: float) -> str:
    first = results[0]["settings"]
    pri = first["priors"]
    lines = [
        "# Simulation-based calibration of NUTS and SVI",
        "",
        "Generated by `benchmarks/sbc.py` "
        f"(`--configs {' '.join(args.configs)} --replicates {args.replicates} "
        f"--n-obs {args.n_obs} --seed {args.seed} --warmup {args.warmup} "
        f"--n-draws {args.n_draws} --thin {args.thin} --bins {args.bins}`); "
        f"figure: [`sbc_ranks.png`](sbc_ranks.png).",
        "",
        "## Set-up",
        "",
        f"- Model: K={args.components} Gaussian mixture, full covariances, the data's own units "
        "(`mixlab.calibration.UnstandardisedGaussian`: mixlab's model and `ml.fit` path with "
        "the data standardisation off, because mixlab's default priors are scaled to the "
        "data's mean and sd, which no `ml.Priors` setting removes, and SBC needs a prior that "
        "does not depend on the data).",
        f"- Prior (`ml.Priors` defaults, `mean_loc=0`): weights ~ Dirichlet"
        f"({pri['weight_concentration']:g}, ...); means ~ Normal(0, {pri['mean_scale']:g}) "
        f"per feature; component sds ~ HalfNormal({pri['scale']:g}); correlations ~ "
        f"LKJ({pri['lkj_eta']:g}). Each replicate draws the truth from this prior "
        f"(`mixlab.calibration.simulate`) and {args.n_obs} rows from the truth.",
        f"- NUTS: 1 compiled program per config, {args.chains} chain(s), {args.warmup} warmup, "
        f"{args.n_draws} x {args.thin} kept draws thinned to L = {args.n_draws} "
        f"(start at the EM fit, as `ml.fit` does). SVI: mean-field Gaussian guide "
        f'(`guide="normal"`, NumPyro `AutoNormal`), {args.svi_steps} Adam steps at '
        f"{args.svi_lr:g} from the EM fit, L = {args.n_draws} independent draws from the guide.",
        "- Ranked quantities (label-invariant): components ordered by their mean on feature 0 "
        "in every draw and in the truth; `mean[k(,d)]`, `weight[0]` (the weight of the "
        "lower-mean component), `sd[k(,d)]`, `corr[k]`, the mixture's own `mix_mean[d]` and "
        "`mix_sd[d]`, and `log_lik` = log p(X | theta) of the replicate's data.",
        f"- Test: chi-square on {args.bins} bins of the L + 1 = {args.n_draws + 1} rank values; "
        f"Bonferroni over the quantities of a config; pass = no corrected p below {args.alpha}. "
        "`mean rank / L` is 0.5 when unbiased (above: the posterior sits below the truth); "
        "`rank sd / uniform sd` above 1 is a U shape (posteriors too narrow, overconfident), "
        "below 1 a hump (too wide); `truth outside all draws` is the share of replicates with "
        f"rank 0 or L ({200 / (args.n_draws + 1):.0f}% when calibrated).",
        "",
        "## Results",
        "",
        "| config | replicates | quantities | smallest p | smallest Bonferroni p | verdict | "
        "wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for out in results:
        s = out["summary"]
        lines.append(
            f"| {out['label']} | {int(s['n'].min())} | {len(s)} | {_fmt_p(s['p_value'].min())} | "
            f"{_fmt_p(s['p_bonferroni'].min())} | {'pass' if out['passed'] else '**fail**'} | "
            f"{out['seconds'] / 60:.1f} min |"
        )
    lines += ["", f"Total wall time {total / 60:.1f} min.", ""]
    lines += [where_section(results), ""]
    for out in results:
        lines += [config_section(out, args.alpha), ""]
    lines += [
        "## Environment",
        "",
        f"mixlab {ml.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPU core(s) (shared), run at `nice -n 19`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs = [parse_config(c) for c in args.configs]
    results = []
    start = time.perf_counter()
    for config in configs:
        out = load(config, args.work_dir, args) if args.reuse else None
        if out is None:
            print(f"{label(config)}: {args.replicates} replicates", flush=True)
            out = run_config(config, args)
            save(out, config, args.work_dir)
        print(
            f"{out['label']}: {'pass' if out['passed'] else 'FAIL'} "
            f"(smallest Bonferroni p {out['summary']['p_bonferroni'].min():.3g}, "
            f"{out['seconds'] / 60:.1f} min)",
            flush=True,
        )
        print(out["summary"].round(4).to_string(), flush=True)
        results.append(out)
    total = sum(out["seconds"] for out in results)
    figure(results, args.figure, args.alpha)
    text = report(results, args, total)
    os.makedirs(os.path.dirname(args.report) or ".", exist_ok=True)
    with open(args.report, "w") as fh:
        fh.write(text)
    print(text)
    print(f"wrote {args.figure} and {args.report} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
