"""When is a component collapsed?  One test shared by initialisation and the EM loop.

A component has collapsed when it holds less than one data point's worth of
responsibility, or when its covariance *above* ``reg_covar`` is singular
relative to the data's own variance (it sits on too few distinct points, so
only the regulariser keeps it positive definite).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mixlab.params import MixtureParams

Array = jax.Array

#: A component holding less than this many points' worth of responsibility has collapsed.
COLLAPSE_MIN_POINTS = 1.0
#: A covariance has collapsed when its smallest eigenvalue above ``reg_covar``, in units
#: of the data's own variance per feature, is below this (by dtype).
COLLAPSE_REL_VARIANCE = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-8}


def collapse_flags(
    params: MixtureParams, nk: Array, reg_covar: Array, data_var: Array, n_components: int
) -> tuple[Array, Array]:
    """Per component: ``(weight collapsed, covariance collapsed)``, each shape ``(K,)``.

    The covariance test is relative to the data: features that are constant in
    the data are left out, so a constant column is not a collapse.  A
    covariance with non-finite entries is not flagged here (the caller's
    finiteness check reports it).
    """
    family = params.family_impl
    n_features = params.means.shape[-1]
    eye = jnp.eye(n_features, dtype=data_var.dtype)
    full = family.to_full(params.covariances, n_components, n_features) - reg_covar * eye
    constant = data_var <= 0
    scale = jax.lax.rsqrt(jnp.where(constant, 1.0, data_var))
    normalised = full * scale[:, None] * scale[None, :]
    normalised = jnp.where(constant[:, None] | constant[None, :], eye, normalised)
    finite = jnp.all(jnp.isfinite(normalised), axis=(-2, -1))
    normalised = jnp.where(finite[:, None, None], normalised, eye)
    smallest = jnp.linalg.eigvalsh(normalised)[..., 0]
    threshold = COLLAPSE_REL_VARIANCE[np.dtype(data_var.dtype)]
    return nk < COLLAPSE_MIN_POINTS, finite & (smallest <= threshold)
