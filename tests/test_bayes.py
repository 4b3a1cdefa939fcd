"""Bayesian back ends: the model, SVI, NUTS, ArviZ output and the comparison with EM."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.infer.util import log_density

import mixlab as ml
from mixlab.align import align_to_reference
from mixlab.arviz_io import import_arviz
from mixlab.bayes.common import build_model
from mixlab.families import get_family

WEAK = ml.Priors(mean_scale=10.0, scale=10.0, lkj_eta=1.0)
FAST_NUTS = dict(num_warmup=300, num_samples=300, num_chains=4, progress=False)


@pytest.fixture(scope="session")
def faithful_fits(faithful):
    em = ml.fit(faithful, 2, ml.EM(n_init=8), key=0)
    nuts = ml.fit(faithful, 2, ml.NUTS(**FAST_NUTS), key=1)
    normal = ml.fit(faithful, 2, ml.SVI(num_steps=3000, guide="normal", progress=False), key=2)
    return em, nuts, normal


def test_nuts_on_faithful_converges_and_contains_em(faithful_fits):
    em, nuts, _ = faithful_fits
    d = nuts.diagnostics
    assert d["divergences"] == 0
    assert d["max_r_hat"] < 1.01
    assert d["min_ess"] > 400  # 1200 draws kept
    assert nuts.posterior["means"].shape == (4, 300, 2, 2)
    comparison = ml.compare(em, nuts)
    inside = comparison.table["nuts_em_in_hdi"]
    assert inside[[i for i in inside.index if i.startswith(("weights", "means"))]].all()
    assert comparison.agree["nuts"]
    assert "EM agrees" in comparison.summary


def test_em_standard_errors_are_the_posterior_sd_on_faithful(faithful_fits):
    """Bernstein-von Mises: with 272 points and the default weak priors, EM's standard
    errors (observed information) are the NUTS posterior sds (the sd of 1200 draws
    with ESS > 400 carries about 4% Monte Carlo error)."""
    em, nuts, _ = faithful_fits
    comparison = ml.compare(em, nuts)
    table = comparison.table
    se = em.standard_errors()  # the comparison's column is the result's standard errors
    assert table.loc["means[1, 0]", "em_se"] == se.means[1, 0]
    assert table.loc["covariances[0, 0, 1]", "em_se"] == se.covariances[0, 0, 1]
    # weights and means within 10%; a variance's posterior is skewed (inverse-gamma
    # like at ~100 points a component), its sd up to 16% above the information's (4000
    # draws): 20% for the covariances
    location = [i for i in table.index if i.startswith(("weights", "means"))]
    np.testing.assert_allclose(
        table.loc[location, "em_se"], table.loc[location, "nuts_sd"], rtol=0.1
    )
    np.testing.assert_allclose(table["em_se"], table["nuts_sd"], rtol=0.2)
    assert "nuts: posterior sd / EM standard error: median" in comparison.summary


def test_svi_delta_is_the_map_within_one_percent_of_em_under_weak_priors(faithful):
    em = ml.fit(faithful, 2, ml.EM(n_init=8, tol=1e-8, max_iter=1000), key=0)
    svi = ml.fit(
        faithful,
        2,
        ml.SVI(num_steps=4000, guide="delta", priors=WEAK, learning_rate=0.005, progress=False),
        key=3,
    )
    c = ml.compare(em, svi)
    assert c.agree["svi_delta"], c.table
    em_values, map_values = c.table["em"], c.table["svi_delta_mean"]
    np.testing.assert_allclose(map_values, em_values, rtol=0.01)


def test_delta_guide_elbo_is_the_exact_log_joint(faithful):
    """NumPyro's loss for the MAP equals log p(X | theta) from the EM engine plus the log
    prior, computed independently here."""
    svi = ml.fit(faithful, 2, ml.SVI(num_steps=500, guide="delta", progress=False), key=4)
    point = svi.params
    std = get_family("full").standardisation(faithful)
    loglik = ml.log_likelihood(faithful, point)
    means_std = (point.means - std.loc) / std.scale
    cov_std = point.covariances / np.outer(std.scale, std.scale)
    sd = np.sqrt(np.diagonal(cov_std, axis1=1, axis2=2))
    corr_chol = np.linalg.cholesky(cov_std / (sd[:, :, None] * sd[:, None, :]))
    with jax.enable_x64(True):
        log_prior = float(
            dist.Dirichlet(jnp.ones(2)).log_prob(point.weights)
            + dist.Normal(0.0, 3.0).log_prob(means_std).sum()
            + dist.HalfNormal(1.0).log_prob(sd).sum()
            + dist.LKJCholesky(2, 2.0).log_prob(corr_chol).sum()
        )
    exact = float(loglik + log_prior)
    assert abs(svi.diagnostics["elbo"] - exact) < 1e-8 * abs(exact)
    assert svi.diagnostics["elbo_se"] < 1e-8


def test_normal_guide_means_within_two_posterior_sd_of_nuts(faithful_fits):
    em, nuts, normal = faithful_fits
    c = ml.compare(em, normal, nuts)
    gap = np.abs(c.table["svi_normal_mean"] - c.table["nuts_mean"])
    assert (gap < 2 * c.table["nuts_sd"]).all(), c.table
    assert np.isfinite(normal.diagnostics["elbo"]) and normal.diagnostics["elbo_se"] > 0
    # the ELBO is a lower bound on the evidence, itself below the maximised likelihood
    assert normal.diagnostics["elbo"] < em.log_likelihood


def test_model_density_is_scale_free_exactly(faithful):
    """log p(cX, theta_std) = log p(X, theta_std) - N * D * log c for every theta_std."""
    fam = get_family("full")
    c = 1000.0
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        diffs = []
        for _ in range(5):
            r = rng.uniform(-0.8, 0.8)
            corr = np.linalg.cholesky(np.array([[1.0, r], [r, 1.0]]))
            values = {
                "weights": jnp.asarray(rng.dirichlet([1.0, 1.0])),
                "means_std": jnp.asarray(rng.normal(size=(2, 2))),
                "scales": jnp.asarray(rng.uniform(0.2, 2.0, (2, 2))),
                "corr_chol": jnp.asarray(np.stack([corr, corr])),
            }
            out = []
            for data in (faithful, c * faithful):
                model = build_model(data, 2, fam, None)
                args = model.model_args(jnp.asarray(model.standardisation.apply(data)))
                out.append(float(log_density(model, args, {}, values)[0]))
            diffs.append(out[0] - out[1])
    np.testing.assert_allclose(diffs, faithful.size * np.log(c), rtol=1e-10)


def test_rescaling_the_data_rescales_the_posterior(faithful_fits, faithful):
    _, nuts, _ = faithful_fits
    scaled = ml.fit(1000.0 * faithful, 2, ml.NUTS(**FAST_NUTS), key=1)
    assert scaled.compile_time == 0.0  # same shapes and priors: the compiled program is reused
    for name, power in (("means", 1), ("covariances", 2), ("weights", 0)):
        a = nuts.posterior[name].reshape(1200, -1)
        b = scaled.posterior[name].reshape(1200, -1) / 1000.0**power
        # Two independent sets of 1200 draws (ESS > 400 each): the Monte Carlo error of
        # their difference is below sd * sqrt(2 / 400) = 0.07 sd; allow 5 of those.
        assert np.all(np.abs(b.mean(0) - a.mean(0)) < 5 * 0.071 * a.std(0)), name
        np.testing.assert_allclose(b.std(0), a.std(0), rtol=0.15)
    # the MAP rescales exactly (deterministic optimisation)
    m1 = ml.fit(faithful, 2, ml.SVI(num_steps=500, guide="delta", progress=False), key=5)
    m2 = ml.fit(1000.0 * faithful, 2, ml.SVI(num_steps=500, guide="delta", progress=False), key=5)
    np.testing.assert_allclose(m2.params.means / 1000.0, m1.params.means, rtol=1e-7)
    np.testing.assert_allclose(m2.params.covariances / 1e6, m1.params.covariances, rtol=1e-6)


def test_label_alignment_recovers_permuted_draws():
    rng = np.random.default_rng(0)
    K, D, S = 4, 2, 200
    means = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]])
    covs = np.stack([np.eye(2) * s for s in (0.5, 1.0, 1.5, 2.0)])
    draws = {
        "weights": np.tile([0.1, 0.2, 0.3, 0.4], (S, 1)) + rng.normal(0, 0.01, (S, K)),
        "means": means + rng.normal(0, 0.2, (S, K, D)),
        "covariances": covs * rng.uniform(0.9, 1.1, (S, K, 1, 1)),
    }
    perms = np.array([rng.permutation(K) for _ in range(S)])
    idx = np.arange(S)[:, None]
    shuffled = {k: v[idx, perms] for k, v in draws.items()}
    lead = {k: v.reshape(2, S // 2, *v.shape[1:]) for k, v in shuffled.items()}
    reference = ml.MixtureParams(np.full(K, 1 / K), means, covs)
    aligned, found = align_to_reference(lead, reference)
    for k in draws:
        np.testing.assert_array_equal(aligned[k].reshape(draws[k].shape), draws[k])
    # shuffled[s] = draws[s][perms[s]], so the undoing permutation is argsort(perms[s])
    np.testing.assert_array_equal(found.reshape(S, K), np.argsort(perms, axis=1))


def test_to_arviz_groups_and_pointwise_log_likelihood(faithful_fits, faithful):
    az = import_arviz()
    em, nuts, normal = faithful_fits
    idata = nuts.to_arviz()
    for group in ("posterior", "sample_stats", "log_likelihood", "observed_data"):
        assert hasattr(idata, group), group
    ll = idata.log_likelihood["obs"].values
    assert ll.shape == (4, 300, len(faithful))
    np.testing.assert_allclose(ll.sum(-1), nuts.diagnostics["draw_log_likelihood"], rtol=1e-10)
    assert idata.sample_stats["diverging"].values.shape == (4, 300)
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo) and loo.elpd_loo < em.log_likelihood
    em_idata = em.to_arviz()
    assert em_idata.posterior["weights"].shape == (1, 1, 2)
    np.testing.assert_allclose(
        em_idata.log_likelihood["obs"].values.sum(), em.log_likelihood, rtol=1e-12
    )
    assert normal.to_arviz().posterior["means"].shape == (1, 1000, 2, 2)


@pytest.fixture(scope="session")
def galaxies_fits():
    """EM and NUTS on galaxies for K=3 and K=4, shared by the comparison and LOO tests."""
    X = ml.datasets.load("galaxies")
    fits = {}
    for K in (3, 4):
        em = ml.fit(X, K, ml.EM(n_init=16), key=0)
        nuts = ml.fit(X, K, ml.NUTS(num_warmup=400, num_samples=300, progress=False), key=1)
        fits[K] = (em, nuts)
    return fits


@pytest.mark.benchmark  # the galaxies example's test runs the same comparison, smaller
@pytest.mark.parametrize("K", [3, 4])
def test_galaxies_comparison_end_to_end(galaxies_fits, K):
    em, nuts = galaxies_fits[K]
    c = ml.compare(em, nuts)
    assert len(c.table) == 3 * K  # weight, mean, variance per component
    assert set(c.methods.index) == {"em", "nuts"}
    assert c.agree["nuts"], c.summary


@pytest.mark.benchmark
def test_loo_ranks_the_galaxy_models(galaxies_fits):
    import warnings

    idata = {K: nuts.to_arviz() for K, (_, nuts) in galaxies_fits.items()}
    az = import_arviz()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ's Pareto-k notices for 82 points
        table = az.compare({f"K={k}": v for k, v in idata.items()})
    assert sorted(table["rank"]) == [0, 1]
    assert np.all(np.isfinite(table["elpd_loo"]))
    # the number of components is in doubt: K=3 and K=4 within two standard errors
    assert table["elpd_diff"].iloc[1] < 2 * max(table["dse"].iloc[1], 1.0)


def test_ordered_means_prior_start_and_sequential_chains():
    """One compiled one-chain program covers three options at once."""
    X = ml.datasets.load("galaxies")
    nuts = ml.fit(
        X,
        3,
        ml.NUTS(
            num_warmup=200,
            num_samples=100,
            num_chains=2,
            init="prior",
            chain_method="sequential",
            progress=False,
            priors=ml.Priors(ordered_means=True),
        ),
        key=0,
    )
    assert nuts.posterior["weights"].shape == (2, 100, 3)
    means = nuts.posterior["means"][..., 0]
    assert np.all(np.diff(means, axis=-1) > 0)
    assert np.all(np.isfinite(nuts.posterior["covariances"]))
    with pytest.raises(ValueError, match="ordered_means needs one feature"):
        ml.fit(
            np.random.default_rng(0).normal(size=(50, 2)),
            2,
            ml.NUTS(
                num_samples=10, num_warmup=10, progress=False, priors=ml.Priors(ordered_means=True)
            ),
        )


@pytest.mark.parametrize(
    ("method", "kwargs", "exc", "message"),
    [
        (ml.NUTS, {"num_chains": 0}, ValueError, "num_chains must be >= 1"),
        (ml.NUTS, {"init": "median"}, ValueError, "init must be one of"),
        (ml.NUTS, {"target_accept": 1.0}, ValueError, "target_accept must be below 1"),
        (ml.NUTS, {"chain_method": "parallel"}, ValueError, "chain_method must be one of"),
        (ml.NUTS, {"priors": {"scale": 1}}, TypeError, "priors must be a ml.Priors"),
        (ml.SVI, {"guide": "flow"}, ValueError, "guide must be one of"),
        (ml.SVI, {"num_steps": 0}, ValueError, "num_steps must be >= 1"),
        (ml.SVI, {"learning_rate": 0.0}, ValueError, "learning_rate must be > 0"),
        (ml.SVI, {"em": "em"}, TypeError, "em must be a ml.EM"),
        (ml.Priors, {"scale": -1.0}, ValueError, "scale must be > 0"),
        (ml.Priors, {"mean_loc": [np.nan]}, ValueError, "mean_loc must be finite"),
    ],
)
def test_bayesian_settings_are_checked(method, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        method(**kwargs)


def test_bayesian_results_save_and_load_exactly(faithful_fits, tmp_path):
    from test_persist import assert_round_trip

    for result in faithful_fits:
        loaded = ml.FitResult.load(result.save(tmp_path / f"{result.method}.npz"))
        assert_round_trip(result, loaded)


def test_same_key_same_draws_and_data_untouched(faithful_fits, faithful):
    _, nuts, normal = faithful_fits
    before = faithful.copy()
    again_nuts = ml.fit(faithful, 2, ml.NUTS(**FAST_NUTS), key=1)
    again_svi = ml.fit(faithful, 2, ml.SVI(num_steps=3000, guide="normal", progress=False), key=2)
    for a, b in ((nuts, again_nuts), (normal, again_svi)):
        for name in a.posterior:
            np.testing.assert_array_equal(a.posterior[name], b.posterior[name])
        np.testing.assert_array_equal(a.trace, b.trace)
    np.testing.assert_array_equal(faithful, before)
    other = ml.fit(faithful, 2, ml.NUTS(**FAST_NUTS), key=9)
    assert not np.array_equal(other.posterior["means"], nuts.posterior["means"])


def test_convergence_summary_of_a_constant_is_nan_without_warnings():
    """The weight of a one-component mixture is 1 in every draw: r-hat and ESS are 0/0
    (NaN), which numpyro computes with a RuntimeWarning; the suite runs warnings as errors."""
    from mixlab.bayes.common import convergence_summary

    rng = np.random.default_rng(0)
    out = convergence_summary(
        {"weights": np.ones((2, 50, 1)), "means": rng.normal(size=(2, 50, 1))}
    )
    assert np.isnan(out["ess"]["weights"]).all() and np.isnan(out["r_hat"]["weights"]).all()
    assert 20 < out["min_ess"] <= 100 and 0.9 < out["max_r_hat"] < 1.1  # from the means
