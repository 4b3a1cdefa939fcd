"""Default fits end at the maximum: the stopping rule, continuing short estimates, and
starts that do not depend on units or outliers (mixlab.em.stopping, mixlab.em.init)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import mixlab as ml
from mixlab.em.stopping import remaining_gain
from mixlab.errors import ConvergenceWarning


def flat(params: ml.MixtureParams) -> np.ndarray:
    return np.concatenate(
        [np.ravel(params.weights)] + [np.ravel(np.asarray(v)) for v in params.components.values()]
    )


def distance_in_se(result: ml.FitResult) -> float:
    """Largest |theta - theta_max| / SE over all parameters, SE at the maximum."""
    top = result.at_maximum(tol=1e-11)
    se = flat(top.standard_errors())
    delta = np.abs(flat(result.params) - flat(top.params))
    return float(np.max(np.where(se > 0, delta / np.where(se > 0, se, 1.0), 0.0)))


def separated(k: int, seed: int = 0, d: int = 2) -> np.ndarray:
    """``k`` clusters 5 sd apart on a circle, features on very different scales."""
    rng = np.random.default_rng([seed, k])
    angle = 2 * np.pi * np.arange(k) / k
    radius = 5.0 / (2 * np.sin(np.pi / k)) if k > 1 else 0.0
    centres = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)
    z = rng.integers(0, k, 80 * k)
    X = centres[z] + rng.normal(size=(len(z), d)) @ np.array([[1.0, 0.3], [0.0, 0.8]])
    return X * np.array([100.0, 0.1])  # unlike units; reg_covar stays negligible


def test_remaining_gain_is_exact_on_a_geometric_sequence():
    # ll_t = L - c a^t: the gain still to come after ll_t is c a^t, exactly.
    L, c, a = -1234.5, 3.0, 0.9
    ll = L - c * a ** np.arange(10)
    for t in range(2, 10):
        assert remaining_gain(ll[t - 2], ll[t - 1], ll[t]) == pytest.approx(c * a**t, rel=1e-9)
    assert remaining_gain(-1.0, -1.0, -1.0) == 0.0  # stopped exactly
    assert remaining_gain(-3.0, -2.0, -0.5) == np.inf  # increments growing: no estimate
    assert remaining_gain(-np.inf, -2.0, -1.0) == np.inf  # too few values


@pytest.mark.parametrize(
    "name, k, kwargs",
    [
        ("faithful", 2, {}),
        ("faithful", 3, {}),
        ("galaxies", 3, {}),
        ("quine", 2, {"family": "poisson"}),
        ("lsat6", 2, {"family": "bernoulli"}),
    ],
)
def test_default_fit_of_shipped_data_is_at_the_maximum(name, k, kwargs):
    X, w = ml.datasets.load(name, with_weights=True)
    weights = w if name == "lsat6" else None
    r = ml.fit(X, k, ml.EM(n_init=5), sample_weight=weights, key=0, **kwargs)
    assert r.converged
    assert distance_in_se(r) < 0.05
    # summary() says how far it may be: sqrt(2 * gain) standard errors, from the trace
    t = r.trace
    gain = remaining_gain(t[-3], t[-2], t[-1])
    assert r.remaining_gain == pytest.approx(gain)
    assert f"within about {np.sqrt(2 * gain):.2g} standard" in r.summary()


@pytest.mark.parametrize("k", [2, 5, 8])
def test_default_fit_of_simulated_mixtures_is_at_the_maximum(k):
    r = ml.fit(separated(k), k, key=0)
    assert r.converged
    assert distance_in_se(r) < 0.05


@pytest.mark.benchmark
@pytest.mark.parametrize("k", [3, 4, 6, 7])
@pytest.mark.parametrize("covariance", ["full", "diag", "spherical", "tied"])
def test_default_fit_of_simulated_mixtures_every_layout(k, covariance):
    r = ml.fit(separated(k, seed=1), k, covariance=covariance, key=0)
    assert r.converged
    assert distance_in_se(r) < 0.05


def test_scikit_learn_rule_stops_short_and_uncertainty_continues_to_the_maximum():
    X = separated(4)
    X = X + np.random.default_rng(3).normal(size=X.shape) * np.array([150.0, 0.15])
    short = ml.fit(X, 4, ml.EM(criterion="change", tol=1e-3, max_iter=100), key=0)
    assert short.converged and short.remaining_gain > 1e-2  # short by the trace's estimate
    top = short.at_maximum(tol=1e-11)
    assert top.diagnostics["continued"]["gained"] > 1e-2
    assert top.log_likelihood == pytest.approx(
        short.log_likelihood + top.diagnostics["continued"]["gained"], abs=1e-9
    )
    with pytest.warns(ConvergenceWarning, match="short of the maximum"):
        se = short.standard_errors()
    # the errors are those at the maximum (continued with the default tight rule)
    np.testing.assert_allclose(flat(se), flat(top.standard_errors()), rtol=1e-3)
    with pytest.warns(ConvergenceWarning, match="short of the maximum"):
        cov = short.covariance_of_estimates()
    assert np.all(np.isfinite(cov.matrix))
    # at the maximum: no warning, and the same object back
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        top.standard_errors()
    assert top.at_maximum() is top


def test_bootstrap_of_a_short_estimate_starts_at_the_maximum():
    X = separated(4)
    X = X + np.random.default_rng(3).normal(size=X.shape) * np.array([150.0, 0.15])
    short = ml.fit(X, 4, ml.EM(criterion="change", tol=1e-3, max_iter=100), key=0)
    assert short.remaining_gain > 1e-2
    with pytest.warns(ConvergenceWarning, match="bootstrap refits started at the maximum"):
        boot = short.bootstrap(n_boot=8, key=1)
    top = short.at_maximum()
    assert boot.continued["gained"] == pytest.approx(top.diagnostics["continued"]["gained"])
    # the refits scatter about the maximum, not about the short estimate
    centre = np.mean(boot.draws["means"], axis=0)
    sd = np.std(boot.draws["means"], axis=0)
    assert np.all(np.abs(centre - top.params.means) < 4 * sd / np.sqrt(8) + 1e-9)


def test_information_singular_at_the_maximum_itself_still_raises():
    # Two Poisson components where one suffices: at the maximum they coincide.
    X = np.random.default_rng(0).poisson(4.0, 300)[:, None]
    r = ml.fit(X, 2, family="poisson", key=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.raises(ml.FitError, match="observed information"):
            r.standard_errors()


def test_starts_do_not_depend_on_the_units():
    X = separated(3, seed=2)
    scale = np.array([1e-1, 1e3])
    em = ml.EM(n_init=3, tol=0.0, max_iter=30)  # fixed iterations: no stopping-rule ties
    a = ml.fit(X, 3, em, key=5)
    b = ml.fit(X * scale, 3, em, key=5)
    # the same fit in other units: the log-likelihood moves by the Jacobian, exactly
    shift = X.shape[0] * np.sum(np.log(scale))
    np.testing.assert_allclose(
        b.restarts.log_likelihood, a.restarts.log_likelihood - shift, rtol=1e-9
    )
    np.testing.assert_array_equal(a.predict(X), b.predict(X * scale))


def test_raw_unit_starts_depend_on_the_units():
    # The opposite check, so the test above can fail: k-means++ in the data's units
    # sees only the large feature.
    X = separated(3, seed=2)
    scale = np.array([1e-1, 1e3])
    em = ml.EM(n_init=3, tol=0.0, max_iter=30, standardize=False)
    a = ml.fit(X, 3, em, key=5)
    b = ml.fit(X * scale, 3, em, key=5)
    shift = X.shape[0] * np.sum(np.log(scale))
    assert not np.allclose(b.restarts.log_likelihood, a.restarts.log_likelihood - shift)


def contaminated(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0, 0], [5, 0, 0], [0, 5, 5]])
    X = np.concatenate(
        [c + rng.normal(size=(300, 3)) for c in centres] + [rng.uniform(-40, 40, (80, 3))]
    )
    return X, centres


@pytest.mark.filterwarnings("ignore::mixlab.errors.ConvergenceWarning")  # dofs creep to their cap
def test_student_t_default_start_survives_gross_outliers():
    X, centres = contaminated()
    r = ml.fit(X, 3, family="student_t", method=ml.EM(max_iter=200), key=0)
    assert r.settings["init"] == "auto"
    found = np.sort(r.params.means, axis=0)
    np.testing.assert_allclose(found, np.sort(centres, axis=0), atol=0.3)
    # k-means++ on the raw rows seeds on the outliers and misses a centre
    plain = ml.fit(
        X, 3, family="student_t", method=ml.EM(max_iter=200, init="kmeans++", n_init=4), key=0
    )
    assert plain.log_likelihood < r.log_likelihood - 1.0


def _assert_nested_log_likelihoods_rise(sel):
    table = sel.table
    for (_, _), rows in table.groupby(["family", "covariance"], dropna=False):
        ll = rows.sort_values("n_components")["log_likelihood"].to_numpy()
        assert np.all(np.diff(ll) >= -1e-9 * np.abs(ll[1:])), rows.to_string()


@pytest.mark.parametrize(
    "name, kwargs, ks, refitted",
    [
        # quine K=8's own starts end below K=7; every K of the 32 LSAT-6 patterns
        # (unweighted: all 2^5 patterns once) ends below K=1's maximum, a uniform p=0.5
        ("quine", {"family": "poisson"}, range(1, 9), [8]),
        ("lsat6", {"family": "bernoulli"}, range(1, 5), [2, 3, 4]),
    ],
)
def test_select_log_likelihood_never_falls_as_k_grows(name, kwargs, ks, refitted):
    X = ml.datasets.load(name)
    sel = ml.select(X, ks, key=0, **kwargs)
    _assert_nested_log_likelihoods_rise(sel)
    noted = sel.table.loc[sel.table.note != "", "n_components"].tolist()
    assert noted == refitted
    assert all(n.startswith("from a split") for n in sel.table.note if n)
    assert "Notes:" in sel.summary()


@pytest.mark.benchmark
@pytest.mark.parametrize("name", ["faithful", "galaxies", "simulated"])
def test_select_log_likelihood_never_falls_every_layout(name):
    X = separated(4, seed=3) if name == "simulated" else ml.datasets.load(name)
    layouts = ["full", "diag", "spherical", "tied"]
    sel = ml.select(X, range(1, 9), covariance=layouts, family=["gaussian", "student_t"], key=0)
    _assert_nested_log_likelihoods_rise(sel)


def test_split_starts_keep_the_smaller_fit_and_cut_one_component():
    X = separated(2, seed=4)
    smaller = ml.fit(X, 2, key=0)
    from mixlab.select import split_starts

    starts = split_starts(smaller, X, None, 1e-6)
    assert len(starts) == 2 and all(s.n_components == 3 for s in starts)
    for j, start in enumerate(starts):
        # the other component is kept (its responsibilities unchanged: one M-step away)
        other = 1 - j
        kept = np.argmin(np.linalg.norm(start.means - smaller.params.means[other], axis=1))
        sd = X.std(axis=0)  # compared in standard deviations of each feature
        np.testing.assert_allclose(
            start.means[kept] / sd, smaller.params.means[other] / sd, atol=1e-4
        )
        # the two halves average to the split component, weighted by their weights
        halves = [k for k in range(3) if k != kept]
        w = start.weights[halves]
        np.testing.assert_allclose(w.sum(), smaller.params.weights[j], rtol=1e-4)
        np.testing.assert_allclose(
            w @ start.means[halves] / w.sum() / sd, smaller.params.means[j] / sd, atol=1e-4
        )
