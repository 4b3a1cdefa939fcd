"""Seed 000 (CS229-style 1-D EM), redone with mixlab.

The study draws 50 points from N(0, 1) and 50 from N(2, 1) after
``np.random.seed(0)``, starts at means (0, 1), sds (2, 2), equal weights, and
prints the parameters at every iteration.  Its M-step has two mistakes:

1. the weights are hard counts, the share of points whose most likely
   component is k, instead of the mean responsibility;
2. the variances are computed around the *previous* means, not the new ones.

This script reproduces the study's printed run exactly (same data, same
start, same flawed update), runs correct EM from the same start with mixlab,
and switches each mistake on alone to show what it does:

* mistake 1 alone gives exactly the study's answer: hard counts pull the
  weights to (0.43, 0.57), far from the maximum likelihood (0.53, 0.47);
* mistake 2 alone only changes the path: at a fixed point the old and new
  means coincide, so it converges where correct EM does.

The study's answer is not a fixed point of EM (one exact EM step from it
raises the likelihood), even though the likelihood surface is so flat on 100
points that the log-likelihoods differ by only ~0.02.

Run: ``python examples/seed000_cs229.py [--iterations 100] [--every 10]``
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import norm

import mixlab as ml

START = {"weights": [0.5, 0.5], "means": [0.0, 1.0], "covariances": [4.0, 4.0]}
# What the study printed at k=99 (its 100th iteration).
STUDY_K99 = {"mus": [-0.01561799, 1.8740544], "sigmas": [1.09142269, 0.9042894]}


def variant_em(x, n_iter, hard_weights, old_means_variance):
    """EM on 1-D data with either of the study's mistakes switched on."""
    mus, sds, w = np.array([0.0, 1.0]), np.array([2.0, 2.0]), np.array([0.5, 0.5])
    history = []
    for _ in range(n_iter):
        resp = w[:, None] * norm.pdf(x[None, :], mus[:, None], sds[:, None])
        resp /= resp.sum(axis=0)
        nk = resp.sum(axis=1)
        new_mus = resp @ x / nk
        centre = mus if old_means_variance else new_mus
        sds = np.sqrt((resp * (x[None, :] - centre[:, None]) ** 2).sum(axis=1) / nk)
        mus = new_mus
        if hard_weights:
            dens = norm.pdf(x[:, None], mus[None, :], sds[None, :])
            w = np.bincount(dens.argmax(axis=1), minlength=2) / len(x)
        else:
            w = nk / len(x)
        history.append((mus.copy(), sds.copy(), w.copy()))
    return history


def _loglik(x, mus, sds, w):
    return float(np.sum(np.log(np.sum(w * norm.pdf(x[:, None], mus, sds), axis=1))))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--every", type=int, default=10, help="print every n-th iteration")
    args = parser.parse_args(argv)
    x = ml.datasets.cs229().X[:, 0]

    study = variant_em(x, args.iterations, hard_weights=True, old_means_variance=True)
    print("The study's update (both mistakes), as it printed it:")
    for k, (mus, sds, w) in enumerate(study):
        if k % args.every == 0 or k == len(study) - 1:
            print(f"  k={k:3d} mus={np.round(mus, 8)} sigmas={np.round(sds, 8)} priors={w}")
    if args.iterations == 100:
        ok = np.allclose(study[-1][0], STUDY_K99["mus"], atol=1e-8) and np.allclose(
            study[-1][1], STUDY_K99["sigmas"], atol=1e-8
        )
        print(f"  reproduces the study's printed k=99 line: {ok}")

    em = ml.fit(
        x,
        2,
        ml.EM(init=START, tol=0.0, max_iter=args.iterations, reg_covar=0.0, record_params=True),
        covariance="spherical",
    )
    print("\nCorrect EM with mixlab from the same start (params after each iteration):")
    pt = em.params_trace
    for t in range(1, em.n_iter + 1):
        if (t - 1) % args.every == 0 or t == em.n_iter:
            print(
                f"  k={t - 1:3d} mus={np.round(pt.means[t, :, 0], 8)} "
                f"sigmas={np.round(np.sqrt(pt.covariances[t]), 8)} "
                f"weights={np.round(pt.weights[t], 4)}  loglik={em.trace[t]:.6f}"
            )

    rows = {
        "correct EM (mixlab)": (
            em.params.means[:, 0],
            np.sqrt(em.params.covariances),
            em.params.weights,
        ),
        "mistake 1 only (hard-count weights)": variant_em(x, args.iterations, True, False)[-1],
        "mistake 2 only (variance about old means)": variant_em(x, args.iterations, False, True)[
            -1
        ],
        "both mistakes (the study)": study[-1],
    }
    print(f"\nAfter {args.iterations} iterations:")
    print(f"  {'update':44s} {'means':>22s} {'sds':>22s} {'weights':>16s} {'loglik':>10s}")
    summary = {}
    for name, (mus, sds, w) in rows.items():
        ll = _loglik(x, mus, sds, w)
        summary[name] = {"means": mus, "sds": sds, "weights": w, "loglik": ll}
        print(
            f"  {name:44s} {np.array2string(mus, precision=4):>22s} "
            f"{np.array2string(sds, precision=4):>22s} "
            f"{np.array2string(w, precision=3):>16s} {ll:10.4f}"
        )
    flawed = ml.MixtureParams(study[-1][2], study[-1][0], study[-1][1] ** 2, "spherical")
    step = ml.m_step(x, np.exp(ml.e_step(x, flawed).log_resp), "spherical", reg_covar=0.0)
    gain = float(ml.log_likelihood(x, step) - ml.log_likelihood(x, flawed))
    print(
        f"\nOne exact EM step from the study's answer raises the log-likelihood by {gain:.2e}:"
        " it is not a fixed point of EM."
    )
    monotone = bool(np.all(np.diff(em.trace) >= -1e-12 * np.abs(em.trace[1:])))
    print(f"mixlab's log-likelihood never decreased over the run: {monotone}")
    return {"summary": summary, "gain_from_one_step": gain, "monotone": monotone, "em": em}


if __name__ == "__main__":
    main()
