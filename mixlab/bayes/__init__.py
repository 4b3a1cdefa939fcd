"""Bayesian back ends on NumPyro: the mixture model, SVI and NUTS.

Imported on first use (``ml.fit(..., method=ml.SVI() | ml.NUTS())``), so
``import mixlab`` stays fast and EM users never load NumPyro.
"""

from mixlab.bayes.common import BayesRun
from mixlab.bayes.mcmc import run_nuts
from mixlab.bayes.model import MixtureModel
from mixlab.bayes.svi import run_svi
from mixlab.families import Standardisation

__all__ = ["BayesRun", "MixtureModel", "Standardisation", "run_nuts", "run_svi"]
