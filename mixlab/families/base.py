"""The component-family interface and its registry.

A family with one parameter layout (Gaussian with full covariances, Gaussian
with diagonal covariances, ...) is one :class:`Family` subclass registered
under ``(family, covariance_type)``.  The EM driver and the Bayesian model only
talk to this interface, so adding a layout never means an ``if`` chain
elsewhere.

Two kinds of methods:

* layout methods work on NumPy arrays outside ``jit`` (shapes, parameter
  counts, validation with messages that name the component);
* pure JAX methods (log-density, sufficient statistics, M-step, priors'
  parameterisation) that run inside ``jit``/``vmap``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_REGISTRY: dict[tuple[str, str], type[Family]] = {}


class PriorSite(NamedTuple):
    """One latent site of a family's covariance prior, declared without NumPyro.

    The Bayesian model (``mixlab.bayes``) turns each kind into a distribution:
    ``"half_normal"`` positive scales (in units of the data's standard
    deviation), ``"lkj_cholesky"`` Cholesky factors of correlation matrices of
    size ``dimension``.  ``shape`` is the batch shape of the site.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    dimension: int = 0


class Family(ABC):
    """A component family in one covariance layout.

    Instances are stateless; two instances of the same class compare equal,
    so a family can be a static argument of ``jax.jit``.
    """

    family: ClassVar[str]
    covariance_type: ClassVar[str]
    #: False when all components share one covariance (the covariances array
    #: then has no leading component axis).
    per_component_covariance: ClassVar[bool] = True
    #: True when a covariance is the same in every direction (spherical): the
    #: data must then be standardised with one scale for all features.
    isotropic: ClassVar[bool] = False

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash((self.family, self.covariance_type))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # ------------------------------------------------------------------ layout
    @abstractmethod
    def covariance_shape(self, n_components: int, n_features: int) -> tuple[int, ...]:
        """Shape of the ``covariances`` array, as scikit-learn lays it out."""

    @abstractmethod
    def n_covariance_parameters(self, n_components: int, n_features: int) -> int:
        """Free parameters in the covariances (scikit-learn's count)."""

    def n_parameters(self, n_components: int, n_features: int) -> int:
        """Free parameters of the whole mixture: covariances, means, weights."""
        return (
            self.n_covariance_parameters(n_components, n_features)
            + n_components * n_features
            + n_components
            - 1
        )

    @abstractmethod
    def coerce_covariances(
        self, covariances: np.ndarray, n_components: int, n_features: int
    ) -> np.ndarray:
        """Reshape accepted shortcuts (1-D data) to the canonical layout or raise."""

    @abstractmethod
    def check_covariances(self, covariances: np.ndarray) -> None:
        """Raise ``ValueError`` naming the component whose covariance is invalid."""

    # ---------------------------------------------------------------- pure JAX
    @abstractmethod
    def precision_cholesky(self, covariances: jax.Array) -> jax.Array:
        """Cholesky factors ``P`` of the precisions, ``precision = P @ P.T``.

        Non-finite where a covariance is not positive definite.
        """

    @abstractmethod
    def log_prob(self, X: jax.Array, means: jax.Array, prec_chol: jax.Array) -> jax.Array:
        """Component log-densities ``log p(x_i | theta_k)``, shape ``(n_samples, n_components)``."""

    @abstractmethod
    def covariance_stats(self, X: jax.Array, resp: jax.Array, means: jax.Array) -> jax.Array:
        """Centred second-moment sums for the M-step; additive over rows of ``X``."""

    @abstractmethod
    def covariances_from_stats(self, stats: jax.Array, nk: jax.Array, reg_covar: Any) -> jax.Array:
        """Covariances from the summed statistics, with ``reg_covar`` on the diagonal."""

    # -------------------------------------------- expanded ("moments") formulation
    # log p(x | theta_k) = features(x) @ Q[:, k] + x @ L[:, k] + c[k], where the
    # features depend on the data only; the M-step needs their responsibility-
    # weighted sums.  One pass over the data per EM iteration and no
    # (n_samples, K, D) intermediates; uncentred, so it is used in float64.
    @abstractmethod
    def moment_features(self, X: jax.Array) -> jax.Array:
        """Per-row sufficient statistics of second order, shape ``(n_samples, T)``."""

    @abstractmethod
    def n_moment_features(self, n_features: int) -> int:
        """``T``, the number of columns :meth:`moment_features` returns."""

    @abstractmethod
    def expanded_coefficients(
        self, means: jax.Array, prec_chol: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(Q (T, K), L (D, K), c (K,))`` of the expanded log-density."""

    @abstractmethod
    def covariances_from_moments(
        self,
        moments: jax.Array,
        nk: jax.Array,
        mean_x: jax.Array,
        means: jax.Array,
        reg_covar: Any,
    ) -> jax.Array:
        """Covariances about ``means`` from ``moments = resp.T @ features``.

        ``mean_x = resp.T @ X / nk``; with ``means = mean_x`` this is the
        ordinary M-step, otherwise the covariance about fixed means.
        """

    @abstractmethod
    def to_full(self, covariances: jax.Array, n_components: int, n_features: int) -> jax.Array:
        """Covariances as full matrices, shape ``(n_components, n_features, n_features)``."""

    # ------------------------------------------------ Bayesian parameterisation
    @abstractmethod
    def prior_sites(self, n_components: int, n_features: int) -> tuple[PriorSite, ...]:
        """The latent sites that parameterise the covariances under a prior."""

    @abstractmethod
    def covariance_from_factors(
        self, factors: dict[str, jax.Array], n_components: int, n_features: int
    ) -> tuple[jax.Array, jax.Array]:
        """``(covariances, prec_chol)`` from values of :meth:`prior_sites`."""

    @abstractmethod
    def factors_from_covariance(
        self, covariances: jax.Array, n_components: int, n_features: int
    ) -> dict[str, jax.Array]:
        """Inverse of :meth:`covariance_from_factors` (to start a sampler at a point)."""

    @abstractmethod
    def rescale_covariances(self, covariances: jax.Array, scale: jax.Array) -> jax.Array:
        """Covariances of ``x * scale`` given those of ``x``; ``scale`` has shape ``(D,)``."""

    def min_points(self, n_features: int) -> int:
        """Points a component needs for a non-singular covariance of this layout.

        ``D + 1`` for a full covariance (a covariance from ``D`` points spans at most
        ``D - 1`` directions), 2 for diagonal and spherical ones, 1 when the
        covariance is shared by all components (the pooled data decide it).
        """
        return 2

    def component_ok(self, prec_chol: jax.Array, n_components: int) -> jax.Array:
        """Per component: are its precision factors finite? Shape ``(n_components,)``."""
        finite = jnp.isfinite(prec_chol)
        if not self.per_component_covariance:
            return jnp.broadcast_to(jnp.all(finite), (n_components,))
        return jnp.all(finite.reshape(n_components, -1), axis=1)

    def covariance_floor(
        self, covariances: jax.Array, n_components: int, n_features: int
    ) -> jax.Array:
        """Smallest variance along any direction, per component (for collapse checks)."""
        full = self.to_full(covariances, n_components, n_features)
        return jnp.linalg.eigvalsh(full)[:, 0]

    def m_step_covariances(
        self, X: jax.Array, resp: jax.Array, nk: jax.Array, means: jax.Array, reg_covar: Any
    ) -> jax.Array:
        """Whole-data M-step for the covariances (the driver sums stats over chunks)."""
        return self.covariances_from_stats(self.covariance_stats(X, resp, means), nk, reg_covar)


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: make a family findable by ``(family, covariance_type)``."""
    _REGISTRY[(cls.family, cls.covariance_type)] = cls
    return cls


def get_family(covariance_type: str = "full", family: str = "gaussian") -> Family:
    """The registered family for ``(family, covariance_type)``.

    Raises
    ------
    ValueError
        For an unknown family or covariance type; the message lists the known ones.
    """
    if isinstance(covariance_type, Family):
        return covariance_type
    try:
        return _REGISTRY[(family, covariance_type)]()
    except (KeyError, TypeError):
        known = sorted(ct for fam, ct in _REGISTRY if fam == family)
        if not known:
            fams = sorted({fam for fam, _ in _REGISTRY})
            raise ValueError(f"unknown family {family!r}; known families: {fams}") from None
        raise ValueError(
            f"unknown covariance type {covariance_type!r} for family {family!r}; "
            f"use one of {', '.join(map(repr, known))}"
        ) from None


def covariance_types(family: str = "gaussian") -> tuple[str, ...]:
    """Covariance types registered for ``family``."""
    return tuple(ct for fam, ct in _REGISTRY if fam == family)
