"""Bad input to the public API: each case names the exception and the message it must give."""

from __future__ import annotations

import numpy as np
import pytest

import mixlab as ml

X_OK = np.random.default_rng(0).normal(size=(30, 2))
X_NAN = X_OK.copy()
X_NAN[4, 1] = np.nan
X_INF = X_OK.copy()
X_INF[2, 0] = np.inf
GOOD_START = {
    "weights": [0.5, 0.5],
    "means": [[0.0, 0.0], [1.0, 1.0]],
    "covariances": np.tile(np.eye(2), (2, 1, 1)),
}


def _start(**changes):
    out = dict(GOOD_START)
    out.update(changes)
    return out


COUNTS = np.array([[0.0, 3.0], [2.0, 1.0], [5.0, 0.0], [1.0, 1.0]])
BINARY = np.array([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])

FIT_CASES = [
    # (args, kwargs, exception, message fragment)
    # families and their data
    ((X_OK, 2), {"family": "gamma"}, ValueError, "unknown family 'gamma'; use one of .*'gaussian'"),
    ((X_OK, 2), {"family": 3}, TypeError, "family must be a name"),
    (
        (COUNTS, 2),
        {"family": "poisson", "covariance": "diag"},
        ValueError,
        "covariance='diag' applies to families with a covariance layout",
    ),
    (
        (-COUNTS, 2),
        {"family": "poisson"},
        ValueError,
        r"X must hold counts \(non-negative integers\) for the Poisson family; column 1 has -3",
    ),
    (
        (COUNTS + 0.5, 2),
        {"family": "poisson"},
        ValueError,
        "column 0 has 0.5 at row 0",
    ),
    (
        (BINARY * 2, 2),
        {"family": "bernoulli"},
        ValueError,
        r"X must hold binary values \(0 or 1\) for the Bernoulli family; column 1 has 2",
    ),
    (
        (X_OK, 2),
        {"family": ml.families.Gaussian(covariance="diag"), "covariance": "full"},
        ValueError,
        "conflicting options",
    ),
    (
        (X_OK, 2),
        {"method": ml.EM(fixed=("rates",)), "family": "student_t"},
        ValueError,
        "fixed must name parameters of StudentT",
    ),
    ((X_NAN, 2), {}, ValueError, r"X contains NaN in column 1 \(1 row\(s\), first at row 4\)"),
    ((X_INF, 2), {}, ValueError, "X contains infinite values in column 0"),
    ((np.zeros((3, 4, 2)), 2), {}, ValueError, "X has 3 dimensions"),
    ((np.array([["a", "b"], ["c", "d"]]), 1), {}, TypeError, "X must be numeric"),
    ((np.zeros((0, 2)), 1), {}, ValueError, "X is empty"),
    ((None, 1), {}, TypeError, "X is None"),
    ((X_OK[:3], 4), {}, ValueError, "X has 3 sample.*n_components=4"),
    ((X_OK, 0), {}, ValueError, "n_components must be >= 1"),
    ((X_OK, 2.5), {}, TypeError, "n_components must be an int"),
    ((X_OK, 2), {"covariance": "ful"}, ValueError, "unknown covariance type 'ful'"),
    ((X_OK, 2), {"method": "em"}, TypeError, "method must be ml.EM"),
    ((X_OK, 2), {"key": "zero"}, TypeError, "key must be an int seed or a jax.random key"),
    ((X_OK, 2), {"key": -1}, ValueError, "non-negative"),
    ((X_OK, 2), {"dtype": np.int32}, ValueError, "dtype must be float32 or float64"),
    (
        (X_OK, 2),
        {"method": ml.EM(init=_start(weights=[0.5, 0.6]))},
        ValueError,
        "weights sum to 1.1",
    ),
    (
        (X_OK, 2),
        {
            "method": ml.EM(
                init=_start(
                    means=[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]],
                    covariances=np.tile(np.eye(3), (2, 1, 1)),
                )
            )
        },
        ValueError,
        r"starting parameters have 3 feature\(s\) but X has 2",
    ),
    # settings that depend on the family are checked when the family is known
    (
        (X_OK, 2),
        {"method": ml.EM(fixed=("weights", "means", "covariances"))},
        ValueError,
        "leave at least one",
    ),
    (
        (X_OK, 2),
        {"method": ml.EM(fixed=("mean",))},
        ValueError,
        r"fixed must name parameters of Gaussian\(covariance='full'\): 'weights', 'means'",
    ),
    (
        (X_OK, 2),
        {"method": ml.EM(formulation="fast")},
        ValueError,
        "formulation must be 'auto' or one of 'centred', 'expanded'",
    ),
    (
        (X_OK, 3),
        {"method": ml.EM(init=GOOD_START)},
        ValueError,
        "starting parameters have 2 components but n_components=3",
    ),
    (
        (X_OK, 2),
        {"method": ml.EM(init=_start(covariances=np.array([[[1, 2], [2, 1]], np.eye(2)])))},
        ValueError,
        "not positive definite",
    ),
    (
        (X_OK, 2),
        {"method": ml.EM(init=_start(covariances=np.ones((2, 2))))},
        ValueError,
        r"must have shape \(2, 2, 2\)",
    ),
]


@pytest.mark.parametrize(("args", "kwargs", "exc", "message"), FIT_CASES)
def test_fit_rejects_bad_input(args, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        ml.fit(*args, **kwargs)


EM_CASES = [
    ({"tol": -1.0}, ValueError, "tol must be >= 0"),
    ({"tol": float("nan")}, ValueError, "tol must be finite"),
    ({"max_iter": 0}, ValueError, "max_iter must be >= 1"),
    ({"max_iter": 10.0}, TypeError, "max_iter must be an int"),
    ({"n_init": 0}, ValueError, "n_init must be >= 1"),
    ({"reg_covar": -1e-3}, ValueError, "reg_covar must be >= 0"),
    ({"init": "kmeans+"}, ValueError, "init must be one of"),
    ({"init": 3}, TypeError, "init must be one of"),
    ({"init": GOOD_START, "n_init": 4}, ValueError, "use n_init=1"),
    ({"assignment": "fuzzy"}, ValueError, "assignment must be one of"),
    ({"fixed": (3,)}, TypeError, "fixed must hold parameter names"),
    ({"chunk_size": 0}, ValueError, "chunk_size must be >= 1"),
    ({"formulation": 2}, TypeError, "formulation must be a string"),
]


@pytest.mark.parametrize(("kwargs", "exc", "message"), EM_CASES)
def test_em_settings_are_checked_on_construction(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        ml.EM(**kwargs)


def test_pandas_and_lists_are_accepted():
    import pandas as pd

    df = pd.DataFrame(X_OK, columns=["a", "b"])
    r1 = ml.fit(df, 2, key=0)
    r2 = ml.fit(X_OK.tolist(), 2, key=0)
    np.testing.assert_array_equal(r1.params.means, r2.params.means)


FAMILY_CASES = [
    (lambda: ml.families.Bernoulli(pseudo_count=-1), ValueError, "pseudo_count must be >= 0"),
    (lambda: ml.families.StudentT(dofs=0.0), ValueError, "dofs must be > 0"),
    (lambda: ml.families.StudentT(covariance="ful"), ValueError, "unknown covariance type 'ful'"),
    (lambda: ml.families.get_family("poisson", pseudo_count=1), ValueError, "takes no option"),
    (
        lambda: ml.MixtureParams([0.5, 0.5], family="poisson", rates=[[1.0], [-2.0]]),
        ValueError,
        r"rates\[1, 0\] \(component 1\) = -2 must be non-negative",
    ),
    (
        lambda: ml.MixtureParams([1.0], family="bernoulli", probs=[[1.5]]),
        ValueError,
        r"probs\[0, 0\] \(component 0\) = 1.5 must be between 0 and 1",
    ),
    (
        lambda: ml.MixtureParams([1.0], [[0.0]], [[[1.0]]], family="student_t", dofs=[0.0]),
        ValueError,
        r"dofs\[0\] \(component 0\) = 0 must be positive",
    ),
    (
        lambda: ml.MixtureParams([1.0], family="poisson", probs=[[0.5]]),
        ValueError,
        r"unknown parameter\(s\) \['probs'\] for Poisson\(\)",
    ),
    (
        lambda: ml.MixtureParams([1.0], family="student_t", means=[[0.0]], covariances=[[[1.0]]]),
        ValueError,
        "missing dofs",
    ),
]


@pytest.mark.parametrize(("build", "exc", "message"), FAMILY_CASES)
def test_families_and_their_parameters_are_checked(build, exc, message):
    with pytest.raises(exc, match=message):
        build()


# ----------------------------------------------------------------------------- everywhere else
PARAMS = ml.MixtureParams([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], np.tile(np.eye(2), (2, 1, 1)))


@pytest.fixture(scope="session")
def fitted():
    return ml.fit(X_OK, 2, key=0)


EVERYWHERE = [
    # (callable, exception, message fragment)
    (lambda f: ml.e_step(X_OK, "params"), TypeError, "parameters must be a dict"),
    (lambda f: ml.e_step(X_OK[:, :1], PARAMS), ValueError, "X has 1 feature"),
    (lambda f: ml.e_step(X_NAN, PARAMS), ValueError, "X contains NaN"),
    (
        lambda f: ml.m_step(X_OK, np.full((30, 2), 0.5), covariance_type="box"),
        ValueError,
        "unknown covariance type 'box'",
    ),
    (
        lambda f: ml.m_step(X_OK, np.full((30, 2), 0.5), reg_covar=-1.0),
        ValueError,
        "reg_covar must be >= 0",
    ),
    (
        lambda f: ml.elbo(X_OK, PARAMS, np.full((30, 3), 1 / 3)),
        ValueError,
        r"resp must have shape \(30, 2\)",
    ),
    (lambda f: ml.log_likelihood(np.zeros((2, 2, 2)), PARAMS), ValueError, "3 dimensions"),
    (
        lambda f: ml.log_prob_components(X_OK, {"weights": [1.0]}),
        ValueError,
        "missing means, covariances",
    ),
    (lambda f: PARAMS.sample(0, 0), ValueError, "n_samples must be >= 1"),
    (lambda f: PARAMS.sample("seed", 5), TypeError, "key must be an int seed"),
    (lambda f: PARAMS.sample(np.zeros(3, np.uint32), 5), ValueError, r"uint32 of shape \(2,\)"),
    (lambda f: f.predict(X_OK[:, :1]), ValueError, "X has 1 feature"),
    (lambda f: f.sample(0, -2), ValueError, "n_samples must be >= 1"),
    (lambda f: f.bic(np.ones((3, 4))), ValueError, "X has 4 feature"),
    (lambda f: ml.compare("em"), TypeError, "em must be a FitResult"),
    (lambda f: ml.compare(f, f), TypeError, "every other result must be an SVI or NUTS FitResult"),
    (lambda f: ml.compare(f, hdi_prob=1.5), ValueError, "hdi_prob must be between 0"),
    (lambda f: ml.datasets.load("iris"), ValueError, "unknown dataset 'iris'; available"),
    (lambda f: ml.datasets.cs229(seed=-1), ValueError, "seed must be >= 0"),
    (lambda f: ml.datasets.four_clusters(n_samples=0), ValueError, "n_samples must be >= 1"),
    (
        lambda f: ml.FitResult.load("/nonexistent/fit.npz"),
        FileNotFoundError,
        "no saved mixlab result",
    ),
    (
        lambda f: ml.fit(
            X_OK,
            2,
            ml.NUTS(
                priors=ml.Priors(mean_loc=[0.0, 0.0, 0.0]),
                num_samples=5,
                num_warmup=5,
                progress=False,
            ),
        ),
        ValueError,
        "mean_loc has 3 entries but the data have 2 feature",
    ),
    (lambda f: ml.Priors(ordered_means="yes"), TypeError, "ordered_means must be True or False"),
    (lambda f: ml.EM(progress="yes"), TypeError, "progress must be True, False or None"),
    (lambda f: ml.EM(on_collapse="retry"), ValueError, "on_collapse must be one of"),
]


@pytest.mark.parametrize(("call", "exc", "message"), EVERYWHERE)
def test_public_functions_check_their_arguments(fitted, call, exc, message):
    with pytest.raises(exc, match=message):
        call(fitted)
