"""Seed 004 (EM theory: ELBO and KL, k-means as hard EM, scikit-learn snapshots), with mixlab.

The study derives the EM updates, the decomposition
``log p(x) = L(q, theta) + KL(q || p(z | x, theta))`` (the E-step makes the KL
zero, the M-step raises L and the KL becomes positive again), calls k-means
the hard-assignment case of EM, and shows scikit-learn's ``GaussianMixture``
after 1, 5, 10 and 15 iterations on a two-component 2-D set (500 points of
``randn @ [[0, -0.1], [1.7, 0.4]]`` and 500 of ``0.7 randn + (-6, 3)`` after
``np.random.seed(0)``, exactly ``ml.datasets.two_gaussians_2d(0)``).  This
script makes each statement a number:

* the exact ELBO and KL after every E-step and every M-step (``ml.elbo``
  with the previous iteration's responsibilities), with ``log p = L + KL``
  checked to 1e-10;
* hard EM with fixed equal weights and equal spherical covariances
  (``ml.EM(assignment="hard", fixed=("weights", "covariances"))``) giving
  the centres of ``sklearn.cluster.KMeans`` from the same centres, and its
  inertia from the classification log-likelihood;
* snapshots at iterations 1, 5, 10, 15 (``plot.snapshots``) and agreement
  with ``GaussianMixture`` started from the same parameters.

The start is the study's own: ``init_params='random'`` with
``random_state=0`` draws responsibilities ``RandomState(0).uniform(size=(n,
2))``, normalises them and takes one M-step.  Since ``random_state`` is an
integer, each of its four fits draws the same start, so its four panels are
one trajectory (reproduced here to about 1e-13).  Those random
responsibilities make the two components almost equal, so nothing happens for
about ten iterations (the log-likelihood creeps from -3987 to -3866) and the
fit then snaps into place by iteration 15: the panels show a symmetric start,
not slow EM.  Set ``reg_covar=0`` throughout: only then does the M-step
maximise L exactly.

What the study got wrong: ``from sklearn.utils.testing import
ignore_warnings`` no longer exists (removed in scikit-learn 0.24; use
``warnings.catch_warnings``); its derivative for the means writes
``Sigma_k (x_i - mu_k)`` where the precision ``Sigma_k^-1`` belongs; and
k-means is hard EM only with equal weights and equal spherical covariances
held fixed: taking ``argmax_k`` of the responsibilities of a general mixture
is classification EM, a different algorithm.

scikit-learn is used only for the comparisons; without it they are skipped.

Run: ``python examples/seed004_elbo_kmeans.py [--n-per-component 500] [--seed 0]
[--iterations 15] [--plot-dir DIR]``
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

import mixlab as ml

K = 2
SNAPSHOTS = (1, 5, 10, 15)


def study_start(X: np.ndarray, seed: int) -> ml.MixtureParams:
    """scikit-learn's ``init_params='random'`` start for ``random_state=seed``, ``reg_covar=0``."""
    resp = np.random.RandomState(seed).uniform(size=(len(X), K))
    resp /= resp.sum(axis=1, keepdims=True)
    return ml.m_step(X, resp, "full", reg_covar=0.0)


def at_iteration(fit: ml.FitResult, t: int) -> ml.MixtureParams:
    """The parameters after ``t`` iterations, from ``params_trace``."""
    return fit.params_trace[t]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


def _sklearn():
    try:
        from sklearn.cluster import KMeans
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import GaussianMixture
    except ImportError:
        return None
    return KMeans, GaussianMixture, ConvergenceWarning


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-component", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=15, help="EM iterations to run")
    parser.add_argument("--plot-dir", help="write the snapshots (PNG) into this folder")
    args = parser.parse_args(argv)
    T = max(args.iterations, max(SNAPSHOTS))

    X = ml.datasets.two_gaussians_2d(args.seed, n_per_component=args.n_per_component).X
    n = len(X)
    start = study_start(X, args.seed)
    fit = ml.fit(X, K, ml.EM(init=start, tol=0.0, max_iter=T, reg_covar=0.0, record_params=True))
    sk = _sklearn()
    if sk is None:
        print("scikit-learn is not installed: the comparisons with it are skipped.")

    # -- 1. ELBO and KL at every half-step.
    print(f"ELBO / KL per EM iteration ({n} points, the study's start, reg_covar=0):")
    print(
        f"{'it':>3s} {'log p(theta_old)':>17s} {'L after E':>14s} {'KL after E':>11s} "
        f"{'L after M':>14s} {'KL after M':>11s} {'log p(theta_new)':>17s}"
    )
    rows, identity_error, m_step_error = [], 0.0, 0.0
    for t in range(1, T + 1):
        old, new = at_iteration(fit, t - 1), at_iteration(fit, t)
        q = np.exp(np.asarray(ml.e_step(X, old).log_resp))
        e = ml.elbo(X, old, q)
        m = ml.elbo(X, new, q)
        row = {name: float(v) for name, v in zip(("L_e", "kl_e", "logp_old"), e)}
        row.update({name: float(v) for name, v in zip(("L_m", "kl_m", "logp_new"), m)})
        rows.append(row)
        for L, kl, logp in (e, m):
            identity_error = max(
                identity_error, abs(float(L) + float(kl) - float(logp)) / abs(logp)
            )
        by_hand = ml.m_step(X, q, "full", reg_covar=0.0)
        m_step_error = max(m_step_error, _rel(by_hand.means, new.means))
        m_step_error = max(m_step_error, _rel(by_hand.covariances, new.covariances))
        print(
            f"{t:3d} {row['logp_old']:17.6f} {row['L_e']:14.6f} {row['kl_e']:11.2e} "
            f"{row['L_m']:14.6f} {row['kl_m']:11.2e} {row['logp_new']:17.6f}"
        )
    rows_arr = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    print(f"max relative |L + KL - log p| over all half-steps: {identity_error:.1e}")
    print(f"max |KL| after an E-step: {np.max(np.abs(rows_arr['kl_e'])):.1e} (zero: q = posterior)")
    print(
        f"M-step raised L every iteration: {bool(np.all(rows_arr['L_m'] >= rows_arr['L_e']))}; "
        f"ml.m_step(X, q) equals the fit's iteration to {m_step_error:.1e}"
    )

    # -- 2. Hard EM with fixed equal weights and spherical covariances is k-means.
    rng = np.random.default_rng(args.seed)
    centres = X[rng.choice(n, K, replace=False)]
    hard_init = {"weights": np.full(K, 1 / K), "means": centres, "covariances": np.ones(K)}
    hard = ml.fit(
        X,
        K,
        ml.EM(
            init=hard_init,
            assignment="hard",
            fixed=("weights", "covariances"),
            tol=0.0,
            max_iter=30,
        ),
        covariance="spherical",
    )
    # Unit variances and equal weights: classification log-likelihood = const - inertia / 2.
    const = n * (np.log(1 / K) - 0.5 * X.shape[1] * np.log(2 * np.pi))
    inertia = -2.0 * (hard.trace[-1] - const)
    print(
        "\nHard EM (fixed equal weights, unit spherical covariances) from data points as centres:"
    )
    print(f"  centres {np.round(hard.params.means, 6).tolist()}, inertia {inertia:.6f}")
    out = {"elbo_rows": rows_arr, "identity_error": identity_error, "m_step_error": m_step_error}
    out.update({"fit": fit, "hard": hard, "inertia": float(inertia)})
    if sk is not None:
        KMeans, GaussianMixture, ConvergenceWarning = sk
        km = KMeans(K, init=centres, n_init=1, algorithm="lloyd", tol=0.0, max_iter=300).fit(X)
        centre_diff = float(np.max(np.abs(km.cluster_centers_ - hard.params.means)))
        inertia_rel = abs(km.inertia_ - inertia) / km.inertia_
        print(
            f"  sklearn KMeans (lloyd, same centres): {km.n_iter_} iterations, max |centre "
            f"difference| {centre_diff:.1e}, inertia relative difference {inertia_rel:.1e}"
        )
        out.update({"kmeans_centre_diff": centre_diff, "kmeans_inertia_rel": float(inertia_rel)})

    # -- 3. Snapshots and scikit-learn from the same start.
    print("\nThe fit at the study's snapshots:")
    agreement, study_call = {}, {}
    for t in SNAPSHOTS:
        p = at_iteration(fit, t)
        line = (
            f"  iteration {t:2d}: log-likelihood {fit.trace[t]:10.3f}, weights "
            f"{np.round(p.weights, 4)}, means {np.round(p.means, 3).tolist()}"
        )
        if sk is not None:
            with warnings.catch_warnings():  # a fixed number of iterations is intended
                warnings.simplefilter("ignore", ConvergenceWarning)
                gm = GaussianMixture(
                    K,
                    weights_init=start.weights,
                    means_init=start.means,
                    precisions_init=np.linalg.inv(start.covariances),
                    reg_covar=0.0,
                    tol=0.0,
                    max_iter=t,
                ).fit(X)
                own = GaussianMixture(
                    K,
                    init_params="random",
                    random_state=args.seed,
                    tol=1e-9,
                    max_iter=t,
                    reg_covar=0.0,
                ).fit(X)
            agreement[t] = max(_rel(gm.means_, p.means), _rel(gm.covariances_, p.covariances))
            q = at_iteration(fit, own.n_iter_)
            study_call[t] = max(_rel(own.means_, q.means), _rel(own.covariances_, q.covariances))
            line += f"; sklearn from the same start: max rel. difference {agreement[t]:.1e}"
        print(line)
    if sk is not None:
        print(
            "  the study's own call GaussianMixture(init_params='random', random_state=0, "
            f"tol=1e-9): max rel. difference {max(study_call.values()):.1e} at the same iterations"
        )
    out.update({"sklearn_agreement": agreement, "study_call_agreement": study_call})

    if args.plot_dir:
        import matplotlib.pyplot as plt

        from mixlab import plot

        folder = Path(args.plot_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for name, fig in (
            ("seed004_snapshots.png", plot.snapshots(fit, X, iterations=SNAPSHOTS)),
            ("seed004_trace.png", plot.trace(fit)),
            ("seed004_kmeans_trace.png", plot.trace(hard)),
        ):
            fig.savefig(folder / name)
            plt.close(fig)
            print(f"wrote {folder / name}")
    return out


if __name__ == "__main__":
    main()
