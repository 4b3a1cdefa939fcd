"""Component families: log-densities, sufficient statistics and M-steps.

Pure JAX; never imports NumPyro, ArviZ or matplotlib.  Look a family up with
:func:`get_family`; add one by subclassing :class:`Family` and decorating it
with :func:`register`.
"""

from mixlab.families.base import Family, PriorSite, covariance_types, get_family, register
from mixlab.families.gaussian import DiagGaussian, FullGaussian, SphericalGaussian, TiedGaussian

__all__ = [
    "DiagGaussian",
    "Family",
    "FullGaussian",
    "PriorSite",
    "SphericalGaussian",
    "TiedGaussian",
    "covariance_types",
    "get_family",
    "register",
]
