"""``fit``: the one entry point for every method."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from mixlab._jaxutil import KeyLike, as_key, resolve_dtype
from mixlab._validation import check_data, check_int
from mixlab.em.driver import EMStatus, fit_em
from mixlab.families import Family, get_family
from mixlab.methods import EM, NUTS, SVI, Method
from mixlab.params import MixtureParams
from mixlab.result import FitResult, Restarts


def _explicit_start(init: Any, family: Family, n_components: int, X: np.ndarray) -> MixtureParams:
    params = MixtureParams.from_dict(init, covariance_type=family.covariance_type)
    if params.covariance_type != family.covariance_type:
        raise ValueError(
            f"starting parameters have covariance_type={params.covariance_type!r} but the fit "
            f"uses covariance={family.covariance_type!r}"
        )
    if params.n_components != n_components:
        raise ValueError(
            f"starting parameters have {params.n_components} components but "
            f"n_components={n_components}"
        )
    if params.n_features != X.shape[1]:
        raise ValueError(
            f"starting means have {params.n_features} feature(s) but X has {X.shape[1]}"
        )
    return params.astype(X.dtype)


def _fit_em(X: np.ndarray, n_components: int, family: Family, method: EM, key: Any) -> FitResult:
    init = method.init
    if not isinstance(init, str):
        init = _explicit_start(init, family, n_components, X)
    run = fit_em(
        X,
        n_components,
        family,
        key=key,
        init=init,
        record_params=method.record_params,
        progress=method.progress,
        **method.engine_options(),
    )
    return _result(
        "em",
        run,
        X,
        method,
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
        },
    )


def _fit_bayes(
    X: np.ndarray, n_components: int, family: Family, method: SVI | NUTS, key: Any
) -> FitResult:
    from mixlab import bayes  # NumPyro loads here, on first use

    run_fn = bayes.run_svi if isinstance(method, SVI) else bayes.run_nuts
    with jax.enable_x64(X.dtype == np.float64):
        run = run_fn(X, n_components, family, method, key)
    return _result(
        method.name,
        run,
        X,
        method,
        posterior=run.posterior,
        diagnostics=run.diagnostics,
    )


def _result(name: str, run: Any, X: np.ndarray, method: Method, **extra: Any) -> FitResult:
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
        **extra,
    )


_BACKENDS: dict[type, Callable[..., FitResult]] = {EM: _fit_em, SVI: _fit_bayes, NUTS: _fit_bayes}


def _backend(method: Method) -> Callable[..., FitResult]:
    for klass in type(method).__mro__:
        if klass in _BACKENDS:
            return _BACKENDS[klass]
    raise TypeError(
        f"method must be ml.EM(...), ml.SVI(...) or ml.NUTS(...), got {type(method).__name__}"
    )


def fit(
    X: Any,
    n_components: int,
    method: Method | None = None,
    *,
    covariance: str = "full",
    key: KeyLike = 0,
    dtype: Any = None,
) -> FitResult:
    """Fit a finite Gaussian mixture to ``X``.

    Parameters
    ----------
    X : array of shape (n_samples, n_features) or (n_samples,)
        Data; 1-D input is one feature.  Never modified.
    n_components : int
        Number of mixture components K.
    method : EM, SVI or NUTS, default EM()
        How to fit; carries the method's settings.
    covariance : {"full", "diag", "spherical", "tied"}
        Covariance layout of the components.
    key : int or jax.random key, default 0
        Randomness (initialisation, restarts, sampling).  The same key, data
        and settings give the same result, bit for bit.
    dtype : {None, "float64", "float32"}
        Computation dtype; by default float32 input stays float32 and
        everything else is float64.

    Returns
    -------
    FitResult

    Raises
    ------
    ValueError
        Bad data (NaN/inf, wrong dimensions, empty, fewer samples than
        components) or settings; :class:`mixlab.errors.FitError` when the fit
        collapsed.
    TypeError
        Non-numeric data or a wrong argument type.
    """
    if method is None:
        method = EM()
    if not isinstance(method, Method):
        raise TypeError(
            f"method must be ml.EM(...), ml.SVI(...) or ml.NUTS(...), got {type(method).__name__}"
        )
    n_components = check_int(n_components, "n_components", minimum=1)
    family = get_family(covariance)
    dt = resolve_dtype(dtype, X)
    data = check_data(X, dt, min_samples=n_components)
    return _backend(method)(data, n_components, family, method, as_key(key))
