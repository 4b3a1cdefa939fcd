"""mixlab: finite mixtures fitted by EM, SVI and NUTS on one model, compared side by side.

>>> import mixlab as ml
>>> X = ml.datasets.load("faithful")
>>> em = ml.fit(X, 2, method=ml.EM(n_init=8), key=0)
"""

from mixlab import datasets, distributed, families
from mixlab._version import __version__
from mixlab.api import fit
from mixlab.compare import Comparison, compare
from mixlab.em import (
    ELBOResult,
    EStepResult,
    e_step,
    elbo,
    log_likelihood,
    log_prob_components,
    m_step,
)
from mixlab.errors import ConvergenceWarning, DataScaleWarning, FitError, LoadError
from mixlab.methods import EM, NUTS, SVI
from mixlab.online import OnlineEM
from mixlab.params import MixtureParams
from mixlab.priors import Priors
from mixlab.result import FitResult, Restarts
from mixlab.select import Selection, select
from mixlab.stream import chunks, fit_stream

__all__ = [
    "EM",
    "NUTS",
    "SVI",
    "Comparison",
    "ConvergenceWarning",
    "DataScaleWarning",
    "ELBOResult",
    "EStepResult",
    "FitError",
    "FitResult",
    "LoadError",
    "MixtureParams",
    "OnlineEM",
    "Priors",
    "Restarts",
    "Selection",
    "__version__",
    "chunks",
    "compare",
    "datasets",
    "distributed",
    "e_step",
    "elbo",
    "families",
    "fit",
    "fit_stream",
    "log_likelihood",
    "log_prob_components",
    "m_step",
    "select",
]
