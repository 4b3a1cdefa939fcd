"""Starting parameters for EM, in pure JAX so restarts can be ``vmap``-ed.

Every method produces responsibilities and turns them into parameters with the
ordinary M-step:

``"kmeans++"``
    k-means++ seeding (D^2 sampling) picks K data points; every point goes to
    its nearest seed.
``"kmeans"``
    k-means++ seeding followed by Lloyd iterations, then nearest assignment.
``"random_from_data"``
    K distinct data points drawn uniformly; nearest assignment.
``"random"``
    Random responsibilities, uniform then normalised per row (scikit-learn's
    ``"random"``).

No start is degenerate.  After the nearest-seed assignment, a component with
fewer points than its covariance layout needs (``D + 1`` for full, 2 for
diagonal and spherical: :meth:`~mixlab.families.Family.min_points`) takes the
rows nearest its centre (other components' seed rows excepted), and a
component whose starting covariance is still singular above ``reg_covar``
(duplicated rows, fewer distinct points than it needs) or that holds less than
one point starts from the covariance of the whole data set, centred on its
seed.  The first E-step then has something sensible to work with, where a
covariance of ``reg_covar * I`` on a single point would pin the component there.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mixlab.em.collapse import collapse_flags
from mixlab.em.steps import EPass, chunk_sum, m_step_from_pass
from mixlab.families import Family
from mixlab.params import MixtureParams

Array = jax.Array

INIT_METHODS = ("kmeans++", "kmeans", "random_from_data", "random")

LLOYD_MAX_ITER = 100
LLOYD_TOL = 1e-4  # scikit-learn's KMeans tol, relative to the mean feature variance


def _flat(X3: Array, mask: Array | None) -> tuple[Array, Array]:
    Xf = X3.reshape(-1, X3.shape[-1])
    w = jnp.ones(Xf.shape[0], X3.dtype) if mask is None else mask.reshape(-1)
    return Xf, w


def _sq_dist_to(Xf: Array, center: Array) -> Array:
    return jnp.sum(jnp.square(Xf - center), axis=1)


def kmeans_plusplus(key: Array, Xf: Array, w: Array, n_components: int) -> tuple[Array, Array]:
    """k-means++ seeding: returns ``(centers (K, D), row indices (K,))``.

    Rows with zero weight (padding) are never chosen.  When every remaining
    point coincides with a chosen center (fewer distinct points than K) the
    next center is drawn uniformly.
    """
    keys = jax.random.split(key, n_components)
    log_w = jnp.log(w)
    first = jax.random.categorical(keys[0], log_w)
    centers = jnp.zeros((n_components, Xf.shape[1]), Xf.dtype).at[0].set(Xf[first])
    index = jnp.zeros(n_components, first.dtype).at[0].set(first)
    d2 = _sq_dist_to(Xf, Xf[first])

    def body(k: Array, carry: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        centers, index, d2 = carry
        p = w * d2
        logits = jnp.where(jnp.sum(p) > 0, jnp.log(p), log_w)
        i = jax.random.categorical(keys[k], logits)
        return (
            centers.at[k].set(Xf[i]),
            index.at[k].set(i),
            jnp.minimum(d2, _sq_dist_to(Xf, Xf[i])),
        )

    centers, index, _ = jax.lax.fori_loop(1, n_components, body, (centers, index, d2))
    return centers, index


def _nearest(xc: Array, centers: Array) -> tuple[Array, Array]:
    """Nearest-center labels and squared distances for one chunk."""
    d2 = (
        jnp.sum(jnp.square(xc), axis=1, keepdims=True)
        - 2.0 * xc @ centers.T
        + jnp.sum(jnp.square(centers), axis=1)[None, :]
    )
    return jnp.argmin(d2, axis=1), jnp.maximum(jnp.min(d2, axis=1), 0.0)


def _assign_resp(X3: Array, mask: Array | None, centers: Array) -> Array:
    def one(xc: Array, mc: Array | None) -> tuple[tuple[()], Array]:
        labels, _ = _nearest(xc, centers)
        resp = jax.nn.one_hot(labels, centers.shape[0], dtype=xc.dtype)
        return (), resp if mc is None else resp * mc[:, None]

    _, resp3 = chunk_sum(one, (X3, mask))
    return resp3


def give_thin_components_points(
    Xf: Array,
    w: Array,
    labels: Array,
    centers: Array,
    seeds: Array | None,
    min_points: int,
) -> Array:
    """Labels where every component holds at least ``min_points`` rows, where the data allow.

    Component by component, one with fewer (weighted) rows than ``min_points``
    takes the ``min_points`` rows nearest its centre.  Rows of zero weight, the
    seed rows of other components (``seeds``: the row index of each
    component's seed) and rows already taken by another thin component are
    never taken, so every seeded component keeps its own row.
    """
    n_rows = Xf.shape[0]
    n_components = centers.shape[0]
    take = min(min_points, n_rows)
    protected = w <= 0
    owner = jnp.full(n_rows, -1, labels.dtype)
    if seeds is not None:
        owner = owner.at[seeds].set(jnp.arange(n_components, dtype=labels.dtype))

    def one(i: Array, carry: tuple[Array, Array]) -> tuple[Array, Array]:
        labels, claimed = carry
        k = i % n_components
        count = jnp.sum(jnp.where(labels == k, w, 0.0))
        d2 = _sq_dist_to(Xf, centers[k])
        # rows taken by an earlier thin component are not taken back
        blocked = protected | ((owner >= 0) & (owner != k)) | (claimed & (labels != k))
        _, nearest = jax.lax.top_k(-jnp.where(blocked, jnp.inf, d2), take)
        thin = count < min_points
        return (
            jnp.where(thin, labels.at[nearest].set(k), labels),
            jnp.where(thin, claimed.at[nearest].set(True), claimed),
        )

    # Two rounds: a component that lost rows to a thin one in the first gets them back
    # from its own neighbourhood in the second.
    claimed = jnp.zeros(n_rows, bool)
    return jax.lax.fori_loop(0, 2 * n_components, one, (labels, claimed))[0]


def lloyd(X3: Array, mask: Array | None, centers: Array) -> Array:
    """Lloyd's k-means iterations from ``centers``; empty clusters keep their center."""
    Xf, w = _flat(X3, mask)
    mean = (w @ Xf) / jnp.sum(w)
    tol = LLOYD_TOL * jnp.mean((w @ jnp.square(Xf - mean)) / jnp.sum(w))

    def sums(c: Array) -> tuple[Array, Array]:
        def one(xc: Array, mc: Array | None) -> tuple[tuple[Array, Array], None]:
            labels, _ = _nearest(xc, c)
            onehot = jax.nn.one_hot(labels, c.shape[0], dtype=xc.dtype)
            if mc is not None:
                onehot = onehot * mc[:, None]
            return (jnp.sum(onehot, axis=0), onehot.T @ xc), None

        return chunk_sum(one, (X3, mask))[0]

    def body(state: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        c, it, _ = state
        count, total = sums(c)
        new = jnp.where(count[:, None] > 0, total / jnp.maximum(count, 1.0)[:, None], c)
        return new, it + 1, jnp.sum(jnp.square(new - c))

    def cond(state: tuple[Array, Array, Array]) -> Array:
        _, it, shift = state
        return (it < LLOYD_MAX_ITER) & (shift > tol)

    init = (centers, jnp.zeros((), jnp.int32), jnp.asarray(jnp.inf, X3.dtype))
    return jax.lax.while_loop(cond, body, init)[0]


def pooled_params(
    X3: Array, mask: Array | None, n_components: int, family: Family, reg_covar: Any
) -> MixtureParams:
    """Every component equal to the whole data set: its mean and covariance."""
    uniform = jnp.full((*X3.shape[:2], n_components), 1.0 / n_components, X3.dtype)
    if mask is not None:
        uniform = uniform * mask[..., None]
    stats = EPass(
        jnp.zeros((), X3.dtype),
        jnp.sum(uniform, axis=(0, 1)),
        jnp.einsum("ncK,ncd->Kd", uniform, X3),
    )
    return m_step_from_pass(X3, uniform, stats, family, reg_covar)


def _params_from_resp(
    X3: Array,
    mask: Array | None,
    resp3: Array,
    family: Family,
    reg_covar: Any,
    data_var: Array,
    centers: Array | None,
) -> MixtureParams:
    n_components = resp3.shape[-1]
    nk = jnp.sum(resp3, axis=(0, 1))
    stats = EPass(jnp.zeros((), X3.dtype), nk, jnp.einsum("ncK,ncd->Kd", resp3, X3))
    params = m_step_from_pass(X3, resp3, stats, family, reg_covar)

    # Components with less than one point, or a covariance singular above reg_covar:
    # whole-data covariance, centred on the seed (or the data mean), so the first
    # E-step has something sensible.
    pooled = pooled_params(X3, mask, n_components, family, reg_covar)
    weight_gone, cov_gone = collapse_flags(params, nk, reg_covar, data_var, n_components)
    thin = weight_gone | cov_gone | ~family.component_ok(params.prec_chol, n_components)
    means = jnp.where(thin[:, None], pooled.means if centers is None else centers, params.means)
    covariances = params.covariances
    if family.per_component_covariance:
        expand = thin.reshape((-1,) + (1,) * (covariances.ndim - 1))
        covariances = jnp.where(expand, pooled.covariances, covariances)
    weights = jnp.maximum(nk, 1.0)
    weights = weights / jnp.sum(weights)
    return MixtureParams.trusted(
        weights,
        means,
        covariances,
        family.precision_cholesky(covariances),
        family.covariance_type,
        family.family,
    )


def initial_params(
    key: Array,
    X3: Array,
    mask: Array | None,
    n_components: int,
    family: Family,
    method: str,
    reg_covar: Any,
    data_var: Array,
) -> MixtureParams:
    """Starting parameters by ``method`` (one of :data:`INIT_METHODS`).

    ``data_var`` is the data's variance per feature (for the degeneracy test).
    """
    Xf, w = _flat(X3, mask)
    centers: Array | None = None
    if method == "random":
        resp3 = jax.random.uniform(key, (*X3.shape[:2], n_components), X3.dtype)
        resp3 = resp3 / jnp.sum(resp3, axis=-1, keepdims=True)
        if mask is not None:
            resp3 = resp3 * mask[..., None]
    elif method in ("kmeans++", "random_from_data", "kmeans"):
        if method == "random_from_data":
            index = jax.random.choice(
                key, Xf.shape[0], (n_components,), replace=False, p=w / jnp.sum(w)
            )
            centers = Xf[index]
        else:
            centers, index = kmeans_plusplus(key, Xf, w, n_components)
        if method == "kmeans":
            centers = lloyd(X3, mask, centers)
        labels = jnp.argmax(_assign_resp(X3, mask, centers), axis=-1).reshape(-1)
        seeds = None if method == "kmeans" else index
        if seeds is not None:  # each seed keeps its own row, so no component starts empty
            labels = labels.at[seeds].set(jnp.arange(n_components))
        labels = give_thin_components_points(
            Xf, w, labels, centers, seeds, family.min_points(X3.shape[-1])
        )
        resp3 = jax.nn.one_hot(labels, n_components, dtype=X3.dtype).reshape(
            (*X3.shape[:2], n_components)
        )
        if mask is not None:
            resp3 = resp3 * mask[..., None]
    else:
        raise ValueError(f"init must be one of {INIT_METHODS}, got {method!r}")
    return _params_from_resp(X3, mask, resp3, family, reg_covar, data_var, centers)
