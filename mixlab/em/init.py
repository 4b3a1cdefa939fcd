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
``"trimmed"``
    Trimmed k-means: the rows of the densest ``1 - TRIM_FRACTION`` of the data
    (by the distance to their ``DENSITY_NEIGHBOUR``-th nearest row of a
    weighted subsample of ``DENSITY_REFERENCE_ROWS`` rows) are seeded by
    k-means++ and refined by Lloyd iterations; the starting parameters are
    fitted to those rows alone.  Gross outliers, which k-means++ picks first
    because they are far from everything, neither seed a component nor
    inflate a starting covariance.  The default of heavy-tailed families
    (Student-t), whose point is data with outliers.
``"auto"``
    The family's :attr:`~mixlab.families.Family.default_init`: ``"trimmed"``
    for Student-t, ``"kmeans++"`` otherwise.

Distances are measured on the data scaled to unit variance per feature for
location families (Gaussian, Student-t), so a start does not depend on the
data's units (``EM(standardize=False)`` measures them in the data's units, as
scikit-learn does).

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

INIT_METHODS = ("auto", "kmeans++", "kmeans", "random_from_data", "random", "trimmed")

#: ``"trimmed"``: the share of the (weighted) rows left out of the start as possible outliers.
TRIM_FRACTION = 0.25
#: ``"trimmed"``: the density of a row is the distance to its ``DENSITY_NEIGHBOUR``-th
#: nearest row among ``DENSITY_REFERENCE_ROWS`` rows drawn by weight.
DENSITY_REFERENCE_ROWS = 1024
DENSITY_NEIGHBOUR = 10
#: Bisection steps for the trimming threshold (the bracket shrinks by 2^-40).
QUANTILE_BISECTION_STEPS = 40


def resolve_init(method: str, family: Family) -> str:
    """The starting method that ``method`` names for ``family`` (``"auto"`` resolved)."""
    return family.default_init if method == "auto" else method


def dense_core(key: Array, X3: Array, W3: Array | None, trim: float = TRIM_FRACTION) -> Array:
    """Row weights (shape of ``X3[..., 0]``) with the sparsest ``trim`` share set to 0.

    A row's sparseness is the distance to its ``DENSITY_NEIGHBOUR``-th nearest row in
    a subsample drawn by weight: outliers are far from every cluster, so far from
    their neighbours too, while a cluster's rows (even of a small cluster, with at
    least ``DENSITY_NEIGHBOUR / DENSITY_REFERENCE_ROWS`` of the weight) have close
    neighbours.
    """
    Xf, w = _flat(X3, W3)
    n_ref = min(DENSITY_REFERENCE_ROWS, Xf.shape[0])
    neighbour = min(DENSITY_NEIGHBOUR, n_ref)
    # One 1-D draw per reference row, as k-means++ draws: the draws then do not depend on
    # the padding after the rows (a 2-D draw's random bits depend on the row count).
    log_w = jnp.log(w)
    index = jax.vmap(lambda k: jax.random.categorical(k, log_w))(jax.random.split(key, n_ref))
    refs = Xf[index]

    def one(xc: Array) -> tuple[tuple[()], Array]:
        _, d2 = _distances(xc, refs)
        return (), -jax.lax.top_k(-d2, neighbour)[0][:, -1]

    _, score = chunk_sum(one, (X3,))
    # The weighted (1 - trim) quantile of the scores by bisection: sums only, no sort, so
    # rows spread over devices trim as on one (ranked in float32, so data that differ in
    # their last bits, centred by a mean summed in another order, trim alike).
    score = jnp.where(w > 0, score.reshape(-1), 0.0).astype(jnp.float32)
    target = (1.0 - trim) * jnp.sum(w)

    def halve(_: int, bracket: tuple[Array, Array]) -> tuple[Array, Array]:
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        enough = jnp.sum(jnp.where(score <= mid, w, 0.0)) >= target
        return jnp.where(enough, lo, mid), jnp.where(enough, mid, hi)

    bracket = (jnp.zeros((), jnp.float32), jnp.max(score))
    _, threshold = jax.lax.fori_loop(0, QUANTILE_BISECTION_STEPS, halve, bracket)
    keep = score <= threshold
    return jnp.where(keep, w, 0.0).reshape(X3.shape[:2])


LLOYD_MAX_ITER = 100
LLOYD_TOL = 1e-4  # scikit-learn's KMeans tol, relative to the mean feature variance


def _flat(X3: Array, W3: Array | None) -> tuple[Array, Array]:
    Xf = X3.reshape(-1, X3.shape[-1])
    w = jnp.ones(Xf.shape[0], X3.dtype) if W3 is None else W3.reshape(-1)
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


def _distances(xc: Array, centers: Array) -> tuple[Array, Array]:
    """Squared distances of a chunk's rows to ``centers``: ``(raw, clipped at 0)``."""
    d2 = (
        jnp.sum(jnp.square(xc), axis=1, keepdims=True)
        - 2.0 * xc @ centers.T
        + jnp.sum(jnp.square(centers), axis=1)[None, :]
    )
    return d2, jnp.maximum(d2, 0.0)


def _nearest(xc: Array, centers: Array) -> tuple[Array, Array]:
    """Nearest-center labels and squared distances for one chunk."""
    d2, clipped = _distances(xc, centers)
    return jnp.argmin(d2, axis=1), jnp.min(clipped, axis=1)


def _assign_resp(X3: Array, W3: Array | None, centers: Array) -> Array:
    def one(xc: Array, wc: Array | None) -> tuple[tuple[()], Array]:
        labels, _ = _nearest(xc, centers)
        resp = jax.nn.one_hot(labels, centers.shape[0], dtype=xc.dtype)
        return (), resp if wc is None else resp * wc[:, None]

    _, resp3 = chunk_sum(one, (X3, W3))
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


def lloyd(X3: Array, W3: Array | None, centers: Array) -> Array:
    """Lloyd's k-means iterations from ``centers`` (row weights ``W3``); empty clusters keep
    their center."""
    Xf, w = _flat(X3, W3)
    mean = (w @ Xf) / jnp.sum(w)
    tol = LLOYD_TOL * jnp.mean((w @ jnp.square(Xf - mean)) / jnp.sum(w))

    def sums(c: Array) -> tuple[Array, Array]:
        def one(xc: Array, wc: Array | None) -> tuple[tuple[Array, Array], None]:
            labels, _ = _nearest(xc, c)
            onehot = jax.nn.one_hot(labels, c.shape[0], dtype=xc.dtype)
            if wc is not None:
                onehot = onehot * wc[:, None]
            return (jnp.sum(onehot, axis=0), onehot.T @ xc), None

        return chunk_sum(one, (X3, W3))[0]

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


def _fit_from_resp(
    X3: Array, resp3: Array, family: Family, reg: Any
) -> tuple[Array, dict[str, Array]]:
    """Weights and components from weighted responsibilities (no current parameters)."""
    stats, _ = chunk_sum(lambda xc, rc: (family.summarize(xc, rc, None, None), None), (X3, resp3))
    sums = EPass(jnp.zeros((), X3.dtype), jnp.sum(resp3, axis=(0, 1)), stats)
    keep = resp3 if family.two_pass("centred") else None
    return m_step_from_pass(X3, keep, sums, family, None, reg)


def pooled_params(
    X3: Array, W3: Array | None, n_components: int, family: Family, reg: Any
) -> MixtureParams:
    """Every component equal to the whole data set's fit (one component, K times).

    The one-component fit costs 1/K of a K-component M-step; it is broadcast.
    """
    ones = jnp.ones((*X3.shape[:2], 1), X3.dtype)
    if W3 is not None:
        ones = ones * W3[..., None]
    _, single = _fit_from_resp(X3, ones, family, reg)
    components = {}
    for spec in family.param_specs():
        value = single[spec.name]
        if spec.per_component:
            value = jnp.broadcast_to(value, (n_components, *value.shape[1:]))
        components[spec.name] = value
    weights = jnp.full(n_components, 1.0 / n_components, X3.dtype)
    return MixtureParams.trusted(weights, components, family)


def _params_from_resp(
    X3: Array,
    W3: Array | None,
    resp3: Array,
    family: Family,
    reg: Any,
    data_var: Array,
    centers: Array | None,
) -> MixtureParams:
    n_components = resp3.shape[-1]
    nk = jnp.sum(resp3, axis=(0, 1))
    _, components = _fit_from_resp(X3, resp3, family, reg)

    # Components with less than one point, or degenerate (a covariance singular above
    # reg_covar): the whole data set's fit, placed at the seed (or left at the data's
    # centre), so the first E-step has something sensible.
    pooled = pooled_params(X3, W3, n_components, family, reg)
    weight_gone, degenerate = collapse_flags(family, components, nk, reg, data_var)
    prepared = family.prepare(components)
    thin = weight_gone | degenerate | ~family.component_ok(components, prepared)
    points = pooled_locations(pooled) if centers is None else centers
    components = family.restart(components, thin, points, pooled.components)
    weights = jnp.maximum(nk, 1.0)
    return MixtureParams.trusted(weights / jnp.sum(weights), components, family)


def pooled_locations(pooled: MixtureParams) -> Array:
    """Each pooled component's mean (where a thin component is placed without a seed)."""
    return pooled.family.moments(pooled.components)[0]


def initial_params(
    key: Array,
    X3: Array,
    W3: Array | None,
    n_components: int,
    family: Family,
    method: str,
    reg: Any,
    data_var: Array,
    standardize: bool = True,
) -> MixtureParams:
    """Starting parameters by ``method`` (one of :data:`INIT_METHODS`).

    ``data_var`` is the data's variance per feature (for the degeneracy test,
    and the scale of the distances when ``standardize`` and the family is a
    location family).
    """
    method = resolve_init(method, family)
    if method not in INIT_METHODS:
        raise ValueError(f"init must be one of {INIT_METHODS}, got {method!r}")
    centers: Array | None = None
    if method == "random":
        resp3 = jax.random.uniform(key, (*X3.shape[:2], n_components), X3.dtype)
        resp3 = resp3 / jnp.sum(resp3, axis=-1, keepdims=True)
        if W3 is not None:
            resp3 = resp3 * W3[..., None]
        return _params_from_resp(X3, W3, resp3, family, reg, data_var, centers)
    # Distances on standardised data: the start does not depend on the data's units.
    scale = None
    if standardize and family.location:
        scale = jax.lax.rsqrt(jnp.where(data_var > 0, data_var, 1.0)).astype(X3.dtype)
    Xs3 = X3 if scale is None else X3 * scale
    W_seed = W3
    if method == "trimmed":
        core_key, key = jax.random.split(key)
        W_seed = dense_core(core_key, Xs3, W3)
    Xf, w = _flat(Xs3, W_seed)
    if method == "random_from_data":
        index = jax.random.choice(
            key, Xf.shape[0], (n_components,), replace=False, p=w / jnp.sum(w)
        )
        centers = Xf[index]
    else:
        centers, index = kmeans_plusplus(key, Xf, w, n_components)
    if method in ("kmeans", "trimmed"):
        centers = lloyd(Xs3, W_seed, centers)
    labels = jnp.argmax(_assign_resp(Xs3, W_seed, centers), axis=-1).reshape(-1)
    seeds = None if method in ("kmeans", "trimmed") else index
    if seeds is not None:  # each seed keeps its own row, so no component starts empty
        labels = labels.at[seeds].set(jnp.arange(n_components))
    labels = give_thin_components_points(
        Xf, w, labels, centers, seeds, family.min_points(X3.shape[-1])
    )
    resp3 = jax.nn.one_hot(labels, n_components, dtype=X3.dtype).reshape(
        (*X3.shape[:2], n_components)
    )
    if W_seed is not None:
        resp3 = resp3 * W_seed[..., None]
    if scale is not None:
        centers = centers / scale
    return _params_from_resp(X3, W3, resp3, family, reg, data_var, centers)
