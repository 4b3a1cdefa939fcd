"""The family protocol is complete: a family defined here, outside the library, is fitted
by EM, SVI and NUTS, compared, exported to ArviZ and saved and loaded, with no change to
mixlab.  (The family below is the whole of what a new family needs: about 60 lines.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mixlab as ml
from mixlab.families import Family, ParamSpec, PriorSite, register


# ----------------------------------------------------------------------------- the family
@register
class Exponential(Family):
    """Independent exponential features: ``p(x | lam) = prod_d lam_d exp(-lam_d x_d)``."""

    name = "exponential_test"

    def param_specs(self):
        return (ParamSpec("rates", ("component", "feature"), "positive", "rate"),)

    def check_data(self, X, name="X"):
        if np.any(X < 0):
            raise ValueError(f"{name} must be non-negative for the exponential family")

    def log_prob(self, X, prepared, features=None):
        rates = prepared["rates"]
        return jnp.sum(jnp.log(rates), axis=1) - X @ rates.T

    def summarize(self, X, resp, prepared, features=None, aux=None):
        return resp.T @ X  # sum_i r_ik x_i

    def m_step(self, stats, nk, components, reg, fixed=(), second=None):
        return {"rates": nk[:, None] / stats}

    def sample(self, key, components, labels):
        rates = components["rates"][labels]
        return jax.random.exponential(key, rates.shape, rates.dtype) / rates

    def moments(self, components):
        mean = 1.0 / components["rates"]
        return mean, jnp.square(mean)[:, :, None] * jnp.eye(mean.shape[1], dtype=mean.dtype)

    def prior_constants(self, X_std, std, priors, row_weight=None):
        return {"rate_rate": 1.0 * np.mean(X_std, axis=0)}  # Gamma(1, mean): prior mean 1/mean

    def prior_sites(self, n_components, n_features, priors):
        args = (("concentration", 1.0), ("rate", "rate_rate"))
        return (PriorSite("rates", "gamma", (n_components, n_features), args),)

    def components_from_sites(self, values, n_components, n_features):
        return {"rates": values["rates"]}

    def sites_from_components(self, components, n_components, n_features, priors):
        return {"rates": components["rates"]}


# ----------------------------------------------------------------------------- the tests
TRUE_RATES = np.array([[4.0, 0.5], [0.5, 3.0]])


@pytest.fixture(scope="session")
def data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 600)
    return rng.exponential(1.0 / TRUE_RATES[labels])


@pytest.fixture(scope="session")
def fits(data):
    em = ml.fit(
        data,
        2,
        ml.EM(n_init=4, tol=1e-10, max_iter=500, record_params=True),
        family="exponential_test",
    )
    nuts = ml.fit(
        data,
        2,
        ml.NUTS(num_warmup=300, num_samples=300, num_chains=2, progress=False),
        family=Exponential(),
        key=1,
    )
    svi = ml.fit(
        data, 2, ml.SVI(num_steps=2000, guide="delta", progress=False), family=Exponential(), key=2
    )
    return em, nuts, svi


def test_em_is_the_numpy_em_and_recovers_the_truth(data, fits):
    em, _, _ = fits
    # every recorded iteration is one NumPy EM step from the previous one
    for t in range(1, em.n_iter + 1, 5):
        p = em.params_trace[t - 1]
        log_joint = np.log(p.weights) + np.sum(np.log(p.rates), axis=1) - data @ p.rates.T
        resp = np.exp(log_joint - log_joint.max(1, keepdims=True))
        resp /= resp.sum(1, keepdims=True)
        nk = resp.sum(0)
        np.testing.assert_allclose(
            em.params_trace[t].rates, nk[:, None] / (resp.T @ data), rtol=1e-10
        )
        np.testing.assert_allclose(em.params_trace[t].weights, nk / len(data), rtol=1e-10)
        # trace[t - 1] is the exponential mixture's log-likelihood, written out
        ll = np.sum(np.log(np.sum(np.exp(log_joint), axis=1)))
        np.testing.assert_allclose(em.trace[t - 1], ll, rtol=1e-12)
    order = np.argsort(-em.params.rates[:, 0])
    np.testing.assert_allclose(em.params.rates[order], TRUE_RATES, rtol=0.2)  # ~300 rows each


def test_nuts_and_svi_agree_with_em(fits):
    em, nuts, svi = fits
    c = ml.compare(em, nuts, svi)
    assert c.agree["nuts"], c.summary
    assert nuts.diagnostics["divergences"] == 0
    # a prior this weak moves the MAP by far less than 5 % of the estimates
    np.testing.assert_allclose(c.table["svi_delta_mean"], c.table["em"], rtol=0.05)


def test_arviz_and_save_load_need_nothing_more(fits, tmp_path):
    az = pytest.importorskip("arviz")
    em, nuts, _ = fits
    idata = nuts.to_arviz()
    assert idata.posterior["rates"].dims == ("chain", "draw", "component", "feature")
    assert np.isfinite(float(az.loo(idata).elpd_loo))
    for result in (em, nuts):
        back = ml.FitResult.load(result.save(tmp_path / f"{result.method}.npz"))
        assert back.params.family == Exponential()
        np.testing.assert_array_equal(back.params.rates, result.params.rates)
        np.testing.assert_array_equal(back.trace, result.trace)


def test_its_data_check_runs_at_the_boundary(data):
    with pytest.raises(ValueError, match="non-negative for the exponential family"):
        ml.fit(-data, 2, family="exponential_test")
