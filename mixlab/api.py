"""``fit``: the one entry point for every method and every family."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import jax
import numpy as np

from mixlab._jaxutil import KeyLike, as_key, device_copy, resolve_dtype
from mixlab._validation import (
    check_data,
    check_feature_names,
    check_int,
    check_sample_weight,
    feature_names_of,
    feature_units_of,
)
from mixlab.align import ORDERS
from mixlab.em.data import on_device
from mixlab.em.driver import EMStatus, fit_em
from mixlab.families import Family, get_family
from mixlab.methods import EM, NUTS, SVI, Method
from mixlab.online import OnlineEM, fit_online_em
from mixlab.params import explicit_start
from mixlab.result import FitResult, Restarts


def resolve_family(family: str | Family, covariance: str | None) -> Family:
    """The family object for ``fit(..., family=, covariance=)``, with clear errors."""
    try:
        return get_family(family, covariance=covariance)
    except ValueError as exc:
        if covariance is not None and "no option(s) 'covariance'" in str(exc):
            raise ValueError(
                f"covariance={covariance!r} applies to families with a covariance layout "
                f"(gaussian, student_t), not to {family!r}; leave it out"
            ) from None
        raise


def _fit_em(
    X: np.ndarray,
    n_components: int,
    family: Family,
    method: EM,
    key: Any,
    sample_weight: np.ndarray | None,
) -> FitResult:
    init = method.init
    if not isinstance(init, str):
        init = explicit_start(init, family, n_components, X.shape[1], X.dtype)
    run = fit_em(
        X,
        n_components,
        family,
        key=key,
        init=init,
        sample_weight=sample_weight,
        record_params=method.record_params,
        progress=method.progress,
        **method.engine_options(),
    )
    return _result(
        "em",
        run,
        X,
        method,
        sample_weight,
        params_trace=run.params_trace,
        restarts=Restarts(
            log_likelihood=run.restart_log_likelihood,
            converged=run.restart_converged,
            n_iter=run.restart_n_iter,
            status=np.array([EMStatus(s).name.lower() for s in run.restart_status]),
            best=run.best_restart,
            keys=run.restart_keys,
        ),
        diagnostics={
            "status": run.status.name.lower(),
            "reinitialisations": run.reinitialisations,
            "collapses": run.collapses,
            "reg_covar_dominates": run.reg_covar_dominates,
            "compile_cache": run.compile_source,
        },
    )


def _fit_bayes(
    X: np.ndarray,
    n_components: int,
    family: Family,
    method: SVI | NUTS,
    key: Any,
    sample_weight: np.ndarray | None,
) -> FitResult:
    from mixlab import bayes  # NumPyro loads here, on first use

    run_fn = bayes.run_svi if isinstance(method, SVI) else bayes.run_nuts
    with jax.enable_x64(X.dtype == np.float64):
        run = run_fn(X, n_components, family, method, key, sample_weight)
    return _result(
        method.name,
        run,
        X,
        method,
        sample_weight,
        posterior=run.posterior,
        diagnostics=run.diagnostics,
    )


def _result(
    name: str,
    run: Any,
    X: np.ndarray,
    method: Method,
    sample_weight: np.ndarray | None,
    **extra: Any,
) -> FitResult:
    """A FitResult from the fields every engine's run shares, plus ``extra``."""
    return FitResult(
        method=name,
        params=run.params,
        log_likelihood=run.log_likelihood,
        trace=run.trace,
        converged=run.converged,
        n_iter=run.n_iter,
        elapsed=run.elapsed,
        compile_time=run.compile_time,
        n_samples=X.shape[0],
        settings=method.settings(),
        data=X,
        sample_weight=sample_weight,
        **extra,
    )


_BACKENDS: dict[type, Callable[..., FitResult]] = {
    EM: _fit_em,
    OnlineEM: fit_online_em,
    SVI: _fit_bayes,
    NUTS: _fit_bayes,
}


def _backend(method: Method) -> Callable[..., FitResult]:
    for klass in type(method).__mro__:
        if klass in _BACKENDS:
            return _BACKENDS[klass]
    raise TypeError(
        f"method must be ml.EM(...), ml.SVI(...) or ml.NUTS(...), got {type(method).__name__}"
    )


def _streamed(X: Any) -> bool:
    """Data read in chunks: a :class:`mixlab.stream.ChunkSource` or an ``.npy`` path."""
    if isinstance(X, str | os.PathLike):
        return True
    if type(X).__module__ != "mixlab.stream":
        return False
    from mixlab.stream import ChunkSource

    return isinstance(X, ChunkSource)


def _fit_streamed(
    X: Any,
    n_components: int,
    method: Method,
    family: Any,
    covariance: Any,
    sample_weight: Any,
    key: Any,
    dtype: Any,
    feature_names: Any,
    order: Any,
) -> FitResult:
    if not isinstance(method, EM):
        raise TypeError(
            f"data read in chunks (ml.chunks(...) or an .npy path) are fitted by EM, one pass "
            f"per iteration; {method.name.upper()} needs the data in memory: pass an array"
        )
    if sample_weight is not None:
        raise ValueError(
            "streamed data carry their weights: ml.chunks(data, sample_weight=...) or chunks "
            "yielded as (values, weights) pairs; leave fit's sample_weight out"
        )
    if order == "auto":
        order = None if not isinstance(method.init, str) else "location"
    from mixlab.stream import fit_stream

    return fit_stream(
        X,
        n_components,
        method,
        family=family,
        covariance=covariance,
        key=key,
        dtype=dtype,
        feature_names=feature_names,
        order=order,
    )


def fit(
    X: Any,
    n_components: int,
    method: Method | None = None,
    *,
    family: str | Family = "gaussian",
    covariance: str | None = None,
    sample_weight: Any = None,
    key: KeyLike = 0,
    dtype: Any = None,
    feature_names: Any = None,
    order: str | None = "auto",
) -> FitResult:
    """Fit a finite mixture to ``X``.

    Parameters
    ----------
    X : array of shape (n_samples, n_features) or (n_samples,), or streamed data
        Data (NumPy, pandas or a JAX array); 1-D input is one feature.  Never
        modified.  Data larger than memory: ``ml.chunks(...)`` (a memmap, a
        zarr or HDF5 array, a callable yielding row chunks) or the path of an
        ``.npy`` file, fitted by EM one pass per iteration with the in-memory
        answer (:func:`mixlab.stream.fit_stream`, which has the streaming
        options).  EM checks a JAX array, and NumPy data of 2**20 values or
        more, on the device (one transfer, no host copy; see
        :mod:`mixlab.em.data`).
    n_components : int
        Number of mixture components K.
    method : EM, SVI or NUTS, default EM()
        How to fit; carries the method's settings.
    family : {"gaussian", "poisson", "bernoulli", "student_t"} or Family
        The component distribution, by name or as a family object
        (``ml.families.StudentT(covariance="full")``).
    covariance : {"full", "diag", "spherical", "tied"}, optional
        Covariance layout of Gaussian (default ``"full"``) and Student-t
        components.
    sample_weight : array of shape (n_samples,), optional
        Frequency weights: an integer weight is the same as that many copies
        of the row, zero the same as leaving it out.  BIC/AIC count
        ``sum(sample_weight)`` observations.
    key : int or jax.random key, default 0
        Randomness (initialisation, restarts, sampling).  The same key, data
        and settings give the same result, bit for bit.
    dtype : {None, "float64", "float32"}
        Computation dtype; by default float32 input stays float32 and
        everything else is float64.
    feature_names : list of str, optional
        Names of the columns; by default a DataFrame's column names (pandas or
        polars) or a Series' name, else none.  They label the summary,
        :func:`compare`, plots, ArviZ coordinates and the CLI's files
        (:attr:`FitResult.feature_names`); a pandas frame's ``attrs["units"]``
        (``{column: unit}``) adds units to plot axes.
    order : {"auto", "location", "weights"} or None, default "auto"
        How the result numbers its components (labels are otherwise
        arbitrary: fits with other keys or methods would number the same
        components differently).  ``"location"``: ascending in the family's
        location parameter (``means``, ``rates``, ``probs``), first feature
        first, later features breaking ties; ``"weights"``: largest weight
        first; ``None``: as the method left them (EM: as its start had them,
        which is what scikit-learn reports).  ``"auto"``: ``"location"``,
        except that an EM fit from explicit starting parameters keeps the
        start's numbering.  See :meth:`FitResult.reorder`.

    Returns
    -------
    FitResult

    Raises
    ------
    ValueError
        Bad data (NaN/inf, wrong dimensions, empty, fewer samples than
        components, values the family cannot model such as negative counts)
        or settings or weights; :class:`mixlab.errors.FitError` when no
        restart gave a usable fit.
    TypeError
        Non-numeric data or a wrong argument type.
    """
    if method is None:
        method = EM()
    if not isinstance(method, Method):
        raise TypeError(
            "method must be ml.EM(...), ml.OnlineEM(...), ml.SVI(...) or ml.NUTS(...), got "
            f"{type(method).__name__}"
        )
    n_components = check_int(n_components, "n_components", minimum=1)
    if _streamed(X):
        return _fit_streamed(
            X,
            n_components,
            method,
            family,
            covariance,
            sample_weight,
            key,
            dtype,
            feature_names,
            order,
        )
    if order == "auto":
        explicit_start = isinstance(method, EM | OnlineEM) and not isinstance(method.init, str)
        order = None if explicit_start else "location"
    if order is not None and order not in ORDERS:
        raise ValueError(f"order must be one of {(*ORDERS, 'auto')} or None, got {order!r}")
    names = feature_names_of(X) if feature_names is None else feature_names
    units = feature_units_of(X, names) if feature_names is None else None
    fam = resolve_family(family, covariance)
    if isinstance(method, EM):
        method.check_for(fam)
    dt = resolve_dtype(dtype, X)
    # EM checks large data and JAX arrays where they are (mixlab.em.data): one transfer,
    # no host copy; small NumPy data are checked and copied here.
    device = isinstance(method, EM) and on_device(X)
    if device and method.devices is not None and not isinstance(X, jax.Array):
        device = False  # NumPy rows go from the host straight to their devices
    data = check_data(X, dt, min_samples=n_components, values=not device)
    if device:
        with jax.enable_x64(dt == np.float64):
            # One transfer, and a copy even on a CPU (never an alias of the caller's
            # memory: the result keeps these data); a JAX array stays as it is.
            if not isinstance(data, jax.Array):
                data = device_copy(np.asarray(data, dt))
    else:
        fam.check_data(data)
    names = check_feature_names(names, data.shape[1])
    weights = None
    if sample_weight is not None:
        weights = check_sample_weight(sample_weight, data.shape[0], dt)
        if int(np.count_nonzero(weights)) < n_components:
            raise ValueError(
                f"only {int(np.count_nonzero(weights))} row(s) have a positive sample_weight "
                f"but n_components={n_components}; use fewer components or more data"
            )
    result = _backend(method)(data, n_components, fam, method, as_key(key), weights)
    result = replace(result, feature_names=names, feature_units=units)
    return result.reorder(order)
