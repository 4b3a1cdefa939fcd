"""Label alignment: undo label switching in posterior draws.

A mixture's likelihood is invariant to permuting its components, so posterior
draws (across chains, and within a chain when it switches modes) carry
arbitrary labels.  Each draw is permuted to best match a reference (the EM
solution where there is one) by the assignment that minimises a distance
(Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``).

The distance between component ``k`` of a draw and component ``j`` of the
reference is the squared difference of their means in units of the data's
standard deviation plus the squared difference of their log standard
deviations, so both location and spread tell components apart.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.optimize import linear_sum_assignment

from mixlab.families import Family, get_family


def _log_sd(covariances: np.ndarray, family: Family, n_components: int, n_features: int):
    full = np.asarray(
        family.to_full(np.asarray(covariances), n_components, n_features), dtype=np.float64
    )
    return 0.5 * np.log(np.maximum(np.diagonal(full, axis1=-2, axis2=-1), 1e-300))


def label_cost(
    means: np.ndarray,
    log_sd: np.ndarray,
    ref_means: np.ndarray,
    ref_log_sd: np.ndarray,
    data_scale: np.ndarray,
) -> np.ndarray:
    """Cost matrix ``(K, K)``: row ``k`` of a draw against column ``j`` of the reference."""
    dm = (means[:, None, :] - ref_means[None, :, :]) / data_scale
    ds = log_sd[:, None, :] - ref_log_sd[None, :, :]
    return np.sum(dm**2, axis=-1) + np.sum(ds**2, axis=-1)


def permutations_to_reference(
    draws: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    covariance_type: str,
    data_scale: np.ndarray | None = None,
) -> np.ndarray:
    """For each draw, ``perm`` such that ``draw[perm]`` lines up with the reference.

    Parameters
    ----------
    draws : dict with "means" ``(S, K, D)`` and "covariances" ``(S, K, ...)``
        Flattened draws (any leading sample axis ``S``).
    reference : dict with "means" ``(K, D)`` and "covariances"
    covariance_type : str
    data_scale : array of shape (D,), optional
        Units for mean differences (default: the spread of the reference means,
        or 1).

    Returns
    -------
    int array of shape (S, K)
    """
    family = get_family(covariance_type)
    means = np.asarray(draws["means"], dtype=np.float64)
    n_draws, n_components, n_features = means.shape
    ref_means = np.asarray(reference["means"], dtype=np.float64)
    if data_scale is None:
        data_scale = np.ones(n_features)
    data_scale = np.where(np.asarray(data_scale) > 0, data_scale, 1.0)
    ref_log_sd = _log_sd(reference["covariances"], family, n_components, n_features)
    covs = np.asarray(draws["covariances"])
    perms = np.empty((n_draws, n_components), dtype=np.int64)
    for s in range(n_draws):
        log_sd = _log_sd(covs[s], family, n_components, n_features)
        cost = label_cost(means[s], log_sd, ref_means, ref_log_sd, data_scale)
        rows, cols = linear_sum_assignment(cost)
        perm = np.empty(n_components, dtype=np.int64)
        perm[cols] = rows  # reference slot j takes draw component rows[j]
        perms[s] = perm
    return perms


def apply_permutations(
    draws: Mapping[str, np.ndarray], perms: np.ndarray, covariance_type: str
) -> dict[str, np.ndarray]:
    """Permute the component axis of every per-component array in ``draws``.

    ``draws`` arrays have a leading sample axis ``S`` then the component axis;
    shared covariances (``tied``) are left as they are.
    """
    family = get_family(covariance_type)
    out = {}
    idx = np.arange(perms.shape[0])[:, None]
    for name, value in draws.items():
        value = np.asarray(value)
        if name == "covariances" and not family.per_component_covariance:
            out[name] = value.copy()
        else:
            out[name] = value[idx, perms]
    return out


def align_to_reference(
    draws: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    covariance_type: str,
    data_scale: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Relabel draws with leading axes ``(chain, draw)`` to match ``reference``.

    Returns the aligned draws (same shapes) and the permutations ``(chain, draw, K)``.
    """
    lead = np.asarray(draws["weights"]).shape[:2]
    flat = {k: np.asarray(v).reshape((-1, *np.asarray(v).shape[2:])) for k, v in draws.items()}
    perms = permutations_to_reference(flat, reference, covariance_type, data_scale)
    aligned = apply_permutations(flat, perms, covariance_type)
    return (
        {k: v.reshape((*lead, *v.shape[1:])) for k, v in aligned.items()},
        perms.reshape((*lead, -1)),
    )
