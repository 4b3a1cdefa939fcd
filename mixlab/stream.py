"""Exact EM on data larger than memory: row-chunk sources and the streaming engine.

A :class:`ChunkSource` gives the rows of a data set in chunks, once per pass,
and can be read again and again: a NumPy array or ``numpy.memmap``, an
``.npy`` file (re-opened on every pass), any array-like object with ``.shape``
and row slicing (zarr, h5py datasets: duck-typed, neither is imported) or a
callable that returns a fresh iterator of chunks on every call.
:func:`chunks` builds the right one from what it is given.

:func:`fit_stream` fits a mixture by EM over such a source and gives the
result :func:`mixlab.fit` gives on the same data in memory (same start: the
same parameters to rounding, ``1e-10`` relative in float64, and the same
``n_iter``).  It works for every family and covariance layout, because every
family's sufficient statistics are additive pytrees
(:meth:`mixlab.families.Family.summarize`).  The passes over the source:

1. *scan*: every chunk is checked (width, finite values, values the family
   can model) and the data's summary gathered: rows, weighted means and
   variances (merged chunk by chunk in float64), the largest deviation from
   the mean.  The centring, the formulation and the checks against
   ``reg_covar`` follow from it exactly as in memory.  Without an explicit
   start, the same pass draws a seeded uniform sample of rows
   (:func:`reservoir_sample`) on which mixlab's usual initialisation runs.
2. *one pass per EM iteration*: each block of rows is sent to the device,
   where one compiled function computes the block's statistics for all
   restarts at once (``vmap``) and adds them to running sums kept on the
   device; the next block is read in a background thread meanwhile.  The
   M-step, the collapse handling and the stopping rule then run once per
   iteration, exactly as :func:`mixlab.em.driver.run_em` does in memory.
   Families whose M-step needs a second pass (Gaussian covariances centred on
   the *new* means, Student-t scale matrices) get their second-pass sums in
   the same pass: they are summed about the previous iteration's centres (the
   first iteration: the start's component locations) and moved to the new ones
   exactly, since the sums are quadratic in the centre and the move needs only
   each component's responsibility total and weighted mean (its rounding is
   about ``eps * |new - old|^2 / variance``, far below the 1e-10 agreement
   with the in-memory fit in float64).  (A custom family
   whose second pass is not known to be quadratic takes two passes per
   iteration.)  A restart of a collapsed component (``on_collapse="reinit"``)
   takes one more pass to find the row the mixture explains worst, only on the
   iterations where some restart needs it, as in memory.
3. *final*: the exact log-likelihood of the returned parameters.

Blocks have one shape (the last one is padded with rows of weight zero), so
each kind of pass compiles one program.  Host memory holds a few blocks at a
time (16 MiB of data each by default), whatever the number of rows.
"""

from __future__ import annotations

import functools
import mmap
import os
import queue
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mixlab._jaxutil import CompiledCache, KeyLike, Progress, as_key, resolve_dtype
from mixlab._validation import check_int
from mixlab.em.collapse import collapse_flags
from mixlab.em.data import CHUNK_BYTES, MIN_CHUNK
from mixlab.em.driver import (
    COLLAPSE_POLICIES,
    EMSettings,
    EMState,
    EMStatus,
    _component_ok,
    _failure_message,
    _reinitialise,
    _select,
    restart_keys,
    trace_capacity,
)
from mixlab.em.init import initial_params, resolve_init
from mixlab.em.steps import _row_log_density, chunk_sum, e_pass, guarded_counts, objectives
from mixlab.em.stopping import StopRule, should_stop, stop_rule
from mixlab.errors import ConvergenceWarning, FitError
from mixlab.families import DataSummary, Family
from mixlab.methods import EM
from mixlab.params import MixtureParams, explicit_start

Array = jax.Array

#: Rows of the uniform sample the initialisation runs on (without explicit start).
SAMPLE_ROWS = 2**16
#: Bytes of data (in the computation dtype) per block sent to the device.
BLOCK_BYTES = 16 * 2**20
#: Blocks read ahead by the background thread.
PREFETCH = 2
#: Values (rows x features) from which the final pass runs a program of its own
#: (a plain E-step); below, it reuses the iterations' program (one compilation fewer).
LEAN_VALUES = 2**20

__all__ = [
    "ArraySource",
    "CallableSource",
    "Chunk",
    "ChunkError",
    "ChunkSource",
    "NpySource",
    "Sample",
    "SourceReadError",
    "chunks",
    "fit_stream",
    "reservoir_sample",
]


# ============================================================================ errors
class ChunkError(ValueError):
    """A chunk of a source cannot be used; the message names the chunk and its rows.

    Attributes
    ----------
    index : int or None
        Position of the chunk in its pass (from 0); ``None`` for the source as a whole.
    start, stop : int or None
        Its rows, ``start`` to ``stop - 1`` of the data.
    """

    def __init__(
        self,
        message: str,
        index: int | None = None,
        start: int | None = None,
        stop: int | None = None,
    ) -> None:
        super().__init__(message)
        self.index, self.start, self.stop = index, start, stop


class SourceReadError(OSError):
    """A source could not be read (a file that vanished or was cut short); the
    message names the chunk and the pass."""


def _where(index: int, start: int, n_rows: int) -> str:
    return f"chunk {index} (rows {start}-{start + n_rows - 1})"


# ============================================================================ sources
class Chunk(NamedTuple):
    """One chunk of a pass over a source.

    Attributes
    ----------
    index : int
        Position of the chunk in the pass, from 0.
    start : int
        Its first row in the data.
    values : ndarray of shape (n_rows, n_features)
    weights : ndarray of shape (n_rows,), optional
        Frequency weights of its rows (``None``: all one).
    """

    index: int
    start: int
    values: np.ndarray
    weights: np.ndarray | None

    @property
    def stop(self) -> int:
        return self.start + len(self.values)

    @property
    def where(self) -> str:
        """``"chunk 7 (rows 70000-79999)"``: how error messages name the chunk."""
        return _where(self.index, self.start, len(self.values))


class ChunkSource(ABC):
    """Rows of a data set in chunks, read again on every pass.

    Subclasses give the raw chunks of one pass (:meth:`_read`); :meth:`chunks`
    numbers them, tracks their rows and checks their shapes, so every error
    names the chunk (``"chunk 7 (rows 70000-79999) ..."``).

    Attributes
    ----------
    n_samples : int or None
        Rows, where known before a pass.
    n_features : int or None
        Columns, where known before a pass.
    dtype : numpy dtype or None
        The stored dtype, where known.
    chunk_rows : int or None
        Rows per chunk the source reads (``None``: the reader decides, for sources
        that can be sliced anywhere; a callable's chunks are its own).
    """

    n_samples: int | None = None
    n_features: int | None = None
    dtype: np.dtype | None = None
    chunk_rows: int | None = None
    #: Whether chunk sizes are free (array-like sources slice where the reader asks).
    sliceable: bool = False

    def __init__(self) -> None:
        self.passes = 0

    @abstractmethod
    def _read(self, rows: int | None) -> Iterator[Any]:
        """One pass: arrays ``(n, D)``, or ``(values, weights)`` pairs."""

    def describe(self) -> str:
        return type(self).__name__

    def chunks(self, rows: int | None = None) -> Iterator[Chunk]:
        """One pass over the source: :class:`Chunk` objects with shapes checked.

        Parameters
        ----------
        rows : int, optional
            Rows per chunk for sources that can be sliced anywhere (default
            :attr:`chunk_rows`, else the whole source at once).

        Raises
        ------
        ChunkError
            A chunk that is not a 2-D numeric array, whose width differs from
            the others, or whose weights are not finite non-negative numbers of
            its length.
        SourceReadError
            The source could not be read.
        """
        self.passes += 1
        start = 0
        width = self.n_features
        weighted: bool | None = None
        for index, item in enumerate(self._read(rows or self.chunk_rows)):
            values, weights = _split(item, index, start)
            values = _as_chunk_array(values, index, start, width)
            n_rows = values.shape[0]
            if width is None:
                width = values.shape[1]
            if weights is not None:
                weights = _chunk_weights(weights, n_rows, index, start)
            if weighted is None:
                weighted = weights is not None
            elif weighted != (weights is not None):
                raise ChunkError(
                    f"{_where(index, start, n_rows)} "
                    + (
                        "has weights but earlier chunks had none"
                        if weighted is False
                        else "has no weights but earlier chunks had them"
                    )
                    + "; give (values, weights) pairs for every chunk or for none",
                    index,
                    start,
                    start + n_rows,
                )
            yield Chunk(index, start, values, weights)
            start += n_rows


def _split(item: Any, index: int, start: int) -> tuple[Any, Any]:
    if isinstance(item, tuple):
        if len(item) != 2:
            raise ChunkError(
                f"chunk {index} (from row {start}) is a tuple of {len(item)} items; a chunk is "
                "an array of shape (n_rows, n_features) or a (values, weights) pair",
                index,
                start,
            )
        return item
    return item, None


def _as_chunk_array(values: Any, index: int, start: int, width: int | None) -> np.ndarray:
    try:
        arr = np.asarray(values)
    except Exception as exc:
        raise ChunkError(
            f"chunk {index} (from row {start}) could not be read as a numeric array ({exc})",
            index,
            start,
        ) from None
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise ChunkError(
            f"chunk {index} (from row {start}) must be numeric (floats or ints), got dtype "
            f"{arr.dtype}",
            index,
            start,
        )
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise ChunkError(
            f"chunk {index} (from row {start}) has {arr.ndim} dimensions (shape {arr.shape}); "
            "a chunk is an array of shape (n_rows, n_features)",
            index,
            start,
        )
    if width is not None and arr.shape[1] != width:
        raise ChunkError(
            f"{_where(index, start, arr.shape[0])} has {arr.shape[1]} column(s) but the "
            f"data have {width}; every chunk must have the same columns",
            index,
            start,
            start + arr.shape[0],
        )
    return arr


def _chunk_weights(weights: Any, n_rows: int, index: int, start: int) -> np.ndarray:
    w = np.asarray(weights)
    where = _where(index, start, n_rows)
    if w.dtype.kind not in "biuf" or w.shape != (n_rows,):
        raise ChunkError(
            f"{where} has weights of shape {w.shape} (dtype {w.dtype}); they must be "
            f"numbers of shape ({n_rows},), one per row",
            index,
            start,
            start + n_rows,
        )
    w = w.astype(np.float64)
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ChunkError(
            f"{where} has weight {w[i]:g} at row {start + i}; sample weights must be finite "
            "and non-negative",
            index,
            start,
            start + n_rows,
        )
    return w


def _release_pages(view: np.ndarray) -> None:
    """Drop the file pages behind ``view`` (rows of a ``numpy.memmap``) from this
    process's resident memory; the page cache keeps them.  Best effort."""
    base = view
    while base is not None and not isinstance(getattr(base, "_mmap", None), mmap.mmap):
        base = getattr(base, "base", None)
    if base is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    buf = base._mmap
    try:
        origin = np.frombuffer(buf, np.uint8).ctypes.data
        first = view.ctypes.data - origin
        begin = first - first % mmap.PAGESIZE
        length = first + view.nbytes - begin
        buf.madvise(mmap.MADV_DONTNEED, begin, min(length, len(buf) - begin))
    except (ValueError, OSError, TypeError, BufferError):
        pass


class ArraySource(ChunkSource):
    """Chunks of an array-like object: a NumPy array, a ``numpy.memmap``, or anything
    with ``.shape``, ``.dtype`` and row slicing ``data[start:stop]`` (zarr arrays,
    h5py datasets).

    The rows of a memmap are released from resident memory once copied, so
    a pass over a file larger than memory keeps memory flat.

    Parameters
    ----------
    data : array-like of shape (n_samples, n_features) or (n_samples,)
    chunk_rows : int, optional
        Rows per chunk (default: the fit chooses).
    sample_weight : array-like of shape (n_samples,), optional
        Frequency weights of the rows, sliced with them.
    """

    sliceable = True

    def __init__(self, data: Any, chunk_rows: int | None = None, sample_weight: Any = None):
        super().__init__()
        shape = getattr(data, "shape", None)
        if shape is None or not hasattr(data, "__getitem__"):
            raise TypeError(
                f"an array source needs .shape and row slicing; got {type(data).__name__}"
            )
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (1, 2):
            raise ValueError(
                f"the data have {len(shape)} dimensions (shape {shape}); expected "
                "(n_samples, n_features)"
            )
        self.data = data
        self.n_samples = shape[0]
        self.n_features = 1 if len(shape) == 1 else shape[1]
        self.dtype = np.dtype(data.dtype) if hasattr(data, "dtype") else None
        self.chunk_rows = None if chunk_rows is None else check_int(chunk_rows, "chunk_rows", 1)
        if sample_weight is not None:
            n_w = len(sample_weight)
            if n_w != self.n_samples:
                raise ValueError(
                    f"sample_weight has {n_w} entries but the data have {self.n_samples} rows"
                )
        self.sample_weight = sample_weight

    def describe(self) -> str:
        return f"{type(self.data).__name__} of shape {(self.n_samples, self.n_features)}"

    def _read(self, rows: int | None) -> Iterator[Any]:
        rows = rows or max(self.n_samples, 1)
        for start in range(0, self.n_samples, rows):
            stop = min(start + rows, self.n_samples)
            part = self.data[start:stop]
            values = np.array(part, copy=True)  # never a view of the caller's data
            if isinstance(part, np.ndarray):
                _release_pages(part)
            if self.sample_weight is None:
                yield values
            else:
                yield values, np.array(self.sample_weight[start:stop], copy=True)


class NpySource(ChunkSource):
    """Chunks of an ``.npy`` file, opened again on every pass.

    The header is read each pass (a file that vanished or changed between
    passes gives a clear error naming the chunk), and rows are read with plain
    file reads into fresh buffers, so memory stays flat whatever the file's
    size.  Fortran-ordered files are read through ``np.load(mmap_mode="r")``.

    Parameters
    ----------
    path : str or os.PathLike
    chunk_rows : int, optional
        Rows per chunk (default: the fit chooses).
    """

    sliceable = True

    def __init__(self, path: str | os.PathLike, chunk_rows: int | None = None):
        super().__init__()
        self.path = os.fspath(path)
        self.chunk_rows = None if chunk_rows is None else check_int(chunk_rows, "chunk_rows", 1)
        try:
            shape, _, dtype, _ = self._header()
        except OSError as exc:
            raise SourceReadError(f"could not open {self.path!r}: {exc}") from exc
        self.n_samples = shape[0]
        self.n_features = 1 if len(shape) == 1 else shape[1]
        self.dtype = dtype

    def describe(self) -> str:
        return f"{self.path!r}"

    def _header(self, f: Any = None) -> tuple[tuple[int, ...], bool, np.dtype, int]:
        own = f is None
        if own:
            f = open(self.path, "rb")
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                arr = np.load(self.path, mmap_mode="r")
                shape, fortran, dtype = arr.shape, bool(np.isfortran(arr)), arr.dtype
            if len(shape) not in (1, 2):
                raise ValueError(
                    f"{self.path!r} holds an array of shape {shape}; expected "
                    "(n_samples, n_features)"
                )
            return tuple(shape), bool(fortran), np.dtype(dtype), f.tell()
        finally:
            if own:
                f.close()

    def _read(self, rows: int | None) -> Iterator[Any]:
        rows = rows or max(self.n_samples, 1)
        first = _where(0, 0, min(rows, self.n_samples))
        try:
            f = open(self.path, "rb")
        except OSError as exc:
            raise SourceReadError(
                f"could not open {self.path!r} to read {first} on pass {self.passes} "
                f"({exc.strerror or exc}); the file must stay in place while the fit runs"
            ) from exc
        with f:
            shape, fortran, dtype, offset = self._header(f)
            width = 1 if len(shape) == 1 else shape[1]
            if shape[0] != self.n_samples or width != self.n_features or dtype != self.dtype:
                raise SourceReadError(
                    f"{self.path!r} changed between passes: it now holds {shape} {dtype}, "
                    f"not {(self.n_samples, self.n_features)} {self.dtype} (pass {self.passes}, "
                    f"before {first})"
                )
            if fortran or dtype.hasobject:
                arr = np.load(self.path, mmap_mode="r")
                for start in range(0, self.n_samples, rows):
                    part = arr[start : start + rows]
                    yield np.array(part, copy=True)
                    _release_pages(part)
                return
            for index, start in enumerate(range(0, self.n_samples, rows)):
                n_rows = min(rows, self.n_samples - start)
                buf = np.empty((n_rows, width), dtype)
                try:
                    f.seek(offset + start * width * dtype.itemsize)
                    got = f.readinto(memoryview(buf).cast("B"))
                except OSError as exc:
                    raise SourceReadError(
                        f"could not read {_where(index, start, n_rows)} of {self.path!r} on pass "
                        f"{self.passes}: {exc}"
                    ) from exc
                if got != buf.nbytes:
                    raise SourceReadError(
                        f"{self.path!r} ended early: {_where(index, start, n_rows)} is cut short "
                        f"on pass {self.passes} (the file was truncated or is still being written)"
                    )
                yield buf


class CallableSource(ChunkSource):
    """Chunks from a callable that returns a fresh iterator of chunks on every call.

    Each chunk is an array ``(n_rows, n_features)`` or a ``(values, weights)``
    pair; chunk sizes may vary.  The callable is called once per pass and must
    give the same rows every time.

    Parameters
    ----------
    make_chunks : callable
        ``make_chunks()`` returns an iterable of chunks (a generator function, say).
    n_samples : int, optional
        Total rows, if known (checked on every pass).
    """

    def __init__(self, make_chunks: Callable[[], Iterable[Any]], n_samples: int | None = None):
        super().__init__()
        if not callable(make_chunks):
            raise TypeError(f"make_chunks must be callable, got {type(make_chunks).__name__}")
        self.make_chunks = make_chunks
        self.n_samples = None if n_samples is None else check_int(n_samples, "n_samples", 0)

    def describe(self) -> str:
        return getattr(self.make_chunks, "__name__", type(self.make_chunks).__name__)

    def _read(self, rows: int | None) -> Iterator[Any]:
        made = self.make_chunks()
        if isinstance(made, np.ndarray) or not isinstance(made, Iterable):
            raise TypeError(
                f"{self.describe()}() must return an iterable of chunks (a generator, say), "
                f"got {type(made).__name__}"
            )
        yield from made


def chunks(
    data: Any,
    chunk_rows: int | None = None,
    *,
    sample_weight: Any = None,
    n_samples: int | None = None,
) -> ChunkSource:
    """A :class:`ChunkSource` over ``data``, read again on every pass of a fit.

    Parameters
    ----------
    data : ndarray, numpy.memmap, str or os.PathLike, array-like, callable or ChunkSource
        A NumPy array or memmap; the path of an ``.npy`` file (re-opened on every
        pass); any object with ``.shape``, ``.dtype`` and row slicing (zarr,
        h5py); or a callable returning a fresh iterable of chunks (arrays
        ``(n_rows, n_features)`` or ``(values, weights)`` pairs) on every call.
    chunk_rows : int, optional
        Rows per chunk of array-like sources (default: the fit chooses about
        16 MiB per chunk).  A callable's chunks are its own.
    sample_weight : array-like of shape (n_samples,), optional
        Frequency weights of the rows of an array-like source.
    n_samples : int, optional
        Total rows of a callable source, when known.

    Returns
    -------
    ChunkSource
    """
    if isinstance(data, ChunkSource):
        return data
    if isinstance(data, str | os.PathLike):
        if sample_weight is not None:
            raise ValueError("sample_weight is for array sources; yield (X, w) pairs instead")
        return NpySource(data, chunk_rows)
    if hasattr(data, "shape") and hasattr(data, "__getitem__"):
        return ArraySource(data, chunk_rows, sample_weight)
    if callable(data):
        if sample_weight is not None:
            raise ValueError(
                "a callable source gives its weights itself: yield (values, weights) pairs"
            )
        return CallableSource(data, n_samples)
    raise TypeError(
        "data must be an array (NumPy, memmap, zarr, h5py), the path of an .npy file or a "
        f"callable returning an iterable of chunks; got {type(data).__name__}"
    )


# ============================================================================ sampling
class Sample(NamedTuple):
    """A uniform sample of rows without replacement (:func:`reservoir_sample`).

    Attributes
    ----------
    values : ndarray of shape (n, n_features)
        The rows, in their order in the data.
    weights : ndarray of shape (n,), optional
        Their frequency weights (``None`` for an unweighted source).
    index : ndarray of shape (n,)
        Their row numbers.
    n_seen : int
        Rows of positive weight in the source.
    """

    values: np.ndarray
    weights: np.ndarray | None
    index: np.ndarray
    n_seen: int


def _philox_seed(key: Array) -> int:
    data = np.asarray(
        jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key,
        np.uint64,
    )
    return int(data[0]) << 32 | int(data[1])


def _row_uniforms(seed: int, start: int, n_rows: int) -> np.ndarray:
    """Uniforms on [0, 1) for rows ``start`` to ``start + n_rows - 1``: a function of
    the seed and the row number alone (counter-based Philox), whatever the chunking."""
    gen = np.random.Philox(key=seed)
    gen.advance(start // 4)  # each counter step gives four 64-bit values
    raw = gen.random_raw(n_rows + start % 4)[start % 4 :]
    return (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53


class _Reservoir:
    """Bottom-``n`` sampling: every row gets a uniform tag (a function of the row
    number and the seed); the ``n`` smallest tags form a uniform sample without
    replacement, the vectorised form of Algorithm R."""

    def __init__(self, size: int, key: Array, n_features: int, dtype: Any):
        self.size = size
        self.seed = _philox_seed(key)
        self.tags = np.empty(0)
        self.values = np.empty((0, n_features), dtype)
        self.weights: np.ndarray | None = None
        self.index = np.empty(0, np.int64)
        self.n_seen = 0

    def add(self, start: int, values: np.ndarray, weights: np.ndarray | None) -> None:
        tags = _row_uniforms(self.seed, start, len(values))
        keep = np.ones(len(values), bool) if weights is None else weights > 0
        self.n_seen += int(np.count_nonzero(keep))
        if len(self.tags) >= self.size:
            keep &= tags < self.tags.max()
        if not keep.any():
            return
        rows = np.flatnonzero(keep)
        self.tags = np.concatenate([self.tags, tags[rows]])
        self.values = np.concatenate([self.values, values[rows]])
        self.index = np.concatenate([self.index, start + rows])
        if weights is not None:
            old = np.empty(0) if self.weights is None else self.weights
            self.weights = np.concatenate([old, weights[rows]])
        if len(self.tags) > self.size:
            best = np.argpartition(self.tags, self.size - 1)[: self.size]
            self.tags, self.values, self.index = (
                self.tags[best],
                self.values[best],
                self.index[best],
            )
            if self.weights is not None:
                self.weights = self.weights[best]

    def result(self) -> Sample:
        order = np.argsort(self.index, kind="stable")
        weights = None if self.weights is None else self.weights[order]
        return Sample(self.values[order], weights, self.index[order], self.n_seen)


def reservoir_sample(source: Any, n_rows: int, key: KeyLike = 0) -> Sample:
    """A seeded uniform sample of ``n_rows`` rows without replacement, in one pass.

    Every row of positive weight is in the sample with probability
    ``n_rows / N`` (``N`` such rows); all of them when ``N <= n_rows``.  The
    sample depends on the key and the rows alone, not on how they are chunked.

    Parameters
    ----------
    source : ChunkSource or anything :func:`chunks` accepts
    n_rows : int
    key : int or jax.random key

    Returns
    -------
    Sample
        ``values`` in the order of the data, their ``weights`` and row ``index``.
    """
    n_rows = check_int(n_rows, "n_rows", minimum=1)
    src = chunks(source)
    reservoir: _Reservoir | None = None
    for chunk in src.chunks():
        if reservoir is None:
            reservoir = _Reservoir(n_rows, as_key(key), chunk.values.shape[1], chunk.values.dtype)
        reservoir.add(chunk.start, chunk.values, chunk.weights)
    if reservoir is None:
        raise ChunkError(f"the source {src.describe()} is empty: a pass gave no chunks")
    return reservoir.result()


# ============================================================================ reading
def _prefetched(items: Iterable[Any], depth: int) -> Iterator[Any]:
    """``items``, produced ``depth`` ahead in a background thread (errors re-raised here)."""
    if depth <= 0:
        yield from items
        return
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put(("item", item)):
                    return
            put(("done", None))
        except BaseException as exc:  # forwarded to the consumer
            put(("error", exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="mixlab-stream-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = slots.get()
            if kind == "done":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _cast_checked(chunk: Chunk, dtype: np.dtype) -> np.ndarray:
    """The chunk's values in ``dtype``, checked finite (errors name the chunk and rows)."""
    values = chunk.values
    out = values if values.dtype == dtype else values.astype(dtype)
    finite = np.isfinite(out)
    if not finite.all():
        bad = ~finite
        rows = np.flatnonzero(bad.any(axis=1))
        cols = np.flatnonzero(bad.any(axis=0))
        col_txt = ", ".join(str(c) for c in cols[:5]) + (" ..." if len(cols) > 5 else "")
        if np.isfinite(values[rows]).all():
            raise ChunkError(
                f"{chunk.where} overflows {dtype} in column {col_txt}; rescale the data or use "
                "dtype=float64",
                chunk.index,
                chunk.start,
                chunk.stop,
            )
        what = "NaN" if np.isnan(out[rows]).any() else "infinite values"
        raise ChunkError(
            f"{chunk.where} holds {what} in column {col_txt} ({len(rows)} row(s), first at row "
            f"{chunk.start + int(rows[0])}); drop or impute those rows before fitting",
            chunk.index,
            chunk.start,
            chunk.stop,
        )
    return out


def _check_family_values(chunk: Chunk, values: np.ndarray, family: Family) -> None:
    """Values the family cannot model (negative counts, non-binary values...)."""
    if type(family).check_data is not Family.check_data:
        try:
            family.check_data(values, "the chunk")
        except ValueError as exc:
            raise ChunkError(
                f"{chunk.where}: {exc} (row numbers within the chunk)",
                chunk.index,
                chunk.start,
                chunk.stop,
            ) from None
    elif type(family).invalid_values is not Family.invalid_values:
        bad = np.asarray(family.invalid_values(jnp.asarray(values)))
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise ChunkError(
                f"{chunk.where} holds {values[row, col]:g} in column {col} at row "
                f"{chunk.start + row}, a value {family!r} cannot model ({int(bad.sum())} such "
                "value(s)); check the data, or choose another family",
                chunk.index,
                chunk.start,
                chunk.stop,
            )


class _Block(NamedTuple):
    values: np.ndarray  # (padded_rows, D)
    weights: np.ndarray | None  # (padded_rows,), zero on padding; None: all one
    n_rows: int


def _blocks(
    source: ChunkSource, read_rows: int | None, block_rows: int, padded_rows: int, dtype: np.dtype
) -> Iterator[_Block]:
    """Checked chunks regrouped into blocks of ``block_rows`` rows, each stored in
    ``padded_rows`` rows (zero rows of weight zero after the data)."""
    width = None
    values = weights = None
    fill = 0
    owned = source.sliceable  # array-like sources hand out fresh copies
    for chunk in source.chunks(read_rows):
        # values were checked on the scan pass; a value gone bad since shows as a
        # non-finite log-likelihood, and the fit then checks the source again
        x = chunk.values if chunk.values.dtype == dtype else chunk.values.astype(dtype)
        w = chunk.weights
        if width is None:
            width = x.shape[1]
        pos = 0
        if fill == 0 and len(x) == block_rows == padded_rows and (owned or x is not chunk.values):
            # a whole block that is ours already (a fresh copy): no second copy
            yield _Block(x, None if w is None else w.astype(dtype), block_rows)
            continue
        while pos < len(x):
            if values is None:
                values = np.zeros((padded_rows, width), dtype)
                weights = np.zeros(padded_rows, dtype)
            take = min(block_rows - fill, len(x) - pos)
            values[fill : fill + take] = x[pos : pos + take]
            weights[fill : fill + take] = 1.0 if w is None else w[pos : pos + take]
            fill += take
            pos += take
            if fill == block_rows:
                yield _Block(values, weights, fill)
                values = weights = None
                fill = 0
    if fill:
        yield _Block(values, weights, fill)


# ============================================================================ scan pass
class _Scan(NamedTuple):
    summary: DataSummary
    shift: np.ndarray
    total_weight: float
    n_positive: int
    weighted: bool
    sample: Sample | None


#: Rows per step of the scan's moment sums (keeps their float64 temporaries small).
MOMENT_ROWS = 2**14


@jax.jit
def _chunk_moments(values: Array, weights: Array) -> tuple[Array, ...]:
    """One chunk's weight, rows of positive weight, weighted mean and sum of squared
    deviations about it (float64, merged over sub-chunks by Chan's formula), and the
    extremes over rows of positive weight.  ``len(values)`` is a power of two or a
    multiple of :data:`MOMENT_ROWS`."""
    n_rows, n_features = values.shape
    step = min(n_rows, MOMENT_ROWS)
    X3 = values.reshape(-1, step, n_features)
    W3 = weights.reshape(-1, step)

    def one(carry: tuple[Array, ...], xs: tuple[Array, Array]) -> tuple[tuple[Array, ...], None]:
        total, count, mean, m2, low, high = carry
        xv, wv = xs
        x = xv.astype(jnp.float64)
        w = wv.astype(jnp.float64)
        positive = wv > 0
        cw = jnp.sum(w)
        cmean = (w @ x) / jnp.where(cw > 0, cw, 1.0)
        cm2 = w @ jnp.square(x - cmean)
        new_total = total + cw
        share = cw / jnp.where(new_total > 0, new_total, 1.0)
        delta = cmean - mean
        return (
            new_total,
            count + jnp.sum(positive, dtype=jnp.int64),
            mean + delta * share,
            m2 + cm2 + delta * delta * total * share,
            jnp.minimum(low, jnp.min(jnp.where(positive[:, None], x, jnp.inf), axis=0)),
            jnp.maximum(high, jnp.max(jnp.where(positive[:, None], x, -jnp.inf), axis=0)),
        ), None

    zero = jnp.zeros(n_features, jnp.float64)
    init = (
        jnp.zeros((), jnp.float64),
        jnp.zeros((), jnp.int64),
        zero,
        zero,
        zero + jnp.inf,
        zero - jnp.inf,
    )
    return jax.lax.scan(one, init, (X3, W3))[0]


class _Moments:
    """Weighted means and sums of squared deviations, merged chunk by chunk (Chan et
    al.) in float64; the extremes over rows of positive weight.  Each chunk's own
    sums run on the device (zero-weight rows padding it to one of a few shapes)."""

    def __init__(self, n_features: int, rows: int | None):
        self.rows = rows
        self.weight = 0.0
        self.count = 0  # rows of positive weight
        self.mean = np.zeros(n_features)
        self.m2 = np.zeros(n_features)
        self.low = np.full(n_features, np.inf)
        self.high = np.full(n_features, -np.inf)
        self.pending: list[Any] = []

    def add(self, values: np.ndarray, weights: np.ndarray | None) -> None:
        n_rows = len(values)
        if self.rows is not None and n_rows <= self.rows:
            size = self.rows
        else:
            size = max(256, 1 << (n_rows - 1).bit_length())  # a few shapes, a few programs
        if size > MOMENT_ROWS:
            size = -(-size // MOMENT_ROWS) * MOMENT_ROWS
        w = np.zeros(size, values.dtype)
        w[:n_rows] = 1.0 if weights is None else weights
        if size != n_rows:
            padded = np.zeros((size, values.shape[1]), values.dtype)
            padded[:n_rows] = values
            values = padded
        with jax.enable_x64(True):
            self.pending.append(_chunk_moments(values, w))
        if len(self.pending) > 2:
            self._merge(self.pending.pop(0))

    def _merge(self, out: tuple[Array, ...]) -> None:
        total, count, mean, m2, low, high = (np.asarray(a) for a in jax.device_get(out))
        cw = float(total)
        self.count += int(count)
        self.low = np.minimum(self.low, low)
        self.high = np.maximum(self.high, high)
        if cw <= 0:
            return
        new_total = self.weight + cw
        delta = mean - self.mean
        self.mean = self.mean + delta * (cw / new_total)
        self.m2 = self.m2 + m2 + delta * delta * (self.weight * cw / new_total)
        self.weight = new_total

    def finish(self) -> None:
        for out in self.pending:
            self._merge(out)
        self.pending = []


def _checked_chunks(
    source: ChunkSource, read_rows: int | None, dtype_arg: Any, family: Family
) -> Iterator[tuple[Chunk, np.ndarray]]:
    """Chunks with their values in the computation dtype, checked (finite, values the
    family can model); the dtype is resolved at the first chunk."""
    dtype = None
    for chunk in source.chunks(read_rows):
        if dtype is None:
            dtype = resolve_dtype(dtype_arg, np.empty(0, source.dtype or chunk.values.dtype))
        values = _cast_checked(chunk, dtype)
        _check_family_values(chunk, values, family)
        if values is chunk.values and not source.sliceable:
            values = values.copy()  # the caller may reuse its buffer for the next chunk
        yield chunk, values


def _scan(
    source: ChunkSource,
    family: Family,
    n_components: int,
    dtype_arg: Any,
    read_rows: int | None,
    sample_rows: int,
    sample_key: Array | None,
    prefetch: int,
) -> tuple[_Scan, np.dtype, int]:
    """The first pass: checks, the data's summary, and the initialisation sample."""
    moments: _Moments | None = None
    reservoir: _Reservoir | None = None
    dtype = None
    n_rows = 0
    weighted = False
    checked = _checked_chunks(source, read_rows, dtype_arg, family)
    for chunk, values in _prefetched(checked, prefetch):
        if dtype is None:
            dtype = values.dtype
            moments = _Moments(values.shape[1], read_rows)
            if sample_key is not None:
                reservoir = _Reservoir(sample_rows, sample_key, values.shape[1], dtype)
        weights = chunk.weights
        weighted = weights is not None
        if len(values):
            moments.add(values, weights)
        if reservoir is not None:
            reservoir.add(chunk.start, values, weights)
        n_rows += len(values)
    if moments is None or n_rows == 0:
        raise ChunkError(
            f"the source {source.describe()} is empty: its first pass gave no rows; a fit needs "
            f"at least n_components={n_components} rows"
        )
    moments.finish()
    if source.n_samples is not None and n_rows != source.n_samples:
        raise ChunkError(
            f"the source {source.describe()} gave {n_rows} rows but says it has {source.n_samples}"
        )
    n_positive = moments.count
    if n_rows < n_components:
        raise ValueError(
            f"the source has {n_rows} sample(s) but n_components={n_components}; "
            "use fewer components or more data"
        )
    if moments.weight <= 0:
        raise ValueError("every row of the source has sample_weight 0; nothing to fit")
    mean = moments.mean
    var = moments.m2 / moments.weight
    shift = mean.astype(dtype) if family.location else np.zeros(len(mean), dtype)
    ref = shift.astype(np.float64)
    max_abs = float(np.max(np.maximum(np.abs(moments.high - ref), np.abs(moments.low - ref))))
    summary = DataSummary(n_rows, len(mean), np.dtype(dtype), mean, var, max_abs)
    sample = None if reservoir is None else reservoir.result()
    scan = _Scan(summary, shift, float(moments.weight), n_positive, weighted, sample)
    return scan, np.dtype(dtype), n_rows


# ============================================================================ compiled parts
class _PassPlan(NamedTuple):
    """Static settings of one kind of pass (hashable)."""

    em: EMSettings
    centre: bool  # subtract the shift on the device
    estep: bool  # E-step sums (EPass) per restart
    second: bool  # second-pass sums about a reference centre per restart
    moments: bool  # responsibility totals and weighted sums (to move the centre)
    pooled: int  # the whole data's fit: 0 none; 1 first sums; 2 second sums; 3 both (movable)
    n_sub: int  # sub-chunks per block (the in-memory chunk loop)


def _block_sums(
    params: MixtureParams,
    prepared: Any,
    ref: Any,
    pool_centre: Any,
    shift: Array,
    values: Array,
    weights: Array,
    plan: _PassPlan,
) -> dict[str, Any]:
    """One block's sums for every restart and for the pooled fit.

    One loop over the block's sub-chunks (the in-memory chunk loop): each
    sub-chunk's E-step (:func:`mixlab.em.steps.e_pass` on that chunk), its
    second-pass sums about ``ref`` and the moments that move them, added up, so
    no per-row intermediate outlives its sub-chunk.
    """
    settings = plan.em
    family = settings.family
    n_features = values.shape[1]
    X3 = values.reshape(plan.n_sub, -1, n_features)
    W3 = weights.reshape(plan.n_sub, -1)
    n_restarts = params.weights.shape[0]

    def restart_sums(p: MixtureParams, prep: Any, centre: Any, xc: Array, wc: Array) -> Any:
        sums, resp3 = e_pass(
            xc[None],
            None,
            wc[None],
            p,
            prep,
            settings.hard,
            keep_resp=plan.second,
            formulation=settings.formulation,
        )
        res: dict[str, Any] = {"e": sums}
        if plan.second:
            rc = resp3[0]
            res["second"] = family.summarize_second(xc, rc, centre)
            res["w2"] = jnp.sum(rc, axis=0)
            res["s1"] = rc.T @ xc
        return res

    def chunk(xc: Array, wc: Array) -> tuple[dict[str, Any], None]:
        if plan.centre:
            xc = xc - shift
        out: dict[str, Any] = {}
        if plan.estep or plan.second:
            if n_restarts == 1:  # no batch axis: XLA's plain matrix products
                first = jax.tree_util.tree_map(lambda a: a[0], (params, prepared, ref))
                res = restart_sums(*first, xc, wc)
                out["restarts"] = jax.tree_util.tree_map(lambda a: a[None], res)
            else:
                out["restarts"] = jax.vmap(restart_sums, in_axes=(0, 0, 0, None, None))(
                    params, prepared, ref, xc, wc
                )
        if plan.pooled in (1, 3):
            stats = family.summarize(xc, wc[:, None], None, None)
            out["pooled"] = (stats, jnp.sum(wc))
            if plan.pooled == 3:  # second-pass sums about zero, to be moved (movable families)
                total = jnp.sum(wc)[None]
                zero = family.second_pass(stats, guarded_counts(total), None, ())
                zero = jax.tree_util.tree_map(jnp.zeros_like, zero)
                out["pooled_second"] = family.summarize_second(xc, wc[:, None], zero)
                out["pooled_s1"] = (wc @ xc)[None]
        elif plan.pooled == 2:
            out["pooled_second"] = family.summarize_second(xc, wc[:, None], pool_centre)
        return out, None

    sums, _ = chunk_sum(chunk, (X3, W3))
    return sums


def _accumulate(acc: Any, *args: Any, plan: _PassPlan) -> Any:
    return jax.tree_util.tree_map(jnp.add, acc, _block_sums(*args, plan=plan))


def _worst_block(
    acc: tuple[Array, Array],
    params: MixtureParams,
    shift: Array,
    values: Array,
    weights: Array,
    plan: _PassPlan,
) -> tuple[Array, Array]:
    """Running (lowest ``log p(x_i)``, its row) per restart: ties keep the first row,
    as :func:`mixlab.em.steps.worst_row` does."""
    settings = plan.em
    family = settings.family
    n_features = values.shape[1]
    X3 = (values - shift if plan.centre else values).reshape(plan.n_sub, -1, n_features)
    W3 = weights.reshape(plan.n_sub, -1)

    def one(p: MixtureParams, best: Array, row: Array) -> tuple[Array, Array]:
        log_weights = jnp.log(p.weights)
        prep = family.prepare(p.components, settings.formulation)

        def per(xc: Array, wc: Array) -> tuple[tuple[()], tuple[Array, Array]]:
            _, row_ll = _row_log_density(xc, None, family, prep, log_weights, settings.formulation)
            ranked = jnp.where(wc > 0, row_ll, jnp.inf)
            i = jnp.argmin(ranked)
            return (), (ranked[i], xc[i])

        _, (vals, rows) = chunk_sum(per, (X3, W3))
        j = jnp.argmin(vals)
        better = vals[j] < best
        return jnp.where(better, vals[j], best), jnp.where(better, rows[j], row)

    return jax.vmap(one)(params, *acc)


def _final_block(
    acc: tuple[Array, Array],
    params: MixtureParams,
    prepared: Any,
    shift: Array,
    values: Array,
    weights: Array,
    plan: _PassPlan,
) -> tuple[Array, Array]:
    """Running (log-likelihood, classification log-likelihood) per restart."""
    n_features = values.shape[1]
    X3 = (values - shift if plan.centre else values).reshape(plan.n_sub, -1, n_features)
    W3 = weights.reshape(plan.n_sub, -1)
    out = jax.vmap(lambda p, prep: objectives(X3, None, W3, p, prep, plan.em.formulation))(
        params, prepared
    )
    return jax.tree_util.tree_map(jnp.add, acc, out)


def _initial_state(params0: MixtureParams, settings: EMSettings) -> EMState:
    """The loop's first state, as :func:`mixlab.em.driver.run_em` builds it (one restart)."""
    family, n_components = settings.family, settings.n_components
    dtype = params0.weights.dtype
    prepared0 = family.prepare(params0.components, settings.formulation)
    ok0 = _component_ok(params0, prepared0)
    start_ok = jnp.all(ok0)
    return EMState(
        params=params0,
        prepared=prepared0,
        n_iter=jnp.zeros((), jnp.int32),
        objective=jnp.asarray(-jnp.inf, dtype),
        status=jnp.where(start_ok, EMStatus.RUNNING, EMStatus.DEGENERATE).astype(jnp.int32),
        bad_component=jnp.where(start_ok, -1, jnp.argmin(ok0)).astype(jnp.int32),
        trace=jnp.full(settings.capacity, jnp.nan, dtype),
        params_trace=None,
        collapse_kind=jnp.where(start_ok, -1, 2).astype(jnp.int32),
        n_reinit=jnp.zeros((), jnp.int32),
        reinit_log=jnp.full((settings.max_reinit, 2), -1, jnp.int32),
        first_collapse=jnp.full((n_components, 2), -1, jnp.int32),
        last_restart=jnp.asarray(-1, jnp.int32),
        settled=jnp.zeros(n_components, bool),
    )


def _start_states(params0: MixtureParams, settings: EMSettings) -> EMState:
    return jax.vmap(functools.partial(_initial_state, settings=settings))(params0)


def _init_program(
    keys: Array, X3: Array, W3: Array | None, reg: Array, data_var: Array, settings: EMSettings
) -> MixtureParams:
    """Starting parameters of every restart from the sample, as in memory."""
    return jax.vmap(
        lambda k: initial_params(
            k,
            X3,
            W3,
            settings.n_components,
            settings.family,
            settings.init,
            reg,
            data_var,
            settings.standardize,
        )
    )(keys)


def _centres(stats: Any, nk: Array, params: MixtureParams, settings: EMSettings) -> Any:
    """The second pass's centre of every restart (the family's :meth:`second_pass`)."""
    family = settings.family
    return jax.vmap(lambda s, n, c: family.second_pass(s, guarded_counts(n), c, settings.fixed))(
        stats, nk, params.components
    )


def _centre_shapes(
    params: MixtureParams,
    prepared: Any,
    shift: Array,
    values: Array,
    weights: Array,
    plan: _PassPlan,
) -> Any:
    """The second pass's centres, from one block (traced for their shapes only)."""
    sums = _block_sums(params, prepared, None, None, shift, values, weights, plan)
    e = sums["restarts"]["e"]
    return _centres(e.stats, e.nk, params, plan.em)


def _moved(family: Family, second: Any, w: Array, total: Array, a: Any, c: Any) -> Any:
    """Second-pass sums about centre ``a`` moved to centre ``c`` (one restart).

    The sums are ``sum_i r_ik q(x_i - c_k)`` with ``q`` quadratic, so
    ``S(c) - S(a)`` depends on the data only through each component's weight
    ``W_k = sum_i r_ik`` and weighted mean ``m_k = sum_i r_ik x_i / W_k``: it
    equals the same sums over the ``K`` points ``m_k`` with weights ``W_k``,
    about ``c`` minus about ``a``.  Exact where ``a == c``.
    """
    m = total / jnp.where(w > 0, w, 1.0)[:, None]
    resp = jnp.diag(w)
    about_c = family.summarize_second(m, resp, c)
    about_a = family.summarize_second(m, resp, a)
    return jax.tree_util.tree_map(lambda x, y, z: x + y - z, second, about_c, about_a)


def _move_second(
    second: Any, w2: Array, s1: Array, ref: Any, centre: Any, settings: EMSettings
) -> Any:
    """:func:`_moved` for every restart."""
    return jax.vmap(functools.partial(_moved, settings.family))(second, w2, s1, ref, centre)


def _pooled_params(
    stats: Any,
    total: Array,
    second: Any,
    s1: Array | None,
    reg: Array,
    settings: EMSettings,
) -> MixtureParams:
    """The whole data set's one-component fit, K times (:func:`mixlab.em.init.pooled_params`).

    With ``s1`` (the weighted sum of the rows), ``second`` holds the second-pass
    sums about zero, moved here to the fit's centre.
    """
    family, n_components = settings.family, settings.n_components
    nk = guarded_counts(jnp.reshape(total, (1,)))
    if s1 is not None:
        centre = family.second_pass(stats, nk, None, ())
        zero = jax.tree_util.tree_map(jnp.zeros_like, centre)
        second = _moved(family, second, jnp.reshape(total, (1,)), s1, zero, centre)
    single = family.m_step(stats, nk, None, reg, (), second)
    components = {}
    for spec in family.param_specs():
        value = single[spec.name]
        if spec.per_component:
            value = jnp.broadcast_to(value, (n_components, *value.shape[1:]))
        components[spec.name] = value
    weights = jnp.full(n_components, 1.0 / n_components, total.dtype)
    return MixtureParams.trusted(weights, components, family)


def _start_reference(params: MixtureParams, settings: EMSettings) -> Array:
    """Each restart's component locations (the family's :meth:`moments`): where the
    first pass sums its second-pass sums about, when the centres are locations."""
    family = settings.family
    return jax.vmap(lambda c: family.moments(c)[0])(params.components)


def _pooled_centre(stats: Any, total: Array, settings: EMSettings) -> Any:
    return settings.family.second_pass(stats, guarded_counts(jnp.reshape(total, (1,))), None, ())


class _Step(NamedTuple):
    state: EMState
    new: MixtureParams  # the M-step's parameters before any restart of a component
    needed: Array  # this restart wants the worst-explained row


def _update(
    state: EMState,
    sums: Any,
    second: Any,
    worst: Array,
    pooled: MixtureParams,
    n_samples: Array,
    rule: StopRule,
    max_iter: Array,
    reg: Array,
    data_var: Array,
    policy: Array,
    settings: EMSettings,
) -> _Step:
    """One iteration after its pass, for one restart: the body of
    :func:`mixlab.em.driver.run_em` with the data sums given.

    ``worst`` is the row ``new`` explains worst (zeros until a pass found it:
    call again with it where :attr:`_Step.needed`)."""
    family, n_components = settings.family, settings.n_components
    formulation = settings.formulation
    fixed = settings.fixed
    nk = guarded_counts(sums.nk)
    components = family.m_step(sums.stats, nk, state.params.components, reg, fixed, second)
    if fixed:
        components = {
            n: (state.params.components[n] if n in fixed else v) for n, v in components.items()
        }
    weights = nk / jnp.sum(nk)
    if "weights" in fixed:
        weights = state.params.weights
    new = MixtureParams.trusted(weights, components, family)
    finite = jnp.isfinite(sums.objective)
    iteration = state.n_iter + 1
    components_k = jnp.arange(n_components)
    reinit = policy == COLLAPSE_POLICIES.index("reinit")

    weight_gone, degenerate = collapse_flags(family, components, sums.nk, reg, data_var)
    gone = weight_gone | degenerate
    kind_now = jnp.where(weight_gone, 0, 1).astype(jnp.int32)
    newly = finite & gone & (state.first_collapse[:, 0] < 0)
    first_collapse = jnp.where(
        newly[:, None],
        jnp.stack([jnp.full_like(kind_now, iteration), kind_now], 1),
        state.first_collapse,
    )
    settled = state.settled | (gone & (components_k == state.last_restart))
    broken = (gone & ~settled) | ~family.components_finite(components)
    restarted = reinit & finite & jnp.any(broken) & (state.n_reinit < settings.max_reinit)
    k_restart = jnp.argmax(broken).astype(jnp.int32)
    needed = restarted & (state.status == EMStatus.RUNNING)
    fresh = _reinitialise(new, k_restart, worst, pooled)
    if fixed:
        fixed_values = {n: components[n] for n in fixed if n != "weights"}
        fresh = MixtureParams.trusted(
            new.weights if "weights" in fixed else fresh.weights,
            {**fresh.components, **fixed_values},
            family,
        )
    chosen = _select(restarted, fresh, new)
    prepared_new = family.prepare(chosen.components, formulation)
    entry = jnp.stack([iteration, k_restart]).astype(jnp.int32)
    slot = jnp.minimum(state.n_reinit, settings.max_reinit - 1)
    reinit_log = jnp.where(restarted, state.reinit_log.at[slot].set(entry), state.reinit_log)
    n_reinit = state.n_reinit + restarted.astype(jnp.int32)
    last_restart = jnp.where(restarted, k_restart, -1).astype(jnp.int32)
    was_restarted = restarted & (components_k == k_restart)
    weight_gone = weight_gone & ~was_restarted
    degenerate = degenerate & ~was_restarted

    ok = _component_ok(chosen, prepared_new)
    bad = jnp.where(jnp.all(ok), -1, jnp.argmin(ok)).astype(jnp.int32)
    valid = finite & (bad < 0)
    gone = weight_gone | degenerate
    k = jnp.argmax(gone).astype(jnp.int32)
    still_collapsed = valid & jnp.any(gone) & (policy == COLLAPSE_POLICIES.index("raise"))
    kind = jnp.where(still_collapsed, jnp.where(weight_gone[k], 0, 1), state.collapse_kind)

    accept = valid & ~still_collapsed
    n_iter = state.n_iter + accept.astype(jnp.int32)
    stop = should_stop(
        rule,
        state.trace,
        state.n_iter,
        state.objective,
        sums.objective,
        n_samples,
        restarted,
        state.last_restart >= 0,
    )
    status = jnp.select(
        [~finite, bad >= 0, still_collapsed, stop, n_iter >= max_iter],
        [
            EMStatus.NONFINITE,
            EMStatus.DEGENERATE,
            EMStatus.COLLAPSED,
            EMStatus.CONVERGED,
            EMStatus.MAX_ITER,
        ],
        EMStatus.RUNNING,
    ).astype(jnp.int32)
    culprit = jnp.where(bad >= 0, bad, jnp.where(still_collapsed, k, state.bad_component))
    stepped = EMState(
        params=_select(accept, chosen, state.params),
        prepared=_select(accept, prepared_new, state.prepared),
        n_iter=n_iter,
        objective=sums.objective,
        status=status,
        bad_component=culprit,
        trace=state.trace.at[state.n_iter].set(sums.objective),
        params_trace=None,
        collapse_kind=kind,
        n_reinit=n_reinit,
        reinit_log=reinit_log,
        first_collapse=first_collapse,
        last_restart=last_restart,
        settled=settled,
    )
    running = state.status == EMStatus.RUNNING
    return _Step(_select(running, stepped, state), new, needed)


def _finish(
    state: EMState,
    sums: Any,
    second: Any,
    w2: Array | None,
    s1: Array | None,
    ref: Any,
    centre: Any,
    worst: Array,
    pooled: MixtureParams,
    n_samples: Array,
    rule: StopRule,
    max_iter: Array,
    reg: Array,
    data_var: Array,
    policy: Array,
    settings: EMSettings,
) -> _Step:
    """The end of an iteration for every restart: second-pass sums moved from ``ref``
    to ``centre`` (an exact no-op where they are the same), then :func:`_update`."""
    if second is not None:
        second = _move_second(second, w2, s1, ref, centre, settings)
    shared = (pooled, n_samples, rule, max_iter, reg, data_var, policy)
    return jax.vmap(lambda st, s, sec, w: _update(st, s, sec, w, *shared, settings=settings))(
        state, sums, second, worst
    )


def _quadratic_second_pass(family: Family) -> bool:
    """Whether the family's second-pass sums can be moved between centres
    (:attr:`mixlab.families.Family.second_pass_quadratic`)."""
    return bool(family.second_pass_quadratic)


# ============================================================================ engine
_PROGRAMS = CompiledCache(size=64)


class _Engine:
    """Passes over a source: blocks read ahead, compiled per-block functions, sums
    kept on the device, timings and a progress bar over passes."""

    def __init__(
        self,
        source: ChunkSource,
        read_rows: int | None,
        block_rows: int,
        padded_rows: int,
        dtype: np.dtype,
        shift: np.ndarray,
        n_rows: int,
        prefetch: int,
        bar: Any,
    ):
        self.source = source
        self.read_rows = read_rows
        self.block_rows = block_rows
        self.padded_rows = padded_rows
        self.dtype = dtype
        with jax.enable_x64(dtype == np.float64):
            self.shift = jnp.asarray(shift, dtype)
        self.n_rows = n_rows
        self.prefetch = prefetch
        self.bar = bar
        self.compile_time = 0.0
        self.compile_source = "memory"
        self.passes = 0
        self.pass_seconds = 0.0
        self._ones: Array | None = None

    def compiled(self, key: Any, fn: Callable[..., Any], args: tuple) -> Any:
        program, seconds, source = _PROGRAMS.get(key, fn, args)
        self.compile_time += seconds
        if source != "memory":
            self.compile_source = source
        return program

    def run(self, name: str, fn: Callable[..., Any], key: Any, acc: Any, consts: tuple) -> Any:
        """``acc = fn(acc, *consts, block_values, block_weights)`` over one pass."""
        start = time.perf_counter()
        compile_before = self.compile_time
        program = None
        pending: list[Any] = []
        seen = 0
        blocks = _blocks(self.source, self.read_rows, self.block_rows, self.padded_rows, self.dtype)
        for block in _prefetched(blocks, self.prefetch):
            values = jax.device_put(block.values)
            if block.weights is None:  # a full block of unit weights: one copy on the device
                if self._ones is None:
                    self._ones = jnp.ones(self.padded_rows, self.dtype)
                weights = self._ones
            else:
                weights = jax.device_put(block.weights)
            args = (acc, *consts, values, weights)
            if program is None:
                program = self.compiled(key, fn, args)
            acc = program(*args)
            seen += block.n_rows
            pending.append(acc)
            if len(pending) > 2:  # at most two blocks queued on the device
                jax.block_until_ready(pending.pop(0))
        acc = jax.block_until_ready(acc)
        if seen != self.n_rows:
            raise ChunkError(
                f"pass {self.source.passes} over {self.source.describe()} gave {seen} rows but "
                f"the first gave {self.n_rows}; a source must give the same rows on every pass"
            )
        self.passes += 1
        self.pass_seconds += time.perf_counter() - start - (self.compile_time - compile_before)
        if self.bar is not None:
            self.bar.set_postfix_str(name, refresh=False)
            self.bar.update(1)
        return acc


_ZEROS: dict[Any, Any] = {}


def _zeros_like_shapes(fn: Callable[..., Any], args: tuple, key: Any) -> Any:
    """Zeros shaped like ``fn(*args)`` (a pass's running sums), traced once per
    ``key`` and argument shapes."""
    full_key = (key, CompiledCache.signature(args))
    zeros = _ZEROS.get(full_key)
    if zeros is None:
        shapes = jax.eval_shape(fn, *args)
        zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        if len(_ZEROS) > 256:
            _ZEROS.clear()
        _ZEROS[full_key] = zeros
    return zeros


def _power_of_two(rows: int) -> int:
    """The largest power of two at most ``rows`` (at least :data:`MIN_CHUNK`): default
    blocks and sub-chunks are powers of two, so sub-chunks tile blocks exactly."""
    return max(MIN_CHUNK, 1 << max(int(rows), 1).bit_length() - 1)


def fit_stream(
    source: Any,
    n_components: int,
    method: EM | None = None,
    *,
    family: str | Family = "gaussian",
    covariance: str | None = None,
    key: KeyLike = 0,
    dtype: Any = None,
    chunk_rows: int | None = None,
    sample_rows: int = SAMPLE_ROWS,
    prefetch: int = PREFETCH,
    progress: bool | None = None,
    feature_names: Any = None,
    order: str | None = "location",
) -> Any:
    """Fit a finite mixture by EM to data read in chunks, one pass per iteration.

    The answer is :func:`mixlab.fit`'s on the same data in memory: from the
    same explicit start, the same parameters (to 1e-10 relative in float64),
    log-likelihood and ``n_iter``.

    Parameters
    ----------
    source : ChunkSource, ndarray, numpy.memmap, str or os.PathLike, array-like or callable
        The data, read again on every pass (see :func:`chunks`): an array or
        memmap, the path of an ``.npy`` file, a zarr or h5py array, or a
        callable returning a fresh iterable of chunks (arrays ``(n_rows,
        n_features)`` or ``(values, weights)`` pairs with frequency weights).
    n_components : int
    method : EM, default EM()
        EM's settings, as for :func:`mixlab.fit` (``record_params`` included;
        ``chunk_size`` sets the rows of the in-block loop).
    family : str or Family, default "gaussian"
    covariance : {"full", "diag", "spherical", "tied"}, optional
    key : int or jax.random key, default 0
        Randomness of the initialisation sample and of the restarts.
    dtype : {None, "float64", "float32"}
        Computation dtype; by default float32 data stay float32, anything else
        is float64.
    chunk_rows : int, optional
        Rows per block sent to the device (the last block of a pass is padded
        with rows of weight zero), and per chunk read from array-like sources
        that set no chunk size of their own; default about 16 MiB of data.
    sample_rows : int, default 65536
        Rows of the seeded uniform sample that the initialisation
        (``EM(init="kmeans++")`` etc.) runs on, when no explicit start is
        given; with at most that many rows the sample is the whole data and
        the start is :func:`mixlab.fit`'s.
    prefetch : int, default 2
        Blocks read ahead in a background thread (0: read in the caller's thread).
    progress : bool or None, default None
        A progress bar over passes; ``None``: when stderr is a terminal.
    feature_names : list of str, optional
        Names of the columns.
    order : {"location", "weights"} or None, default "location"
        How the result numbers its components, as for :func:`mixlab.fit`
        (:meth:`FitResult.reorder`).

    Returns
    -------
    FitResult
        As :func:`mixlab.fit` returns, with ``data=None``;
        ``diagnostics["stream"]`` holds the passes, rows, block layout and
        seconds spent (``scan``, ``init``, ``em``).

    Raises
    ------
    ChunkError
        A chunk that cannot be used (wrong width, NaN or infinite values, values
        the family cannot model, bad weights) or an empty source; the message
        names the chunk and its rows.
    SourceReadError
        A source that could not be read (an ``.npy`` file that vanished).
    mixlab.errors.FitError
        No restart gave a usable fit.
    """
    from mixlab._validation import check_feature_names
    from mixlab.align import ORDERS
    from mixlab.api import resolve_family
    from mixlab.result import FitResult, Restarts

    if order is not None and order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS} or None, got {order!r}")
    if method is None:
        method = EM()
    if not isinstance(method, EM):
        raise TypeError(f"method must be ml.EM(...), got {type(method).__name__}")
    n_components = check_int(n_components, "n_components", minimum=1)
    fam = resolve_family(family, covariance)
    method.check_for(fam)
    sample_rows = check_int(sample_rows, "sample_rows", minimum=1)
    prefetch = check_int(prefetch, "prefetch", minimum=0)
    if chunk_rows is not None:
        chunk_rows = check_int(chunk_rows, "chunk_rows", minimum=1)
    devices = getattr(method, "devices", None)
    several = len(jax.local_devices()) > 1 if devices == "all" else len(devices or ()) > 1
    if several:
        raise NotImplementedError(
            "fit_stream runs on one device; EM(devices=[...]) with several devices is not "
            "supported for streamed data yet (leave devices unset)"
        )
    src = chunks(source)
    root_key = as_key(key)
    explicit = not isinstance(method.init, str)
    options = method.engine_options()
    reg_covar, tol, max_iter = options["reg_covar"], options["tol"], options["max_iter"]
    policy = COLLAPSE_POLICIES.index(options["on_collapse"])
    wall = time.perf_counter()

    # ---- reading: array-like sources in their own chunks, else in blocks' sizes
    read_rows = None
    if src.sliceable:
        itemsize = resolve_dtype(dtype, np.empty(0, src.dtype or np.float64)).itemsize
        read_rows = src.chunk_rows or chunk_rows
        if read_rows is None:
            read_rows = _power_of_two(BLOCK_BYTES // (max(src.n_features or 1, 1) * itemsize))
        read_rows = max(1, min(read_rows, src.n_samples or 0))

    # ---- scan pass
    bar = None
    if Progress.wanted(progress):
        from tqdm.auto import tqdm

        bar = tqdm(desc="EM passes", unit="pass")
    try:
        sample_key = None if explicit else jax.random.fold_in(root_key, 0x5A3F1E)
        scan_start = time.perf_counter()
        scan, dt, n_rows = _scan(
            src, fam, n_components, dtype, read_rows, sample_rows, sample_key, prefetch
        )
        scan_seconds = time.perf_counter() - scan_start
        if bar is not None:
            bar.update(1)
        if scan.weighted and scan.n_positive < n_components:
            raise ValueError(
                f"only {scan.n_positive} row(s) have a positive sample_weight but "
                f"n_components={n_components}; use fewer components or more data"
            )
        summary = scan.summary
        n_features = summary.n_features
        dominated = fam.check_fit_data(summary, reg_covar)
        formulation = fam.choose_formulation(options["formulation"], summary, reg_covar)
        platform = jax.default_backend()
        width = fam.work_width(n_components, n_features, formulation)
        block_rows = min(
            chunk_rows or _power_of_two(BLOCK_BYTES // (n_features * dt.itemsize)), n_rows
        )
        if options["chunk_size"] is not None:
            sub = options["chunk_size"]
        elif platform == "cpu":
            sub = _power_of_two(CHUNK_BYTES // max(width * dt.itemsize, 1))
        else:
            sub = block_rows
        sub = min(sub, block_rows)
        n_sub = -(-block_rows // sub)
        padded_rows = n_sub * sub

        settings = EMSettings(
            family=fam,
            n_components=n_components,
            capacity=trace_capacity(max_iter),
            hard=options["hard"],
            fixed=tuple(sorted(options["fixed"])),
            init=None if explicit else resolve_init(method.init, fam),
            formulation=formulation,
            matmul_precision=options["matmul_precision"],
            standardize=options["standardize"],
        )
        engine = _Engine(
            src, read_rows, block_rows, padded_rows, dt, scan.shift, n_rows, prefetch, bar
        )
        with (
            jax.enable_x64(dt == np.float64),
            jax.default_matmul_precision(options["matmul_precision"]),
        ):
            init_start = time.perf_counter()
            compile_before = engine.compile_time
            reg = jnp.asarray(reg_covar, dt)
            data_var = jnp.asarray(summary.var, dt)
            if explicit:
                start = explicit_start(method.init, fam, n_components, n_features, dt)
                start = MixtureParams.trusted(
                    start.weights, fam.shift(start.components, -scan.shift), fam
                )
                params0 = jax.tree_util.tree_map(
                    lambda a: jnp.asarray(np.asarray(a, dt)[None]), start
                )
                keys = None
            else:
                keys = restart_keys(root_key, options["n_init"])
                params0 = _sample_start(engine, scan, keys, settings, options, reg, data_var)
            states = engine.compiled(
                ("stream-start", settings),
                functools.partial(_start_states, settings=settings),
                (params0,),
            )(params0)
            init_seconds = time.perf_counter() - init_start - (engine.compile_time - compile_before)

            em_start = time.perf_counter()
            compile_before = engine.compile_time
            states, history, e_plan, e_ref = _em_loop(
                engine,
                states,
                settings,
                scan,
                n_sub,
                tol,
                options["criterion"],
                max_iter,
                reg,
                data_var,
                policy,
                record=method.record_params,
            )
            if settings.hard:  # the classification log-likelihood too
                plan = _PassPlan(settings, bool(fam.location), False, False, False, 0, n_sub)
                zero = jnp.zeros(states.n_iter.shape, dt)
                final = engine.run(
                    "final",
                    functools.partial(_final_block, plan=plan),
                    ("stream-final", plan),
                    (zero, zero),
                    (states.params, states.prepared, engine.shift),
                )
            else:  # the E-step pass gives the log-likelihood
                acc0 = _zeros_like_shapes(
                    functools.partial(_block_sums, plan=e_plan),
                    (
                        states.params,
                        states.prepared,
                        e_ref,
                        None,
                        engine.shift,
                        jnp.zeros((padded_rows, n_features), dt),
                        jnp.zeros(padded_rows, dt),
                    ),
                    e_plan,
                )
                acc = engine.run(
                    "final",
                    functools.partial(_accumulate, plan=e_plan),
                    ("stream-pass", e_plan),
                    acc0,
                    (states.params, states.prepared, e_ref, None, engine.shift),
                )
                log_lik = acc["restarts"]["e"].objective
                final = (log_lik, log_lik)
            em_seconds = time.perf_counter() - em_start - (engine.compile_time - compile_before)
            out = jax.tree_util.tree_map(np.asarray, (states, final))
    finally:
        if bar is not None:
            bar.close()
    states, (log_lik, classification) = out
    final_objective = classification if settings.hard else log_lik
    status = states.status.astype(int)
    lls = log_lik.astype(np.float64)
    failed = np.array([EMStatus(v).failed for v in status]) | ~np.isfinite(lls)
    if np.any(status == EMStatus.NONFINITE) or not np.all(np.isfinite(lls)):
        # the data may have changed since the scan: name the chunk if they did
        for _ in _checked_chunks(src, read_rows, dt, fam):
            pass
    if failed.all():
        i = 0
        raise FitError(
            ("every restart failed; first: " if len(status) > 1 else "EM failed: ")
            + _failure_message(
                fam,
                EMStatus(status[i]),
                int(states.bad_component[i]),
                int(states.n_iter[i]),
                int(states.collapse_kind[i]),
                int(states.n_reinit[i]),
            )
        )
    best = int(np.argmax(np.where(failed, -np.inf, lls)))
    best_status = EMStatus(int(status[best]))
    n_iter = int(states.n_iter[best])
    best_params = states.params[best]
    params = MixtureParams.trusted(
        best_params.weights, fam.shift(best_params.components, scan.shift), fam
    )
    trace = states.trace[best].astype(np.float64)
    trace[n_iter] = final_objective[best]
    params_trace = None
    if history is not None:
        ptrace = _params_trace(history, params0, best, n_iter)
        params_trace = MixtureParams.trusted(
            ptrace.weights, fam.shift(ptrace.components, scan.shift), fam
        )
    converged = best_status == EMStatus.CONVERGED
    if not converged and tol > 0:
        warnings.warn(
            f"the best of {len(status)} EM restart(s) did not converge within max_iter={max_iter} "
            f"iterations (tol={tol}); increase max_iter or tol, or check the data for "
            "degenerate structure",
            ConvergenceWarning,
            stacklevel=2,
        )
    stream_info = {
        "passes": engine.passes + 1,
        "rows": n_rows,
        "total_weight": scan.total_weight,
        "block_rows": block_rows,
        "sub_chunk_rows": sub,
        "sample_rows": None if scan.sample is None else len(scan.sample.index),
        "scan_seconds": scan_seconds,
        "init_seconds": init_seconds,
        "em_seconds": em_seconds,
        "pass_seconds": engine.pass_seconds,
        "wall_seconds": time.perf_counter() - wall,
        "rows_per_second": n_rows * max(n_iter, 1) / em_seconds if em_seconds > 0 else float("nan"),
    }
    result = FitResult(
        method="em",
        params=params,
        log_likelihood=float(lls[best]),
        trace=trace[: n_iter + 1],
        converged=converged,
        n_iter=n_iter,
        elapsed=init_seconds + em_seconds,
        compile_time=engine.compile_time,
        n_samples=n_rows,
        settings={**method.settings(), "streamed": True},
        data=None,
        sample_weight=None,
        params_trace=params_trace,
        restarts=Restarts(
            log_likelihood=np.where(failed, np.nan, lls),
            converged=status == EMStatus.CONVERGED,
            n_iter=states.n_iter.astype(int),
            status=np.array([EMStatus(s).name.lower() for s in status]),
            best=best,
            keys=None if keys is None else np.asarray(keys),
        ),
        diagnostics={
            "status": best_status.name.lower(),
            "reinitialisations": [
                (int(t), int(k)) for t, k in states.reinit_log[best, : int(states.n_reinit[best])]
            ],
            "collapses": [
                (int(k), int(t), ("weight", fam.degeneracy)[int(kind)])
                for k, (t, kind) in enumerate(states.first_collapse[best])
                if t >= 0
            ],
            "reg_covar_dominates": dominated,
            "compile_cache": engine.compile_source,
            "stream": stream_info,
        },
        feature_names=check_feature_names(feature_names, n_features),
    )
    return result.reorder(order)


def _sample_start(
    engine: _Engine,
    scan: _Scan,
    keys: Array,
    settings: EMSettings,
    options: Mapping[str, Any],
    reg: Array,
    data_var: Array,
) -> MixtureParams:
    """Every restart's start from the sample, laid out as :func:`mixlab.fit` lays out
    data of that size (so that a sample holding every row gives its start)."""
    from mixlab.em.data import chunk_layout, free_device_memory, platform_of, to_chunks

    sample = scan.sample
    dt = engine.dtype
    family = settings.family
    values = sample.values.astype(dt)
    n, n_features = values.shape
    weights = None if sample.weights is None else sample.weights.astype(dt)
    platform = platform_of(values)
    width = family.work_width(settings.n_components, n_features, settings.formulation)
    n_chunks, chunk = chunk_layout(
        n,
        width * dt.itemsize,
        options["chunk_size"],
        platform,
        None if platform == "cpu" else free_device_memory(values),
    )
    shift = scan.shift
    X3, W3 = to_chunks(values - shift if np.any(shift) else values, n_chunks, chunk, weights)
    args = (keys, jnp.asarray(X3), None if W3 is None else jnp.asarray(W3), reg, data_var)
    program = engine.compiled(
        ("stream-init", settings), functools.partial(_init_program, settings=settings), args
    )
    return program(*args)


class _History(NamedTuple):
    n_iter: np.ndarray
    running: np.ndarray
    params: MixtureParams


def _params_trace(
    history: list[_History], params0: MixtureParams, best: int, n_iter: int
) -> MixtureParams:
    """The best restart's parameters after each iteration (as ``run_em`` records them)."""
    buf = [np.asarray(leaf[best]) for leaf in jax.tree_util.tree_leaves(params0)]
    treedef = jax.tree_util.tree_structure(params0)
    rows: list[list[np.ndarray]] = [buf]
    for entry in history:
        if not entry.running[best]:
            continue
        i = int(entry.n_iter[best])
        leaves = [np.asarray(leaf[best]) for leaf in jax.tree_util.tree_leaves(entry.params)]
        while len(rows) <= i:
            rows.append(rows[-1])
        rows[i] = leaves
    rows = rows[: n_iter + 1]
    stacked = [np.stack([r[j] for r in rows]) for j in range(len(buf))]
    return jax.tree_util.tree_unflatten(treedef, stacked)


def _em_loop(
    engine: _Engine,
    states: EMState,
    settings: EMSettings,
    scan: _Scan,
    n_sub: int,
    tol: float,
    criterion: str,
    max_iter: int,
    reg: Array,
    data_var: Array,
    policy: int,
    record: bool,
) -> tuple[EMState, list[_History] | None, _PassPlan, Any]:
    """Iterations until every restart has stopped, one pass each.

    A family whose second-pass sums cannot be moved between centres (a custom
    family's) takes a second pass per iteration, as does the first iteration of
    one whose centres are not locations; a restart of a collapsed component
    takes one more pass to find the worst-explained row.  Returns the final
    states, the parameter history (``record``), and the plan and reference
    centre of the pass that gives the final log-likelihood.
    """
    family = settings.family
    dt = engine.dtype
    n_features = scan.summary.n_features
    two_pass = settings.two_pass
    movable = two_pass and _quadratic_second_pass(family)
    reinit = policy == COLLAPSE_POLICIES.index("reinit")
    pool_two_pass = reinit and family.two_pass("centred")
    pool_movable = pool_two_pass and _quadratic_second_pass(family)
    scalars = (
        jnp.asarray(scan.total_weight, dt),
        stop_rule(tol, criterion, dt),
        jnp.asarray(max_iter, jnp.int32),
        reg,
        data_var,
        jnp.asarray(policy, jnp.int32),
    )
    history: list[_History] | None = [] if record else None
    n_restarts = int(states.n_iter.shape[0])
    blank = (jnp.zeros((engine.padded_rows, n_features), dt), jnp.zeros(engine.padded_rows, dt))

    def plan(estep: bool, second: bool, pooled: int) -> _PassPlan:
        return _PassPlan(settings, bool(family.location), estep, second, second, pooled, n_sub)

    def run_pass(name: str, p: _PassPlan, consts: tuple) -> Any:
        acc0 = _zeros_like_shapes(
            functools.partial(_block_sums, plan=p), (*consts, engine.shift, *blank), p
        )
        fn = functools.partial(_accumulate, plan=p)
        return engine.run(name, fn, ("stream-pass", p), acc0, (*consts, engine.shift))

    def call(name: str, fn: Callable[..., Any], args: tuple) -> Any:
        program = engine.compiled((name, settings), functools.partial(fn, settings=settings), args)
        return program(*args)

    # Where the first pass sums the second-pass sums: about each component's location
    # when the centres are locations (Gaussian and Student-t means), moved to the new
    # centres afterwards; otherwise the first iteration takes a second pass.
    ref = None
    if movable:
        centre_zeros = _zeros_like_shapes(
            functools.partial(_centre_shapes, plan=plan(True, False, 0)),
            (states.params, states.prepared, engine.shift, *blank),
            ("centre", settings),
        )
        locations = jax.eval_shape(
            functools.partial(_start_reference, settings=settings), states.params
        )
        if jax.tree_util.tree_structure(centre_zeros) == jax.tree_util.tree_structure(
            locations
        ) and all(
            a.shape == b.shape and a.dtype == b.dtype
            for a, b in zip(
                jax.tree_util.tree_leaves(centre_zeros), jax.tree_util.tree_leaves(locations)
            )
        ):
            ref = call("stream-reference", _start_reference, (states.params,))
    pooled: MixtureParams | None = None
    iteration = 0
    while bool(np.any(np.asarray(states.status) == EMStatus.RUNNING)):
        iteration += 1
        params, prepared = states.params, states.prepared
        recentre = movable and ref is not None
        pool_mode = 0
        if iteration == 1 and reinit:
            pool_mode = 3 if pool_movable else 1
        p_a = plan(True, recentre, pool_mode)
        acc = run_pass("E-step", p_a, (params, prepared, ref if recentre else None, None))
        sums = acc["restarts"]["e"]
        second = w2 = s1 = centre = None
        if two_pass:
            centre = call("stream-centres", _centres, (sums.stats, sums.nk, params))
        if recentre:
            second, w2, s1 = (acc["restarts"][k] for k in ("second", "w2", "s1"))
        pool_centre = pool_second = pool_s1 = None
        if pool_mode == 3:
            pool_second, pool_s1 = acc["pooled_second"], acc["pooled_s1"]
        elif pool_mode == 1 and pool_two_pass:
            pool_centre = call("stream-pool-centre", _pooled_centre, acc["pooled"])
        if (two_pass and not recentre) or pool_centre is not None:
            # a second pass: sums about the exact new centre (moving them is a no-op)
            p_b = plan(two_pass, two_pass, 2 if pool_centre is not None else 0)
            acc_b = run_pass("second pass", p_b, (params, prepared, centre, pool_centre))
            if two_pass:
                second, w2, s1 = (acc_b["restarts"][k] for k in ("second", "w2", "s1"))
                ref = centre
            pool_second = acc_b.get("pooled_second")
        if iteration == 1:
            if reinit:
                pool_stats, pool_total = acc["pooled"]
                pooled = call(
                    "stream-pooled",
                    _pooled_params,
                    (pool_stats, pool_total, pool_second, pool_s1, reg),
                )
            else:  # never used: only "reinit" restarts components
                pooled = jax.tree_util.tree_map(lambda a: a[0], params)
        worst = jnp.zeros((n_restarts, n_features), dt)
        args = (states, sums, second, w2, s1, ref, centre, worst, pooled, *scalars)
        step = call("stream-finish", _finish, args)
        if bool(np.any(np.asarray(step.needed))):
            p_w = plan(False, False, 0)
            inf = jnp.full(n_restarts, jnp.inf, dt)
            _, worst = engine.run(
                "worst row",
                functools.partial(_worst_block, plan=p_w),
                ("stream-worst", p_w),
                (inf, worst),
                (step.new, engine.shift),
            )
            args = (states, sums, second, w2, s1, ref, centre, worst, pooled, *scalars)
            step = call("stream-finish", _finish, args)
        if movable:
            ref = centre
        running = np.asarray(states.status) == EMStatus.RUNNING
        states = step.state
        if history is not None:
            history.append(
                _History(
                    np.asarray(states.n_iter),
                    running,
                    jax.tree_util.tree_map(np.asarray, states.params),
                )
            )
    # The final log-likelihood: on large data a plain E-step pass (cheaper), on small
    # data the iterations' own program (one compilation fewer).
    if movable and ref is not None and engine.n_rows * n_features < LEAN_VALUES:
        return states, history, plan(True, True, 0), ref
    return states, history, plan(True, False, 0), None
