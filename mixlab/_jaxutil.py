"""Small JAX helpers shared by every layer: float64 scoping, keys and dtypes.

mixlab computes in float64 by default without touching the user's global
``jax_enable_x64`` flag: public entry points run inside ``jax.enable_x64(True)``
and hand back NumPy arrays, which keep their float64 precision whatever the
global setting is.  Called inside a user's own ``jax.jit`` trace, the same
functions run in the caller's dtype and return JAX arrays, so they compose.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

F = TypeVar("F", bound=Callable[..., Any])

KeyLike = int | np.integer | jax.Array


def _contains_tracer(tree: Any) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


def to_numpy(tree: Any) -> Any:
    """Convert every JAX array leaf of ``tree`` to a NumPy array."""
    return jax.tree_util.tree_map(
        lambda leaf: np.asarray(leaf) if isinstance(leaf, jax.Array) else leaf, tree
    )


def float64_scope(fn: F) -> F:
    """Run ``fn`` with 64-bit types enabled and return NumPy arrays.

    Inside a trace (any argument is a tracer) ``fn`` runs unchanged so that it
    composes with the caller's ``jit``/``vmap``/``grad``.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _contains_tracer((args, kwargs)):
            return fn(*args, **kwargs)
        with jax.enable_x64(True):
            return to_numpy(fn(*args, **kwargs))

    return wrapper  # type: ignore[return-value]


def x64_scope(fn: F) -> F:
    """Like :func:`float64_scope` but leaves the outputs as they are."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _contains_tracer((args, kwargs)):
            return fn(*args, **kwargs)
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def as_key(key: KeyLike, name: str = "key") -> jax.Array:
    """Turn an int seed or a JAX PRNG key into a raw ``uint32[2]`` key.

    Raises
    ------
    TypeError
        If ``key`` is neither an integer nor a JAX PRNG key.
    """
    if isinstance(key, bool):
        raise TypeError(f"{name} must be an int seed or a jax.random key, got a bool")
    if isinstance(key, numbers.Integral):
        if int(key) < 0:
            raise ValueError(f"{name} must be a non-negative int seed, got {int(key)}")
        if int(key) >= 2**63:
            raise ValueError(f"{name} must be below 2**63, got {int(key)}")
        with jax.enable_x64(True):  # 64-bit seeds map to distinct keys
            return jax.random.PRNGKey(int(key))
    if isinstance(key, jax.Array | np.ndarray):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            if key.shape != ():
                raise ValueError(
                    f"{name} must be a single key, got a key array of shape {key.shape}"
                )
            return jax.random.key_data(key)
        if key.shape == (2,) and key.dtype == np.uint32:
            return jnp.asarray(key)
        raise ValueError(
            f"{name} must be an int seed or a jax.random key (uint32 of shape (2,)); "
            f"got an array of shape {key.shape} and dtype {key.dtype}"
        )
    raise TypeError(
        f"{name} must be an int seed or a jax.random key, got {type(key).__name__}; "
        "pass e.g. key=0 or key=jax.random.PRNGKey(0)"
    )


def resolve_dtype(dtype: Any, like: Any = None) -> np.dtype:
    """The floating dtype mixlab computes in.

    ``dtype=None`` keeps float32 input as float32 and uses float64 for
    everything else (float64, integers, lists).
    """
    if dtype is None:
        if like is not None and getattr(like, "dtype", None) in (np.float32, jnp.float32):
            return np.dtype(np.float32)
        return np.dtype(np.float64)
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def tiny(dtype: Any) -> float:
    """Ten machine epsilons, the guard scikit-learn adds to component counts."""
    return float(10 * np.finfo(dtype).eps)
