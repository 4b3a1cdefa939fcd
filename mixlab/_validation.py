"""Argument checks at the public boundary.

Every message names the problem and what to do about it.  Nothing here
modifies the caller's arrays: conversions always produce new arrays.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import numpy as np


def check_data(
    X: Any, dtype: np.dtype, name: str = "X", min_samples: int = 1, values: bool = True
) -> Any:
    """Validate data and return a fresh 2-D array of ``dtype``.

    1-D input is one feature: shape ``(n_samples,)`` becomes ``(n_samples, 1)``.
    With ``values=False`` only the type and shape are checked, nothing is
    copied on the host (a JAX array stays a JAX array, converted to ``dtype``
    on its device), and the caller checks the values where the data are
    (:mod:`mixlab.em.data`).

    Raises
    ------
    TypeError
        Non-numeric data (strings, objects, complex numbers).
    ValueError
        Empty data, more than two dimensions, NaN or infinite values, or fewer
        than ``min_samples`` rows.
    """
    if X is None:
        raise TypeError(f"{name} is None; pass an array of shape (n_samples, n_features)")
    if not values and isinstance(X, jax.Array):
        return _check_device_array(X, dtype, name, min_samples)
    if hasattr(X, "to_numpy") and callable(X.to_numpy):  # pandas DataFrame / Series
        X = X.to_numpy()
    try:
        arr = np.asarray(X)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(
            f"{name} could not be read as a numeric array ({exc}); "
            "pass an array of shape (n_samples, n_features)"
        ) from None
    if arr.dtype == object or arr.dtype.kind in "USVMmOc":
        kind = "complex numbers" if arr.dtype.kind == "c" else f"dtype {arr.dtype}"
        raise TypeError(
            f"{name} must be numeric (floats or ints), got {kind}; "
            "convert it with np.asarray(X, dtype=float) or select the numeric columns"
        )
    if arr.dtype.kind == "b":
        arr = arr.astype(dtype)
    arr = _as_2d(arr, name)
    if not values:
        _check_rows(arr.shape[0], name, min_samples)
        return np.asarray(arr, dtype=dtype)
    # np.array(copy=True) so the caller's array is never aliased.
    out = np.array(arr, dtype=dtype, copy=True)
    bad = ~np.isfinite(out)
    if bad.any():
        n_nan = int(np.isnan(out).sum())
        what = "NaN" if n_nan else "infinite values"
        cols = np.flatnonzero(bad.any(axis=0))
        rows = np.flatnonzero(bad.any(axis=1))
        col_txt = ", ".join(str(c) for c in cols[:5]) + (" ..." if len(cols) > 5 else "")
        if np.isfinite(np.asarray(arr, dtype=np.float64)).all():
            raise ValueError(
                f"{name} overflows {dtype} in column {col_txt}; "
                "rescale the data or use dtype=float64"
            )
        raise ValueError(
            f"{name} contains {what} in column {col_txt} ({len(rows)} row(s), first at row "
            f"{rows[0]}); drop or impute those rows before fitting"
        )
    _check_rows(out.shape[0], name, min_samples)
    return out


def _as_2d(arr: Any, name: str) -> Any:
    """``arr`` (NumPy or JAX) as 2-D: one feature for 1-D input; errors for 0-D, 3-D+, empty."""
    if arr.ndim == 0:
        raise ValueError(f"{name} is a scalar; pass an array of shape (n_samples, n_features)")
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} has {arr.ndim} dimensions (shape {arr.shape}); expected 2: "
            "(n_samples, n_features). Reshape it, e.g. X.reshape(len(X), -1)"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(
            f"{name} is empty (shape {arr.shape}); it needs at least one sample and one feature"
        )
    return arr


def _check_rows(n_rows: int, name: str, min_samples: int) -> None:
    if n_rows < min_samples:
        raise ValueError(
            f"{name} has {n_rows} sample(s) but n_components={min_samples}; "
            "use fewer components or more data"
        )


def _check_device_array(X: Any, dtype: np.dtype, name: str, min_samples: int) -> Any:
    """Type and shape checks of a JAX array, which stays on its device."""
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_) or np.issubdtype(
        X.dtype, np.complexfloating
    ):
        raise TypeError(f"{name} must be numeric (floats or ints), got dtype {X.dtype}")
    X = _as_2d(X, name)
    _check_rows(X.shape[0], name, min_samples)
    if X.dtype != dtype:
        with jax.enable_x64(dtype == np.float64):
            X = X.astype(dtype)
    return X


def check_int(value: Any, name: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_float(value: Any, name: str, minimum: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be {op} {minimum}, got {value}")
    return value


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_sample_weight(sample_weight: Any, n_samples: int, dtype: Any) -> np.ndarray:
    """Validate frequency weights and return a fresh 1-D array of ``dtype``.

    Raises
    ------
    TypeError
        Non-numeric weights.
    ValueError
        Wrong shape or length, NaN or infinite values, negative weights, or
        weights that are all zero; each message names the problem and the fix.
    """
    if hasattr(sample_weight, "to_numpy") and callable(sample_weight.to_numpy):
        sample_weight = sample_weight.to_numpy()
    try:
        w = np.asarray(sample_weight)
    except Exception as exc:
        raise TypeError(f"sample_weight could not be read as numbers ({exc})") from None
    if w.dtype == object or w.dtype.kind in "USVMmOc":
        raise TypeError(f"sample_weight must be numeric, got dtype {w.dtype}")
    if w.ndim != 1:
        raise ValueError(f"sample_weight must be 1-D with one weight per row, got shape {w.shape}")
    if w.shape[0] != n_samples:
        raise ValueError(
            f"sample_weight has {w.shape[0]} entries but X has {n_samples} rows; "
            "pass one weight per row"
        )
    w = np.array(w, dtype=dtype, copy=True)
    if not np.all(np.isfinite(w)):
        i = int(np.flatnonzero(~np.isfinite(w))[0])
        raise ValueError(
            f"sample_weight contains NaN or infinite values (first at row {i}); "
            "weights must be finite"
        )
    if np.any(w < 0):
        i = int(np.flatnonzero(w < 0)[0])
        raise ValueError(
            f"sample_weight[{i}] = {w[i]:g} is negative; frequency weights must be >= 0 "
            "(drop a row with weight 0)"
        )
    if not np.any(w > 0):
        raise ValueError("sample_weight is zero for every row: there is nothing to fit")
    return w


def feature_names_of(X: Any) -> tuple[str, ...] | None:
    """Column names of a data frame (pandas or polars) or the name of a series.

    ``None`` for arrays and for frames whose column names repeat (names must
    tell the features apart).
    """
    if isinstance(X, np.ndarray | jax.Array):
        return None
    columns = getattr(X, "columns", None)
    if columns is not None and hasattr(X, "to_numpy"):
        names = tuple(str(c) for c in columns)
    elif hasattr(X, "to_numpy") and getattr(X, "ndim", 1) == 1 and hasattr(X, "name"):
        names = None if X.name is None else (str(X.name),)
    else:
        return None
    if names is None or len(set(names)) != len(names):
        return None
    return names


def feature_units_of(X: Any, names: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """Units of named features from a pandas frame's ``attrs["units"]`` (``{column: unit}``).

    ``""`` for a feature without a unit; ``None`` when no feature has one.
    """
    attrs = getattr(X, "attrs", None)
    units = attrs.get("units") if isinstance(attrs, dict) else None
    if names is None or not isinstance(units, dict):
        return None
    out = tuple(str(units.get(n) or "") for n in names)
    return out if any(out) else None


def check_feature_names(names: Any, n_features: int) -> tuple[str, ...] | None:
    """``feature_names=`` as a tuple of distinct strings, one per feature."""
    if names is None:
        return None
    if isinstance(names, str | bytes) or not hasattr(names, "__iter__"):
        raise TypeError(
            f"feature_names must be a list of strings, one per feature, got {type(names).__name__}"
        )
    names = tuple(names)
    if not all(isinstance(n, str) and n for n in names):
        raise TypeError(f"feature_names must be non-empty strings, got {list(names)!r}")
    if len(names) != n_features:
        raise ValueError(
            f"feature_names has {len(names)} name(s) but the data have {n_features} feature(s); "
            "give one name per column"
        )
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"feature_names must be distinct; repeated: {', '.join(repeated)}")
    return names
