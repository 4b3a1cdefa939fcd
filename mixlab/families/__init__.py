"""Component families: the one place where a distribution is described.

Pure JAX and NumPy; never imports NumPyro, ArviZ, matplotlib or pandas.  Look
a family up with :func:`get_family` (``get_family("poisson")``,
``get_family("gaussian", covariance="diag")``) or build one
(``Gaussian(covariance="full")``, ``StudentT()``); add one by subclassing
:class:`Family` and decorating it with :func:`register`.
"""

from mixlab.families.base import (
    DIMS,
    DataSummary,
    Family,
    NoBayesianModel,
    ParamSpec,
    PriorSite,
    Standardisation,
    families,
    get_family,
    register,
)
from mixlab.families.bernoulli import Bernoulli
from mixlab.families.covariance import LAYOUTS, Layout
from mixlab.families.gaussian import (
    DiagGaussian,
    FullGaussian,
    Gaussian,
    SphericalGaussian,
    TiedGaussian,
)
from mixlab.families.poisson import Poisson
from mixlab.families.student_t import StudentT


def covariance_types() -> tuple[str, ...]:
    """Covariance layouts of the families that have one."""
    return tuple(LAYOUTS)


__all__ = [
    "DIMS",
    "LAYOUTS",
    "Bernoulli",
    "DataSummary",
    "DiagGaussian",
    "Family",
    "FullGaussian",
    "Gaussian",
    "Layout",
    "NoBayesianModel",
    "ParamSpec",
    "Poisson",
    "PriorSite",
    "SphericalGaussian",
    "Standardisation",
    "StudentT",
    "TiedGaussian",
    "covariance_types",
    "families",
    "get_family",
    "register",
]
