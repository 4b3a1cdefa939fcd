"""E-step, M-step and the exact ELBO for any family: pure JAX, usable alone.

The public functions (:func:`e_step`, :func:`m_step`, :func:`elbo`,
:func:`log_prob_components`, :func:`log_likelihood`) validate their inputs,
compute in float64 unless given float32 and return NumPy arrays; inside a
``jax.jit`` trace they run as plain JAX.  The EM driver uses the same
underlying functions over row chunks (``X3`` of shape ``(n_chunks, chunk,
n_features)`` with row weights ``W3`` of shape ``(n_chunks, chunk)``, zero on
padding rows), so there is exactly one E-step and one M-step in the code
base, and both go through the family protocol (:mod:`mixlab.families`).

Row weights are frequency weights: an integer weight is the same as that many
copies of the row, a zero weight the same as leaving it out.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mixlab._jaxutil import float64_scope, tiny
from mixlab._validation import check_data, check_float, check_sample_weight
from mixlab.density import hard_assign, log_joint, normalise, weighted_log_prob
from mixlab.families import Family, get_family
from mixlab.params import MixtureParams

Array = jax.Array


class EStepResult(NamedTuple):
    """Output of :func:`e_step`.

    Attributes
    ----------
    log_resp : array of shape (n_samples, n_components)
        Log-responsibilities ``log p(z_i = k | x_i, theta)``.
    log_prob_norm : array of shape (n_samples,)
        Per-sample log-likelihood ``log p(x_i | theta)``.
    """

    log_resp: Array
    log_prob_norm: Array


class ELBOResult(NamedTuple):
    """Output of :func:`elbo`: ``log_likelihood = elbo + kl`` to rounding.

    Attributes
    ----------
    elbo : scalar
        ``L(q, theta) = sum_ik w_i q_ik (log pi_k + log p(x_i | theta_k) - log q_ik)``.
    kl : scalar
        ``KL(q || p(z | x, theta)) = sum_ik w_i q_ik (log q_ik - log p(z_i = k | x_i, theta))``.
    log_likelihood : scalar
        ``log p(X | theta) = sum_i w_i log sum_k pi_k p(x_i | theta_k)``.
    """

    elbo: Array
    kl: Array
    log_likelihood: Array


def chunk_sum(fn: Any, chunks: tuple[Any, ...]) -> tuple[Any, Any]:
    """Apply ``fn(*chunk_arrays) -> (sums, per_chunk)`` over row chunks.

    ``chunks`` holds arrays with a leading chunk axis (``None`` entries are
    passed through as ``None``).  Returns the sums added over chunks and the
    per-chunk outputs stacked on a leading axis.  A single chunk runs without
    a loop, so XLA can fuse freely.
    """
    first = tuple(None if a is None else a[0] for a in chunks)
    if chunks[0].shape[0] == 1:
        sums, out = fn(*first)
        return sums, jax.tree_util.tree_map(lambda a: a[None], out)

    def step(carry: Any, xs: Any) -> tuple[Any, Any]:
        sums, out = fn(*xs)
        return jax.tree_util.tree_map(jnp.add, carry, sums), out

    shapes = jax.eval_shape(lambda *a: fn(*a)[0], *first)
    init = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return jax.lax.scan(step, init, chunks)


class EPass(NamedTuple):
    """Sums over the data from one E-step."""

    objective: Array  # sum of w_i log p(x_i) (soft) or of w_i max_k log joint (hard)
    nk: Array  # (K,) sum of weighted responsibilities
    stats: Any  # the family's sufficient statistics (a pytree of sums)


def e_pass(
    X3: Array,
    F3: Array | None,
    W3: Array | None,
    params: MixtureParams,
    prepared: Any,
    hard: bool,
    keep_resp: bool,
    formulation: str = "centred",
) -> tuple[EPass, Array | None]:
    """E-step over all chunks with the sums the M-step needs.

    ``F3`` holds precomputed row features (or ``None`` to compute them per
    chunk); ``W3`` row weights (``None``: all one).  Returns the sums and, with
    ``keep_resp``, the weighted responsibilities ``(n_chunks, chunk, K)`` a
    second M-step pass needs (the family's :meth:`second_pass_resp`).
    """
    family = params.family
    log_weights = jnp.log(params.weights)

    def one(xc: Array, fc: Array | None, wc: Array | None) -> tuple[EPass, Array | None]:
        if fc is None:
            fc = family.row_features(xc, formulation)
        log_prob, aux = family.log_prob_and_aux(xc, prepared, fc)
        resp, row_obj = (hard_assign if hard else normalise)(log_prob + log_weights)
        if wc is not None:
            resp = resp * wc[:, None]
            row_obj = jnp.where(wc > 0, wc * row_obj, 0.0)
        sums = EPass(
            jnp.sum(row_obj),
            jnp.sum(resp, axis=0),
            family.summarize(xc, resp, prepared, fc, aux),
        )
        return sums, (family.second_pass_resp(resp, aux) if keep_resp else None)

    return chunk_sum(one, (X3, F3, W3))


def _row_log_density(
    xc: Array, fc: Array | None, family: Any, prepared: Any, log_weights: Array, formulation: str
) -> tuple[Array, Array]:
    """One chunk's log joint ``(n, K)`` and mixture log-density per row ``(n,)``."""
    if fc is None:
        fc = family.row_features(xc, formulation)
    lj = log_joint(xc, family, prepared, log_weights, fc)
    return lj, normalise(lj)[1]


def objectives(
    X3: Array,
    F3: Array | None,
    W3: Array | None,
    params: MixtureParams,
    prepared: Any,
    formulation: str = "centred",
) -> tuple[Array, Array]:
    """Total (weighted) log-likelihood and total classification log-likelihood."""
    family = params.family
    log_weights = jnp.log(params.weights)

    def one(xc: Array, fc: Array | None, wc: Array | None) -> tuple[tuple[Array, Array], None]:
        lj, log_norm = _row_log_density(xc, fc, family, prepared, log_weights, formulation)
        best = jnp.max(lj, axis=1)
        if wc is not None:
            log_norm = jnp.where(wc > 0, wc * log_norm, 0.0)
            best = jnp.where(wc > 0, wc * best, 0.0)
        return (jnp.sum(log_norm), jnp.sum(best)), None

    sums, _ = chunk_sum(one, (X3, F3, W3))
    return sums


def worst_row(
    X3: Array,
    F3: Array | None,
    W3: Array | None,
    params: MixtureParams,
    prepared: Any,
    formulation: str = "centred",
) -> Array:
    """The data row of positive weight that ``params`` explain worst (lowest
    ``log p(x_i)``), shape ``(D,)``: where a collapsed component restarts."""
    family = params.family
    log_weights = jnp.log(params.weights)

    def one(xc: Array, fc: Array | None, wc: Array | None) -> tuple[tuple[()], tuple]:
        _, row_ll = _row_log_density(xc, fc, family, prepared, log_weights, formulation)
        ranked = row_ll if wc is None else jnp.where(wc > 0, row_ll, jnp.inf)
        i = jnp.argmin(ranked)
        return (), (ranked[i], xc[i])

    _, (values, rows) = chunk_sum(one, (X3, F3, W3))
    return rows[jnp.argmin(values)]


def guarded_counts(nk: Array) -> Array:
    """Responsibility sums plus ten epsilons, as scikit-learn guards them."""
    return nk + tiny(nk.dtype)


def m_step_from_pass(
    X3: Array,
    resp3: Array | None,
    sums: EPass,
    family: Family,
    components: dict[str, Array] | None,
    reg: Any,
    fixed: tuple[str, ...] = (),
) -> tuple[Array, dict[str, Array]]:
    """``(weights, components)`` from E-pass sums.

    Where the family asks for it (``resp3`` kept), a second pass over the
    chunks sums statistics about the centre the first pass gives (the Gaussian
    covariances about the new means).  Component parameters named in ``fixed``
    keep the values in ``components`` (fixed weights are the caller's).
    """
    nk = guarded_counts(sums.nk)
    second = None
    if resp3 is not None:
        centre = family.second_pass(sums.stats, nk, components, fixed)

        def one(xc: Array, rc: Array) -> tuple[Any, None]:
            return family.summarize_second(xc, rc, centre), None

        second, _ = chunk_sum(one, (X3, resp3))
    new = family.m_step(sums.stats, nk, components, reg, fixed, second)
    if fixed:
        new = {n: (components[n] if n in fixed else v) for n, v in new.items()}
    return nk / jnp.sum(nk), new


def m_step_arrays(
    X: Array, resp: Array, family: Family, reg: Any, row_weight: Array | None = None
) -> MixtureParams:
    """Whole-data M-step: maximise ``L(q, theta)`` over theta for responsibilities ``resp``."""
    w_resp = resp if row_weight is None else resp * row_weight[:, None]
    stats = family.summarize(X, w_resp, None, None)
    sums = EPass(jnp.zeros((), X.dtype), jnp.sum(w_resp, axis=0), stats)
    keep = family.two_pass("centred")
    weights, components = m_step_from_pass(
        X[None], w_resp[None] if keep else None, sums, family, None, reg
    )
    return MixtureParams.trusted(weights, components, family)


def elbo_arrays(
    X: Array, params: MixtureParams, resp: Array, row_weight: Array | None = None
) -> ELBOResult:
    lj = weighted_log_prob(X, params)
    _, log_norm = normalise(lj)
    log_post = lj - log_norm[:, None]
    # q log q with 0 log 0 = 0; where q = 0 the log-joint term drops out too.
    safe_q = jnp.where(resp > 0, resp, 1.0)
    q_log_q = jnp.where(resp > 0, resp * jnp.log(safe_q), 0.0)
    q_log_joint = jnp.where(resp > 0, resp * lj, 0.0)
    q_log_post = jnp.where(resp > 0, resp * log_post, 0.0)
    w = jnp.ones(X.shape[0], X.dtype) if row_weight is None else row_weight

    def total(a: Array) -> Array:
        return jnp.sum(w * jnp.sum(a, axis=1))

    elbo_value = total(q_log_joint) - total(q_log_q)
    kl = total(q_log_q) - total(q_log_post)
    return ELBOResult(elbo_value, kl, jnp.sum(w * log_norm))


# ----------------------------------------------------------------------------- public API
def _component_log_prob(X: Array, params: MixtureParams) -> Array:
    family = params.family
    return family.log_prob(X, family.prepare(params.components), None)


def _e_step(X: Array, params: MixtureParams) -> EStepResult:
    lj = weighted_log_prob(X, params)
    _, log_norm = normalise(lj)
    return EStepResult(lj - log_norm[:, None], log_norm)


def _total_log_likelihood(X: Array, params: MixtureParams, row_weight: Array | None) -> Array:
    log_norm = normalise(weighted_log_prob(X, params))[1]
    return jnp.sum(log_norm if row_weight is None else row_weight * log_norm)


# Compiled once per shape; inside a caller's trace they simply inline.
_component_log_prob_jit = jax.jit(_component_log_prob)
_e_step_jit = jax.jit(_e_step)
_log_likelihood_jit = jax.jit(_total_log_likelihood)
_m_step_jit = jax.jit(m_step_arrays, static_argnums=2)
_elbo_jit = jax.jit(elbo_arrays)


def _is_traced(*values: Any) -> bool:
    return any(isinstance(v, jax.core.Tracer) for v in jax.tree_util.tree_leaves(values))


def _prepare(X: Any, params: Any, name: str = "X") -> tuple[Array, MixtureParams]:
    if not isinstance(params, MixtureParams):
        params = MixtureParams.from_dict(params)
    if _is_traced(X, params):
        X = jnp.asarray(X)
        return (X[:, None] if X.ndim == 1 else X), params
    dtype = np.result_type(params.dtype, np.float32)
    Xc = check_data(X, dtype, name=name)
    if Xc.shape[1] != params.n_features:
        raise ValueError(
            f"{name} has {Xc.shape[1]} feature(s) but the parameters have {params.n_features}; "
            "pass data with the same columns the mixture was fitted on"
        )
    params.family.check_data(Xc, name)
    return jnp.asarray(Xc), jax.tree_util.tree_map(jnp.asarray, params)


def _prepare_weight(row_weight: Any, n_samples: int, dtype: Any) -> Array | None:
    if row_weight is None or _is_traced(row_weight):
        return None if row_weight is None else jnp.asarray(row_weight)
    return jnp.asarray(check_sample_weight(row_weight, n_samples, dtype))


def _prepare_resp(resp: Any, n_samples: int, n_components: int | None, dtype: Any) -> Array:
    if _is_traced(resp):
        return jnp.asarray(resp)
    r = np.array(resp, dtype=dtype, copy=True)
    if r.ndim != 2 or r.shape[0] != n_samples or (n_components and r.shape[1] != n_components):
        want = f"({n_samples}, {n_components if n_components else 'n_components'})"
        raise ValueError(f"resp must have shape {want}, got {r.shape}")
    if not np.all(np.isfinite(r)) or np.any(r < 0):
        raise ValueError(
            "resp must be finite and non-negative (probabilities, not log-probabilities)"
        )
    sums = r.sum(axis=1)
    bad = np.abs(sums - 1.0) > (1e-6 if r.dtype == np.float64 else 1e-4)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"each row of resp must sum to 1; row {i} sums to {sums[i]:.6g}. "
            "Pass probabilities, e.g. np.exp(log_resp)"
        )
    return jnp.asarray(r)


@float64_scope
def log_prob_components(X: Any, params: MixtureParams) -> Array:
    """Component log-densities ``log p(x_i | theta_k)``.

    Parameters
    ----------
    X : array of shape (n_samples, n_features) or (n_samples,)
    params : MixtureParams or dict

    Returns
    -------
    array of shape (n_samples, n_components)
    """
    Xj, p = _prepare(X, params)
    return _component_log_prob_jit(Xj, p)


@float64_scope
def e_step(X: Any, params: MixtureParams) -> EStepResult:
    """E-step: log-responsibilities and per-sample log-likelihoods.

    Parameters
    ----------
    X : array of shape (n_samples, n_features) or (n_samples,)
    params : MixtureParams or dict

    Returns
    -------
    EStepResult
        ``(log_resp, log_prob_norm)``; ``exp(log_resp)`` rows sum to one and
        ``log_prob_norm.sum()`` is the total log-likelihood.
    """
    Xj, p = _prepare(X, params)
    return _e_step_jit(Xj, p)


@float64_scope
def m_step(
    X: Any,
    resp: Any,
    covariance_type: str | None = None,
    reg_covar: float = 1e-6,
    *,
    family: str | Family = "gaussian",
    sample_weight: Any = None,
) -> MixtureParams:
    """M-step: the parameters that maximise the ELBO for responsibilities ``resp``.

    Parameters
    ----------
    X : array of shape (n_samples, n_features) or (n_samples,)
    resp : array of shape (n_samples, n_components)
        Responsibilities (probabilities; rows sum to one), e.g.
        ``np.exp(e_step(X, params).log_resp)``.
    covariance_type : {"full", "diag", "spherical", "tied"}, optional
        Gaussian (and Student-t) covariance layout; default ``"full"``.
    reg_covar : float
        Added to the covariance diagonals (families with covariances).
    family : str or Family, default "gaussian"
    sample_weight : array of shape (n_samples,), optional
        Frequency weights of the rows.

    Returns
    -------
    MixtureParams
        Gaussian: weights ``N_k / N``, means ``sum_i r_ik x_i / N_k`` and
        covariances centred on the new means (scikit-learn's M-step); other
        families: their closed-form M-step (Student-t from ``u = 1``).
    """
    fam = get_family(family, covariance=covariance_type)
    if _is_traced(X, resp, sample_weight):
        Xj = jnp.asarray(X)
        Xj = Xj[:, None] if Xj.ndim == 1 else Xj
        w = None if sample_weight is None else jnp.asarray(sample_weight)
        return _m_step_jit(Xj, jnp.asarray(resp), fam, reg_covar, w)
    reg_covar = check_float(reg_covar, "reg_covar", minimum=0.0)
    dtype = np.dtype(np.float32) if getattr(X, "dtype", None) == np.float32 else np.float64
    Xc = check_data(X, dtype)
    fam.check_data(Xc)
    r = _prepare_resp(resp, Xc.shape[0], None, dtype)
    w = _prepare_weight(sample_weight, Xc.shape[0], dtype)
    return _m_step_jit(jnp.asarray(Xc), r, fam, jnp.asarray(reg_covar, dtype), w)


@float64_scope
def elbo(X: Any, params: MixtureParams, resp: Any, sample_weight: Any = None) -> ELBOResult:
    """Exact evidence lower bound and KL gap for any responsibilities ``q``.

    ``log p(X | theta) = L(q, theta) + KL(q || p(z | X, theta))`` holds to
    rounding for every ``q`` whose rows sum to one; after an E-step
    (``q = p(z | X, theta)``) the KL term is zero.

    Parameters
    ----------
    X : array of shape (n_samples, n_features) or (n_samples,)
    params : MixtureParams or dict
    resp : array of shape (n_samples, n_components)
        The distribution ``q``; rows sum to one.  Zeros are allowed
        (``0 log 0 = 0``), so hard assignments work.
    sample_weight : array of shape (n_samples,), optional
        Frequency weights of the rows.

    Returns
    -------
    ELBOResult
        ``(elbo, kl, log_likelihood)``, totals over samples.
    """
    Xj, p = _prepare(X, params)
    r = _prepare_resp(resp, Xj.shape[0], p.n_components, Xj.dtype)
    return _elbo_jit(Xj, p, r, _prepare_weight(sample_weight, Xj.shape[0], Xj.dtype))


@float64_scope
def log_likelihood(X: Any, params: MixtureParams, sample_weight: Any = None) -> Array:
    """Total log-likelihood ``sum_i w_i log p(x_i | theta)`` (weights default to one)."""
    Xj, p = _prepare(X, params)
    return _log_likelihood_jit(Xj, p, _prepare_weight(sample_weight, Xj.shape[0], Xj.dtype))


__all__ = [
    "ELBOResult",
    "EPass",
    "EStepResult",
    "chunk_sum",
    "e_pass",
    "e_step",
    "elbo",
    "log_likelihood",
    "log_prob_components",
    "m_step",
    "m_step_from_pass",
    "objectives",
]
