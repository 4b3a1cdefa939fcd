"""mixlab.sklearn.GaussianMixture: scikit-learn's estimator checks, parity with
sklearn.mixture.GaussianMixture from the same start, model selection in a grid
search, DataFrames, clone/pickle, warm starts, other families and errors.

Every distinct (data shape, settings) compiles an EM program (~1-2 s), so the
tests share a few data sets: ``X`` (300 x 3) for parity, pickling, warm starts,
partial starts and seeds; the grid search its own 600 x 2 set.
"""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from helpers import COVARIANCE_TYPES, blobs
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import mixlab as ml
from mixlab.families import StudentT
from mixlab.sklearn import GaussianMixture

K = 3
MAX_ITER = 10  # parity fits: tol=0, exactly this many iterations
RTOL = 1e-8


@parametrize_with_checks([GaussianMixture()])
def test_sklearn_estimator_checks(estimator, check):
    # All of scikit-learn's checks pass; none is listed as an expected failure.
    check(estimator)


# ------------------------------------------------------------------ shared data
@pytest.fixture(scope="module")
def X():
    return blobs(300, 3, K, seed=11, spread=2.5)


def _start(X, covariance_type):
    """A start in scikit-learn's layout: weights, means and precisions (rough, so EM moves)."""
    rng = np.random.default_rng(5)
    means = X[rng.choice(len(X), K, replace=False)]
    cov = np.cov(X.T) * np.array([0.6, 0.9, 1.3])[:, None, None]
    prec = np.linalg.inv(cov)
    precisions = {
        "full": prec,
        "tied": np.linalg.inv(np.cov(X.T)),
        "diag": 1.0 / np.diagonal(cov, axis1=1, axis2=2),
        "spherical": 1.0 / np.trace(cov, axis1=1, axis2=2) * 3,
    }[covariance_type]
    return {
        "weights_init": np.array([0.3, 0.3, 0.4]),
        "means_init": means,
        "precisions_init": precisions,
    }


def _fit_quietly(estimator, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # tol=0 never converges
        return estimator.fit(X)


_PAIRS: dict = {}


def _pair(X, covariance_type):
    """(mixlab estimator, scikit-learn estimator), fitted from the same start, cached."""
    if covariance_type not in _PAIRS:
        kwargs = dict(covariance_type=covariance_type, tol=0.0, max_iter=MAX_ITER, random_state=0)
        start = _start(X, covariance_type)
        ours = _fit_quietly(GaussianMixture(K, **kwargs, **start), X)
        ref = _fit_quietly(SkGaussianMixture(K, **kwargs, **start), X)
        _PAIRS[covariance_type] = (ours, ref)
    return _PAIRS[covariance_type]


@pytest.fixture(scope="module")
def full_pair(X):
    return _pair(X, "full")


# ---------------------------------------------------------------------- parity
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_parity_with_sklearn_from_the_same_start(X, covariance_type, capfd):
    ours, ref = _pair(X, covariance_type)
    assert capfd.readouterr() == ("", "")  # verbose=0: nothing printed
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        got, want = getattr(ours, name), getattr(ref, name)
        assert got.shape == want.shape and got.dtype == want.dtype == np.float64, name
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-12, err_msg=name)
    assert ours.n_iter_ == ref.n_iter_ == MAX_ITER
    assert ours.converged_ is ref.converged_ is False
    # lower_bound_: scikit-learn keeps the bound of the last E-step, i.e. of the
    # parameters before the last M-step, not score(X) of the returned ones.
    np.testing.assert_allclose(ours.lower_bound_, ref.lower_bound_, rtol=RTOL)
    np.testing.assert_allclose(ours.lower_bounds_, ref.lower_bounds_, rtol=RTOL)
    assert ours.lower_bound_ < ours.score(X)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), rtol=RTOL, atol=1e-12)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
    np.testing.assert_allclose(ours.score_samples(X), ref.score_samples(X), rtol=RTOL)
    np.testing.assert_allclose(ours.score(X), ref.score(X), rtol=RTOL)
    np.testing.assert_allclose(ours.bic(X), ref.bic(X), rtol=RTOL)
    np.testing.assert_allclose(ours.aic(X), ref.aic(X), rtol=RTOL)


def test_stopping_rule_matches_sklearn(X, full_pair):
    # tol > 0: the same iteration count and convergence flag.  Started where the
    # ten parity iterations ended, so that it converges within 15 iterations (tol
    # and max_iter below 16 are run-time arguments: the parity program serves).
    ref = full_pair[1]
    start = {
        "weights_init": ref.weights_,
        "means_init": ref.means_,
        "precisions_init": ref.precisions_,
    }
    ours = GaussianMixture(K, tol=1e-3, max_iter=15, **start).fit(X)
    ref = SkGaussianMixture(K, tol=1e-3, max_iter=15, **start).fit(X)
    assert ours.converged_ and ref.converged_
    assert ours.n_iter_ == ref.n_iter_ < 15
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-8)
    np.testing.assert_allclose(ours.lower_bound_, ref.lower_bound_, rtol=1e-10)


def test_not_converged_warns_as_sklearn(X):
    start = _start(X, "full")
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        est = GaussianMixture(K, tol=0.0, max_iter=MAX_ITER, **start).fit(X)
    assert not est.converged_


# -------------------------------------------------------------- model selection
def test_grid_search_over_a_pipeline_picks_the_true_number_of_components():
    """Four well separated clusters; GridSearchCV over K = 3..5 picks 4.

    Scored by held-out BIC.  The estimator's own score (held-out mean
    log-likelihood) also picks 4 on this seed, but by 0.002 nats per sample over
    K = 5 (-2.149 against -2.151); on other seeds of the same design it picks 5
    (seed 4: -1.649 against -1.705), since a fifth component that splits a
    cluster costs held-out likelihood only at order K/n.  BIC's penalty makes
    the choice clear: K = 4 beats K = 3 and K = 5 by over 30 here.
    """
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0], [6.0, 6.0]])
    X = np.concatenate([c + rng.normal(size=(150, 2)) * rng.uniform(0.5, 1.5, 2) for c in centres])
    X = X[rng.permutation(len(X))]

    def neg_bic(pipeline, X_test, y=None):
        return -pipeline[-1].bic(pipeline[:-1].transform(X_test))

    search = GridSearchCV(
        Pipeline([("scale", StandardScaler()), ("gmm", GaussianMixture(random_state=0))]),
        {"gmm__n_components": [3, 4, 5]},
        cv=3,
        scoring=neg_bic,
        refit=False,  # the refit on all rows would compile one more program
    ).fit(X)
    assert search.best_params_ == {"gmm__n_components": 4}
    scores = search.cv_results_["mean_test_score"]  # K = 3, 4, 5
    assert scores[1] > max(scores[0], scores[2]) + 30


# ------------------------------------------------------------------- DataFrames
def test_dataframe_feature_names_behave_as_in_sklearn(X, full_pair):
    columns = ["a", "b", "c"]
    frame = pd.DataFrame(X, columns=columns)
    start = _start(X, "full")
    kwargs = dict(tol=0.0, max_iter=MAX_ITER, **start)
    ours = _fit_quietly(GaussianMixture(K, **kwargs), frame)
    ref = _fit_quietly(SkGaussianMixture(K, **kwargs), frame)
    np.testing.assert_array_equal(ours.feature_names_in_, columns)
    assert tuple(ours.result_.feature_names) == tuple(columns)  # label mixlab's summary
    np.testing.assert_allclose(ours.means_, full_pair[0].means_, rtol=1e-12)  # as from NumPy
    assert not hasattr(full_pair[0], "feature_names_in_")

    renamed = frame.rename(columns={"b": "x"})
    with pytest.raises(ValueError, match="feature names should match") as got:
        ours.predict(renamed)
    with pytest.raises(ValueError) as want:
        ref.predict(renamed)
    assert str(got.value) == str(want.value).replace("SkGaussianMixture", "GaussianMixture")
    # NumPy after a DataFrame fit: scikit-learn's warning, and the same answer.
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        labels = ours.predict(X)
    np.testing.assert_array_equal(labels, ref.predict(frame))


# ------------------------------------------------------------ clone and pickle
def test_pickle_round_trip_gives_identical_predictions(X, full_pair):
    est = full_pair[0]
    loaded = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(loaded.predict_proba(X), est.predict_proba(X))
    np.testing.assert_array_equal(loaded.score_samples(X), est.score_samples(X))
    np.testing.assert_array_equal(loaded.precisions_cholesky_, est.precisions_cholesky_)
    assert isinstance(loaded.result_, ml.FitResult)
    assert loaded.result_.data is None  # the model only, not the training data
    np.testing.assert_array_equal(loaded.result_.trace, est.result_.trace)


def test_clone_refits_to_identical_predictions(X, full_pair):
    est = full_pair[0]
    copy = clone(est)
    assert copy.get_params()["max_iter"] == MAX_ITER
    assert not hasattr(copy, "result_")
    with pytest.raises(NotFittedError):
        copy.predict(X)
    _fit_quietly(copy, X)
    np.testing.assert_array_equal(copy.predict_proba(X), est.predict_proba(X))
    np.testing.assert_array_equal(copy.means_, est.means_)


# ------------------------------------------------------------------ warm start
def test_warm_start_continues_from_the_previous_fit(X, full_pair):
    start = _start(X, "full")
    est = GaussianMixture(K, tol=0.0, max_iter=MAX_ITER // 2, warm_start=True, **start)
    _fit_quietly(est, X)
    first_means = est.means_.copy()
    _fit_quietly(est, X)  # five more iterations from where the first fit ended
    assert est.n_iter_ == MAX_ITER // 2
    assert not np.allclose(est.means_, first_means, rtol=1e-6)
    ten, ref = full_pair  # ten iterations in one go, ours and scikit-learn's
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(est, name), getattr(ten, name), rtol=1e-9)
        np.testing.assert_allclose(getattr(est, name), getattr(ref, name), rtol=1e-8)
    with pytest.raises(ValueError, match="warm_start continues the previous fit"):
        copy.deepcopy(est).fit(X[:, :2])  # other data: say so, nothing compiles
    # Without warm_start a refit starts again from the given start.
    cold = clone(est).set_params(warm_start=False)
    _fit_quietly(cold, X)
    _fit_quietly(cold, X)
    np.testing.assert_allclose(cold.means_, first_means, rtol=1e-12)


# ------------------------------------------------------- starts and randomness
def test_partial_start_takes_the_rest_from_the_init_method(X, full_pair):
    # means_init alone: weights and covariances come from the start that
    # init_params draws with random_state, as documented.
    means_init = _start(X, "full")["means_init"][::-1]
    est = GaussianMixture(
        K, tol=0.0, max_iter=MAX_ITER, init_params="kmeans", random_state=4, means_init=means_init
    )
    _fit_quietly(est, X)
    drawn = ml.fit(
        X, K, ml.EM(init="kmeans", tol=0.0, max_iter=1, record_params=True), key=4, order=None
    ).params_trace[0]
    start = {"weights": drawn.weights, "means": means_init, "covariances": drawn.covariances}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ml.ConvergenceWarning)
        want = ml.fit(X, K, ml.EM(init=start, tol=0.0, max_iter=MAX_ITER), key=4, order=None)
    np.testing.assert_allclose(est.means_, want.params.means, rtol=1e-12)
    np.testing.assert_allclose(est.covariances_, want.params.covariances, rtol=1e-12)


class _Called(Exception):
    pass


@pytest.mark.parametrize(
    ("init_params", "init"),
    [
        ("kmeans", "kmeans"),
        ("k-means++", "kmeans++"),
        ("random", "random"),
        ("random_from_data", "random_from_data"),
    ],
)
def test_settings_map_to_mixlab_em(X, monkeypatch, init_params, init):
    # What fit hands to ml.fit, caught before anything compiles.
    seen = {}

    def spy(X, n_components, method, **kwargs):
        seen.update(n_components=n_components, method=method, **kwargs)
        raise _Called

    monkeypatch.setattr("mixlab.sklearn.ml_fit", spy)
    est = GaussianMixture(
        2,
        covariance_type="diag",
        tol=1e-4,
        reg_covar=1e-3,
        max_iter=7,
        n_init=5,
        init_params=init_params,
        random_state=9,
        verbose=1,
    )
    with pytest.raises(_Called):
        est.fit(X)
    method = seen["method"]
    assert (method.tol, method.max_iter, method.n_init, method.reg_covar) == (1e-4, 7, 5, 1e-3)
    assert method.init == init and method.progress is True
    assert seen["n_components"] == 2 and seen["key"] == 9
    assert seen["family"] == ml.families.Gaussian(covariance="diag")
    with pytest.raises(_Called):
        est.set_params(verbose=0).fit(X)
    assert seen["method"].progress is False


def test_random_state_is_the_mixlab_key(X):
    def fit(random_state):
        return GaussianMixture(K, init_params="k-means++", random_state=random_state).fit(X)

    est = fit(3)
    em = ml.EM(init="kmeans++", criterion="change", standardize=False, max_iter=100)
    want = ml.fit(X, K, em, key=3, order=None)
    np.testing.assert_array_equal(est.means_, want.params.means)
    assert est.result_.settings["init"] == "kmeans++"
    # A RandomState or Generator draws the seed from itself, as scikit-learn does.
    seed = np.random.RandomState(7).randint(np.iinfo(np.int32).max)
    np.testing.assert_array_equal(fit(np.random.RandomState(7)).means_, fit(int(seed)).means_)
    seed = np.random.default_rng(7).integers(np.iinfo(np.int32).max)
    np.testing.assert_array_equal(fit(np.random.default_rng(7)).means_, fit(int(seed)).means_)
    # None: NumPy's global random state (valid, reproducible only through np.random.seed).
    saved = np.random.get_state()  # noqa: NPY002
    try:
        np.random.seed(1)  # noqa: NPY002 (the global state is what None means)
        first = fit(None).means_
        np.random.seed(1)  # noqa: NPY002
        np.testing.assert_array_equal(fit(None).means_, first)
    finally:
        np.random.set_state(saved)  # noqa: NPY002


def test_n_init_runs_batched_restarts(X):
    # k-means++ with random_state=3: the n_init=1 program of the test above serves.
    one = GaussianMixture(K, init_params="k-means++", random_state=3).fit(X)
    three = GaussianMixture(K, init_params="k-means++", n_init=3, random_state=3).fit(X)
    assert len(three.result_.restarts) == 3
    # Restart 0 of n_init=3 is the n_init=1 fit, so three restarts never end lower.
    np.testing.assert_allclose(
        three.result_.restarts.log_likelihood[0], one.result_.log_likelihood, rtol=1e-12
    )
    assert three.result_.log_likelihood >= one.result_.log_likelihood - 1e-9


def test_sample_is_keyed_by_random_state(full_pair):
    est = full_pair[0]
    X_new, y = est.sample(4000)
    assert X_new.shape == (4000, 3) and y.shape == (4000,)
    assert np.issubdtype(y.dtype, np.integer) and set(np.unique(y)) <= set(range(K))
    again, _ = est.sample(4000)
    np.testing.assert_array_equal(again, X_new)  # random_state=0 is a fixed key
    # Label shares and component means within 5 standard errors.
    share = np.bincount(y, minlength=K) / len(y)
    assert np.all(np.abs(share - est.weights_) < 5 * np.sqrt(est.weights_ / len(y)))
    for k in range(K):
        rows = X_new[y == k]
        se = np.sqrt(np.diagonal(est.covariances_[k]) / len(rows))
        assert np.all(np.abs(rows.mean(axis=0) - est.means_[k]) < 5 * se)
    with pytest.raises(ValueError, match="at least one sample"):
        est.sample(0)


def test_float32_stays_float32(X, full_pair):
    start = _start(X, "full")
    est = GaussianMixture(K, tol=0.0, max_iter=MAX_ITER, **start)
    _fit_quietly(est, X.astype(np.float32))
    ref = full_pair[0]
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        assert getattr(est, name).dtype == np.float32, name
        np.testing.assert_allclose(getattr(est, name), getattr(ref, name), rtol=2e-4, atol=1e-5)


# ------------------------------------------------------------- other families
def test_poisson_family_sets_rates(full_pair):
    rng = np.random.default_rng(3)
    rates = np.array([[1.0, 8.0], [9.0, 2.0]])
    labels = rng.integers(0, 2, 300)
    C = rng.poisson(rates[labels]).astype(float)
    # Refit a fitted Gaussian mixture as a Poisson one: no Gaussian attribute is left.
    est = copy.deepcopy(full_pair[0]).set_params(
        n_components=2,
        family="poisson",
        tol=1e-3,
        max_iter=100,
        weights_init=None,
        means_init=None,
        precisions_init=None,
    )
    est.fit(C)
    em = ml.EM(init="kmeans", criterion="change", max_iter=100)
    want = ml.fit(C, 2, em, family="poisson", key=0, order=None)
    np.testing.assert_array_equal(est.rates_, want.params.rates)
    np.testing.assert_array_equal(est.weights_, want.params.weights)
    for name in ("means_", "covariances_", "precisions_", "precisions_cholesky_"):
        assert not hasattr(est, name)
    # score_samples and BIC against scipy's Poisson pmf, K * D + K - 1 parameters.
    log_joint = np.log(est.weights_) + scipy.stats.poisson.logpmf(
        C[:, None, :], est.rates_[None]
    ).sum(axis=-1)
    log_density = scipy.special.logsumexp(log_joint, axis=1)
    np.testing.assert_allclose(est.score_samples(C), log_density, rtol=1e-10)
    np.testing.assert_allclose(est.bic(C), -2 * log_density.sum() + 5 * np.log(300), rtol=1e-10)
    np.testing.assert_allclose(est.aic(C), -2 * log_density.sum() + 10, rtol=1e-10)
    with pytest.raises(ValueError, match="counts"):
        est.predict(C - 5.0)


def test_student_t_family_takes_covariance_type(X):
    est = GaussianMixture(K, family="student_t", covariance_type="diag", random_state=0).fit(X)
    em = ml.EM(init="kmeans", criterion="change", standardize=False, max_iter=100)
    want = ml.fit(X, K, em, family="student_t", covariance="diag", key=0, order=None)
    np.testing.assert_array_equal(est.dofs_, want.params.dofs)
    np.testing.assert_array_equal(est.covariances_, want.params.covariances)
    assert est.covariances_.shape == (K, 3)
    np.testing.assert_allclose(est.precisions_cholesky_, 1 / np.sqrt(est.covariances_), rtol=1e-15)
    np.testing.assert_allclose(est.precisions_, 1 / est.covariances_, rtol=1e-14)
    # A family object carries its own layout; the default covariance_type defers to it.
    obj = GaussianMixture(K, family=StudentT(covariance="diag"), random_state=0).fit(X)
    np.testing.assert_array_equal(obj.means_, est.means_)


# ----------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("settings", "error", "match"),
    [
        ({"covariance_type": "banana"}, ValueError, "covariance_type must be one of"),
        ({"family": "poisson", "covariance_type": "diag"}, ValueError, "not to family='poisson'"),
        ({"family": StudentT(covariance="diag"), "covariance_type": "tied"}, ValueError, "confl"),
        ({"family": "weibull"}, ValueError, "unknown family 'weibull'"),
        ({"family": "poisson", "means_init": np.zeros((3, 3))}, ValueError, "means_init applies"),
        ({"init_params": "kmeans--"}, ValueError, "init_params must be one of"),
        ({"n_components": 0}, ValueError, "n_components must be >= 1"),
        ({"max_iter": 0}, ValueError, "max_iter must be >= 1"),
        ({"tol": -1.0}, ValueError, "tol must be >= 0"),
        ({"random_state": "seed"}, TypeError, "random_state must be None, an int"),
        ({"random_state": -1}, ValueError, "non-negative"),
        ({"n_components": 301}, ValueError, "n_samples >= n_components"),
        ({"weights_init": [0.5, 0.5]}, ValueError, r"weights_init must have shape \(3,\)"),
        ({"weights_init": [0.5, 0.5, 0.5]}, ValueError, "weights sum to 1.5"),
        ({"precisions_init": np.ones((3, 3))}, ValueError, r"shape \(3, 3, 3\)"),
        ({"precisions_init": -np.ones((3, 3)), "covariance_type": "diag"}, ValueError, "positive"),
        ({"precisions_init": np.ones((3, 3, 3))}, ValueError, r"precisions_init\[0\] must be pos"),
    ],
)
def test_bad_settings_raise_clear_errors(X, settings, error, match):
    kwargs = {"n_components": K, **settings}
    est = GaussianMixture(**kwargs)  # constructing never raises (scikit-learn's rule)
    with pytest.raises(error, match=match):
        est.fit(X)
    assert not hasattr(est, "result_")


def test_wrong_number_of_features_at_predict(X, full_pair):
    est = full_pair[0]
    for method in (est.predict, est.predict_proba, est.score_samples, est.score, est.bic):
        with pytest.raises(ValueError, match="X has 2 features, but GaussianMixture is expecting"):
            method(X[:, :2])
    with pytest.raises(NotFittedError):
        GaussianMixture().score(X)


def test_import_mixlab_does_not_import_sklearn_and_missing_sklearn_is_explained():
    code = (
        "import sys, mixlab\n"
        "assert 'mixlab.sklearn' not in sys.modules and 'sklearn' not in sys.modules\n"
        "sys.modules['sklearn'] = None\n"
        "try:\n"
        "    import mixlab.sklearn\n"
        "except ImportError as exc:\n"
        "    assert 'pip install mixlab[sklearn]' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('no ImportError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
