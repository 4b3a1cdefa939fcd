"""Student-t starts against gross outliers: does the default fit find the best optimum?

Simulated contaminated data: ``K`` clusters (unit covariance, centres drawn in a box so
that they are at least 4 apart), 200 rows each, plus a share ``c`` of rows uniform over a
box 10 times the clean data's range (same centre).  For each data set:

- the default fit, ``ml.fit(X, K, family="student_t", key=seed)`` (``init="auto"``:
  trimmed k-means for Student-t);
- the same with ``init="kmeans++"`` (the default before);
- the best of a start at the true parameters and 50 k-means++ restarts (the reference).

A case succeeds when the fit's log-likelihood is within 1 unit of the reference (or
above it).  The table gives the share of successes per grid cell and overall.

    python benchmarks/robust_starts.py                       # the full grid, 20 seeds
    python benchmarks/robust_starts.py --seeds 3 --dims 2,5  # a quicker look
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import mixlab as ml
from mixlab.families.student_t import StudentT

INITIAL_DOF = StudentT.INITIAL_DOF

ROWS_PER_CLUSTER = 200


def contaminated(k: int, d: int, share: float, seed: int) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng([seed, k, d, round(share * 100)])
    centres = np.empty((0, d))
    while len(centres) < k:  # rejection: every pair at least 4 apart
        c = rng.uniform(0.0, 4.0 * k ** (1 / d) + 4.0, d)
        if len(centres) == 0 or np.min(np.linalg.norm(centres - c, axis=1)) >= 4.0:
            centres = np.vstack([centres, c])
    clean = np.concatenate([c + rng.normal(size=(ROWS_PER_CLUSTER, d)) for c in centres])
    lo, hi = clean.min(axis=0), clean.max(axis=0)
    mid, half = (lo + hi) / 2, 5.0 * (hi - lo)  # a box 10x the range
    n_out = round(share / (1 - share) * len(clean))
    X = np.concatenate([clean, rng.uniform(mid - half, mid + half, (n_out, d))])
    truth = {
        "weights": np.full(k, 1.0 / k),
        "means": centres,
        "covariances": np.broadcast_to(np.eye(d), (k, d, d)).copy(),
        "dofs": np.full(k, INITIAL_DOF),
    }
    return X, truth


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--clusters", default="2,3,4,5")
    parser.add_argument("--dims", default="2,3,4,5")
    parser.add_argument("--shares", default="0.05,0.1,0.2")
    parser.add_argument("--restarts", type=int, default=50)
    args = parser.parse_args(argv)
    ks = [int(v) for v in args.clusters.split(",")]
    dims = [int(v) for v in args.dims.split(",")]
    shares = [float(v) for v in args.shares.split(",")]
    family = ml.families.StudentT()
    started = time.perf_counter()
    ok = {"auto": [], "kmeans++": []}
    print("| K | D | outliers | cases | default (trimmed) within 1 | k-means++ within 1 |")
    print("|---:|---:|---:|---:|---:|---:|")
    for k in ks:
        for d in dims:
            for share in shares:
                cell = {"auto": [], "kmeans++": []}
                for seed in range(args.seeds):
                    X, truth = contaminated(k, d, share, seed)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        fits = {
                            init: ml.fit(X, k, ml.EM(init=init), family=family, key=seed)
                            for init in ("auto", "kmeans++")
                        }
                        start = ml.MixtureParams.from_dict(truth, family=family)
                        at_truth = ml.fit(X, k, ml.EM(init=start), family=family)
                        many = ml.fit(
                            X,
                            k,
                            ml.EM(n_init=args.restarts, init="kmeans++"),
                            family=family,
                            key=seed + 1000,
                        )
                    best = max(
                        at_truth.log_likelihood,
                        many.log_likelihood,
                        *(f.log_likelihood for f in fits.values()),
                    )
                    for init, f in fits.items():
                        cell[init].append(f.log_likelihood >= best - 1.0)
                for init in cell:
                    ok[init] += cell[init]
                print(
                    f"| {k} | {d} | {share:.0%} | {args.seeds} | {np.mean(cell['auto']):.0%} "
                    f"| {np.mean(cell['kmeans++']):.0%} |",
                    flush=True,
                )
    print(
        f"\nall {len(ok['auto'])} cases: default (trimmed) within 1 unit of the best in "
        f"{np.mean(ok['auto']):.1%}, k-means++ in {np.mean(ok['kmeans++']):.1%} "
        f"({time.perf_counter() - started:.0f} s)"
    )


if __name__ == "__main__":
    main()
