"""Standard errors of EM estimates from the observed information (issue 13).

References: a finite-difference Hessian of a log-likelihood written here with
SciPy; the spread of EM estimates over data sets simulated from known
parameters; closed-form identities of the delta method.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from scipy import stats

import mixlab as ml
from mixlab.errors import ConvergenceWarning, FitError
from mixlab.uncertainty import observed_information


# ------------------------------------------------------------------ references
def _scipy_log_likelihood(values: dict, family: str, X: np.ndarray) -> float:
    w = values["weights"]
    K = len(w)
    if family == "gaussian":
        dens = [
            stats.multivariate_normal(values["means"][k], values["covariances"][k]).logpdf(X)
            for k in range(K)
        ]
    elif family == "poisson":
        dens = [stats.poisson(values["rates"][k]).logpmf(X).sum(axis=1) for k in range(K)]
    else:  # student_t
        dens = [
            stats.multivariate_t(
                values["means"][k], values["covariances"][k], df=values["dofs"][k]
            ).logpdf(X)
            for k in range(K)
        ]
    dens = np.atleast_2d(np.array(dens)).T.reshape(len(X), K)
    return float(np.sum(np.logaddexp.reduce(dens + np.log(w), axis=1)))


def _set(values: dict, coords, theta) -> dict:
    """The test's own packing: free coordinates into full parameter arrays."""
    out = {k: np.array(v, dtype=float) for k, v in values.items()}
    for c, t in zip(coords, theta, strict=True):
        out[c.name][c.index] = t
        if c.name == "covariances":
            out[c.name][(*c.index[:-2], c.index[-1], c.index[-2])] = t
    out["weights"][-1] = 1.0 - out["weights"][:-1].sum()
    return out


def _fd_hessian(f, theta, rel=1e-4):
    n = len(theta)
    h = rel * np.maximum(np.abs(theta), 1.0)
    H = np.empty((n, n))
    for i in range(n):
        for j in range(i, n):
            ei, ej = np.eye(n)[i] * h[i], np.eye(n)[j] * h[j]
            H[i, j] = H[j, i] = (
                f(theta + ei + ej) - f(theta + ei - ej) - f(theta - ei + ej) + f(theta - ei - ej)
            ) / (4 * h[i] * h[j])
    return H


def _two_clusters(seed, n=300):
    rng = np.random.default_rng(seed)
    return np.r_[rng.normal([0, 0], [1.0, 0.7], (n // 2, 2)), rng.normal([4, 3], 1.0, (n // 2, 2))]


@pytest.mark.parametrize("family", ["gaussian", "poisson", "student_t"])
def test_hessian_matches_finite_differences_of_a_scipy_likelihood(family):
    rng = np.random.default_rng(0)
    if family == "poisson":
        X = np.r_[rng.poisson(2.0, (60, 2)), rng.poisson(7.0, (60, 2))].astype(float)
    else:
        X = _two_clusters(0, 80)
    with warnings.catch_warnings():  # the Hessian is compared wherever EM stopped
        warnings.simplefilter("ignore", ConvergenceWarning)
        r = ml.fit(X, 2, ml.EM(n_init=3, tol=1e-10, max_iter=300, reg_covar=0.0), family=family)
    coords, _, info = observed_information(r.params, X)
    values = {"weights": r.params.weights, **r.params.components}
    theta = np.array([np.asarray(values[c.name])[c.index] for c in coords])
    fd = _fd_hessian(lambda t: _scipy_log_likelihood(_set(values, coords, t), family, X), theta)
    # relative to the matrix as a whole (entries near zero have no relative accuracy)
    assert np.linalg.norm(-info - fd) <= 1e-6 * np.linalg.norm(fd)


# ------------------------------------------------------- frequentist calibration
def _spread_vs_standard_errors(simulate, fit, n_sets):
    estimates, errors = [], []
    for seed in range(n_sets):
        X = simulate(np.random.default_rng(seed))
        r = fit(X)
        se = r.standard_errors()
        estimates.append(np.concatenate([np.ravel(getattr(r.params, n)) for n in NAMES[r]]))
        errors.append(np.concatenate([np.ravel(getattr(se, n)) for n in NAMES[r]]))
    spread = np.std(estimates, axis=0, ddof=1)
    typical = np.sqrt(np.mean(np.square(errors), axis=0))  # root-mean-square SE
    return spread, typical


NAMES: dict = {}


def _fit_from(start, family="gaussian", covariance=None):
    method = ml.EM(init=start, tol=1e-8, max_iter=300, reg_covar=0.0)

    def fit(X):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            r = ml.fit(X, 2, method, family=family, covariance=covariance)
        NAMES[r] = ["weights", *r.params.family.param_names()]
        return r

    return fit


CALIBRATION = {
    "gaussian_1d": (
        lambda rng: np.where(
            rng.random(400) < 0.4, rng.normal(-2.0, 0.8, 400), rng.normal(2.0, 1.2, 400)
        )[:, None],
        dict(weights=[0.4, 0.6], means=[[-2.0], [2.0]], covariances=[[[0.64]], [[1.44]]]),
        "gaussian",
    ),
    "gaussian_2d": (
        lambda rng: np.where(
            (rng.random(400) < 0.5)[:, None],
            rng.multivariate_normal([0, 0], [[1, 0.5], [0.5, 1]], 400),
            rng.multivariate_normal([4, 2], [[1, -0.3], [-0.3, 0.5]], 400),
        ),
        dict(
            weights=[0.5, 0.5],
            means=[[0, 0], [4, 2]],
            covariances=[[[1, 0.5], [0.5, 1]], [[1, -0.3], [-0.3, 0.5]]],
        ),
        "gaussian",
    ),
    "poisson": (
        lambda rng: np.where(
            (rng.random(300) < 0.3)[:, None],
            rng.poisson([2, 8], (300, 2)),
            rng.poisson([9, 3], (300, 2)),
        ).astype(float),
        dict(weights=[0.3, 0.7], rates=[[2.0, 8.0], [9.0, 3.0]]),
        "poisson",
    ),
}


@pytest.mark.benchmark
@pytest.mark.parametrize("case", list(CALIBRATION))
def test_standard_errors_match_the_spread_of_estimates_over_simulated_data(case):
    """300 data sets from known parameters, EM started at the truth (no label switching):
    the root-mean-square standard error is within 15% of the estimates' standard
    deviation for every parameter (sampling error of a 300-sample sd: about 4%)."""
    simulate, truth, family = CALIBRATION[case]
    spread, typical = _spread_vs_standard_errors(simulate, _fit_from(truth, family), 300)
    keep = spread > 0  # the diagonal-mirrored covariance entries are counted twice: fine
    np.testing.assert_allclose(typical[keep], spread[keep], rtol=0.15)


# --------------------------------------------------------------- identities
def test_delta_method_and_symmetry(faithful):
    r = ml.fit(faithful, 3, ml.EM(n_init=4, tol=1e-8, max_iter=2000), key=0)
    se = r.standard_errors()
    cov = r.covariance_of_estimates()
    # Var(w_K) = Var(1 - w_1 - ... - w_{K-1}) = 1' C 1 over the free weights
    i = [cov.names.index(f"weights[{k}]") for k in range(2)]
    assert se.weights[2] == pytest.approx(np.sqrt(cov.matrix[np.ix_(i, i)].sum()), rel=1e-12)
    np.testing.assert_array_equal(se.covariances, np.swapaxes(se.covariances, -1, -2))
    j = cov.names.index("means[1, 0]")
    assert se.means[1, 0] == pytest.approx(np.sqrt(cov.matrix[j, j]), rel=1e-12)
    assert np.all(np.linalg.eigvalsh(cov.matrix) > 0)


def test_fixed_parameters_are_conditioned_on(faithful):
    start = ml.fit(faithful, 2, key=0).params
    r = ml.fit(faithful, 2, ml.EM(init=start, fixed=("means",), tol=1e-10, max_iter=500))
    se = r.standard_errors()
    assert np.all(se.means == 0)
    coords, _, info = observed_information(r.params, faithful)  # means free here
    free = [k for k, c in enumerate(coords) if c.name != "means"]
    conditional = np.linalg.inv(info[np.ix_(free, free)])  # inverse of the sub-block
    labels = [coords[k] for k in free]
    k = next(n for n, c in enumerate(labels) if c.name == "covariances" and c.index == (1, 0, 1))
    assert se.covariances[1, 0, 1] == pytest.approx(np.sqrt(conditional[k, k]), rel=1e-8)


def test_a_saddle_point_is_refused_naming_the_component():
    """Two identical components (EM keeps them identical: a symmetric fixed point) sit
    at a saddle of the likelihood: splitting them raises it."""
    X = _two_clusters(0, 200)
    start = dict(
        weights=[0.5, 0.25, 0.25],
        means=[[0.0, 0.0], [4.0, 3.0], [4.0, 3.0]],
        covariances=np.tile(np.eye(2), (3, 1, 1)),
    )
    r = ml.fit(X, 3, ml.EM(init=start, max_iter=200))
    np.testing.assert_allclose(r.params.means[1], r.params.means[2], rtol=1e-12)
    with pytest.raises(FitError, match=r"not positive definite.*component [12].*saddle point"):
        r.standard_errors()


def test_a_rate_on_its_boundary_makes_the_information_singular():
    """A count that is always 0: every component's rate for it is 0, on the boundary."""
    rng = np.random.default_rng(0)
    X = np.c_[np.r_[rng.poisson(2.0, 100), rng.poisson(9.0, 100)], np.zeros(200)]
    r = ml.fit(X, 2, family="poisson", key=0)
    assert np.all(r.params.rates[:, 1] == 0)
    with pytest.raises(FitError, match=r"is (singular|not finite) \(direction of rates\[[01], 1\]"):
        r.standard_errors()


def test_not_for_the_posterior_or_hard_em(faithful):
    hard = ml.fit(faithful, 2, ml.EM(assignment="hard"), key=0)
    with pytest.raises(ValueError, match="assignment='soft'"):
        hard.standard_errors()
    em = ml.fit(faithful, 2, key=0)
    svi = dataclasses.replace(em, method="svi", posterior={"weights": em.params.weights[None]})
    with pytest.raises(ValueError, match="posterior draws give its uncertainty"):
        svi.standard_errors()
    online = dataclasses.replace(em, method="online_em")
    with pytest.raises(ValueError, match="need not sit at the maximum.*ml.EM"):
        online.standard_errors()


# ------------------------------------------------------------------ bootstrap
@pytest.fixture(scope="session")
def faithful_em(faithful):
    return ml.fit(faithful, 2, ml.EM(n_init=4, tol=1e-6, max_iter=500), key=0)


@pytest.mark.parametrize("kind", ["nonparametric", "weighted", "parametric"])
def test_bootstrap_standard_errors_against_the_hessian_ones_on_faithful(faithful_em, kind):
    """300 refits in one program (the sd of 300 draws carries ~4% error).  The parametric
    bootstrap (data drawn from the fitted Gaussian mixture) matches the observed
    information within 15% everywhere.  Resampling the rows does so for weights and
    means (within 20%); its covariance errors are larger (up to ~1.4x), because
    Faithful's clusters are not Gaussian and a variance's sampling error grows with
    the kurtosis, which the model-based information assumes Gaussian."""
    boot = faithful_em.bootstrap(n_boot=300, kind=kind, key=1)
    assert boot.draws["means"].shape == (300, 2, 2) and boot.converged.mean() > 0.95
    se, bse = faithful_em.standard_errors(), boot.standard_errors()
    rtol = 0.15 if kind == "parametric" else 0.2
    np.testing.assert_allclose(bse.weights, se.weights, rtol=rtol)
    np.testing.assert_allclose(bse.means, se.means, rtol=rtol)
    if kind == "parametric":
        np.testing.assert_allclose(bse.covariances, se.covariances, rtol=0.15)
    else:
        assert np.all(bse.covariances / se.covariances > 0.8)
    # labels follow EM's: each component's bootstrap mean sits at its EM mean
    np.testing.assert_allclose(boot.draws["means"].mean(axis=0), faithful_em.params.means, atol=0.2)


def test_bootstrap_is_reproducible_and_checks_its_arguments(faithful_em):
    a = faithful_em.bootstrap(n_boot=8, key=5)
    b = faithful_em.bootstrap(n_boot=8, key=5)
    np.testing.assert_array_equal(a.draws["means"], b.draws["means"])
    c = faithful_em.bootstrap(n_boot=8, key=6)
    assert not np.array_equal(a.draws["means"], c.draws["means"])
    with pytest.raises(ValueError, match="kind must be one of"):
        faithful_em.bootstrap(kind="jackknife")
    with pytest.raises(ValueError, match="n_boot must be >= 2"):
        faithful_em.bootstrap(n_boot=1)


@pytest.mark.benchmark
def test_bootstrap_of_weighted_rows_resamples_the_observations():
    """LSAT-6's 32 response patterns with counts: rows are drawn in proportion to their
    counts (1000 observations per replicate).  The class weights are weakly identified
    (Hessian standard error 0.15): bootstrap and information agree within 25% on them;
    the item probabilities' bootstrap errors run larger (median 1.27x: their sampling
    distributions are skewed by the weak identification)."""
    X, w = ml.datasets.load("lsat6", with_weights=True)
    method = ml.EM(n_init=4, tol=1e-9, max_iter=5000)
    r = ml.fit(X, 2, method, family="bernoulli", sample_weight=w, key=0)
    boot = r.bootstrap(n_boot=200, key=0)
    se, hessian = boot.standard_errors(), r.standard_errors()
    np.testing.assert_allclose(se.weights, hessian.weights, rtol=0.25)
    assert 0.8 < np.median(se.probs / hessian.probs) < 1.5


def test_an_estimate_short_of_the_maximum_is_continued_there():
    """LSAT-6 with scikit-learn's rule (the default before) stops after 7 iterations at
    weights 0.91/0.09, 4.3 log-likelihood units below the maximum (weights 0.66/0.34):
    its "standard errors" would describe the wrong point.  They are computed at the
    maximum instead, with a warning; the default rule reaches it by itself."""
    X, w = ml.datasets.load("lsat6", with_weights=True)
    r = ml.fit(X, 2, ml.EM(n_init=4, criterion="change"), family="bernoulli", sample_weight=w)
    assert r.converged and max(r.params.weights) > 0.85
    with pytest.warns(ConvergenceWarning, match=r"short of the maximum.*standard errors"):
        se = r.standard_errors()
    default = ml.fit(X, 2, ml.EM(n_init=4), family="bernoulli", sample_weight=w)
    np.testing.assert_allclose(np.sort(default.params.weights), [0.34, 0.66], atol=0.01)
    assert default.log_likelihood - r.log_likelihood > 4.0
    np.testing.assert_allclose(se.weights, default.standard_errors().weights, rtol=1e-2)
