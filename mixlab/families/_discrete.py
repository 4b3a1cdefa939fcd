"""Helpers shared by the families of counts and binary data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def safe_log(values: Array) -> Array:
    """``log`` with zero mapped to ``log`` of the smallest normal number (about -708 in
    float64, -87 in float32) instead of ``-inf``: a probability of exactly zero then
    gives a finite, hopeless log-density where the data contradict it and an exact 0
    where they do not (``0 * log 0``), never a NaN."""
    return jnp.log(jnp.maximum(values, jnp.finfo(values.dtype).tiny))


def first_bad_cell(bad: np.ndarray) -> tuple[int, int]:
    row, col = np.argwhere(bad)[0]
    return int(row), int(col)


def check_values(X: np.ndarray, bad: np.ndarray, name: str, family: str, need: str) -> None:
    if bad.any():
        row, col = first_bad_cell(bad)
        raise ValueError(
            f"{name} must hold {need} for the {family} family; column {col} has "
            f"{X[row, col]:g} at row {row} ({int(bad.sum())} such value(s)). "
            f"Check the data, or choose another family"
        )
