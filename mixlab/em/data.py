"""Data on their way into the EM program: checks, summary, centring and row chunks.

Small NumPy data are checked and laid out on the host, where that takes
microseconds and compiling a device program would take a tenth of a second.
Large data (:data:`DEVICE_VALUES` values or more) and data given as JAX arrays
are handled where they are: NumPy input is transferred once, then one jitted
pass checks that every value is finite (and that the family can model it),
and gives the column means and variances and the largest deviation; a second
writes the centred, zero-padded row chunks the EM program reads.  Nothing
comes back to the host but those few numbers, unless a check fails, when the
host words the error.

Chunks are sized by backend: on a CPU a chunk's widest intermediate fits in
cache (:data:`CHUNK_BYTES`); on an accelerator all rows go in one pass unless
the intermediates would take more than :data:`DEVICE_MEMORY_SHARE` of the
device's free memory.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mixlab._validation import check_data
from mixlab.families import DataSummary, Family

Array = jax.Array

#: Values (rows x features) from which NumPy data are checked and laid out on the
#: device rather than on the host.  Around here the host's checks, copies and
#: padding cost about what compiling the device pass does (~0.1 s).
DEVICE_VALUES = 2**20
#: Bytes of one chunk's widest per-row intermediate on a CPU.  Measured on a 2-core
#: AVX2 machine: 1-4 MiB chunks stay in cache and run 1.2-2x faster than one big
#: chunk (see benchmarks/em_speed.py).
CHUNK_BYTES = 4 * 2**20
MIN_CHUNK = 256
#: On an accelerator, the share of the device's free memory the per-chunk
#: intermediates may take before rows are split into chunks.
DEVICE_MEMORY_SHARE = 0.25


def on_device(X: Any) -> bool:
    """Whether ``X`` goes the device way: a JAX array, or large data."""
    return isinstance(X, jax.Array) or np.size(X) >= DEVICE_VALUES


def platform_of(X: Any) -> str:
    """The platform (``"cpu"``, ``"gpu"``, ``"tpu"``) the fit runs on."""
    if isinstance(X, jax.Array):
        return next(iter(X.devices())).platform
    return jax.default_backend()


def free_device_memory(X: Any) -> int | None:
    """Free bytes on the device holding ``X`` (``None`` where the backend does not say)."""
    device = next(iter(X.devices())) if isinstance(X, jax.Array) else jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats or "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def chunk_layout(
    n_samples: int,
    row_bytes: int,
    chunk_size: int | None,
    platform: str = "cpu",
    free_memory: int | None = None,
) -> tuple[int, int]:
    """``(n_chunks, chunk)``: balanced chunks of at most ``chunk_size`` rows.

    By default, on a CPU a chunk's widest intermediate (``row_bytes`` per row)
    takes about :data:`CHUNK_BYTES`; on an accelerator all rows are one chunk
    unless ``n_samples * row_bytes`` passes :data:`DEVICE_MEMORY_SHARE` of
    ``free_memory``.  Padding is under one row per chunk.
    """
    if chunk_size is None:
        if platform == "cpu":
            chunk_size = max(MIN_CHUNK, CHUNK_BYTES // max(row_bytes, 1))
        elif free_memory is None:
            chunk_size = n_samples
        else:
            budget = int(DEVICE_MEMORY_SHARE * free_memory)
            chunk_size = max(MIN_CHUNK, budget // max(row_bytes, 1))
    n_chunks = -(-n_samples // min(chunk_size, n_samples))
    return n_chunks, -(-n_samples // n_chunks)


def to_chunks(
    X: np.ndarray, n_chunks: int, chunk: int, row_weight: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Zero-pad ``X`` (``(..., n, D)``: leading axes batch data sets) to
    ``n_chunks * chunk`` rows and reshape to ``(..., n_chunks, chunk, D)``; ``W3``
    holds the row weights (``(..., n)``), zero on padding (``None`` when there is
    neither padding nor weights)."""
    *lead, n_samples, n_features = X.shape
    pad = n_chunks * chunk - n_samples
    if pad == 0 and row_weight is None:
        return X.reshape(*lead, n_chunks, chunk, n_features), None
    widths = [(0, 0)] * len(lead) + [(0, pad), (0, 0)]
    X3 = np.pad(X, widths).reshape(*lead, n_chunks, chunk, n_features)
    w = np.ones(n_samples, X.dtype) if row_weight is None else row_weight.astype(X.dtype)
    W3 = np.pad(w, [(0, 0)] * (w.ndim - 1) + [(0, pad)])
    return X3, W3.reshape(*w.shape[:-1], n_chunks, chunk)


# ------------------------------------------------------------------------ host
def _host_summary(
    X: np.ndarray, w: np.ndarray | None, family: Family
) -> tuple[DataSummary, np.ndarray]:
    if w is None:
        mean = X.mean(axis=0, dtype=np.float64)
        var = X.var(axis=0, dtype=np.float64)
    else:
        w64 = w.astype(np.float64)
        total = w64.sum()
        mean = (w64 @ X.astype(np.float64)) / total
        var = (w64 @ np.square(X.astype(np.float64) - mean)) / total
    shift = mean.astype(X.dtype) if family.location else np.zeros(X.shape[1], X.dtype)
    max_abs = float(np.max(np.abs(X - shift))) if family.location else float(np.max(np.abs(X)))
    summary = DataSummary(X.shape[0], X.shape[1], X.dtype, mean, var, max_abs)
    return summary, shift


# ---------------------------------------------------------------------- device
@functools.partial(jax.jit, static_argnames=("family",))
def _device_stats(X: Array, w: Array | None, family: Family) -> tuple[Array, ...]:
    """One pass: non-finite count, invalid count, mean, variance, largest deviation."""
    finite = jnp.isfinite(X)
    n_nonfinite = jnp.sum(~finite)
    Xf = jnp.where(finite, X, 0.0)
    invalid = family.invalid_values(Xf)
    n_invalid = jnp.zeros((), jnp.int32) if invalid is None else jnp.sum(invalid & finite)
    if w is None:
        mean = jnp.mean(Xf, axis=0)
        dev = Xf - mean
        var = jnp.mean(dev * dev, axis=0)
    else:
        total = jnp.sum(w)
        mean = (w @ Xf) / total
        dev = Xf - mean
        var = (w @ (dev * dev)) / total
    centre = family.location
    max_abs = jnp.max(jnp.abs(dev if centre else Xf))
    return n_nonfinite, n_invalid, mean, var, max_abs


def _device_summary(
    X: Array, w: Array | None, family: Family, name: str = "X"
) -> tuple[DataSummary, np.ndarray]:
    n_nonfinite, n_invalid, mean, var, max_abs = jax.device_get(_device_stats(X, w, family))
    if int(n_nonfinite):
        check_data(np.asarray(X), X.dtype, name=name)  # raises, naming rows and columns
    host_check = type(family).invalid_values is Family.invalid_values and (
        type(family).check_data is not Family.check_data
    )
    if int(n_invalid) or host_check:
        family.check_data(np.asarray(X), name)  # words the error (or checks on the host)
    mean = np.asarray(mean, np.float64)
    shift = mean.astype(X.dtype) if family.location else np.zeros(X.shape[1], X.dtype)
    summary = DataSummary(
        X.shape[0], X.shape[1], np.dtype(X.dtype), mean, np.asarray(var, np.float64), float(max_abs)
    )
    return summary, shift


@functools.partial(jax.jit, static_argnames=("n_chunks", "chunk", "weighted"))
def _device_chunks(
    X: Array, w: Array | None, shift: Array, n_chunks: int, chunk: int, weighted: bool
) -> tuple[Array, Array | None]:
    n_samples, n_features = X.shape
    pad = n_chunks * chunk - n_samples
    X3 = jnp.pad(X - shift, ((0, pad), (0, 0))).reshape(n_chunks, chunk, n_features)
    if not weighted:
        return X3, None
    w = jnp.ones(n_samples, X.dtype) if w is None else w.astype(X.dtype)
    return X3, jnp.pad(w, (0, pad)).reshape(n_chunks, chunk)


# ---------------------------------------------------------------------- public
def summarize(X: Any, w: Any, family: Family) -> tuple[DataSummary, np.ndarray]:
    """The data's :class:`DataSummary` and the shift (the mean for location
    families, else zeros); checks values on the device for device data."""
    if isinstance(X, jax.Array):
        return _device_summary(X, None if w is None else jnp.asarray(w, X.dtype), family)
    return _host_summary(X, w, family)


def chunked(
    X: Any, w: np.ndarray | None, shift: np.ndarray, n_chunks: int, chunk: int
) -> tuple[Array, Array | None]:
    """``X - shift`` as device row chunks ``(n_chunks, chunk, D)`` and the row weights
    ``(n_chunks, chunk)``, zero on padding (``None`` with neither padding nor weights)."""
    if isinstance(X, jax.Array):
        weighted = w is not None or n_chunks * chunk != X.shape[0]
        wd = None if w is None else jnp.asarray(w, X.dtype)
        return _device_chunks(X, wd, jnp.asarray(shift), n_chunks, chunk, weighted)
    X3, W3 = to_chunks(X - shift if np.any(shift) else X, n_chunks, chunk, w)
    # device_put, not jnp.asarray (a compiled program per shape in a new process); the
    # chunks live only while the fit runs
    return jax.device_put(X3), None if W3 is None else jax.device_put(W3)


# --------------------------------------------------------------------- sharded
#: Name of the mesh axis the rows are spread over.
ROWS = "rows"


def row_mesh(X: Any, devices: Any) -> Any:
    """The one-axis mesh (axis :data:`ROWS`) the rows are spread over, or ``None`` for
    one device: ``devices`` ("all" or a tuple of devices), else the devices of a JAX
    array sharded over several."""
    from jax.sharding import Mesh, NamedSharding

    if devices is None:
        if not isinstance(X, jax.Array) or len(X.sharding.device_set) < 2:
            return None
        sharding = X.sharding
        if isinstance(sharding, NamedSharding) and sharding.mesh.devices.ndim == 1:
            devices = tuple(sharding.mesh.devices)
        else:
            devices = tuple(sorted(sharding.device_set, key=lambda d: d.id))
    elif devices == "all":
        devices = tuple(jax.local_devices())
    if len(devices) < 2:
        return None
    return Mesh(np.array(devices), (ROWS,))


def shard_chunks(
    X: Any, w: np.ndarray | None, shift: np.ndarray, n_chunks: int, chunk: int, mesh: Any
) -> tuple[Array, Array]:
    """Like :func:`chunked`, with every chunk's rows spread over ``mesh`` (``chunk``
    a multiple of its size): ``(n_chunks, chunk, D)`` sharded on the row axis, and
    the row weights (always present: padding rows weigh zero).  Rows keep their
    order, so initialisations draw the same rows as on one device."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    if isinstance(X, jax.Array):
        wd = None if w is None else jnp.asarray(w, X.dtype)
        X3, W3 = _device_chunks(X, wd, jnp.asarray(shift), n_chunks, chunk, True)
    else:
        ones = np.ones(X.shape[0], X.dtype) if w is None else w
        X3, W3 = to_chunks(X - shift if np.any(shift) else X, n_chunks, chunk, ones)
    return (
        jax.device_put(X3, NamedSharding(mesh, P(None, ROWS, None))),
        jax.device_put(W3, NamedSharding(mesh, P(None, ROWS))),
    )
