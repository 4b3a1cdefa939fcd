"""Priors of the Bayesian mixture (settings only; the model is in ``mixlab.bayes``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mixlab._validation import check_float


@dataclass(frozen=True)
class Priors:
    """Weakly informative priors, scaled to the data.

    The model works in standardised units: each feature is centred on the
    data mean and divided by the data standard deviation (one common scale for
    spherical covariances).  In those units:

    * weights ``~ Dirichlet(weight_concentration * ones(K))``;
    * each mean ``~ Normal(mean_loc, mean_scale)``, i.e. by default centred on
      the data mean with 3 data standard deviations of spread;
    * each component standard deviation ``~ HalfNormal(scale)`` (1 data sd by
      default: median 0.67, 95 % below 2);
    * correlations (full and tied covariances) ``~ LKJCholesky(lkj_eta)``
      (``eta = 2`` gently favours weak correlation);
    * Poisson rates ``~ Gamma(rate_concentration, rate_concentration / m_d)``
      per feature ``d``, ``m_d`` the data mean of the feature: the prior mean
      is the data mean, and with the default concentration 1 (an exponential)
      the prior is broad (95 % between 0.025 and 3.7 times the data mean);
    * Bernoulli probabilities ``~ Beta(prob_concentration, prob_concentration)``
      (1: uniform);
    * Student-t degrees of freedom ``~ Gamma(dof_concentration, dof_rate)``,
      by default Gamma(2, 0.1) (mean 20; Juarez and Steel 2010), which keeps
      the heavy-tailed and the nearly normal cases both plausible.

    Because the priors follow the data's location and scale, rescaling X
    rescales the posterior and leaves its shape unchanged.

    Parameters
    ----------
    weight_concentration : float, default 1.0
    mean_loc : array of shape (n_features,), optional
        Prior centre of the means in *data units*; default the data mean.
    mean_scale : float, default 3.0
        Prior sd of the means, in data standard deviations.
    scale : float, default 1.0
        HalfNormal scale of component standard deviations, in data sds.
    lkj_eta : float, default 2.0
    ordered_means : bool, default False
        One feature only: constrain the means to increase (an identifiability
        constraint, instead of relabelling draws afterwards).
    rate_concentration : float, default 1.0
        Gamma shape of the Poisson rates (prior mean: the data mean).
    prob_concentration : float, default 1.0
        Beta(a, a) on the Bernoulli probabilities.
    dof_concentration, dof_rate : float, default 2.0, 0.1
        Gamma prior of the Student-t degrees of freedom.
    """

    weight_concentration: float = 1.0
    mean_loc: Any = None
    mean_scale: float = 3.0
    scale: float = 1.0
    lkj_eta: float = 2.0
    ordered_means: bool = False
    rate_concentration: float = 1.0
    prob_concentration: float = 1.0
    dof_concentration: float = 2.0
    dof_rate: float = 0.1

    def __post_init__(self) -> None:
        for name in ("rate_concentration", "prob_concentration", "dof_concentration", "dof_rate"):
            check_float(getattr(self, name), name, 0.0, strict=True)
        check_float(self.weight_concentration, "weight_concentration", 0.0, strict=True)
        check_float(self.mean_scale, "mean_scale", 0.0, strict=True)
        check_float(self.scale, "scale", 0.0, strict=True)
        check_float(self.lkj_eta, "lkj_eta", 0.0, strict=True)
        if self.mean_loc is not None:
            loc = np.array(self.mean_loc, dtype=np.float64, copy=True).reshape(-1)
            if not np.all(np.isfinite(loc)):
                raise ValueError("mean_loc must be finite")
            object.__setattr__(self, "mean_loc", loc)
        if not isinstance(self.ordered_means, bool | np.bool_):
            raise TypeError("ordered_means must be True or False")

    def settings(self) -> dict[str, Any]:
        return {
            "weight_concentration": self.weight_concentration,
            "mean_loc": None if self.mean_loc is None else np.asarray(self.mean_loc).tolist(),
            "mean_scale": self.mean_scale,
            "scale": self.scale,
            "lkj_eta": self.lkj_eta,
            "ordered_means": bool(self.ordered_means),
            "rate_concentration": self.rate_concentration,
            "prob_concentration": self.prob_concentration,
            "dof_concentration": self.dof_concentration,
            "dof_rate": self.dof_rate,
        }

    def key(self) -> tuple[Any, ...]:
        """The settings that shape a compiled model (hashable; ``mean_loc`` is data)."""
        return tuple((k, v) for k, v in self.settings().items() if k != "mean_loc")
