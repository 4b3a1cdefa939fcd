"""ArviZ output: the only module that imports ArviZ.

ArviZ 1.x (Python 3.12+) changed its API; keeping every ArviZ call here means
one module to adapt.  Written against arviz 0.x (``az.from_dict``).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from mixlab.density import log_likelihood_draws


def import_arviz() -> Any:
    """``import arviz``, without its notice about the coming 1.x refactor."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")
        import arviz

    return arviz


def _draws(result: Any) -> dict[str, np.ndarray]:
    if result.posterior is not None:
        return {k: np.asarray(v) for k, v in result.posterior.items()}
    p = result.params  # EM: its point estimate as a single draw
    out = {"weights": np.asarray(p.weights)[None, None]}
    out.update({k: np.asarray(v)[None, None] for k, v in p.components.items()})
    return out


def to_inference_data(result: Any, X: Any = None, feature_names: list[str] | None = None) -> Any:
    """An ``arviz.InferenceData`` for a :class:`mixlab.FitResult`.

    Groups: ``posterior`` (weights, means, covariances in data units, labels
    aligned), ``sample_stats`` (NUTS: diverging, step size, tree size,
    acceptance rate, log density), ``log_likelihood`` (per observation, so
    ``az.loo`` and ``az.compare`` work) and ``observed_data``.  EM's point
    estimate is a posterior of one draw, so ArviZ plots can overlay it.

    A fit with integer frequency weights (``sample_weight``) is exported as
    the rows it stands for (each row repeated by its weight), so the
    pointwise log-likelihood has one entry per observation and PSIS-LOO is
    that of the expanded data.  Non-integer weights keep one entry per row
    and the weights are stored beside the data in ``observed_data``.

    The ``feature`` coordinate holds ``feature_names``, by default the fit's
    :attr:`~mixlab.FitResult.feature_names` (``x0``, ``x1``, ... for unnamed data).
    """
    az = import_arviz()
    params = result.params
    X = result.data if X is None else np.asarray(result._input(X), dtype=np.float64)
    draws = _draws(result)
    n_chains, n_draws = draws["weights"].shape[:2]
    features = list(
        feature_names or result.feature_names or [f"x{j}" for j in range(params.n_features)]
    )
    coords = {
        "component": np.arange(params.n_components),
        "feature": features,
        "feature_": features,
    }
    dims = {"weights": ["component"], "obs": ["obs_id"], "X": ["obs_id", "feature"]}
    dims.update({spec.name: list(spec.dims) for spec in params.family.param_specs()})
    sample_stats = None
    diag = result.diagnostics
    if result.method == "nuts":
        sample_stats = {
            "diverging": np.asarray(diag["diverging"], dtype=bool),
            "n_steps": np.asarray(diag["num_steps"]),
            "acceptance_rate": np.asarray(diag["accept_prob"]),
            "lp": -np.asarray(diag["potential_energy"]),
            "step_size": np.broadcast_to(
                np.asarray(diag["step_size"])[:, None], (n_chains, n_draws)
            ).copy(),
        }
    log_likelihood = observed = None
    weights = result.sample_weight if X is result.data else None
    if X is not None:
        X = np.asarray(X)
        X = X[:, None] if X.ndim == 1 else X
        if weights is not None and np.all(weights == np.round(weights)):
            X, weights = np.repeat(X, np.asarray(weights, dtype=np.int64), axis=0), None
        pointwise = log_likelihood_draws(X, draws, params.family, pointwise=True)
        log_likelihood = {"obs": pointwise}
        observed = {"X": X}
        if weights is not None:
            observed["sample_weight"] = np.asarray(weights)
            dims["sample_weight"] = ["obs_id"]
        coords["obs_id"] = np.arange(X.shape[0])
    return az.from_dict(
        posterior=draws,
        sample_stats=sample_stats,
        log_likelihood=log_likelihood,
        observed_data=observed,
        coords=coords,
        dims=dims,
    )


# ----------------------------------------------------------------------------- PSIS-LOO
from typing import NamedTuple  # noqa: E402 (appended section; keeps the lines above as they are)


class PsisLoo(NamedTuple):
    """PSIS-LOO of a fit on the deviance scale: ``-2 * elpd_loo``, lower is better.

    Attributes
    ----------
    deviance : float
        ``-2 * elpd_loo``, ArviZ's ``scale="deviance"``.
    se : float
        Its standard error (twice that of ``elpd_loo``).
    p_loo : float
        Effective number of parameters (``lppd - elpd_loo``; the same on every scale).
    pareto_k : array of shape (n_observations,)
        Pareto shape estimate of each observation; above ``good_k`` the
        importance-sampling estimate of that observation is unreliable.
    good_k : float
        ArviZ's threshold for ``pareto_k`` (``min(1 - 1/log10(S), 0.7)`` for S draws).
    """

    deviance: float
    se: float
    p_loo: float
    pareto_k: np.ndarray
    good_k: float

    @property
    def elpd(self) -> float:
        """``elpd_loo`` on the log scale (higher is better): ``-deviance / 2``."""
        return -0.5 * self.deviance

    @property
    def n_high_pareto_k(self) -> int:
        """Observations whose ``pareto_k`` exceeds ``good_k``."""
        return int(np.sum(self.pareto_k > self.good_k))


def psis_loo(result: Any) -> PsisLoo:
    """PSIS-LOO (``az.loo``) of a fit with posterior draws, on the deviance scale.

    Uses the pointwise log-likelihood of :func:`to_inference_data` on the
    fitted data (integer frequency weights as repeated rows).  ArviZ's warning
    about high Pareto k is not raised: ``pareto_k`` and ``n_high_pareto_k``
    carry it, for the caller to report.

    Parameters
    ----------
    result : FitResult
        An SVI or NUTS fit that holds its data.

    Returns
    -------
    PsisLoo

    Raises
    ------
    ValueError
        An EM fit (one draw: PSIS-LOO needs posterior draws) or a result
        without its data.
    """
    if result.posterior is None:
        raise ValueError(
            f"PSIS-LOO needs posterior draws; this {result.method.upper()} fit has none. "
            "Fit with method=ml.NUTS(...) or ml.SVI(...)"
        )
    if result.data is None:
        raise ValueError(
            "the result holds no data (e.g. loaded from a file saved without "
            "include_data=True); PSIS-LOO needs the fitted data"
        )
    az = import_arviz()
    idata = to_inference_data(result)
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Estimated shape parameter of Pareto", category=UserWarning
        )
        loo = az.loo(idata, pointwise=True, scale="deviance")
    return PsisLoo(
        deviance=float(loo.elpd_loo),
        se=float(loo.se),
        p_loo=float(loo.p_loo),
        pareto_k=np.asarray(loo.pareto_k, dtype=np.float64),
        good_k=float(getattr(loo, "good_k", 0.7)),
    )
