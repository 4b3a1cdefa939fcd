"""The EM engine: pure JAX, never imports NumPyro, ArviZ or matplotlib.

Building blocks usable alone: :func:`e_step`, :func:`m_step`, :func:`elbo`,
:func:`log_prob_components`, :func:`log_likelihood`.  The driver
(:mod:`mixlab.em.driver`) runs them in one jitted ``lax.while_loop``.
"""

from mixlab.em.driver import EMOutput, EMSettings, EMState, EMStatus, fit_em, run_em
from mixlab.em.init import INIT_METHODS, initial_params, kmeans_plusplus
from mixlab.em.steps import (
    ELBOResult,
    EStepResult,
    e_step,
    elbo,
    log_likelihood,
    log_prob_components,
    m_step,
)

__all__ = [
    "INIT_METHODS",
    "ELBOResult",
    "EMOutput",
    "EMSettings",
    "EMState",
    "EMStatus",
    "EStepResult",
    "e_step",
    "elbo",
    "fit_em",
    "initial_params",
    "kmeans_plusplus",
    "log_likelihood",
    "log_prob_components",
    "m_step",
    "run_em",
]
