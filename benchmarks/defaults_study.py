"""Does the default EM finish wherever scikit-learn does, and how good are its answers?

Data: scikit-learn's own test problems (``RandomData(RandomState(s), n_samples=50,
scale=1)`` from ``sklearn/mixture/tests/test_gaussian_mixture.py``: two Gaussian
components in 2-D, close together), 15 data sets x 20 keys x 4 covariance types x
4 initialisations = 4,800 fits per policy, K=2, ``n_init=1``.

For every ``on_collapse`` policy it counts fits that raised, fits with non-finite
parameters, and fits ending more than 1 nat above or below scikit-learn's fit with
the same initialisation method (its own random start: ``random_state=key``).

    python benchmarks/defaults_study.py [--datasets 15] [--keys 20]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
import warnings

import numpy as np


def random_data(seed: int, covariance_type: str) -> np.ndarray:
    """scikit-learn's ``RandomData(RandomState(seed), n_samples=50, scale=1).X[type]``."""
    import sklearn.mixture.tests.test_gaussian_mixture as t

    return t.RandomData(np.random.RandomState(seed), n_samples=50, scale=1).X[covariance_type]


INITS = {
    "kmeans++": "k-means++",
    "kmeans": "kmeans",
    "random": "random",
    "random_from_data": "random_from_data",
}
COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")


def run(n_datasets: int, n_keys: int, policies: tuple[str, ...]) -> dict:
    from sklearn.mixture import GaussianMixture

    import mixlab as ml

    counts = {p: collections.Counter() for p in policies}
    for ct in COVARIANCE_TYPES:
        for init, sk_init in INITS.items():
            for s in range(n_datasets):
                X = random_data(s, ct)
                for key in range(n_keys):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        sk = GaussianMixture(
                            2, covariance_type=ct, init_params=sk_init, random_state=key
                        ).fit(X)
                    sk_ll = sk.score(X) * len(X)
                    for policy in policies:
                        c = counts[policy]
                        c["fits"] += 1
                        try:
                            with warnings.catch_warnings():
                                warnings.simplefilter("ignore", ml.ConvergenceWarning)
                                r = ml.fit(
                                    X,
                                    2,
                                    ml.EM(init=init, on_collapse=policy),
                                    covariance=ct,
                                    key=key,
                                )
                        except ml.FitError:
                            c["raised"] += 1
                            continue
                        p = r.params
                        if not all(
                            np.isfinite(getattr(p, f)).all()
                            for f in ("weights", "means", "covariances")
                        ):
                            c["non-finite"] += 1
                        diff = r.log_likelihood - sk_ll
                        c["> 1 nat above sklearn"] += diff > 1
                        c["> 1 nat below sklearn"] += diff < -1
                        c["collapse seen"] += bool(r.diagnostics["collapses"])
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=15)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--policies", default="reinit,ignore,raise")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    counts = run(args.datasets, args.keys, tuple(args.policies.split(",")))
    rows = (
        "fits",
        "raised",
        "non-finite",
        "> 1 nat above sklearn",
        "> 1 nat below sklearn",
        "collapse seen",
    )
    print(f"{'on_collapse':<14}" + "".join(f"{r:>24}" for r in rows))
    for policy, c in counts.items():
        print(f"{policy:<14}" + "".join(f"{c[r]:>24}" for r in rows))
    print(f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
