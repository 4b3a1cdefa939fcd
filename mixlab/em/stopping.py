"""When EM stops: one rule shared by every loop (in memory, sharded, streamed).

Two criteria, chosen by ``EM(criterion=...)``:

``"gap"`` (the default)
    Stop when the log-likelihood still to be gained, estimated by Aitken's
    acceleration of the last three log-likelihoods, is below ``tol`` (a
    *total* over rows, not a mean).  EM converges linearly near a maximum:
    the increments shrink by a rate ``a`` (the largest eigenvalue of EM's
    Jacobian, the fraction of information that is missing), so with
    ``d1 = ll_t - ll_{t-1}`` and ``d0 = ll_{t-1} - ll_{t-2}``, ``a = d1 / d0``
    and the gain still to come is ``d1 * (a + a**2 + ...) = d1 a / (1 - a)``
    (Aitken's acceleration as a stopping rule: Böhning et al. 1994; McNicholas
    et al. 2010).
    Why a total: near the maximum ``ll_max - ll ~ 0.5 * delta' I delta`` for
    a parameter error ``delta`` and the observed information ``I``, and the
    largest ``|delta_j| / SE_j`` on that level set is ``sqrt(2 * gap)``
    (Cauchy-Schwarz with ``SE_j**2 = (I^-1)_jj``).  So ``tol=1e-4`` leaves
    every parameter within about ``sqrt(2e-4) = 0.014`` standard errors of the
    maximum, whatever the number of rows: the error EM leaves is then small
    next to the statistical one, which is what EM's estimate is reported with.
``"change"``
    scikit-learn's rule: stop when the change of the mean per-row
    log-likelihood is below ``tol`` (so iteration counts agree with it).

Both need ``tol > 0`` to stop early; ``tol = 0`` runs exactly ``max_iter``
iterations.  With ``"gap"`` an increment at the rounding level of the
log-likelihood itself (``ROUNDING * eps * |ll|``) also stops the loop:
nothing finer can be resolved (this is what ends float32 fits of many rows).
An iteration that restarted a collapsed component never stops the loop, and
with ``"gap"`` neither does the next one (its ``d0`` spans the restart).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

#: ``EM(criterion=...)``: the criteria, in the order of their runtime code.
CRITERIA = ("gap", "change")

#: Default ``tol`` of each criterion.
DEFAULT_TOL = {"gap": 1e-4, "change": 1e-3}

#: With ``"gap"``: an increment below ``ROUNDING * eps * |ll|`` is rounding noise.
ROUNDING = 8.0


class StopRule(NamedTuple):
    """The stopping rule as runtime arrays of the compiled loop (one program serves both
    criteria and every ``tol``)."""

    tol: Array  # scalar of the computation dtype
    gap: Array  # bool scalar: True for "gap", False for "change"


def stop_rule(tol: float, criterion: str, dtype: np.dtype) -> StopRule:
    """The runtime form of ``(tol, criterion)`` (NumPy scalars: no small programs)."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    return StopRule(np.asarray(tol, dtype), np.asarray(criterion == "gap"))


def remaining_gain(ll_before2: Any, ll_before: Any, ll: Any, eps: float | None = None) -> Any:
    """Aitken's estimate of the log-likelihood still to gain after ``ll`` (>= 0).

    With ``d1 = ll - ll_before``, ``d0 = ll_before - ll_before2`` and the rate
    ``a = d1 / d0``, the increments to come are ``d1 a + d1 a**2 + ...``, so the
    gain is ``|d1| |a| / (1 - a)`` (``a < 1``).  ``inf`` where the increments do
    not shrink (``a >= 1``) or an earlier value is missing (not finite); ``0``
    where the last increment is at the rounding level of ``ll`` (``ROUNDING *
    eps * |ll|``, ``eps`` of the computation dtype: by default ``ll``'s), where
    nothing more can be resolved.  Works on NumPy and JAX arrays alike.
    """
    xp = jnp if isinstance(ll, jax.Array) else np
    if eps is None:
        eps = xp.finfo(xp.asarray(ll).dtype).eps
    d1 = ll - ll_before
    d0 = ll_before - ll_before2
    usable = xp.isfinite(d0) & xp.isfinite(d1) & (d0 != 0)
    rate = xp.where(usable, d1 / xp.where(d0 != 0, d0, 1), 0)
    linear = usable & (rate < 1)
    gain = xp.where(linear, xp.abs(d1 * rate) / xp.where(linear, 1 - rate, 1), xp.inf)
    at_rounding = xp.abs(d1) <= ROUNDING * eps * xp.abs(ll)
    return xp.where(at_rounding, 0 * d1, gain)


def should_stop(
    rule: StopRule,
    trace: Array,
    n_iter: Array,
    ll_before: Array,
    ll: Array,
    n_samples: Array,
    restarted: Array,
    restarted_before: Array,
) -> Array:
    """Whether the loop stops after the E-step that gave ``ll`` (pure, jittable).

    ``trace[t]`` holds the log-likelihood of iteration ``t``'s start; ``n_iter``
    iterations are done, ``ll_before`` is the previous E-step's value (``-inf``
    before the first), ``restarted`` whether this iteration restarted a collapsed
    component and ``restarted_before`` whether the previous one did.
    """
    change = jnp.abs(ll - ll_before) / n_samples < rule.tol
    ll_before2 = jnp.where(n_iter >= 2, trace[jnp.maximum(n_iter - 2, 0)], -jnp.inf)
    gap = (remaining_gain(ll_before2, ll_before, ll) < rule.tol) & ~restarted_before
    return jnp.where(rule.gap, gap, change) & ~restarted


__all__ = ["CRITERIA", "DEFAULT_TOL", "ROUNDING", "StopRule", "remaining_gain", "should_stop"]
