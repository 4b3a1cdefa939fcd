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
    """
    az = import_arviz()
    params = result.params
    X = result.data if X is None else np.asarray(X, dtype=np.float64)
    draws = _draws(result)
    n_chains, n_draws = draws["weights"].shape[:2]
    features = feature_names or [f"x{j}" for j in range(params.n_features)]
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
