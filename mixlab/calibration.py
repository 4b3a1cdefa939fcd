"""Simulation-based calibration (SBC) of mixlab's Bayesian fits.

Talts, Betancourt, Simpson, Vehtari and Gelman (2018), *Validating Bayesian
inference algorithms with simulation-based calibration*: draw parameters from
the prior, data from those parameters, fit, and rank the true value of each
quantity among ``L`` posterior draws.  If the fit returns draws from the exact
posterior, every rank is uniform on ``{0, ..., L}``; a U-shaped histogram
means posteriors too narrow, a hump too wide, a slope a bias.

The study here covers mixtures of full-covariance Gaussians.  Two things
make the check exact for mixlab's mixture:

*The prior must not depend on the data.*  mixlab's Gaussian model works on
standardised data, so its default priors (``ml.Priors``) are in units of the
data's standard deviation and centred on the data mean: an empirical-Bayes
prior that no ``Priors`` setting removes (``mean_scale`` and ``scale`` are
always in data sds).  :class:`UnstandardisedGaussian` is the full-covariance
Gaussian family with the standardisation switched off, so the same model,
fitted by the same ``ml.fit`` path, has the priors of ``Priors`` literally in
the data's units; :func:`simulate` draws from exactly those priors.

*Ranks need quantities on which the truth and the draws agree.*  Component
labels are arbitrary (the posterior is symmetric under relabelling, and mixlab
relabels draws to match an EM fit), so :func:`invariant_quantities` orders
the components of every draw, and of the truth, by their mean on the first
feature and ranks only functions of the unordered set of components: the
ordered means, weights, sds and correlations, the mixture's own mean and sd,
and the log-likelihood of the data (a data-dependent test quantity, Modrák et
al. 2023).  The SBC R package's mixture vignette shows the bimodal ranks that
raw labelled parameters give.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import pandas as pd
from scipy import special, stats

from mixlab._jaxutil import KeyLike, as_key
from mixlab.errors import FitError
from mixlab.families import FullGaussian, Standardisation
from mixlab.methods import NUTS, SVI
from mixlab.priors import Priors

__all__ = [
    "SBCResult",
    "Simulation",
    "UnstandardisedGaussian",
    "invariant_quantities",
    "rank_band",
    "rank_uniformity",
    "replicate_keys",
    "sbc",
    "sbc_rank",
    "simulate",
    "summarise_ranks",
]


class UnstandardisedGaussian(FullGaussian):
    """Full-covariance Gaussian components whose Bayesian model uses the data as they are.

    The same family, likelihood and prior sites as
    ``ml.families.Gaussian(covariance="full")``, except that SVI and NUTS do
    not centre and scale the data first: the priors of :class:`~mixlab.Priors`
    (``Normal(mean_loc, mean_scale)`` means, ``HalfNormal(scale)`` component
    sds, ``LKJCholesky(lkj_eta)`` correlations, ``Dirichlet`` weights) hold in
    the data's own units and do not depend on the data.  That is what
    simulation-based calibration needs; for ordinary fits the default,
    data-scaled family is the better choice.
    """

    def standardisation(self, X: np.ndarray, row_weight: np.ndarray | None = None):
        return Standardisation.identity(X.shape[1])

    def __repr__(self) -> str:
        return "UnstandardisedGaussian()"


# --------------------------------------------------------------------------- randomness
def _rng(key: KeyLike | np.random.Generator) -> np.random.Generator:
    """A NumPy generator from an int seed or a JAX key (or a generator, used as is)."""
    if isinstance(key, np.random.Generator):
        return key
    return np.random.default_rng(np.asarray(as_key(key), dtype=np.uint32))


# --------------------------------------------------------------------------- prior
class Simulation(NamedTuple):
    """One draw from the prior predictive: parameters and data."""

    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, D)
    covariances: np.ndarray  # (K, D, D)
    labels: np.ndarray  # (n_obs,) component of each row
    X: np.ndarray  # (n_obs, D)


def _check_priors(priors: Priors | None, n_features: int) -> Priors:
    priors = Priors() if priors is None else priors
    if not isinstance(priors, Priors):
        raise TypeError(f"priors must be a ml.Priors, got {type(priors).__name__}")
    if priors.mean_loc is not None and priors.mean_loc.shape != (n_features,):
        raise ValueError(
            f"Priors.mean_loc has {priors.mean_loc.size} entries but n_features={n_features}; "
            "give one prior centre per feature"
        )
    if priors.ordered_means and n_features != 1:
        raise ValueError(
            f"ordered_means needs one feature, got n_features={n_features}; "
            "leave ordered_means off for several features"
        )
    return priors


def _lkj_cholesky(rng: np.random.Generator, n_features: int, eta: float) -> np.ndarray:
    """Cholesky factor of an LKJ(eta) correlation matrix (the onion method,
    Lewandowski, Kurowicka and Joe 2009, as NumPyro's ``LKJCholesky``)."""
    chol = np.zeros((n_features, n_features))
    chol[0, 0] = 1.0
    if n_features == 1:
        return chol
    beta = eta + (n_features - 2) / 2.0
    r = 2.0 * rng.beta(beta, beta) - 1.0
    chol[1, 0], chol[1, 1] = r, np.sqrt(1.0 - r * r)
    for k in range(2, n_features):
        beta -= 0.5
        y = rng.beta(k / 2.0, beta)
        u = rng.normal(size=k)
        w = np.sqrt(y) * u / np.linalg.norm(u)
        chol[k, :k], chol[k, k] = w, np.sqrt(1.0 - y)
    return chol


def simulate(
    key: KeyLike | np.random.Generator,
    n_components: int,
    n_features: int,
    n_obs: int,
    priors: Priors | None = None,
) -> Simulation:
    """Draw parameters from the prior of mixlab's Gaussian mixture, then data from them.

    The prior is the one :class:`UnstandardisedGaussian` fits, in the data's
    units (``Priors`` fields):

    * ``weights ~ Dirichlet(weight_concentration * ones(K))``;
    * ``means[k, d] ~ Normal(mean_loc[d], mean_scale)`` (``mean_loc`` default 0),
      sorted when ``ordered_means`` (one feature: the ordered-normal prior);
    * component sds ``s[k, d] ~ HalfNormal(scale)`` and correlations
      ``R_k = L_k L_k^T``, ``L_k ~ LKJCholesky(D, lkj_eta)``;
      ``covariances[k] = diag(s_k) R_k diag(s_k)``;

    then ``n_obs`` rows, each from component ``z ~ Categorical(weights)``.

    Parameters
    ----------
    key : int, jax.random key or numpy.random.Generator
    n_components, n_features, n_obs : int
    priors : Priors, optional
        Default ``Priors()``.

    Returns
    -------
    Simulation
        ``weights (K,)``, ``means (K, D)``, ``covariances (K, D, D)``,
        ``labels (n_obs,)`` and ``X (n_obs, D)``.
    """
    for name, value in (
        ("n_components", n_components),
        ("n_features", n_features),
        ("n_obs", n_obs),
    ):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    priors = _check_priors(priors, n_features)
    rng = _rng(key)
    K, D = int(n_components), int(n_features)
    weights = rng.dirichlet(np.full(K, priors.weight_concentration))
    loc = np.zeros(D) if priors.mean_loc is None else np.asarray(priors.mean_loc, np.float64)
    means = loc + priors.mean_scale * rng.normal(size=(K, D))
    if priors.ordered_means:
        means = np.sort(means, axis=0)
    sds = priors.scale * np.abs(rng.normal(size=(K, D)))
    chols = np.stack([sds[k][:, None] * _lkj_cholesky(rng, D, priors.lkj_eta) for k in range(K)])
    covariances = chols @ np.swapaxes(chols, -1, -2)
    labels = rng.choice(K, size=int(n_obs), p=weights / weights.sum())
    noise = rng.normal(size=(int(n_obs), D))
    X = means[labels] + np.einsum("nij,nj->ni", chols[labels], noise)
    return Simulation(weights, means, covariances, labels, X)


# --------------------------------------------------------------------------- quantities
def invariant_quantities(
    weights: np.ndarray, means: np.ndarray, covariances: np.ndarray, X: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Label-invariant quantities of mixture parameters (one value per draw).

    Components are put in increasing order of their mean on the first feature
    (index 0 below is the lowest); every quantity is then a function of the
    unordered set of components, so it is the same whatever labels a sampler
    or an alignment gave.

    Parameters
    ----------
    weights : array of shape (..., K)
    means : array of shape (..., K, D)
    covariances : array of shape (..., K, D, D)
    X : array of shape (n_obs, D), optional
        Data for the ``log_lik`` quantity.

    Returns
    -------
    dict of str to array of shape (...)
        ``mean[k]`` (one feature) or ``mean[k,d]``; ``weight[k]`` for
        ``k < K - 1`` (the last is one minus the others); ``sd[k]`` or
        ``sd[k,d]``; ``corr[k]`` (two features) or ``corr[k,d,e]``;
        ``mix_mean[d]`` and ``mix_sd[d]``, the mean and sd of the mixture
        distribution; ``log_lik``, ``log p(X | theta)`` when ``X`` is given.
    """
    weights = np.asarray(weights, np.float64)
    means = np.asarray(means, np.float64)
    covariances = np.asarray(covariances, np.float64)
    K, D = means.shape[-2:]
    if weights.shape[-1] != K or covariances.shape[-3:] != (K, D, D):
        raise ValueError(
            f"shapes disagree: weights {weights.shape}, means {means.shape}, covariances "
            f"{covariances.shape}; expected (..., K), (..., K, D) and (..., K, D, D)"
        )
    order = np.argsort(means[..., 0], axis=-1)
    w = np.take_along_axis(weights, order, axis=-1)
    mu = np.take_along_axis(means, order[..., None], axis=-2)
    cov = np.take_along_axis(covariances, order[..., None, None], axis=-3)
    sd = np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))
    out: dict[str, np.ndarray] = {}
    for k in range(K):
        for d in range(D):
            out[f"mean[{k}]" if D == 1 else f"mean[{k},{d}]"] = mu[..., k, d]
    for k in range(K - 1):
        out[f"weight[{k}]"] = w[..., k]
    for k in range(K):
        for d in range(D):
            out[f"sd[{k}]" if D == 1 else f"sd[{k},{d}]"] = sd[..., k, d]
    for k in range(K):
        for d in range(D):
            for e in range(d + 1, D):
                name = f"corr[{k}]" if D == 2 else f"corr[{k},{d},{e}]"
                out[name] = cov[..., k, d, e] / (sd[..., k, d] * sd[..., k, e])
    mix_mean = np.einsum("...k,...kd->...d", w, mu)
    second = np.einsum("...k,...kd->...d", w, np.square(sd) + np.square(mu))
    mix_sd = np.sqrt(np.maximum(second - np.square(mix_mean), 0.0))
    for d in range(D):
        out[f"mix_mean[{d}]"] = mix_mean[..., d]
        out[f"mix_sd[{d}]"] = mix_sd[..., d]
    if X is not None:
        out["log_lik"] = _log_likelihood(np.asarray(X, np.float64), weights, means, covariances)
    return out


def _log_likelihood(
    X: np.ndarray, weights: np.ndarray, means: np.ndarray, covariances: np.ndarray
) -> np.ndarray:
    """``sum_i log sum_k w_k N(x_i | mu_k, Sigma_k)`` for every leading index."""
    D = means.shape[-1]
    if X.ndim != 2 or X.shape[1] != D:
        raise ValueError(f"X must have shape (n_obs, {D}), got {X.shape}")
    chol = np.linalg.cholesky(covariances)  # (..., K, D, D)
    diff = X[None, :, :] - means[..., :, None, :]  # (..., K, N, D)
    diff_t = np.swapaxes(diff, -1, -2)  # (..., K, D, N)
    z = np.linalg.solve(chol, diff_t)  # L^-1 (x - mu)
    maha = np.sum(np.square(z), axis=-2)  # (..., K, N)
    log_det = np.sum(np.log(np.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)  # (..., K)
    log_pdf = -0.5 * (maha + D * np.log(2 * np.pi)) - log_det[..., None]
    log_joint = np.log(weights)[..., None] + log_pdf
    return np.sum(special.logsumexp(log_joint, axis=-2), axis=-1)


# --------------------------------------------------------------------------- ranks
def sbc_rank(truth: Any, draws: Any, key: KeyLike | np.random.Generator) -> np.ndarray | int:
    """Rank of the truth among posterior draws: how many draws lie below it.

    A draw equal to the truth counts as below with probability one half, each
    independently; that is, with ``t`` ties the rank is ``#(draws < truth) + j``
    with ``j`` uniform on ``{0, ..., t}`` (Talts et al. 2018), so ties (discrete
    quantities, a point-mass guide) still give uniform ranks.

    Parameters
    ----------
    truth : float or array of shape (...)
    draws : array of shape (L, ...)
        ``L`` posterior draws along the first axis.
    key : int, jax.random key or numpy.random.Generator
        Breaks ties.

    Returns
    -------
    int or array of int of shape (...)
        Ranks in ``{0, ..., L}``.
    """
    truth = np.asarray(truth, np.float64)
    draws = np.asarray(draws, np.float64)
    if draws.ndim < 1 or draws.shape[1:] != truth.shape:
        raise ValueError(
            f"draws must have shape (n_draws, *truth.shape) with truth.shape={truth.shape}, "
            f"got {draws.shape}"
        )
    if not (np.all(np.isfinite(truth)) and np.all(np.isfinite(draws))):
        raise ValueError("truth and draws must be finite; drop failed fits before ranking")
    below = np.sum(draws < truth, axis=0)
    ties = np.sum(draws == truth, axis=0)
    rng = _rng(key)
    extra = rng.binomial(ties, 0.5) if np.any(ties) else np.zeros_like(ties)
    ranks = below + extra
    return int(ranks) if ranks.ndim == 0 else ranks.astype(np.int64)


def _bin_of_rank(n_draws: int, n_bins: int) -> np.ndarray:
    """Bin of each rank ``0..L``: equal-width bins of the ``L + 1`` rank values."""
    return (np.arange(n_draws + 1) * n_bins) // (n_draws + 1)


def rank_uniformity(ranks: Any, n_draws: int, n_bins: int = 10) -> float:
    """Chi-square test that SBC ranks are uniform on ``{0, ..., n_draws}``.

    The ``n_draws + 1`` rank values are cut into ``n_bins`` bins of (nearly)
    equal width; each bin's expected count is its share of the rank values
    (exactly equal when ``n_bins`` divides ``n_draws + 1``), and the statistic
    has ``n_bins - 1`` degrees of freedom.

    Parameters
    ----------
    ranks : array of int of shape (n_replicates,)
    n_draws : int
        ``L``, the number of posterior draws each rank was taken among.
    n_bins : int, default 10
        Keep the expected count per bin at five or more.

    Returns
    -------
    float
        The p-value.
    """
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
    if not isinstance(n_draws, int | np.integer) or n_draws < 1:
        raise ValueError(f"n_draws must be a positive integer, got {n_draws!r}")
    if not isinstance(n_bins, int | np.integer) or not 2 <= n_bins <= n_draws + 1:
        raise ValueError(f"n_bins must be an integer from 2 to n_draws + 1, got {n_bins!r}")
    if np.any(ranks != np.round(ranks)) or ranks.min() < 0 or ranks.max() > n_draws:
        raise ValueError(f"ranks must be integers from 0 to n_draws={n_draws}")
    bins = _bin_of_rank(int(n_draws), int(n_bins))
    observed = np.bincount(bins[ranks.astype(np.int64)], minlength=n_bins)
    expected = ranks.size * np.bincount(bins, minlength=n_bins) / (n_draws + 1)
    statistic = float(np.sum(np.square(observed - expected) / expected))
    return float(stats.chi2.sf(statistic, n_bins - 1))


def rank_band(
    n_replicates: int, n_draws: int, n_bins: int, level: float = 0.99
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected count per bin and the central ``level`` binomial interval around it.

    The band drawn on a rank histogram: under uniform ranks each bin's count
    is ``Binomial(n_replicates, p_bin)``.

    Returns
    -------
    (expected, low, high) : arrays of shape (n_bins,)
    """
    share = np.bincount(_bin_of_rank(n_draws, n_bins), minlength=n_bins) / (n_draws + 1)
    tail = (1.0 - level) / 2.0
    low = stats.binom.ppf(tail, n_replicates, share)
    high = stats.binom.ppf(1.0 - tail, n_replicates, share)
    return n_replicates * share, low, high


# --------------------------------------------------------------------------- the loop
class SBCResult(NamedTuple):
    """Outcome of :func:`sbc`.

    Attributes
    ----------
    ranks : DataFrame, index ``replicate``, one column per quantity
        Ranks in ``{0, ..., n_draws}``; NaN for a replicate whose fit failed.
    summary : DataFrame, one row per quantity
        ``p_value`` (:func:`rank_uniformity`), ``p_bonferroni`` (times the number
        of quantities, capped at 1), ``mean_rank`` (rank / n_draws: 0.5 when
        unbiased; above, the draws lie below the truth) and ``sd_ratio`` (sd of
        the ranks over a uniform's: above 1 a U shape, posteriors too narrow;
        below 1 a hump, too wide) and ``outside``, the share of replicates
        whose truth lies outside all the draws (rank 0 or ``n_draws``;
        ``2 / (n_draws + 1)`` when calibrated).
    replicates : DataFrame, one row per replicate
        ``min_count`` (rows the simulation drew from its least-populated
        component), ``seconds`` (wall time of the fit), ``compile_time``, ``divergences``
        (NUTS, kept draws), ``warmup_divergences``, ``min_ess`` (smallest
        effective sample size over the quantities, all kept draws),
        ``min_ess_thinned`` (the same over the ranked draws), ``converged``,
        ``n_warnings``, ``warning`` (the first), ``error`` (a failed fit).
    n_draws, n_bins, alpha : int, int, float
    passed : bool
        No ``p_bonferroni`` below ``alpha``.
    method : str
    settings : dict
    seconds : float
        Wall time of the whole loop.
    """

    ranks: pd.DataFrame
    summary: pd.DataFrame
    replicates: pd.DataFrame
    n_draws: int
    n_bins: int
    alpha: float
    passed: bool
    method: str
    settings: dict[str, Any]
    seconds: float


def _thinned(posterior: np.ndarray, thin: int, n_draws: int) -> np.ndarray:
    """Every ``thin``-th draw of each chain, chains pooled, the first ``n_draws``."""
    kept = posterior[:, thin - 1 :: thin]
    kept = kept.reshape((-1, *kept.shape[2:]))
    return kept[:n_draws]


def _min_ess(quantities: dict[str, np.ndarray]) -> float:
    """Smallest ESS over the quantities, each of shape (chain, draw)."""
    from numpyro.diagnostics import effective_sample_size

    values = [
        float(effective_sample_size(np.asarray(v, np.float64)))
        for v in quantities.values()
        if v.shape[1] > 3
    ]
    return float(min(values)) if values else float("nan")


def replicate_keys(key: KeyLike, replicate: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The keys :func:`sbc` gives replicate ``replicate``: (simulation, fit, ties).

    ``simulate(replicate_keys(key, r)[0], ...)`` redraws that replicate's truth
    and data, to study which replicates a method gets wrong.
    """
    return tuple(jax.random.split(jax.random.fold_in(as_key(key), replicate), 3))


def sbc(
    method: NUTS | SVI,
    n_components: int = 2,
    n_features: int = 1,
    n_replicates: int = 200,
    n_obs: int = 100,
    key: KeyLike = 0,
    priors: Priors | None = None,
    *,
    n_draws: int = 99,
    thin: int = 10,
    n_bins: int = 10,
    alpha: float = 0.01,
    family: Any = None,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
) -> SBCResult:
    """Simulation-based calibration of ``ml.fit(..., method=method)``.

    For each replicate ``r`` (keys :func:`replicate_keys`): draw parameters and
    ``n_obs`` rows with :func:`simulate`; fit them with
    ``ml.fit(X, n_components, method=method, family=family)`` under the same
    ``priors``; rank each of :func:`invariant_quantities` of the truth among
    ``n_draws`` posterior draws (:func:`sbc_rank`); finally test each
    quantity's ranks for uniformity (:func:`rank_uniformity`) with a
    Bonferroni correction over the quantities.

    Parameters
    ----------
    method : ml.NUTS or ml.SVI
        Its draw count is set here: NUTS keeps ``ceil(n_draws / num_chains) *
        thin`` draws per chain and every ``thin``-th is ranked (nearly
        independent draws, as Talts et al. advise); SVI ranks ``n_draws``
        independent draws from the fitted guide (``thin`` unused).  Progress
        bars are switched off.
    n_components, n_features : int
    n_replicates : int
    n_obs : int
        Rows per simulated data set (the same every replicate, so each program
        compiles once).
    key : int or jax.random key
    priors : Priors, optional
        Used to simulate and to fit (default ``Priors()``; ``method.priors``
        when ``method`` carries some).
    n_draws : int, default 99
        ``L``: ranks run from 0 to ``L``.
    thin : int, default 10
    n_bins : int, default 10
    alpha : float, default 0.01
        Level of the Bonferroni-corrected verdict.
    family : FullGaussian, optional
        Full-covariance Gaussian components, as :func:`simulate` draws them.
        Default :class:`UnstandardisedGaussian` (priors independent of the
        data, which SBC needs).  ``ml.families.Gaussian("full")`` checks the
        ordinary data-scaled model against the same fixed-prior simulations:
        an approximation, not an exact SBC.
    callback : callable, optional
        Called as ``callback(replicate, row)`` after each replicate with its
        diagnostics row (to show progress).

    Returns
    -------
    SBCResult

    Notes
    -----
    Warnings raised inside a fit are recorded in ``replicates`` (count and the
    first message), not re-emitted.  A fit that raises
    :class:`~mixlab.errors.FitError` gives NaN ranks and is left out of the
    tests; its message is in ``replicates["error"]``.
    """
    from mixlab.api import fit

    if not isinstance(method, NUTS | SVI):
        raise TypeError(f"method must be ml.NUTS(...) or ml.SVI(...), got {type(method).__name__}")
    for name, value, low in (
        ("n_replicates", n_replicates, 1),
        ("n_draws", n_draws, 1),
        ("thin", thin, 1),
    ):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(n_bins, int | np.integer) or not 2 <= n_bins <= n_draws + 1:
        raise ValueError(f"n_bins must be an integer from 2 to n_draws + 1, got {n_bins!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha!r}")
    if priors is not None and method.priors is not None and priors != method.priors:
        raise ValueError(
            "method.priors and priors differ; pass the priors once, through sbc(priors=...), "
            "so that the simulations and the fits share them"
        )
    priors = _check_priors(priors if priors is not None else method.priors, n_features)
    family = UnstandardisedGaussian() if family is None else family
    if not isinstance(family, FullGaussian):
        raise TypeError(
            f"family must be a full-covariance Gaussian (UnstandardisedGaussian() or "
            f"ml.families.Gaussian('full')), got {family!r}"
        )
    if isinstance(method, NUTS):
        per_chain = -(-n_draws // method.num_chains) * thin
        fitted = dataclasses.replace(method, num_samples=per_chain, priors=priors, progress=False)
    else:
        fitted = dataclasses.replace(method, num_draws=n_draws, priors=priors, progress=False)
    base = as_key(key)
    names: list[str] | None = None
    rank_rows: list[dict[str, float]] = []
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for r in range(n_replicates):
        key_sim, key_fit, key_tie = replicate_keys(base, r)
        sim = simulate(key_sim, n_components, n_features, n_obs, priors)
        truth = invariant_quantities(sim.weights, sim.means, sim.covariances, sim.X)
        names = names or list(truth)
        row: dict[str, Any] = {
            "replicate": r,
            "min_count": int(np.bincount(sim.labels, minlength=n_components).min()),
            "seconds": np.nan,
            "compile_time": np.nan,
            "divergences": np.nan,
            "warmup_divergences": np.nan,
            "min_ess": np.nan,
            "min_ess_thinned": np.nan,
            "converged": False,
            "n_warnings": 0,
            "warning": "",
            "error": "",
        }
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = fit(sim.X, n_components, method=fitted, family=family, key=key_fit)
            except FitError as exc:
                result = None
                row["error"] = str(exc)
        row["seconds"] = time.perf_counter() - t0
        row["n_warnings"] = len(caught)
        row["warning"] = str(caught[0].message) if caught else ""
        if result is None:
            rank_rows.append(dict.fromkeys(names, np.nan))
        else:
            post = result.posterior
            row["compile_time"] = result.compile_time
            row["converged"] = bool(result.converged)
            if isinstance(method, NUTS):
                row["divergences"] = int(result.diagnostics["divergences"])
                row["warmup_divergences"] = int(result.diagnostics["warmup_divergences"])
                full = invariant_quantities(
                    post["weights"], post["means"], post["covariances"], sim.X
                )
                row["min_ess"] = _min_ess(full)
                kept = {k: _thinned(v[..., None], thin, n_draws)[:, 0] for k, v in full.items()}
                row["min_ess_thinned"] = _min_ess({k: v[None] for k, v in kept.items()})
                draws = np.stack([kept[name] for name in names], axis=-1)
            else:
                flat = {k: np.asarray(v).reshape((-1, *v.shape[2:])) for k, v in post.items()}
                q = invariant_quantities(flat["weights"], flat["means"], flat["covariances"], sim.X)
                draws = np.stack([q[name] for name in names], axis=-1)
            ranks = sbc_rank(np.array([truth[name] for name in names]), draws, key_tie)
            rank_rows.append(dict(zip(names, ranks.astype(np.float64))))
        rows.append(row)
        if callback is not None:
            callback(r, row)
    seconds = time.perf_counter() - start
    if names is None:  # every replicate failed before its quantities were named
        raise FitError(
            f"no replicate of {n_replicates} produced draws to rank; see the errors in the "
            "callback's rows, or check the method's settings"
        )
    ranks_table = pd.DataFrame(rank_rows, columns=names)
    ranks_table.index.name = "replicate"
    summary = summarise_ranks(ranks_table, n_draws, n_bins)
    passed = bool(np.all(summary["p_bonferroni"] >= alpha))
    settings = {
        "method": fitted.settings(),
        "family": repr(family),
        "n_components": n_components,
        "n_features": n_features,
        "n_replicates": n_replicates,
        "n_obs": n_obs,
        "n_draws": n_draws,
        "thin": thin if isinstance(method, NUTS) else 1,
        "n_bins": n_bins,
        "priors": priors.settings(),
    }
    return SBCResult(
        ranks=ranks_table,
        summary=summary,
        replicates=pd.DataFrame(rows).set_index("replicate"),
        n_draws=n_draws,
        n_bins=n_bins,
        alpha=alpha,
        passed=passed,
        method=method.name,
        settings=settings,
        seconds=seconds,
    )


def summarise_ranks(ranks: pd.DataFrame, n_draws: int, n_bins: int = 10) -> pd.DataFrame:
    """Per-quantity uniformity test of a ranks table, with a Bonferroni correction.

    Parameters
    ----------
    ranks : DataFrame, one column per quantity
        Ranks in ``{0, ..., n_draws}``; NaN rows (failed fits) are left out.
    n_draws, n_bins : int

    Returns
    -------
    DataFrame indexed by quantity
        ``n`` (ranks used), ``p_value``, ``p_bonferroni``, ``mean_rank``,
        ``sd_ratio`` and ``outside`` (see :class:`SBCResult`).
    """
    uniform_sd = np.sqrt(((n_draws + 1) ** 2 - 1) / 12.0)
    records = []
    for name in ranks.columns:
        values = ranks[name].dropna().to_numpy()
        p = rank_uniformity(values.astype(np.int64), n_draws, n_bins) if values.size else np.nan
        records.append(
            {
                "quantity": name,
                "n": int(values.size),
                "p_value": p,
                "mean_rank": float(np.mean(values) / n_draws) if values.size else np.nan,
                "sd_ratio": float(np.std(values) / uniform_sd) if values.size else np.nan,
                "outside": (
                    float(np.mean((values == 0) | (values == n_draws))) if values.size else np.nan
                ),
            }
        )
    out = pd.DataFrame(records).set_index("quantity")
    out.insert(2, "p_bonferroni", np.minimum(1.0, out["p_value"] * len(out)))
    return out
