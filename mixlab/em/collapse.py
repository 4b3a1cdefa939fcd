"""When is a component collapsed?  One test shared by initialisation and the EM loop.

A component has collapsed when it holds less than one data point's worth of
(weighted) responsibility, or when its family says it degenerated otherwise
(:meth:`mixlab.families.Family.collapsed`: for Gaussians a covariance singular
*above* ``reg_covar`` relative to the data's own variance, i.e. it sits on too
few distinct points and only the regulariser keeps it positive definite).
"""

from __future__ import annotations

from typing import Any

import jax

from mixlab.families import Family

Array = jax.Array

#: A component holding less than this many points' worth of responsibility has collapsed.
COLLAPSE_MIN_POINTS = 1.0


def collapse_flags(
    family: Family, components: dict[str, Array], nk: Array, reg: Any, data_var: Array
) -> tuple[Array, Array]:
    """Per component: ``(weight collapsed, otherwise degenerate)``, each shape ``(K,)``."""
    return nk < COLLAPSE_MIN_POINTS, family.collapsed(components, nk, reg, data_var)
