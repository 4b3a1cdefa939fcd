"""``MixtureParams``: the parameters of a finite mixture of any family, as a JAX pytree."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mixlab._jaxutil import KeyLike, as_key
from mixlab._validation import check_int
from mixlab.families import Family, get_family

#: Keys of a parameter dict that name the family rather than a parameter.
_FAMILY_KEYS = ("family", "covariance_type", "covariance")


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


def _n_features(family: Family, arrays: Mapping[str, Any]) -> int:
    """The number of features, read off the first parameter with a feature axis.

    A per-component parameter given with its feature axis missing (``means``
    of shape ``(K,)``) is one feature.
    """
    for spec in family.param_specs():
        if "feature" not in spec.dims:
            continue
        value = np.shape(arrays[spec.name])
        axis = spec.dims.index("feature")
        if len(value) < len(spec.dims):
            return 1
        return int(value[axis])
    return 1


@jax.tree_util.register_pytree_node_class
class MixtureParams:
    """Weights and component parameters of a finite mixture.

    Parameters
    ----------
    weights : array of shape (n_components,)
        Mixing proportions: non-negative, summing to one.
    means, covariances : array, optional
        Gaussian shortcut: ``MixtureParams(weights, means, covariances,
        covariance_type)`` with covariances laid out as scikit-learn does
        (``full (K, D, D)``, ``diag (K, D)``, ``spherical (K,)``, ``tied (D,
        D)``; with one feature ``(K,)`` works for every type).
    covariance_type : {"full", "diag", "spherical", "tied"}, optional
        Layout of Gaussian and Student-t covariances (default ``"full"``).
    family : str or Family, default "gaussian"
        ``"gaussian"``, ``"poisson"``, ``"bernoulli"``, ``"student_t"`` or a
        family object.
    components : dict, optional
        The component parameters by name (alternative to keywords).
    **named : array
        Component parameters by name: ``rates=`` (Poisson), ``probs=``
        (Bernoulli), ``dofs=`` (Student-t), ...

    Attributes
    ----------
    weights : array of shape (n_components,)
    components : dict of str to array
        Every component parameter, each with a leading component axis (unless
        shared by all components, as a tied covariance).  Each is also an
        attribute: ``params.means``, ``params.rates``, ...
    family : Family

    Raises
    ------
    ValueError
        A missing or unknown parameter, a shape that does not fit the others,
        a non-finite value, weights that are negative or do not sum to one, or
        a parameter outside its constraint (a covariance that is not positive
        definite, a negative rate, a probability above one).  The message
        names the field and component.

    Notes
    -----
    Construction validates and copies its inputs.  Inside ``jit`` the
    parameters move as a pytree with leaves ``weights`` and the components
    and the family as static data; rebuilding them from leaves does not
    validate.
    """

    __slots__ = ("components", "family", "weights")

    def __init__(
        self,
        weights: Any,
        means: Any = None,
        covariances: Any = None,
        covariance_type: str | None = None,
        family: str | Family | None = None,
        *,
        components: Mapping[str, Any] | None = None,
        **named: Any,
    ) -> None:
        fam = get_family(family if family is not None else "gaussian", covariance=covariance_type)
        values = dict(components or {})
        for name, value in (("means", means), ("covariances", covariances), *named.items()):
            if value is not None:
                if name in values:
                    raise ValueError(f"{name} is given twice")
                values[name] = value
        allowed = fam.param_names()
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {unknown} for {fam!r}; its parameters are "
                f"{', '.join(allowed)} (and weights)"
            )
        missing = [n for n in allowed if n not in values]
        if missing:
            raise ValueError(
                f"{fam!r} needs {', '.join(allowed)} besides weights; missing {', '.join(missing)}"
            )
        dtype = _infer_dtype(weights, *values.values())
        w = _float_array(weights, "weights", dtype)
        if w.ndim != 1 or w.size == 0:
            raise ValueError(
                f"weights must be a non-empty 1-D array of shape (n_components,), "
                f"got shape {w.shape}"
            )
        n_components = w.shape[0]
        if np.any(w < 0):
            k = int(np.flatnonzero(w < 0)[0])
            raise ValueError(f"weights[{k}] = {w[k]:.3g} is negative; weights must be >= 0")
        total = float(w.sum(dtype=np.float64))
        tol = 1e-6 if dtype == np.float64 else 1e-4
        if abs(total - 1.0) > tol:
            raise ValueError(
                f"weights sum to {total:.10g}, not 1; normalise them with weights / weights.sum()"
            )
        arrays = {n: _float_array(values[n], n, dtype) for n in allowed}
        n_features = _n_features(fam, arrays)
        for spec in fam.param_specs():
            value = arrays[spec.name]
            if spec.dims[:2] == ("component", "feature") and value.ndim == 1:
                value = value.reshape(-1, 1)  # one feature
            if spec.per_component and (value.ndim == 0 or value.shape[0] != n_components):
                raise ValueError(
                    f"{spec.name} must have shape {spec.shape(n_components, n_features)} "
                    f"({', '.join(spec.dims)}) to match weights, got shape {value.shape}"
                )
            arrays[spec.name] = fam.coerce(spec.name, value, n_components, n_features)
        fam.check_components(arrays)
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "components", arrays)
        object.__setattr__(self, "family", fam)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("MixtureParams is immutable; use .replace(...) for a changed copy")

    # ----------------------------------------------------------- construction
    @classmethod
    def trusted(cls, weights: Any, components: Mapping[str, Any], family: Family) -> MixtureParams:
        """Build without validation (inside ``jit`` or from already checked arrays)."""
        obj = object.__new__(cls)
        object.__setattr__(obj, "weights", weights)
        object.__setattr__(obj, "components", dict(components))
        object.__setattr__(obj, "family", family)
        return obj

    @classmethod
    def from_dict(
        cls,
        params: Mapping[str, Any],
        covariance_type: str | None = None,
        family: str | Family | None = None,
    ) -> MixtureParams:
        """Build from ``{"weights": ..., <component parameters>...}``.

        The family and covariance type may be keys of the mapping
        (``"family"``, ``"covariance_type"``) or arguments; where both are
        given they must agree.
        """
        if isinstance(params, MixtureParams):
            return params
        if not isinstance(params, Mapping):
            raise TypeError(
                "parameters must be a dict such as {'weights': ..., 'means': ..., "
                "'covariances': ...} or a MixtureParams, got " + type(params).__name__
            )
        for key, given in (("covariance_type", covariance_type), ("family", family)):
            stored = params.get(key)
            if (
                given is not None
                and stored is not None
                and str(stored) != str(getattr(given, "name", given))
            ):
                raise ValueError(
                    f"parameter dict says {key}={stored!r} but {given!r} was requested"
                )
        fam = get_family(
            family if family is not None else params.get("family", "gaussian"),
            covariance=covariance_type or params.get("covariance_type") or params.get("covariance"),
        )
        if "weights" not in params:
            raise ValueError(
                f"parameter dict is missing 'weights'; it needs 'weights' and "
                f"{', '.join(map(repr, fam.param_names()))}"
            )
        named = {k: v for k, v in params.items() if k not in (*_FAMILY_KEYS, "weights")}
        return cls(params["weights"], family=fam, components=named)

    # ------------------------------------------------------------------ pytree
    def tree_flatten(self) -> tuple[tuple[Any, Any], Family]:
        return (self.weights, self.components), self.family

    @classmethod
    def tree_unflatten(cls, family: Family, children: Any) -> MixtureParams:
        return cls.trusted(children[0], children[1], family)

    # -------------------------------------------------------------- accessors
    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: the component parameters by name.
        try:
            components = object.__getattribute__(self, "components")
        except AttributeError:
            raise AttributeError(name) from None
        if name in components:
            return components[name]
        family = object.__getattribute__(self, "family")
        raise AttributeError(
            f"{family!r} parameters have no {name!r}; they are weights, "
            f"{', '.join(family.param_names())}"
        )

    def __getstate__(self) -> dict[str, Any]:
        return {"weights": self.weights, "components": self.components, "family": self.family}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)

    @property
    def covariance_type(self) -> str | None:
        """The covariance layout (Gaussian, Student-t), else ``None``."""
        return self.family.covariance_type

    @property
    def n_components(self) -> int:
        return int(np.shape(self.weights)[-1])

    @property
    def n_features(self) -> int:
        return _n_features(self.family, self.components)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.weights.dtype)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``(K, D)`` and covariance ``(K, D, D)`` of each component."""
        with jax.enable_x64(True):
            mean, cov = _moments(jax.tree_util.tree_map(jnp.asarray, self))
            return np.asarray(mean), np.asarray(cov)

    def full_covariances(self) -> np.ndarray:
        """Each component's covariance as a ``(n_components, n_features, n_features)`` matrix."""
        return self.moments()[1]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of NumPy arrays (Gaussian covariances in scikit-learn's layout),
        with the family's name and options; :meth:`from_dict` reads it back."""
        out: dict[str, Any] = {"weights": np.array(self.weights)}
        out.update({k: np.array(v) for k, v in self.components.items()})
        out["family"] = self.family.name
        for key, value in self.family.options().items():
            out["covariance_type" if key == "covariance" else key] = value
        return out

    def replace(self, **changes: Any) -> MixtureParams:
        """A validated copy with some fields changed."""
        values = self.to_dict()
        values.update(changes)
        return MixtureParams.from_dict(values, family=values.pop("family", None))

    def astype(self, dtype: Any) -> MixtureParams:
        """The same parameters with every array cast to ``dtype``."""
        return jax.tree_util.tree_map(lambda a: np.asarray(a, dtype=dtype), self)

    def __getitem__(self, index: Any) -> MixtureParams:
        """One parameter set from a stacked batch (a ``params_trace``, restarts)."""
        return jax.tree_util.tree_map(lambda leaf: leaf[index], self)

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
            f"{name}={np.array2string(np.asarray(value), precision=5, prefix='  ')}"
            for name, value in (("weights", self.weights), *self.components.items())
        )
        return f"MixtureParams(family={self.family!r},\n  {body})"


@jax.jit
def _moments(params: MixtureParams) -> tuple[jax.Array, jax.Array]:
    return params.family.moments(params.components)


@functools.partial(jax.jit, static_argnums=2)
def _sample(key: jax.Array, params: MixtureParams, n_samples: int) -> tuple[jax.Array, jax.Array]:
    key_labels, key_noise = jax.random.split(key)
    labels = jax.random.categorical(key_labels, jnp.log(params.weights), shape=(n_samples,))
    return params.family.sample(key_noise, params.components, labels), labels


def explicit_start(
    init: Any, family: Family, n_components: int, n_features: int, dtype: Any
) -> MixtureParams:
    """Starting parameters given by the user (a dict or :class:`MixtureParams`), checked
    against the fit's family, number of components and features, in ``dtype``."""
    params = MixtureParams.from_dict(init, family=family)
    if params.family != family:
        raise ValueError(
            f"starting parameters are for {params.family!r} but the fit uses {family!r}"
        )
    if params.n_components != n_components:
        raise ValueError(
            f"starting parameters have {params.n_components} components but "
            f"n_components={n_components}"
        )
    if params.n_features != n_features:
        raise ValueError(
            f"starting parameters have {params.n_features} feature(s) but X has {n_features}"
        )
    return params.astype(dtype)


def stack_params(params: list[MixtureParams]) -> MixtureParams:
    """Stack parameter sets along a new leading axis (for batched restarts)."""
    return jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *params)


def index_params(params: MixtureParams, index: int) -> MixtureParams:
    """Take one parameter set from a stacked batch."""
    return params[index]


__all__ = ["MixtureParams", "index_params", "stack_params"]
