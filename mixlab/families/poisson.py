"""Poisson components: independent counts per feature.

Components: ``rates (K, D)``, the expected count of each feature in each
component.  ``log p(x | lambda) = sum_d x_d log lambda_d - lambda_d - log x_d!``;
the M-step is closed form, ``lambda_k = sum_i r_ik x_i / N_k`` (plain maximum
likelihood).  The ``log x!`` term depends on the data alone and is computed
once per fit (:meth:`Poisson.row_features`).  A rate of exactly zero (a
component whose rows are all zero in a feature) is allowed: it gives such rows
their exact probability and any other count a log-density of about -708 per
unit (float64), never a NaN.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mixlab.families._discrete import check_values, safe_log
from mixlab.families.base import Family, ParamSpec, PriorSite, register, weighted_mean_sd

Array = jax.Array

#: The Gamma prior's rate is ``rate_concentration / max(data mean, this)`` per feature.
MIN_PRIOR_MEAN = 1e-2


@register
class Poisson(Family):
    """Independent Poisson counts per feature (``rates (K, D)``)."""

    name = "poisson"
    discrete = True

    def param_specs(self) -> tuple[ParamSpec, ...]:
        return (ParamSpec("rates", ("component", "feature"), "non_negative", "rate"),)

    def check_data(self, X: np.ndarray, name: str = "X") -> None:
        bad = (X < 0) | (X != np.round(X))
        check_values(X, bad, name, "Poisson", "counts (non-negative integers)")

    def invalid_values(self, X):
        return (X < 0) | (X != jnp.round(X))

    # ---------------------------------------------------------------- pure JAX
    def prepare(self, components, formulation="centred"):
        rates = components["rates"]
        return {"log_rates": safe_log(rates), "total": jnp.sum(rates, axis=1)}

    def row_features(self, X, formulation="centred"):
        return jnp.sum(jax.scipy.special.gammaln(X + 1.0), axis=1, keepdims=True)

    def row_feature_width(self, n_features, formulation):
        return 1

    def work_width(self, n_components, n_features, formulation):
        return n_components + n_features

    def log_prob(self, X, prepared, features=None):
        features = self.row_features(X) if features is None else features
        return X @ prepared["log_rates"].T - prepared["total"] - features

    def summarize(self, X, resp, prepared, features=None, aux=None):
        return resp.T @ X

    def m_step(self, stats, nk, components, reg, fixed=(), second=None):
        return {"rates": stats / nk[:, None]}

    def place(self, components, mask, points):
        # halfway between the whole data's rates and the point: positive wherever the
        # data have any count, so the restarted component can explain other rows
        rates = components["rates"]
        return {"rates": jnp.where(mask[:, None], 0.5 * (rates + points), rates)}

    def sample(self, key, components, labels):
        rates = components["rates"]
        draws = jax.random.poisson(key, rates[labels], dtype=jnp.int32)
        return draws.astype(rates.dtype)

    def moments(self, components):
        rates = components["rates"]
        return rates, rates[:, :, None] * jnp.eye(rates.shape[1], dtype=rates.dtype)

    def alignment_features(self, components, data_scale):
        # variance-stabilised: 2 sqrt(rate) has unit Poisson noise per observation
        return 2.0 * jnp.sqrt(components["rates"])

    # ------------------------------------------------ Bayesian parameterisation
    def prior_constants(self, X_std, std, priors, row_weight=None) -> dict[str, np.ndarray]:
        mean, _ = weighted_mean_sd(np.asarray(X_std, np.float64), row_weight)
        mean = np.maximum(mean, MIN_PRIOR_MEAN)
        return {"rate_rate": priors.rate_concentration / mean}

    def prior_sites(self, n_components, n_features, priors):
        return (
            PriorSite(
                "rates",
                "gamma",
                (n_components, n_features),
                (("concentration", priors.rate_concentration), ("rate", "rate_rate")),
            ),
        )

    def components_from_sites(self, values, n_components, n_features):
        return {"rates": values["rates"]}

    def sites_from_components(self, components, n_components, n_features, priors: Any):
        # a rate of exactly zero (possible in EM) lies on the boundary of the prior's
        # support: start the sampler just inside it
        return {"rates": jnp.maximum(components["rates"], 1e-6)}
