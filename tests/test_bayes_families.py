"""SVI and NUTS for the Poisson, Bernoulli and Student-t families, and sample weights in
the Bayesian model of every family."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
import scipy.stats as st
from numpyro.infer.util import log_density

import mixlab as ml
from mixlab.arviz_io import import_arviz
from mixlab.bayes.common import build_model

#: Priors weak enough that the MAP is the maximum-likelihood estimate to well under 1 %
#: (flat Dirichlet, Beta and LKJ; a nearly flat prior on the degrees of freedom).
WEAK = ml.Priors(lkj_eta=1.0, dof_concentration=1.0, dof_rate=1e-4, scale=10.0)
NUTS_SETTINGS = dict(num_warmup=400, num_samples=400, num_chains=4, progress=False)


def _data(family: str) -> np.ndarray:
    """A well-separated two-component data set from each family (250 rows)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 250)
    if family == "poisson":
        return rng.poisson(np.array([[2.0, 8.0], [10.0, 1.0]])[labels]).astype(float)
    if family == "bernoulli":
        probs = np.array([[0.9, 0.8, 0.2, 0.1], [0.1, 0.3, 0.8, 0.9]])
        return (rng.random((250, 4)) < probs[labels]).astype(float)
    noise = st.multivariate_t(np.zeros(2), np.eye(2), df=4).rvs(250, random_state=2)
    return np.array([[0.0, 0.0], [8.0, 4.0]])[labels] + noise


@functools.cache
def _fits(family: str):
    """EM, SVI (delta) and NUTS fits of one family, computed once per test session."""
    X = _data(family)
    em = ml.fit(X, 2, ml.EM(n_init=4, tol=1e-12, max_iter=3000), family=family, key=0)
    delta = ml.SVI(num_steps=6000, learning_rate=0.02, guide="delta", priors=WEAK, progress=False)
    svi = ml.fit(X, 2, delta, family=family, key=1)
    nuts = ml.fit(X, 2, ml.NUTS(**NUTS_SETTINGS), family=family, key=2)
    return family, X, em, svi, nuts


# Student-t's EM, SVI and NUTS fits take 25 s: a benchmark (pytest -m benchmark).
@pytest.fixture(
    params=["poisson", "bernoulli", pytest.param("student_t", marks=pytest.mark.benchmark)]
)
def fits(request):
    return _fits(request.param)


def test_svi_delta_is_em_within_one_percent_under_weak_priors(fits):
    _, _, em, svi, _ = fits
    table = ml.compare(em, svi).table
    # 1 % of each estimate, with a floor of 1e-3 for estimates near zero (data scale ~1)
    np.testing.assert_allclose(table["svi_delta_mean"], table["em"], rtol=0.01, atol=1e-3)


def test_nuts_converges_and_every_em_estimate_is_inside_its_hdi(fits):
    family, _, em, _, nuts = fits
    assert nuts.diagnostics["divergences"] == 0, family
    assert nuts.diagnostics["max_r_hat"] < 1.01, (family, nuts.diagnostics["max_r_hat"])
    c = ml.compare(em, nuts)
    outside = list(c.table.index[~c.table["nuts_em_in_hdi"].astype(bool)])
    assert not outside, (family, outside)
    assert c.agree["nuts"]


def test_arviz_pointwise_log_likelihood_and_loo(fits):
    az = import_arviz()
    _, X, em, _, nuts = fits
    idata = nuts.to_arviz()
    first = em.params.family.param_names()[0]
    assert idata.posterior[first].dims == ("chain", "draw", "component", "feature")
    ll = idata.log_likelihood["obs"].values
    assert ll.shape == (4, 400, len(X))
    # the pointwise values are the mixture log-density of each row at each draw
    draw = {k: np.asarray(v)[1, 7] for k, v in nuts.posterior.items()}
    params = ml.MixtureParams(
        draw["weights"],
        family=em.params.family,
        components={n: draw[n] for n in draw if n != "weights"},
    )
    np.testing.assert_allclose(ll[1, 7], ml.e_step(X, params).log_prob_norm, rtol=1e-10)
    loo = az.loo(idata)
    assert np.isfinite(float(loo.elpd_loo)) and float(loo.se) > 0


def test_save_load_and_compare_are_exact(fits, tmp_path):
    family, _, em, svi, nuts = fits
    for result in (em, svi, nuts):
        back = ml.FitResult.load(result.save(tmp_path / f"{family}-{result.method}.npz"))
        assert back.params.family == result.params.family
        for name, value in result.params.components.items():
            np.testing.assert_array_equal(back.params.components[name], value)
        if result.posterior is not None:
            for name, value in result.posterior.items():
                np.testing.assert_array_equal(back.posterior[name], value)
    back = ml.FitResult.load(em.save(tmp_path / "e.npz", include_data=True))
    a, b = ml.compare(em, nuts), ml.compare(back, nuts)  # standard errors too
    np.testing.assert_array_equal(a.table.to_numpy(dtype=float), b.table.to_numpy(dtype=float))


# ----------------------------------------------------------------------------- weights
@pytest.mark.parametrize("family", ["gaussian", "poisson", "bernoulli", "student_t"])
def test_integer_weights_are_duplicated_rows_in_the_bayesian_log_density(family):
    """The model with frequency weights has the log joint density of the model of the
    duplicated rows (zero weights: of the rows dropped), at any parameter value."""
    X = _data("student_t" if family == "gaussian" else family)[:60]
    w = np.random.default_rng(1).integers(0, 4, len(X)).astype(float)
    fam = ml.families.get_family(family)
    em = ml.fit(X, 2, ml.EM(criterion="change"), family=fam, key=0)  # any parameter value
    dup = np.repeat(X, w.astype(int), axis=0)
    with jax.enable_x64(True):
        densities = []
        for data, weights in ((X, w), (dup, None)):
            model = build_model(data, 2, fam, None, weights)
            args = model.model_args(jax.numpy.asarray(model.standardisation.apply(data)), weights)
            values = model.site_values(em.params)
            densities.append(float(log_density(model, args, {}, values)[0]))
    np.testing.assert_allclose(densities[0], densities[1], rtol=1e-12)
