"""Bernoulli components: independent binary features (latent class analysis).

Components: ``probs (K, D)``, the probability that feature ``d`` is 1 in
component ``k``.  ``log p(x | p) = sum_d x_d log p_d + (1 - x_d) log(1 - p_d)``;
the M-step is closed form, ``p_k = (sum_i r_ik x_i + a) / (N_k + 2 a)``: plain
maximum likelihood with the default pseudo-count ``a = 0``, or the posterior
mode under a ``Beta(1 + a, 1 + a)`` prior, which keeps every probability
strictly inside (0, 1).  A probability of exactly 0 or 1 gives no NaN: the
logarithms of 0 are taken as about -708 (float64).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mixlab._validation import check_float
from mixlab.families._discrete import check_values, safe_log
from mixlab.families.base import Family, ParamSpec, PriorSite, register

Array = jax.Array


@register
class Bernoulli(Family):
    """Independent Bernoulli features (``probs (K, D)``).

    Parameters
    ----------
    pseudo_count : float, default 0.0
        ``a`` in the M-step ``(sum r x + a) / (N_k + 2 a)``; 0 is maximum
        likelihood, ``a > 0`` keeps probabilities inside (0, 1).
    """

    name = "bernoulli"
    discrete = True

    def __init__(self, pseudo_count: float = 0.0) -> None:
        self._pseudo_count = check_float(pseudo_count, "pseudo_count", minimum=0.0)

    @property
    def pseudo_count(self) -> float:
        return self._pseudo_count

    def options(self) -> dict[str, Any]:
        return {"pseudo_count": self._pseudo_count}

    def param_specs(self) -> tuple[ParamSpec, ...]:
        return (ParamSpec("probs", ("component", "feature"), "unit_interval", "probability"),)

    def check_data(self, X: np.ndarray, name: str = "X") -> None:
        check_values(X, (X != 0) & (X != 1), name, "Bernoulli", "binary values (0 or 1)")

    def invalid_values(self, X):
        return (X != 0) & (X != 1)

    # ---------------------------------------------------------------- pure JAX
    def prepare(self, components, formulation="centred"):
        probs = components["probs"]
        log_p = safe_log(probs)
        log_q = safe_log(1.0 - probs)
        return {"logit": log_p - log_q, "log_q": jnp.sum(log_q, axis=1)}

    def work_width(self, n_components, n_features, formulation):
        return n_components + n_features

    def log_prob(self, X, prepared, features=None):
        return X @ prepared["logit"].T + prepared["log_q"]

    def summarize(self, X, resp, prepared, features=None, aux=None):
        return resp.T @ X

    def m_step(self, stats, nk, components, reg, fixed=(), second=None):
        a = self._pseudo_count
        return {"probs": (stats + a) / (nk[:, None] + 2.0 * a)}

    def place(self, components, mask, points):
        probs = components["probs"]
        return {"probs": jnp.where(mask[:, None], 0.5 * (probs + points), probs)}

    def sample(self, key, components, labels):
        probs = components["probs"]
        return jax.random.bernoulli(key, probs[labels]).astype(probs.dtype)

    def moments(self, components):
        p = components["probs"]
        return p, (p * (1.0 - p))[:, :, None] * jnp.eye(p.shape[1], dtype=p.dtype)

    def alignment_features(self, components, data_scale):
        return components["probs"]

    # ------------------------------------------------ Bayesian parameterisation
    def prior_sites(self, n_components, n_features, priors):
        c = priors.prob_concentration
        return (
            PriorSite(
                "probs",
                "beta",
                (n_components, n_features),
                (("concentration1", c), ("concentration0", c)),
            ),
        )

    def components_from_sites(self, values, n_components, n_features):
        return {"probs": values["probs"]}

    def sites_from_components(self, components, n_components, n_features, priors: Any):
        # EM's probabilities of exactly 0 or 1 lie on the boundary: start just inside
        return {"probs": jnp.clip(components["probs"], 1e-6, 1.0 - 1e-6)}
