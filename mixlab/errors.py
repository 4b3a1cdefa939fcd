"""Exceptions and warnings raised by mixlab."""

from __future__ import annotations


class ConvergenceWarning(UserWarning):
    """The best EM restart stopped at ``max_iter`` before meeting ``tol``."""


class DataScaleWarning(UserWarning):
    """``reg_covar`` is large against the data's own variance: rescale the data."""


class FitError(ValueError):
    """A fit produced no usable answer (a component collapsed, a value went non-finite).

    The message names the component and iteration, and what to try.
    """


class LoadError(ValueError):
    """A saved result could not be read back (truncated, corrupted, wrong version)."""
