"""``MixtureParams``: the parameters of a finite mixture, as a JAX pytree."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mixlab._jaxutil import KeyLike, as_key
from mixlab._validation import check_int
from mixlab.families import Family, get_family

_DATA_FIELDS = ("weights", "means", "covariances", "prec_chol")


def _float_array(value: Any, name: str, dtype: np.dtype) -> np.ndarray:
    if value is None:
        raise ValueError(f"{name} is missing")
    try:
        arr = np.array(value, dtype=dtype, copy=True)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be numeric, got {type(value).__name__}") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _infer_dtype(*values: Any) -> np.dtype:
    dtypes = [getattr(v, "dtype", None) for v in values]
    if dtypes and all(d == np.float32 for d in dtypes):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


@jax.tree_util.register_pytree_node_class
@dataclass(frozen=True, eq=False, repr=False)
class MixtureParams:
    """Weights and component parameters of a finite mixture.

    Parameters
    ----------
    weights : array of shape (n_components,)
        Mixing proportions: non-negative, summing to one.
    means : array of shape (n_components, n_features)
        Component means. ``(n_components,)`` is read as one feature.
    covariances : array
        Laid out as scikit-learn does for ``covariance_type``: ``full``
        ``(K, D, D)``, ``diag`` ``(K, D)``, ``spherical`` ``(K,)``, ``tied``
        ``(D, D)``.  With one feature, ``(K,)`` is accepted for every type.
    covariance_type : {"full", "diag", "spherical", "tied"}
    family : str
        Component family; ``"gaussian"``.

    Attributes
    ----------
    prec_chol : array
        Cholesky factors of the precisions (``P @ P.T = inv(covariance)``),
        derived from ``covariances``; used for every log-density.

    Raises
    ------
    ValueError
        A shape that does not fit the others, a non-finite value, weights that
        are negative or do not sum to one, or a covariance that is not
        positive definite.  The message names the field and component.

    Notes
    -----
    Construction validates and copies its inputs.  Inside ``jit`` the
    parameters move as a pytree with leaves ``weights, means, covariances,
    prec_chol`` and static ``covariance_type, family``; rebuilding them from
    leaves does not validate.
    """

    weights: Any
    means: Any
    covariances: Any
    covariance_type: str = "full"
    family: str = "gaussian"
    prec_chol: Any = field(default=None, init=False)

    def __post_init__(self) -> None:
        fam = get_family(self.covariance_type, self.family)
        dtype = _infer_dtype(self.weights, self.means, self.covariances)
        weights = _float_array(self.weights, "weights", dtype)
        means = _float_array(self.means, "means", dtype)
        covariances = _float_array(self.covariances, "covariances", dtype)
        if weights.ndim != 1 or weights.size == 0:
            raise ValueError(
                f"weights must be a non-empty 1-D array of shape (n_components,), "
                f"got shape {weights.shape}"
            )
        n_components = weights.shape[0]
        if means.ndim == 1:
            means = means.reshape(-1, 1)
        if means.ndim != 2 or means.shape[0] != n_components:
            raise ValueError(
                f"means must have shape (n_components, n_features) = ({n_components}, D) "
                f"to match weights, got shape {means.shape}"
            )
        n_features = means.shape[1]
        if np.any(weights < 0):
            k = int(np.flatnonzero(weights < 0)[0])
            raise ValueError(f"weights[{k}] = {weights[k]:.3g} is negative; weights must be >= 0")
        total = float(weights.sum(dtype=np.float64))
        tol = 1e-6 if dtype == np.float64 else 1e-4
        if abs(total - 1.0) > tol:
            raise ValueError(
                f"weights sum to {total:.10g}, not 1; normalise them with weights / weights.sum()"
            )
        covariances = fam.coerce_covariances(covariances, n_components, n_features)
        fam.check_covariances(covariances)
        with jax.enable_x64(True):
            prec_chol = np.asarray(fam.precision_cholesky(jnp.asarray(covariances)))
        for name, value in zip(_DATA_FIELDS, (weights, means, covariances, prec_chol)):
            object.__setattr__(self, name, value)

    # ----------------------------------------------------------- construction
    @classmethod
    def trusted(
        cls,
        weights: Any,
        means: Any,
        covariances: Any,
        prec_chol: Any,
        covariance_type: str,
        family: str = "gaussian",
    ) -> MixtureParams:
        """Build without validation (inside ``jit`` or from already checked arrays)."""
        obj = object.__new__(cls)
        for name, value in zip(_DATA_FIELDS, (weights, means, covariances, prec_chol)):
            object.__setattr__(obj, name, value)
        object.__setattr__(obj, "covariance_type", covariance_type)
        object.__setattr__(obj, "family", family)
        return obj

    @classmethod
    def from_dict(
        cls, params: Mapping[str, Any], covariance_type: str | None = None
    ) -> MixtureParams:
        """Build from ``{"weights": ..., "means": ..., "covariances": ...}``.

        ``covariance_type`` may also be given as a key of the mapping.
        """
        if isinstance(params, MixtureParams):
            return params
        if not isinstance(params, Mapping):
            raise TypeError(
                "parameters must be a dict with keys 'weights', 'means', 'covariances' "
                f"or a MixtureParams, got {type(params).__name__}"
            )
        missing = [k for k in ("weights", "means", "covariances") if k not in params]
        if missing:
            raise ValueError(
                f"parameter dict is missing {missing}; it needs 'weights', 'means' and "
                "'covariances' (laid out as scikit-learn does for the covariance type)"
            )
        known = {"weights", "means", "covariances", "covariance_type", "family"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown keys in parameter dict: {unknown}; allowed: {sorted(known)}")
        ctype = covariance_type or params.get("covariance_type", "full")
        if covariance_type and params.get("covariance_type", covariance_type) != covariance_type:
            raise ValueError(
                f"parameter dict says covariance_type={params['covariance_type']!r} but "
                f"{covariance_type!r} was requested"
            )
        return cls(
            params["weights"],
            params["means"],
            params["covariances"],
            covariance_type=ctype,
            family=params.get("family", "gaussian"),
        )

    # ------------------------------------------------------------------ pytree
    def tree_flatten(self) -> tuple[tuple[Any, ...], tuple[str, str]]:
        return (
            (self.weights, self.means, self.covariances, self.prec_chol),
            (self.covariance_type, self.family),
        )

    @classmethod
    def tree_unflatten(cls, aux: tuple[str, str], children: Any) -> MixtureParams:
        return cls.trusted(*children, covariance_type=aux[0], family=aux[1])

    # -------------------------------------------------------------- accessors
    @property
    def family_impl(self) -> Family:
        """The registered :class:`~mixlab.families.Family` for these parameters."""
        return get_family(self.covariance_type, self.family)

    @property
    def n_components(self) -> int:
        return int(self.weights.shape[-1])

    @property
    def n_features(self) -> int:
        return int(self.means.shape[-1])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.means.dtype)

    def full_covariances(self) -> np.ndarray:
        """Covariances as ``(n_components, n_features, n_features)`` matrices."""
        with jax.enable_x64(True):
            return np.asarray(
                self.family_impl.to_full(
                    jnp.asarray(self.covariances), self.n_components, self.n_features
                )
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of NumPy arrays, in scikit-learn's layout."""
        return {
            "weights": np.array(self.weights),
            "means": np.array(self.means),
            "covariances": np.array(self.covariances),
            "covariance_type": self.covariance_type,
            "family": self.family,
        }

    def replace(self, **changes: Any) -> MixtureParams:
        """A validated copy with some fields changed."""
        values = self.to_dict()
        values.update(changes)
        return MixtureParams(**values)

    def astype(self, dtype: Any) -> MixtureParams:
        """The same parameters with every array cast to ``dtype``."""
        return MixtureParams.trusted(
            *(np.asarray(getattr(self, f), dtype=dtype) for f in _DATA_FIELDS),
            covariance_type=self.covariance_type,
            family=self.family,
        )

    def sample(self, key: KeyLike, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` points from the mixture.

        Parameters
        ----------
        key : int or jax.random key
        n_samples : int

        Returns
        -------
        X : array of shape (n_samples, n_features)
        labels : int array of shape (n_samples,)
            The component each point was drawn from.
        """
        n_samples = check_int(n_samples, "n_samples", minimum=1)
        with jax.enable_x64(self.dtype == np.float64):
            key_ = as_key(key)
            X, labels = _sample(key_, jax.tree_util.tree_map(jnp.asarray, self), n_samples)
            return np.asarray(X), np.asarray(labels)

    def __repr__(self) -> str:
        body = ",\n  ".join(
            f"{name}={np.array2string(np.asarray(getattr(self, name)), precision=5, prefix='  ')}"
            for name in ("weights", "means", "covariances")
        )
        return f"MixtureParams(covariance_type={self.covariance_type!r},\n  {body})"


@functools.partial(jax.jit, static_argnums=2)
def _sample(key: jax.Array, params: MixtureParams, n_samples: int) -> tuple[jax.Array, jax.Array]:
    key_labels, key_noise = jax.random.split(key)
    labels = jax.random.categorical(key_labels, jnp.log(params.weights), shape=(n_samples,))
    noise = jax.random.normal(key_noise, (n_samples, params.n_features), params.means.dtype)
    chol = jnp.linalg.cholesky(
        params.family_impl.to_full(params.covariances, params.n_components, params.n_features)
    )

    def add_component(k: int, X: jax.Array) -> jax.Array:
        return jnp.where((labels == k)[:, None], params.means[k] + noise @ chol[k].T, X)

    X = jax.lax.fori_loop(0, params.n_components, add_component, jnp.zeros_like(noise))
    return X, labels


def stack_params(params: list[MixtureParams]) -> MixtureParams:
    """Stack parameter sets along a new leading axis (for batched restarts)."""
    return jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *params)


def index_params(params: MixtureParams, index: int) -> MixtureParams:
    """Take one parameter set from a stacked batch."""
    return jax.tree_util.tree_map(lambda leaf: leaf[index], params)


__all__ = ["MixtureParams", "index_params", "stack_params"]
