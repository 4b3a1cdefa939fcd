"""Online EM (mixlab.online): against batch EM on 1e6 rows, a NumPy recursion and one EM step."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from helpers import blobs
from scipy.optimize import brentq
from scipy.special import digamma, gammaln, logsumexp
from scipy.stats import chi2

import mixlab as ml
from mixlab import api
from mixlab._jaxutil import as_key
from mixlab.families.gaussian import FullGaussian
from mixlab.online import OnlineEM, epoch_order, fit_online_em


@pytest.fixture(scope="module", autouse=True)
def registered():
    """``ml.fit`` dispatches OnlineEM to its backend (until mixlab.api registers it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(api._BACKENDS, OnlineEM, fit_online_em)
        yield


def z_scores(online: ml.FitResult, batch: ml.FitResult, se: ml.MixtureParams) -> np.ndarray:
    """(online - batch) / SE for every free parameter (symmetric matrices: upper triangle)."""
    out = [(online.params.weights - batch.params.weights) / se.weights]
    for spec in batch.params.family.param_specs():
        diff = np.asarray(online.params.components[spec.name]) - batch.params.components[spec.name]
        z = diff / np.asarray(se.components[spec.name])
        if spec.symmetric:
            rows, cols = np.triu_indices(z.shape[-1])
            z = z[..., rows, cols]
        out.append(z.ravel())
    return np.concatenate([np.ravel(a) for a in out])


def noise_ratio(n_rows: int, method: OnlineEM) -> float:
    """Expected variance of the online estimate's difference from batch EM's, in units
    of the batch estimate's variance ``c`` (no averaging).

    With little missing information (well-separated components) the running
    statistics follow ``e_t = (1 - gamma_t) e_{t-1} + gamma_t xi_t`` about their
    target, ``xi`` a minibatch's noise, so near the end their variance is
    ``gamma_T / 2`` times a minibatch's, ``gamma_T T / 2`` times the batch
    estimate's (``T`` steps).  They are driven by the last ~1/gamma_T minibatches,
    which also make up part of the batch estimate, so the difference has variance
    ``gamma_T T / 2 - 1`` batch variances.  With averaging over the last half of the
    steps the average is about the mean of half the data's statistics: ``2 - 1 = 1``.
    """
    if method.averaging:
        return 1.0
    steps = -(-n_rows // method.batch_size)
    gamma = (steps + method.step_offset) ** -method.step_exponent
    return gamma * steps / 2 - 1


def assert_within_sampling_error(online, batch, se, ratio):
    """Online EM's difference from batch EM ``delta ~ N(0, ratio * Cov(batch))``:

    * every z-score ``delta_i / SE_i`` is ``N(0, ratio)``: all within ``4.4 sqrt(ratio)``
      (a 1e-4 two-sided tail, Bonferroni over the parameters);
    * batch EM is at the maximum and online EM below it by ``delta' I delta / 2``
      (``I`` the observed information), and ``delta' I delta / ratio`` is chi-square
      with as many degrees of freedom as free parameters: the gap is below
      ``ratio / 2`` times its 1 - 1e-4 quantile.

    Returns the z-scores and the gap.
    """
    z = z_scores(online, batch, se)
    gap = batch.log_likelihood - online.log_likelihood
    bound = 0.5 * ratio * chi2.ppf(1 - 1e-4, batch.n_parameters)
    assert np.abs(z).max() < 4.4 * math.sqrt(ratio), z
    assert -1e-6 < gap < bound, (gap, bound)
    return z, gap


# ------------------------------------------------------------------- 1e6 rows: vs batch EM
@pytest.fixture(scope="module")
def million():
    rng = np.random.default_rng(20240611)
    n = 1_000_000
    means = np.array([[-4.0, 0.0], [0.0, 4.0], [4.0, -1.0]])
    covs = np.array(
        [[[1.0, 0.3], [0.3, 0.5]], [[0.6, -0.2], [-0.2, 1.2]], [[0.8, 0.0], [0.0, 0.8]]]
    )
    labels = rng.choice(3, n, p=[0.5, 0.3, 0.2])
    chol = np.linalg.cholesky(covs)
    X = means[labels] + np.einsum("nij,nj->ni", chol[labels], rng.normal(size=(n, 2)))
    truth = {"weights": np.array([0.5, 0.3, 0.2]), "means": means, "covariances": covs}
    batch = ml.fit(X, 3, ml.EM(tol=1e-9, max_iter=500, init=truth), order="location")
    assert batch.converged
    return X, batch, batch.standard_errors()


@pytest.mark.benchmark
@pytest.mark.parametrize("averaging", [False, True])
def test_one_epoch_on_a_million_rows_ends_within_sampling_error_of_batch_em(million, averaging):
    X, batch, se = million
    if averaging:
        # key 2's first k-means++ start puts two components in one cluster, a basin that
        # neither online nor batch EM leaves (0.27 per row below the maximum); n_init
        # restarts, refined on the subsample and compared there, are the remedy.
        method, key = OnlineEM(averaging=True, n_init=4), 2
    else:
        method, key = OnlineEM(n_init=4), 1  # the same compiled programs
    online = ml.fit(X, 3, method, key=key)
    assert online.method == "online_em"
    assert online.n_iter == 1000 and online.trace.shape == (1000,)
    ratio = noise_ratio(len(X), method)  # 6.9 without averaging (rms z 2.6), 1 with
    _, gap = assert_within_sampling_error(online, batch, se, ratio)
    # per row: within 1.6e-4 (no averaging) or 2.3e-5 (averaging) of batch EM
    assert gap / len(X) < (1.6e-4 if not averaging else 2.3e-5)
    # The per-step estimates are unbiased for the total log-likelihood at the iterates:
    # the last quarter's mean is within 4 of its standard errors of the exact value.
    tail = online.trace[-250:]
    assert abs(tail.mean() - online.log_likelihood) < 4 * tail.std() / math.sqrt(250)


@pytest.mark.parametrize("family", ["poisson", "bernoulli"])
def test_poisson_and_bernoulli_end_within_sampling_error_of_batch_em(family):
    rng = np.random.default_rng(7)
    n = 100_000
    labels = rng.choice(2, n, p=[0.6, 0.4])
    if family == "poisson":
        name, centres = "rates", np.array([[2.0, 15.0, 5.0], [12.0, 3.0, 6.0]])
        X = rng.poisson(centres[labels]).astype(float)
    else:
        name, centres = "probs", np.array([[0.1, 0.9, 0.2, 0.8, 0.3], [0.85, 0.15, 0.7, 0.25, 0.6]])
        X = (rng.random((n, 5)) < centres[labels]).astype(float)
    # an explicit, rough start for both (the 1e6-row test covers the k-means++ start)
    start = {"weights": np.array([0.5, 0.5]), name: 0.5 * (centres + centres.mean(axis=0))}
    batch = ml.fit(X, 2, ml.EM(tol=1e-10, max_iter=500, init=start), family=family)
    method = OnlineEM(batch_size=500, averaging=True, init=start)
    online = ml.fit(X, 2, method, family=family, key=3)
    assert_within_sampling_error(online, batch, batch.standard_errors(), noise_ratio(n, method))


# ------------------------------------------------------------ the recursion, in plain NumPy
def numpy_online_em(X, w, start, key, *, batch_size, n_epochs, alpha, t0, burn_in, avg_start, reg):
    """Cappé-Moulines online EM for a full-covariance Gaussian mixture, written out."""
    n_rows, n_features = X.shape
    total = w.sum()
    guard = 10 * np.finfo(np.float64).eps

    def e_step(theta, x, wt):
        weights, means, covs = theta
        log_joint = np.empty((len(x), len(weights)))
        for k in range(len(weights)):
            chol = np.linalg.cholesky(covs[k])
            sol = np.linalg.solve(chol, (x - means[k]).T)
            log_det = 2 * np.log(np.diag(chol)).sum()
            log_joint[:, k] = np.log(weights[k]) - 0.5 * (
                n_features * np.log(2 * np.pi) + log_det + np.sum(sol**2, axis=0)
            )
        top = log_joint.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(log_joint - top).sum(axis=1))
        resp = np.exp(log_joint - log_norm[:, None]) * wt[:, None]
        mass = wt.sum()
        stats = (
            resp.sum(0) / mass,
            resp.T @ x / mass,
            np.einsum("nk,ni,nj->kij", resp, x, x) / mass,
        )
        return stats, (wt * log_norm).sum() / mass

    def m_step(s):
        nk = total * s[0] + guard
        means = total * s[1] / nk[:, None]
        covs = total * s[2] / nk[:, None, None] - np.einsum("ki,kj->kij", means, means)
        return nk / nk.sum(), means, covs + reg * np.eye(n_features)

    theta = (start["weights"], start["means"], start["covariances"])
    s = e_step(theta, X, w)[0]  # the start's statistics on the (whole) init sample
    average, n_averaged = None, 0
    n_batches = -(-n_rows // batch_size)
    average_after = math.floor(avg_start * n_batches * n_epochs)
    order_key = jax.random.fold_in(as_key(key), 1)
    trace, steps, t = [], [], 0
    for epoch in range(n_epochs):
        index, mask = (np.asarray(a) for a in epoch_order(order_key, n_rows, batch_size, epoch))
        for rows, keep in zip(index, mask, strict=True):
            rows = rows[keep]
            s_batch, mean_ll = e_step(theta, X[rows], w[rows])
            t += 1
            gamma = (t + t0) ** -alpha
            s = tuple((1 - gamma) * a + gamma * b for a, b in zip(s, s_batch, strict=True))
            if t > burn_in:
                theta = m_step(s)
            if t > average_after:
                n_averaged += 1
                average = (
                    s
                    if average is None
                    else tuple(a + (b - a) / n_averaged for a, b in zip(average, s, strict=True))
                )
            trace.append(total * mean_ll)
            steps.append(gamma)
    return m_step(average), np.array(trace), np.array(steps)


SMALL = blobs(203, 2, 3, seed=5)
SMALL_WEIGHTS = np.random.default_rng(2).integers(1, 4, len(SMALL)).astype(float)
SMALL_START = {
    "weights": np.array([0.3, 0.3, 0.4]),
    "means": SMALL[[0, 1, 2]],
    "covariances": np.array([np.eye(2) * 4.0] * 3),
}
SMALL_METHOD = dict(
    batch_size=37,
    n_epochs=2,
    step_exponent=0.7,
    step_offset=3.0,
    burn_in=2,
    averaging=True,
    averaging_start=0.4,
    init=SMALL_START,
    reg_covar=1e-3,
)


@pytest.fixture(scope="module")
def small_fit():
    method = OnlineEM(formulation="centred", **SMALL_METHOD)
    return ml.fit(SMALL, 3, method, sample_weight=SMALL_WEIGHTS, key=4, order=None)


def test_recursion_equals_a_plain_numpy_implementation(small_fit):
    ref_params, ref_trace, ref_steps = numpy_online_em(
        SMALL,
        SMALL_WEIGHTS,
        SMALL_START,
        4,
        batch_size=37,
        n_epochs=2,
        alpha=0.7,
        t0=3.0,
        burn_in=2,
        avg_start=0.4,
        reg=1e-3,
    )
    p = small_fit.params
    np.testing.assert_allclose(p.weights, ref_params[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(p.means, ref_params[1], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(p.covariances, ref_params[2], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(small_fit.trace, ref_trace, rtol=1e-10)
    np.testing.assert_allclose(small_fit.diagnostics["step_sizes"], ref_steps, rtol=1e-14)
    assert small_fit.n_iter == 2 * 6 and small_fit.diagnostics["averaged_steps"] == 12 - 4
    assert small_fit.diagnostics["formulation"] == "centred"


def test_same_key_same_result_and_another_key_another_order(small_fit):
    method = OnlineEM(formulation="centred", **SMALL_METHOD)
    again = ml.fit(SMALL, 3, method, sample_weight=SMALL_WEIGHTS, key=4, order=None)
    for a, b in zip(
        jax.tree_util.tree_leaves(small_fit.params), jax.tree_util.tree_leaves(again.params)
    ):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(small_fit.trace, again.trace)
    other = ml.fit(SMALL, 3, method, sample_weight=SMALL_WEIGHTS, key=5, order=None)
    assert not np.array_equal(other.trace, small_fit.trace)


# ----------------------------------------------------------- one step from a start is EM
ONE_STEP_DATA = blobs(300, 2, 3, seed=2)
ONE_STEP_STARTS = {
    "gaussian": {
        "weights": np.array([0.2, 0.3, 0.5]),
        "means": ONE_STEP_DATA[[0, 1, 2]],
        "covariances": np.array([[2.0, 0.5], [0.5, 1.5]]),
    },
    "student_t": {
        "weights": np.array([0.2, 0.3, 0.5]),
        "means": ONE_STEP_DATA[[0, 1, 2]],
        "covariances": np.array([[[2.0, 0.5], [0.5, 1.5]]] * 3),
        "dofs": np.array([4.0, 10.0, 30.0]),
    },
    "bernoulli": {
        "weights": np.array([0.2, 0.3, 0.5]),
        "probs": np.array([[0.2, 0.3, 0.6, 0.5], [0.7, 0.6, 0.4, 0.2], [0.5, 0.5, 0.5, 0.5]]),
    },
}


def numpy_student_t_ecm_step(X, start, reg):
    """One ECM iteration of a full-scale Student-t mixture (Peel and McLachlan 2000),
    degrees of freedom solved by Brent's method: the reference for mixlab's."""
    weights, means, scales, dofs = (
        np.asarray(start[k], float) for k in ("weights", "means", "covariances", "dofs")
    )
    n_features = X.shape[1]
    log_joint, delta = np.empty((len(X), 3)), np.empty((len(X), 3))
    for k in range(3):
        diff = X - means[k]
        delta[:, k] = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(scales[k]), diff)
        nu = dofs[k]
        log_joint[:, k] = (
            np.log(weights[k])
            + gammaln((nu + n_features) / 2)
            - gammaln(nu / 2)
            - n_features / 2 * np.log(nu * np.pi)
            - 0.5 * np.linalg.slogdet(scales[k])[1]
            - (nu + n_features) / 2 * np.log1p(delta[:, k] / nu)
        )
    resp = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))
    u = (dofs + n_features) / (dofs + delta)
    nk = resp.sum(0) + 10 * np.finfo(float).eps
    new_means = (resp * u).T @ X / (resp * u).sum(0)[:, None]
    new_scales, new_dofs = [], []
    for k in range(3):
        diff = X - new_means[k]
        new_scales.append((resp[:, k] * u[:, k] * diff.T) @ diff / nk[k] + reg * np.eye(n_features))
        half = (dofs[k] + n_features) / 2
        const = 1 + resp[:, k] @ (np.log(u[:, k]) - u[:, k]) / nk[k] + digamma(half) - np.log(half)
        root = brentq(
            lambda t, c=const: np.log(np.exp(t) / 2) - digamma(np.exp(t) / 2) + c,
            np.log(0.05),
            np.log(1000.0),
            xtol=1e-15,
            rtol=1e-15,
        )
        new_dofs.append(np.exp(root))
    return ml.MixtureParams.from_dict(
        {
            "weights": nk / nk.sum(),
            "means": new_means,
            "covariances": np.array(new_scales),
            "dofs": np.array(new_dofs),
        },
        family="student_t",
    )


@pytest.mark.parametrize(
    ("family", "covariance"), [("gaussian", "tied"), ("student_t", "full"), ("bernoulli", None)]
)
def test_full_batch_step_with_unit_step_size_is_one_em_iteration(family, covariance):
    X = ONE_STEP_DATA
    if family == "bernoulli":
        X = (np.random.default_rng(3).random((300, 4)) < [0.2, 0.5, 0.7, 0.4]).astype(float)
        # a pseudo-count: the M-step must see n times the normalised statistics
        family = ml.families.get_family("bernoulli", pseudo_count=2.0)
    start = ml.MixtureParams.from_dict(
        ONE_STEP_STARTS[getattr(family, "name", family)],
        family=ml.families.get_family(family, covariance=covariance),
    )
    if start.family.name == "student_t":  # ECM, written out in NumPy
        expected = numpy_student_t_ecm_step(X, ONE_STEP_STARTS["student_t"], 1e-6)
    else:  # the closed-form M-step on the E-step's responsibilities
        resp = np.exp(ml.em.e_step(X, start).log_resp)
        expected = ml.em.m_step(X, resp, covariance, 1e-6, family=start.family)
    ll_start = float(ml.log_likelihood(X, start))
    # gamma_1 = (1 + 0)^-1 = 1: the running statistics become the whole data's under the
    # start, and the M-step on them is batch EM's.
    method = OnlineEM(init=start, batch_size=300, step_exponent=1.0, step_offset=0.0, burn_in=0)
    online = ml.fit(X, 3, method, family=start.family, key=9, order=None)
    assert online.n_iter == 1
    np.testing.assert_allclose(online.params.weights, expected.weights, rtol=1e-10)
    for name, value in expected.components.items():
        np.testing.assert_allclose(online.params.components[name], value, rtol=1e-10, atol=1e-12)
    assert online.log_likelihood == pytest.approx(float(ml.log_likelihood(X, expected)), rel=1e-12)
    # the trace holds the start's log-likelihood (the one step's minibatch is all the data)
    assert online.trace[0] == pytest.approx(ll_start, rel=1e-12)


# ----------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
        ({"batch_size": 10.0}, TypeError, "batch_size must be an int"),
        ({"n_epochs": 0}, ValueError, "n_epochs must be >= 1"),
        ({"step_exponent": 0.5}, ValueError, r"step_exponent must be in \(0.5, 1\]"),
        ({"step_exponent": 1.2}, ValueError, r"step_exponent must be in \(0.5, 1\]"),
        ({"step_offset": -1.0}, ValueError, "step_offset must be >= 0"),
        ({"averaging": 1}, TypeError, "averaging must be True or False"),
        ({"averaging_start": 1.0}, ValueError, "averaging_start .* must be below 1"),
        ({"burn_in": -1}, ValueError, "burn_in must be >= 0"),
        ({"init": "best"}, ValueError, "init must be one of"),
        ({"init": 3}, TypeError, "init must be one of"),
        ({"init_size": 0}, ValueError, "init_size must be >= 1"),
        ({"n_init": 0}, ValueError, "n_init must be >= 1"),
        ({"init_iter": -1}, ValueError, "init_iter must be >= 0"),
        ({"init": SMALL_START, "n_init": 2}, ValueError, "use n_init=1"),
        ({"reg_covar": -1e-6}, ValueError, "reg_covar must be >= 0"),
        ({"shuffle": "yes"}, TypeError, "shuffle must be True or False"),
        ({"progress": "yes"}, TypeError, "progress must be True, False or None"),
    ],
)
def test_bad_settings_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        OnlineEM(**kwargs)


def test_defaults_and_settings_record():
    method = OnlineEM()
    assert method.resolved_burn_in(3) == 1 and OnlineEM(batch_size=10).resolved_burn_in(3) == 6
    settings = method.settings()
    assert settings["method"] == "online_em" and settings["step_exponent"] == 0.6


class _OpaqueSecondPass(FullGaussian):
    """A Gaussian whose second pass does not declare its sums quadratic in the centre
    (``Family.second_pass_quadratic``), as a user's own family would not."""

    second_pass_quadratic = False

    def summarize_second(self, X, resp, centre):
        return super().summarize_second(X, resp, centre)


def test_a_second_pass_that_cannot_be_carried_raises_not_implemented():
    X = blobs(100, 2, 2, seed=0)
    with pytest.raises(NotImplementedError, match="second pass .* not known to be quadratic"):
        ml.fit(X, 2, OnlineEM(formulation="centred"), family=_OpaqueSecondPass())
