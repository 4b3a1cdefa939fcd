"""Label alignment: undo label switching in posterior draws, for any family.

A mixture's likelihood is invariant to permuting its components, so posterior
draws (across chains, and within a chain when it switches modes) carry
arbitrary labels.  Each draw is permuted to best match a reference (the EM
solution where there is one) by the assignment that minimises a distance
(Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``).

The distance between component ``k`` of a draw and component ``j`` of the
reference is the squared Euclidean distance between their feature vectors,
which the family defines (:meth:`mixlab.families.Family.alignment_features`):
by default the means in units of the data's standard deviation and the log
standard deviations, so both location and spread tell components apart.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mixlab.families import Family
from mixlab.params import MixtureParams


@functools.partial(jax.jit, static_argnames=("family",))
def _features(components: dict[str, jax.Array], scale: jax.Array, *, family: Family):
    return jax.vmap(lambda c: family.alignment_features(c, scale))(components)


def alignment_features(
    family: Family, components: Mapping[str, Any], data_scale: np.ndarray
) -> np.ndarray:
    """Feature vectors ``(S, K, F)`` of stacked components (leading draw axis ``S``)."""
    with jax.enable_x64(True):
        out = _features(
            {n: jnp.asarray(np.asarray(components[n], np.float64)) for n in family.param_names()},
            jnp.asarray(np.asarray(data_scale, np.float64)),
            family=family,
        )
        return np.asarray(out)


def label_cost(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cost matrices ``(..., K, K)``: row ``k`` of a draw against column ``j`` of the reference."""
    return np.sum(np.square(features[..., :, None, :] - reference[..., None, :, :]), axis=-1)


def permutations_to_reference(
    draws: Mapping[str, np.ndarray],
    reference: MixtureParams,
    data_scale: np.ndarray | None = None,
) -> np.ndarray:
    """For each draw, ``perm`` such that ``draw[perm]`` lines up with the reference.

    Parameters
    ----------
    draws : dict with the family's parameters
        Flattened draws, each with a leading sample axis ``S``.
    reference : MixtureParams
    data_scale : array of shape (D,), optional
        Units for differences of location (default 1).

    Returns
    -------
    int array of shape (S, K)
    """
    family = reference.family
    n_features = reference.n_features
    scale = np.ones(n_features) if data_scale is None else np.asarray(data_scale, np.float64)
    scale = np.where(scale > 0, scale, 1.0)
    ref = alignment_features(
        family, {k: np.asarray(v)[None] for k, v in reference.components.items()}, scale
    )[0]
    feats = alignment_features(family, draws, scale)
    costs = label_cost(feats, ref)
    n_draws, n_components = costs.shape[:2]
    from scipy.optimize import linear_sum_assignment  # loaded on first use

    perms = np.empty((n_draws, n_components), dtype=np.int64)
    for s in range(n_draws):
        rows, cols = linear_sum_assignment(costs[s])
        perm = np.empty(n_components, dtype=np.int64)
        perm[cols] = rows  # reference slot j takes draw component rows[j]
        perms[s] = perm
    return perms


def apply_permutations(
    draws: Mapping[str, np.ndarray], perms: np.ndarray, family: Family
) -> dict[str, np.ndarray]:
    """Permute the component axis of every per-component array in ``draws``.

    ``draws`` arrays have a leading sample axis ``S`` then the component axis;
    parameters shared by all components (a tied covariance) are left as they are.
    """
    shared = {s.name for s in family.param_specs() if not s.per_component}
    out = {}
    idx = np.arange(perms.shape[0])[:, None]
    for name, value in draws.items():
        value = np.asarray(value)
        out[name] = value.copy() if name in shared else value[idx, perms]
    return out


def align_to_reference(
    draws: Mapping[str, np.ndarray],
    reference: MixtureParams,
    data_scale: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Relabel draws with leading axes ``(chain, draw)`` to match ``reference``.

    Returns the aligned draws (same shapes) and the permutations ``(chain, draw, K)``.
    """
    lead = np.asarray(draws["weights"]).shape[:2]
    flat = {k: np.asarray(v).reshape((-1, *np.asarray(v).shape[2:])) for k, v in draws.items()}
    perms = permutations_to_reference(flat, reference, data_scale)
    aligned = apply_permutations(flat, perms, reference.family)
    return (
        {k: v.reshape((*lead, *v.shape[1:])) for k, v in aligned.items()},
        perms.reshape((*lead, -1)),
    )


#: ``fit(order=...)``: how components are numbered in a result.
ORDERS = ("location", "weights")


def canonical_permutation(params: MixtureParams, order: str | None) -> np.ndarray:
    """The component order ``perm`` (new component ``j`` is old ``perm[j]``) for ``order``.

    ``"location"``: by the family's location parameter (``means``, ``rates``,
    ``probs``: its first parameter), first feature first, later features
    breaking ties, ascending.  ``"weights"``: by weight, largest first, ties by
    location.  ``None``: as the method left them.
    """
    K = params.n_components
    if order is None:
        return np.arange(K)
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS} or None, got {order!r}")
    spec = params.family.param_specs()[0]
    keys: list[np.ndarray] = []
    if spec.per_component:
        location = np.asarray(params.components[spec.name], dtype=np.float64).reshape(K, -1)
        keys = [location[:, j] for j in range(location.shape[1])]
    if order == "weights":
        keys = [-np.asarray(params.weights, dtype=np.float64), *keys]
    if not keys:  # no per-component location: by weight
        keys = [-np.asarray(params.weights, dtype=np.float64)]
    # np.lexsort sorts by its last key first; np.arange makes equal keys keep their order.
    return np.lexsort([np.arange(K), *keys[::-1]])


def permute_components(
    values: Mapping[str, Any], perm: np.ndarray, family: Family, axis: int
) -> dict[str, np.ndarray]:
    """``values`` (``"weights"`` and the family's parameters) with their component axis
    (``axis``, counted from the left) taken in the order ``perm``; parameters shared by
    all components (a tied covariance) are left as they are."""
    shared = {s.name for s in family.param_specs() if not s.per_component}
    return {
        name: np.array(value) if name in shared else np.take(np.asarray(value), perm, axis=axis)
        for name, value in values.items()
    }
