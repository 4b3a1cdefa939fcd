"""Embedded data sets and seeded generators for the seed studies.

Real data (shipped in the package, no download; sources and licences in
``mixlab/data/README.md``):

* ``load("faithful")``: Old Faithful eruptions, duration (min) and waiting
  time (min), 272 rows; the classic two-cluster EM demo.
* ``load("galaxies")``: 82 galaxy velocities (km/s, Roeder 1990); the classic
  Bayesian mixture test where the number of components is in doubt.
* ``load("quine")``: days absent from school (a count) of 146 Australian
  children (Quine 1975, R's ``MASS::quine``); the count data for Poisson
  mixtures.  ``as_frame=True`` adds the four categorical columns.
* ``load("lsat6", with_weights=True)``: the 32 response patterns of five
  binary LSAT items and how many of 1000 examinees gave each (Bock and
  Lieberman 1970); latent class analysis with ``family="bernoulli"`` and
  ``sample_weight``.

Generators (each takes a seed and returns ``(X, labels, truth)``):

* :func:`cs229` (seed 000), :func:`four_clusters` (seed 001),
  :func:`breuel` (seed 002), :func:`three_d` (seed 003),
  :func:`two_gaussians_2d` (seed 004).

None of them touches NumPy's global random state.
"""

from __future__ import annotations

import csv
from importlib import resources
from typing import Any, NamedTuple

import numpy as np

from mixlab._validation import check_int
from mixlab.params import MixtureParams


class _DataSet(NamedTuple):
    file: str
    features: tuple[str, ...] | None = None  # None: every column
    weight: str | None = None  # a column of frequency weights
    units: tuple[tuple[str, str], ...] = ()  # (column, unit)


_DATASETS = {
    "faithful": _DataSet("faithful.csv", units=(("eruptions", "min"), ("waiting", "min"))),
    "galaxies": _DataSet("galaxies.csv", units=(("velocity", "km/s"),)),
    "quine": _DataSet("quine.csv", features=("Days",), units=(("Days", "days"),)),
    "lsat6": _DataSet("lsat6.csv", features=("Q1", "Q2", "Q3", "Q4", "Q5"), weight="count"),
}


class Generated(NamedTuple):
    """A generated data set with its ground truth."""

    X: np.ndarray  # (n_samples, n_features)
    labels: np.ndarray  # (n_samples,) true component of each row
    truth: MixtureParams  # the parameters the data were drawn from


def available() -> tuple[str, ...]:
    """Names accepted by :func:`load`."""
    return tuple(_DATASETS)


def _spec(name: str) -> _DataSet:
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(_DATASETS)}")
    return _DATASETS[name]


def columns(name: str) -> list[str]:
    """Names of the feature columns :func:`load` returns for an embedded data set."""
    spec = _spec(name)
    header, _ = _read(name)
    return list(spec.features) if spec.features else header


def _read(name: str) -> tuple[list[str], list[list[str]]]:
    spec = _spec(name)
    text = resources.files("mixlab").joinpath("data", spec.file).read_text()
    rows = list(csv.reader(text.splitlines()))
    return rows[0], rows[1:]


def load(name: str, as_frame: bool = False, with_weights: bool = False) -> Any:
    """Load an embedded data set.

    Parameters
    ----------
    name : {"faithful", "galaxies", "quine", "lsat6"}
    as_frame : bool
        Return a pandas DataFrame with every column of the table (categorical
        columns and counts included) instead of the numeric features; its
        ``attrs["units"]`` maps columns to units (``{"waiting": "min"}``), which
        :func:`mixlab.fit` keeps for plot axes.  Fit ``frame[columns(name)]``
        to fit the features by name.
    with_weights : bool
        Also return the frequency weights of the rows (``lsat6``: how many
        examinees gave each response pattern; other data sets: ones).

    Returns
    -------
    X : array of shape (n_samples, n_features)
        ``faithful`` (272, 2); ``galaxies`` (82, 1); ``quine`` (146, 1) days
        absent; ``lsat6`` (32, 5) response patterns.
    weights : array of shape (n_samples,)
        With ``with_weights=True``.
    """
    spec = _spec(name)
    header, rows = _read(name)
    if as_frame:
        import pandas as pd

        frame = pd.DataFrame(rows, columns=header)
        for col in frame.columns:
            try:
                frame[col] = pd.to_numeric(frame[col])
            except (ValueError, TypeError):
                pass  # a categorical column stays text
        frame.attrs["units"] = dict(spec.units)
        return frame
    names = columns(name)
    index = [header.index(c) for c in names]
    X = np.array([[float(r[j]) for j in index] for r in rows], dtype=np.float64)
    if not with_weights:
        return X
    if spec.weight is None:
        return X, np.ones(len(X))
    w = np.array([float(r[header.index(spec.weight)]) for r in rows], dtype=np.float64)
    return X, w


def _draw(rng: np.random.Generator, truth: MixtureParams, n_samples: int) -> Generated:
    labels = rng.choice(truth.n_components, size=n_samples, p=np.asarray(truth.weights))
    chol = np.linalg.cholesky(truth.full_covariances())
    noise = rng.standard_normal((n_samples, truth.n_features))
    X = np.asarray(truth.means)[labels] + np.einsum("nij,nj->ni", chol[labels], noise)
    return Generated(X, labels, truth)


def cs229(seed: int = 0) -> Generated:
    """Seed 000: 50 draws of N(0, 1) then 50 of N(2, 1).

    With ``seed=0`` these are exactly the draws the study gets after
    ``np.random.seed(0)``, taken from a private ``RandomState(seed)``: the
    global NumPy random state is neither read nor changed.
    """
    rs = np.random.RandomState(check_int(seed, "seed", 0))
    x = np.concatenate([rs.normal(0, 1, 50), rs.normal(2, 1, 50)])
    truth = MixtureParams([0.5, 0.5], [[0.0], [2.0]], [1.0, 1.0], "spherical")
    return Generated(x.reshape(-1, 1), np.repeat([0, 1], 50), truth)


#: The four-cluster model the seed 001 study printed after training.
FOUR_CLUSTERS = MixtureParams(
    weights=np.array(
        [0.23048224536932024, 0.22999999854996792, 0.272826418924052, 0.2666913371566595]
    ),
    means=[[-0.40658, 0.32248], [1.20354, -1.19686], [0.14435, 0.14614], [-0.44149, -0.45088]],
    covariances=[
        [[0.03446, -0.01299], [-0.01299, 0.03458]],
        [[0.02259, -0.00761], [-0.00761, 0.02361]],
        [[0.00886, 0.00187], [0.00187, 0.00881]],
        [[0.07024, 0.03731], [0.03731, 0.06498]],
    ],
)


def four_clusters(seed: int = 0, n_samples: int = 5000) -> Generated:
    """Seed 001 stand-in: ``n_samples`` 2-D points from the model the study learned.

    The study's ``TrainingData_GMM.csv`` is not available; these data follow
    its printed weights, means and covariances.
    """
    rng = np.random.default_rng(check_int(seed, "seed", 0))
    return _draw(rng, FOUR_CLUSTERS, check_int(n_samples, "n_samples", 1))


def breuel(seed: int = 0, n_samples: tuple[int, int] = (3000, 7000)) -> Generated:
    """Seed 002: 3000 draws of N(0, 1) and 7000 of N(5, sd 2), shuffled."""
    rng = np.random.default_rng(check_int(seed, "seed", 0))
    n0, n1 = (check_int(n, "n_samples", 1) for n in n_samples)
    x = np.concatenate([rng.normal(0.0, 1.0, n0), rng.normal(5.0, 2.0, n1)])
    labels = np.repeat([0, 1], [n0, n1])
    order = rng.permutation(n0 + n1)
    truth = MixtureParams([n0 / (n0 + n1), n1 / (n0 + n1)], [[0.0], [5.0]], [1.0, 4.0], "spherical")
    return Generated(x[order].reshape(-1, 1), labels[order], truth)


def three_d(seed: int = 0, n_per_component: int = 100) -> Generated:
    """Seed 003: standard normal 3-D points around 0 and around (3, 3, 3)."""
    rs = np.random.RandomState(check_int(seed, "seed", 0))
    n = check_int(n_per_component, "n_per_component", 1)
    X = np.vstack([rs.randn(n, 3), rs.randn(n, 3) + 3])
    truth = MixtureParams([0.5, 0.5], [[0.0] * 3, [3.0] * 3], [1.0, 1.0], "spherical")
    return Generated(X, np.repeat([0, 1], n), truth)


def two_gaussians_2d(seed: int = 0, n_per_component: int = 500) -> Generated:
    """Seed 004: the study's two-component 2-D set (exact for ``seed=0``).

    ``X = r_[randn(n, 2) @ A + (0, 0), 0.7 * randn(n, 2) + (-6, 3)]`` with
    ``A = [[0, -0.1], [1.7, 0.4]]``.
    """
    rs = np.random.RandomState(check_int(seed, "seed", 0))
    n = check_int(n_per_component, "n_per_component", 1)
    A = np.array([[0.0, -0.1], [1.7, 0.4]])
    mu2 = np.array([-6.0, 3.0])
    X = np.r_[rs.randn(n, 2) @ A, 0.7 * (rs.randn(n, 2) @ np.eye(2)) + mu2]
    truth = MixtureParams([0.5, 0.5], [[0.0, 0.0], mu2], [A.T @ A, 0.49 * np.eye(2)], "full")
    return Generated(X, np.repeat([0, 1], n), truth)
