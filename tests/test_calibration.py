"""Simulation-based calibration helpers (mixlab.calibration): ranks, the uniformity
test, the prior sampler against mixlab's own model, and the SBC loop's wiring."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest
from scipy import stats

import mixlab as ml
from mixlab import calibration as cal
from mixlab.bayes.common import build_model


# ----------------------------------------------------------------------------- ranks
def test_sbc_rank_counts_draws_below_the_truth():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(3, 4))
    draws = rng.normal(size=(50, 3, 4))
    ranks = cal.sbc_rank(truth, draws, key=1)
    np.testing.assert_array_equal(ranks, np.sum(draws < truth, axis=0))
    assert cal.sbc_rank(0.25, np.array([0.1, 0.2, 0.3, 0.4]), key=0) == 2


def test_sbc_rank_breaks_ties_at_random_and_reproducibly():
    draws = np.array([0.0, 1.0, 1.0, 1.0, 1.0, 2.0])  # one below, four ties
    rng = np.random.default_rng(0)  # a generator is a key too (and costs no JAX call)
    ranks = np.array([cal.sbc_rank(1.0, draws, key=rng) for _ in range(4000)])
    assert ranks.min() >= 1 and ranks.max() <= 5
    # rank = 1 + Binomial(4, 1/2): mean 3, variance 1
    assert abs(ranks.mean() - 3.0) < 4 * np.sqrt(1.0 / 4000)
    assert abs(ranks.var() - 1.0) < 0.1
    assert cal.sbc_rank(1.0, draws, key=7) == cal.sbc_rank(1.0, draws, key=7)


def test_sbc_rank_rejects_bad_shapes_and_non_finite_values():
    with pytest.raises(ValueError, match="draws must have shape"):
        cal.sbc_rank(np.zeros(3), np.zeros((10, 4)), key=0)
    with pytest.raises(ValueError, match="finite"):
        cal.sbc_rank(0.0, np.array([0.0, np.nan]), key=0)


@pytest.mark.parametrize(("n_draws", "n_bins"), [(99, 10), (98, 10), (199, 20)])
def test_rank_uniformity_is_scipy_chisquare(n_draws, n_bins):
    rng = np.random.default_rng(n_draws)
    ranks = rng.integers(0, n_draws + 1, size=400)
    ranks[:40] = 0  # some excess at the low end
    # bins of the L + 1 rank values, written out plainly
    edges = [-(-b * (n_draws + 1) // n_bins) for b in range(n_bins + 1)]  # ceil
    values_per_bin = np.diff(edges)
    observed = np.array(
        [np.sum((ranks >= lo) & (ranks < hi)) for lo, hi in itertools.pairwise(edges)]
    )
    expected = len(ranks) * values_per_bin / (n_draws + 1)
    reference = stats.chisquare(observed, expected).pvalue
    bins = cal._bin_of_rank(n_draws, n_bins)
    np.testing.assert_array_equal(np.bincount(bins), values_per_bin)
    np.testing.assert_allclose(cal.rank_uniformity(ranks, n_draws, n_bins), reference, rtol=1e-10)


def test_rank_uniformity_rejects_bad_input():
    with pytest.raises(ValueError, match="from 0 to n_draws"):
        cal.rank_uniformity(np.array([0, 5, 12]), n_draws=10)
    with pytest.raises(ValueError, match="n_bins"):
        cal.rank_uniformity(np.array([0, 5]), n_draws=10, n_bins=20)


def test_ranks_of_an_exact_posterior_are_uniform_and_of_a_narrow_one_are_not():
    """Normal mean, known variance: exact conjugate posterior draws pass SBC; draws
    with half the posterior sd (overconfident) fail, as a U shape."""
    rng = np.random.default_rng(2018)
    tau, sigma, n, n_draws, replicates = 2.0, 1.0, 10, 99, 500
    exact, narrow = [], []
    for r in range(replicates):
        mu = rng.normal(0.0, tau)
        y = rng.normal(mu, sigma, size=n)
        post_var = 1.0 / (1.0 / tau**2 + n / sigma**2)
        post_mean = post_var * y.sum() / sigma**2
        z = rng.normal(size=n_draws)
        exact.append(cal.sbc_rank(mu, post_mean + np.sqrt(post_var) * z, key=r))
        narrow.append(cal.sbc_rank(mu, post_mean + 0.5 * np.sqrt(post_var) * z, key=r))
    assert cal.rank_uniformity(np.array(exact), n_draws, n_bins=10) > 0.01
    assert cal.rank_uniformity(np.array(narrow), n_draws, n_bins=10) < 1e-6
    import pandas as pd

    summary = cal.summarise_ranks(pd.DataFrame({"exact": exact, "narrow": narrow}), n_draws, 10)
    assert summary.loc["narrow", "sd_ratio"] > 1.3  # U shape: posteriors too narrow
    assert abs(summary.loc["exact", "sd_ratio"] - 1.0) < 0.1
    # truth outside all 99 draws: 2 % when calibrated (binomial se 0.6 %)
    assert abs(summary.loc["exact", "outside"] - 0.02) < 4.5 * np.sqrt(0.02 * 0.98 / 500)
    assert summary.loc["narrow", "outside"] > 0.2
    np.testing.assert_allclose(
        summary["p_bonferroni"], np.minimum(1.0, 2 * summary["p_value"]), rtol=1e-12
    )


# ----------------------------------------------------------------------------- the prior
def _prior_draws(n, n_features, priors, seed):
    rng = np.random.default_rng(seed)  # a generator: no JAX key per draw
    sims = [cal.simulate(rng, 2, n_features, 1, priors) for _ in range(n)]
    return (
        np.stack([s.weights for s in sims]),
        np.stack([s.means for s in sims]),
        np.stack([s.covariances for s in sims]),
    )


def _model_prior_draws(n, n_features, priors, seed):
    """Draws of mixlab's own model prior (its ``sample_params``, which the model runs
    before adding the likelihood) through NumPyro's Predictive, in data units."""
    from numpyro.infer import Predictive

    X = np.random.default_rng(seed).normal(size=(30, n_features)) * 7.0 + 3.0
    with jax.enable_x64(True):
        model = build_model(X, 2, cal.UnstandardisedGaussian(), priors)
        constants = model.model_args(jax.numpy.asarray(X))[1]
        prior = Predictive(model.sample_params, num_samples=n, parallel=True)
        sites = jax.jit(prior)(jax.random.PRNGKey(seed), constants)
        draws = model.to_data_units({k: v[None] for k, v in sites.items()})
    return draws["weights"][0], draws["means"][0], draws["covariances"][0]


def _assert_same_mean(a, b, what):
    """Means of two independent samples agree within 4.5 standard errors."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    se = np.sqrt(a.var(axis=0) / len(a) + b.var(axis=0) / len(b))
    gap = np.abs(a.mean(axis=0) - b.mean(axis=0))
    assert np.all(gap < 4.5 * se + 1e-12), f"{what}: gap {gap} vs se {se}"


@pytest.mark.parametrize("n_features", [1, 2])
def test_simulate_draws_from_the_models_prior(n_features):
    priors = ml.Priors(
        weight_concentration=2.0,
        mean_loc=np.full(n_features, 0.5),
        mean_scale=2.0,
        scale=1.5,
        lkj_eta=2.0,
    )
    n = 4000
    ours = _prior_draws(n, n_features, priors, seed=n_features)
    if n_features == 2:  # against the model itself (one compile: the 2-D model has every site)
        model = _model_prior_draws(n, n_features, priors, seed=n_features)
        for name, a, b in zip(("weights", "means", "covariances"), ours, model):
            _assert_same_mean(a, b, name)
            _assert_same_mean(np.square(a), np.square(b), f"{name} squared")
    # closed forms: Dirichlet(2, 2) weight ~ Beta(2, 2); Normal means;
    # HalfNormal sds: E s = scale sqrt(2 / pi), E s^2 = scale^2
    weights, means, covs = ours
    sds = np.sqrt(np.diagonal(covs, axis1=-2, axis2=-1))
    closed = [
        (weights[:, 0], 0.5, 1 / 20),
        (means, 0.5, 4.0),
        (sds, 1.5 * np.sqrt(2 / np.pi), 1.5**2 * (1 - 2 / np.pi)),
    ]
    if n_features == 2:  # LKJ(2) in 2-D: (r + 1) / 2 ~ Beta(2, 2): mean 0, variance 1 / 5
        closed.append((covs[:, :, 0, 1] / (sds[:, :, 0] * sds[:, :, 1]), 0.0, 0.2))
    for values, mean, var in closed:
        values = values.reshape(-1)
        assert abs(values.mean() - mean) < 4.5 * np.sqrt(var / (n / 2)), (mean, values.mean())
        assert abs(values.var() / var - 1) < 0.1


def test_simulate_lkj_in_three_dimensions_has_the_closed_form_marginal():
    # LKJ(eta) in D dimensions: (r_ij + 1) / 2 ~ Beta(eta - 1 + D / 2, same)
    rng = np.random.default_rng(3)
    r = np.array([cal._lkj_cholesky(rng, 3, 2.0) for _ in range(6000)])
    corr = r @ np.swapaxes(r, -1, -2)
    np.testing.assert_allclose(np.diagonal(corr, axis1=1, axis2=2), 1.0, atol=1e-12)
    a = 2.0 - 1 + 1.5
    for i, j in ((0, 1), (0, 2), (1, 2)):
        p = stats.kstest((corr[:, i, j] + 1) / 2, stats.beta(a, a).cdf).pvalue
        assert p > 0.001, (i, j, p)


def test_simulated_data_come_from_the_drawn_components():
    sim = cal.simulate(11, 2, 2, 40_000, ml.Priors(weight_concentration=20.0))
    assert sim.X.shape == (40_000, 2) and sim.labels.shape == (40_000,)
    for k in range(2):
        rows = sim.X[sim.labels == k]
        se = np.sqrt(np.diagonal(sim.covariances[k]) / len(rows))
        assert np.all(np.abs(rows.mean(axis=0) - sim.means[k]) < 4.5 * se)
        np.testing.assert_allclose(
            np.cov(rows.T), sim.covariances[k], atol=0.05 * sim.covariances[k].max()
        )
    counts = np.bincount(sim.labels, minlength=2)
    assert abs(counts[0] - 40_000 * sim.weights[0]) < 4.5 * np.sqrt(40_000 * 0.25)


def test_simulate_is_reproducible_and_checks_its_input():
    a, b = cal.simulate(5, 2, 2, 10), cal.simulate(jax.random.PRNGKey(5), 2, 2, 10)
    np.testing.assert_array_equal(a.X, b.X)  # an int seed is the key PRNGKey(seed)
    assert not np.array_equal(a.X, cal.simulate(6, 2, 2, 10).X)
    with pytest.raises(ValueError, match="mean_loc has 1 entries"):
        cal.simulate(0, 2, 2, 10, ml.Priors(mean_loc=[0.0]))
    with pytest.raises(ValueError, match="ordered_means needs one feature"):
        cal.simulate(0, 2, 2, 10, ml.Priors(ordered_means=True))
    with pytest.raises(ValueError, match="n_obs must be a positive integer"):
        cal.simulate(0, 2, 2, 0)


def test_unstandardised_model_does_not_depend_on_the_data():
    X = np.random.default_rng(0).normal(size=(20, 2))
    a = build_model(X, 2, cal.UnstandardisedGaussian(), ml.Priors())
    b = build_model(10 * X + 5, 2, cal.UnstandardisedGaussian(), ml.Priors())
    default = build_model(10 * X + 5, 2, ml.families.Gaussian("full"), ml.Priors())
    for model in (a, b):
        np.testing.assert_array_equal(model.standardisation.scale, 1.0)
        np.testing.assert_array_equal(model.standardisation.loc, 0.0)
        np.testing.assert_array_equal(model.constants["mean_loc"], 0.0)
    assert not np.allclose(default.standardisation.scale, 1.0)  # the default scales its priors


# ----------------------------------------------------------------------------- quantities
def test_invariant_quantities_ignore_labels_and_match_direct_formulas():
    rng = np.random.default_rng(4)
    weights = np.array([0.3, 0.7])
    means = np.array([[1.0, -1.0], [-2.0, 0.5]])
    a = rng.normal(size=(2, 2, 2))
    covs = a @ np.swapaxes(a, -1, -2) + 0.5 * np.eye(2)
    X = rng.normal(size=(15, 2))
    q = cal.invariant_quantities(weights, means, covs, X)
    swapped = cal.invariant_quantities(weights[::-1], means[::-1], covs[::-1], X)
    for name, value in q.items():
        assert swapped[name] == pytest.approx(value, rel=1e-14), name
    # component 0 is the one with the lower first-feature mean: the second one here
    assert q["mean[0,0]"] == -2.0 and q["mean[1,1]"] == -1.0
    assert q["weight[0]"] == 0.7
    assert q["sd[0,1]"] == pytest.approx(np.sqrt(covs[1, 1, 1]))
    assert q["corr[1]"] == pytest.approx(covs[0, 0, 1] / np.sqrt(covs[0, 0, 0] * covs[0, 1, 1]))
    mix_mean = weights @ means
    mix_cov = sum(w * (c + np.outer(m, m)) for w, m, c in zip(weights, means, covs))
    mix_cov -= np.outer(mix_mean, mix_mean)
    assert q["mix_mean[1]"] == pytest.approx(mix_mean[1])
    assert q["mix_sd[0]"] == pytest.approx(np.sqrt(mix_cov[0, 0]))
    density = sum(
        w * stats.multivariate_normal(m, c).pdf(X) for w, m, c in zip(weights, means, covs)
    )
    assert q["log_lik"] == pytest.approx(np.sum(np.log(density)), rel=1e-12)
    # batched draws give the same values per draw
    batch = cal.invariant_quantities(
        np.stack([weights, weights[::-1]]),
        np.stack([means, means[::-1]]),
        np.stack([covs, covs[::-1]]),
        X,
    )
    for name, value in q.items():
        np.testing.assert_allclose(batch[name], value, rtol=1e-13)


def test_thinning_keeps_every_thin_th_draw_of_each_chain():
    draws = np.arange(2 * 30).reshape(2, 30)  # (chain, draw)
    kept = cal._thinned(draws, thin=10, n_draws=5)
    np.testing.assert_array_equal(kept, [9, 19, 29, 39, 49])


# ----------------------------------------------------------------------------- the loop
@pytest.fixture(scope="module")
def small_sbc():
    method = ml.NUTS(num_warmup=100, num_chains=1)
    return cal.sbc(method, 2, 1, n_replicates=3, n_obs=30, key=3, n_draws=19, thin=3, n_bins=4)


def test_sbc_ranks_the_truth_among_the_fits_thinned_draws(small_sbc):
    """Replicate 1 redone by hand: its simulation, its fit, every third draw, its ranks."""
    res = small_sbc
    assert res.ranks.shape == (3, 8) and res.n_draws == 19
    assert res.ranks.to_numpy().min() >= 0 and res.ranks.to_numpy().max() <= 19
    key_sim, key_fit, _ = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(3), 1), 3)
    np.testing.assert_array_equal(cal.replicate_keys(3, 1)[0], key_sim)
    sim = cal.simulate(key_sim, 2, 1, 30, ml.Priors())
    method = ml.NUTS(
        num_warmup=100, num_samples=57, num_chains=1, priors=ml.Priors(), progress=False
    )
    fit = ml.fit(sim.X, 2, method=method, family=cal.UnstandardisedGaussian(), key=key_fit)
    post = {k: v[0, 2::3] for k, v in fit.posterior.items()}  # draws 3, 6, ..., 57
    draws = cal.invariant_quantities(post["weights"], post["means"], post["covariances"], sim.X)
    truth = cal.invariant_quantities(sim.weights, sim.means, sim.covariances, sim.X)
    expected = [cal.sbc_rank(truth[n], draws[n], key=0) for n in res.ranks.columns]
    np.testing.assert_array_equal(res.ranks.loc[1].to_numpy(), expected)  # no ties: key unused
    row = res.replicates.loc[1]
    assert row["min_count"] == np.bincount(sim.labels, minlength=2).min()
    assert row["divergences"] == fit.diagnostics["divergences"]
    for name in res.ranks.columns:
        p = cal.rank_uniformity(res.ranks[name].to_numpy().astype(int), 19, 4)
        assert res.summary.loc[name, "p_value"] == pytest.approx(p, rel=1e-12)
    assert res.passed == bool((res.summary["p_bonferroni"] >= 0.01).all())
    assert (res.replicates["compile_time"].iloc[1:] < 0.5).all()  # compiled once


def test_sbc_rejects_bad_settings():
    with pytest.raises(TypeError, match="ml.NUTS"):
        cal.sbc(ml.EM(), 2, 1, n_replicates=2)
    with pytest.raises(ValueError, match="pass the priors once"):
        cal.sbc(ml.SVI(priors=ml.Priors(scale=2.0)), 2, 1, n_replicates=2, priors=ml.Priors())
    with pytest.raises(TypeError, match="full-covariance Gaussian"):
        cal.sbc(ml.SVI(), 2, 1, n_replicates=2, family=ml.families.Gaussian("diag"))
    with pytest.raises(ValueError, match="thin must be"):
        cal.sbc(ml.NUTS(), 2, 1, n_replicates=2, thin=0)
    with pytest.raises(ValueError, match="n_bins must be"):
        cal.sbc(ml.NUTS(), 2, 1, n_replicates=2, n_draws=9, n_bins=20)


def test_rank_band_holds_the_binomial_quantiles():
    expected, low, high = cal.rank_band(500, 99, 20, level=0.99)
    np.testing.assert_allclose(expected, 25.0)
    assert low[0] == stats.binom.ppf(0.005, 500, 0.05)
    assert high[0] == stats.binom.ppf(0.995, 500, 0.05)
