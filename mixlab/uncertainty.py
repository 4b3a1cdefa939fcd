"""How sure is EM: standard errors from the observed information.

The observed information is minus the Hessian of the total log-likelihood
``sum_i w_i log sum_k pi_k p(x_i | theta_k)``, computed exactly by automatic
differentiation (float64) at the EM estimate, in the mixture's free
coordinates: the first ``K - 1`` weights (the last is one minus their sum),
every element of each component parameter, and the upper triangle only of a
symmetric matrix.  Its inverse is the asymptotic covariance of those
coordinates; the delta method (here a linear map) gives it for every weight
and both triangles.

Why not an unconstrained parameterisation (softmax weights, Cholesky
factors, log rates)?  At a maximum of the likelihood the gradient is zero, so
the Hessian transforms as ``J^T H J`` under any smooth reparameterisation and
the delta method gives exactly the same covariance in the original
parameters.  Free coordinates need no per-family transform, so every family,
a user's own included, gets standard errors from its ``log_prob`` alone.
Where a parameter sits on its boundary (a Bernoulli probability of 0 or 1, a
component with too few points) the information is singular in any
parameterisation, and the error names the component.

Parameters held fixed (``EM(fixed=...)`` or a family option such as
``StudentT(dofs=5)``) are conditioned on: their standard error is 0.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mixlab.density import mixture_log_prob
from mixlab.errors import FitError
from mixlab.families import Family
from mixlab.params import MixtureParams

Array = jax.Array

#: Smallest eigenvalue of the (scaled) information, relative to its largest,
#: below which the information counts as singular.
SINGULAR_RTOL = 1e-10


class EstimateCovariance(NamedTuple):
    """Asymptotic covariance of the EM estimates.

    Attributes
    ----------
    names : list of str
        One label per free coordinate, e.g. ``"weights[0]"``,
        ``"means[1, 0]"``, ``"covariances[0, 0, 1]"`` (upper triangle).
    matrix : array of shape (n, n)
        Covariance of those coordinates (inverse observed information).
    """

    names: list[str]
    matrix: np.ndarray


class _Coordinate(NamedTuple):
    name: str  # "weights" or a component parameter
    index: tuple[int, ...]  # element of that parameter
    component: int  # component it belongs to (-1: shared)


def _coordinates(params: MixtureParams, held: tuple[str, ...]) -> list[_Coordinate]:
    """The free coordinates, in order: weights[:-1], then each free parameter."""
    K, D = params.n_components, params.n_features
    coords = []
    if "weights" not in held:
        coords += [_Coordinate("weights", (k,), k) for k in range(K - 1)]
    for spec in params.family.param_specs():
        if spec.name in held:
            continue
        shape = spec.shape(K, D)
        for index in np.ndindex(*shape):
            if spec.symmetric and index[-2] > index[-1]:
                continue
            coords.append(_Coordinate(spec.name, index, index[0] if spec.per_component else -1))
    return coords


def _groups(coords: list[_Coordinate]) -> tuple[tuple[str, int, int, tuple], ...]:
    """Contiguous runs of coordinates per parameter: (name, start, stop, index arrays)."""
    out = []
    start = 0
    for i in range(1, len(coords) + 1):
        if i == len(coords) or coords[i].name != coords[start].name:
            index = tuple(zip(*(c.index for c in coords[start:i]), strict=True))
            out.append((coords[start].name, start, i, index))
            start = i
    return tuple(out)


def _unpack(
    theta: Array, base: MixtureParams, groups: tuple, symmetric: frozenset
) -> MixtureParams:
    """``base`` with the free coordinates set from ``theta`` (pure, differentiable)."""
    values = {"weights": base.weights, **base.components}
    for name, start, stop, index in groups:
        idx = tuple(np.asarray(a) for a in index)
        values[name] = values[name].at[idx].set(theta[start:stop])
        if name in symmetric:  # the lower triangle mirrors the upper one
            values[name] = values[name].at[(*idx[:-2], idx[-1], idx[-2])].set(theta[start:stop])
        if name == "weights":
            w = values["weights"]
            values["weights"] = w.at[-1].set(1.0 - jnp.sum(w[:-1]))
    weights = values.pop("weights")
    return MixtureParams.trusted(weights, values, base.family)


@functools.partial(jax.jit, static_argnames=("groups", "symmetric", "family"))
def _hessian(
    theta: Array,
    weights: Array,
    components: dict[str, Array],
    X: Array,
    row_weight: Array | None,
    groups: tuple,
    symmetric: frozenset,
    family: Family,
) -> tuple[Array, Array]:
    base = MixtureParams.trusted(weights, components, family)

    def total(t: Array) -> Array:
        log_p = mixture_log_prob(X, _unpack(t, base, groups, symmetric))
        return jnp.sum(log_p if row_weight is None else row_weight * log_p)

    return jax.grad(total)(theta), jax.hessian(total)(theta)


def _label(c: _Coordinate) -> str:
    return f"{c.name}[{', '.join(map(str, c.index))}]"


def observed_information(
    params: MixtureParams,
    X: Any,
    sample_weight: Any = None,
    fixed: tuple[str, ...] = (),
) -> tuple[list[_Coordinate], np.ndarray, np.ndarray]:
    """Free coordinates, the gradient and minus the Hessian of the total
    log-likelihood at ``params`` (float64)."""
    family = params.family
    held = tuple(sorted({*fixed, *family.held_fixed()}))
    coords = _coordinates(params, held)
    if not coords:
        raise ValueError("every parameter is held fixed: there is nothing to estimate")
    symmetric = frozenset(s.name for s in family.param_specs() if s.symmetric)
    with jax.enable_x64(True):
        X = jnp.asarray(np.asarray(X, np.float64))
        row_weight = None if sample_weight is None else jnp.asarray(sample_weight, jnp.float64)
        p64 = params.astype(np.float64)
        values = {"weights": p64.weights, **p64.components}
        theta = jnp.asarray([np.asarray(values[c.name])[c.index] for c in coords])
        grad, hess = _hessian(
            theta,
            jnp.asarray(p64.weights),
            {k: jnp.asarray(v) for k, v in p64.components.items()},
            X,
            row_weight,
            _groups(coords),
            symmetric,
            family,
        )
        return coords, np.asarray(grad), -np.asarray(hess)


def _invert(info: np.ndarray, coords: list[_Coordinate]) -> np.ndarray:
    """Inverse of the information, or a FitError naming the component it cannot see."""
    if not np.all(np.isfinite(info)):
        bad = coords[int(np.flatnonzero(~np.isfinite(info).all(axis=1))[0])]
        raise FitError(_singular_message(bad, "is not finite"))
    scale = np.sqrt(np.abs(np.diag(info)))
    scale = np.where(scale > 0, scale, 1.0)
    scaled = info / scale[:, None] / scale[None, :]
    values, vectors = np.linalg.eigh(scaled)
    bad = coords[int(np.argmax(np.abs(vectors[:, 0])))]
    if values[0] < -SINGULAR_RTOL * values[-1]:
        whose = f"component {bad.component}" if bad.component >= 0 else f"the shared {bad.name}"
        raise FitError(
            f"the observed information is not positive definite (direction of {_label(bad)}, "
            f"{whose}): the estimate is not a maximum of the likelihood (a saddle point, or "
            "EM stopped early); refit with a smaller tol or more restarts (n_init)"
        )
    if values[0] <= SINGULAR_RTOL * values[-1]:
        raise FitError(_singular_message(bad, "is singular"))
    inverse = (vectors / values) @ vectors.T
    return inverse / scale[:, None] / scale[None, :]


def _singular_message(c: _Coordinate, what: str) -> str:
    whose = f"component {c.component}" if c.component >= 0 else f"the shared {c.name}"
    return (
        f"the observed information {what} (direction of {_label(c)}, {whose}): the data "
        f"do not determine {whose}'s parameters (too few points in it, or a parameter "
        "on its boundary such as a probability of 0 or 1); standard errors need a "
        "maximum inside the parameter space: fit fewer components, hold that parameter "
        "fixed, or use the posterior (SVI/NUTS)"
    )


#: A Newton step from the estimate larger than this many standard errors (in any
#: coordinate) means EM stopped before the maximum: the errors are then warned about.
STATIONARY_SE = 0.1


def _check_stationary(coords: list[_Coordinate], grad: np.ndarray, cov: np.ndarray) -> None:
    """Warn when the estimate is visibly short of the maximum (EM stopped early)."""
    import warnings

    from mixlab.errors import ConvergenceWarning

    step = cov @ grad  # the Newton step to the maximum of the quadratic approximation
    z = np.abs(step) / np.sqrt(np.diag(cov))
    i = int(np.argmax(z))
    if z[i] > STATIONARY_SE:
        warnings.warn(
            f"the estimate is not at a maximum of the likelihood: a Newton step moves "
            f"{_label(coords[i])} by {z[i]:.2g} standard errors, so these standard errors "
            "describe a point short of the maximum: EM's regulariser reg_covar (added to "
            "every variance) is not small next to a variance of the data, or EM stopped "
            "early; rescale the data or lower reg_covar, or refit with a smaller tol",
            ConvergenceWarning,
            stacklevel=4,
        )


#: An estimate with more log-likelihood than this still to gain (Aitken's estimate from
#: its trace) is short of the maximum: its parameters may be more than
#: ``sqrt(2 * SHORT_GAIN) = 0.05`` standard errors away.
SHORT_GAIN = 1.25e-3

#: The tight rule that :meth:`FitResult.at_maximum` continues EM with ("gap" criterion).
MAXIMUM_TOL = 1e-9
MAXIMUM_MAX_ITER = 100_000


def _flat(params: MixtureParams) -> np.ndarray:
    return np.concatenate(
        [np.ravel(params.weights)] + [np.ravel(np.asarray(v)) for v in params.components.values()]
    )


def continue_to_maximum(
    result: Any,
    X: Any,
    sample_weight: Any,
    tol: float | None = None,
    max_iter: int | None = None,
) -> Any:
    """EM continued from ``result``'s estimate to a tight tolerance on ``X`` (the same
    compiled EM program as any explicit start); ``result`` itself when EM gains
    less than ``tol`` there.  See :meth:`FitResult.at_maximum`."""
    from dataclasses import replace

    from mixlab._validation import check_float, check_int
    from mixlab.api import fit
    from mixlab.methods import EM

    tol = MAXIMUM_TOL if tol is None else check_float(tol, "tol", minimum=0.0, strict=True)
    max_iter = MAXIMUM_MAX_ITER if max_iter is None else check_int(max_iter, "max_iter", 1)
    s = result.settings
    method = EM(
        init=result.params,
        tol=tol,
        criterion="gap",
        max_iter=max_iter,
        reg_covar=s.get("reg_covar", 1e-6),
        fixed=tuple(s.get("fixed") or ()),
        formulation=s.get("formulation", "auto"),
        on_collapse=s.get("on_collapse", "reinit"),
        chunk_size=s.get("chunk_size"),
    )
    top = fit(
        X,
        result.n_components,
        method,
        family=result.params.family,
        sample_weight=sample_weight,
        feature_names=result.feature_names,
        order=None,
    )
    gained = top.log_likelihood - result.log_likelihood
    if top.n_iter <= 1 or gained < tol:
        return result
    diagnostics = {
        **top.diagnostics,
        "continued": {
            "from_log_likelihood": float(result.log_likelihood),
            "iterations": int(top.n_iter),
            "gained": float(gained),
        },
    }
    return replace(top, feature_units=result.feature_units, diagnostics=diagnostics)


def maximum_for_uncertainty(result: Any, X: Any, sample_weight: Any, what: str) -> Any:
    """The fit whose uncertainty is computed: ``result`` when it is at the maximum
    (:data:`SHORT_GAIN`), else EM continued from it, with a ConvergenceWarning naming
    how far it moved (in standard errors at the maximum, where they exist)."""
    import warnings

    from mixlab.errors import ConvergenceWarning

    gain = result.remaining_gain
    if result.converged and gain <= SHORT_GAIN:
        return result
    top = continue_to_maximum(result, X, sample_weight)
    if top is result or top.diagnostics["continued"]["gained"] <= SHORT_GAIN:
        return result  # within 0.05 standard errors of the maximum after all
    info = top.diagnostics["continued"]
    moved = ""
    try:
        se = _flat(standard_errors(top.params, X, sample_weight, tuple(top.settings["fixed"])))
        delta = np.abs(_flat(top.params) - _flat(result.params))
        z = np.where(se > 0, delta / np.where(se > 0, se, 1.0), 0.0)
        moved = f", which moved its parameters by up to {np.max(z):.2g} standard errors"
    except FitError:
        pass
    warnings.warn(
        f"the estimate was short of the maximum of the likelihood (EM stopped "
        f"{'early' if result.converged else 'at max_iter'}): {what} at the maximum, "
        f"reached by continuing EM from it for {info['iterations']} iterations "
        f"(log-likelihood +{info['gained']:.3g}){moved}; result.at_maximum() returns that "
        "fit, and the default EM(criterion='gap') stops there",
        ConvergenceWarning,
        stacklevel=4,
    )
    return top


def covariance_of_estimates(
    params: MixtureParams, X: Any, sample_weight: Any = None, fixed: tuple[str, ...] = ()
) -> EstimateCovariance:
    """Inverse observed information of the free coordinates (see the module docstring)."""
    coords, _, info = observed_information(params, X, sample_weight, fixed)
    return EstimateCovariance([_label(c) for c in coords], _invert(info, coords))


def standard_errors(
    params: MixtureParams, X: Any, sample_weight: Any = None, fixed: tuple[str, ...] = ()
) -> MixtureParams:
    """Standard errors of every weight and parameter, laid out as ``params``.

    The last weight's error comes from the delta method (it is one minus the
    others); a symmetric matrix's lower triangle mirrors its upper one; fixed
    parameters have error 0.  The result is a :class:`MixtureParams` holding
    standard errors instead of values (``.weights``, ``.means``, ...).
    """
    coords, grad, info = observed_information(params, X, sample_weight, fixed)
    cov = _invert(info, coords)
    variance = np.diag(cov)
    _check_stationary(coords, grad, cov)
    p = params.astype(np.float64)
    out = {"weights": np.zeros(p.n_components)}
    out.update({k: np.zeros_like(np.asarray(v)) for k, v in p.components.items()})
    symmetric = {s.name for s in p.family.param_specs() if s.symmetric}
    for i, c in enumerate(coords):
        out[c.name][c.index] = variance[i]
        if c.name in symmetric:
            out[c.name][(*c.index[:-2], c.index[-1], c.index[-2])] = variance[i]
    w_free = [i for i, c in enumerate(coords) if c.name == "weights"]
    if w_free:  # w_K = 1 - sum of the others: Var = 1' Cov 1
        out["weights"][-1] = float(np.sum(cov[np.ix_(w_free, w_free)]))
    weights = np.sqrt(out.pop("weights"))
    return MixtureParams.trusted(weights, {k: np.sqrt(v) for k, v in out.items()}, p.family)


# ------------------------------------------------------------------ bootstrap
BOOTSTRAP_KINDS = ("nonparametric", "weighted", "parametric")


@dataclass(frozen=True, eq=False)
class Bootstrap:
    """Refits of an EM result on resampled data (see :func:`bootstrap`).

    Attributes
    ----------
    kind : str
    family : Family
    draws : dict of str to array
        ``weights`` and the family's parameters, leading axis ``n_boot``,
        components in the EM result's order.
    log_likelihood : array of shape (n_boot,)
        Each refit's final log-likelihood on its own resampled data.
    converged : bool array of shape (n_boot,)
    continued : dict, optional
        Where the EM estimate was short of the maximum: how EM was continued
        to it before the refits (``iterations``, ``gained``,
        ``from_log_likelihood``; see :meth:`FitResult.at_maximum`), and the
        refits start there.  ``None`` when it was at the maximum.
    """

    kind: str
    family: Family
    draws: dict[str, np.ndarray]
    log_likelihood: np.ndarray
    converged: np.ndarray
    continued: dict | None = None

    def standard_errors(self) -> MixtureParams:
        """Standard deviation of each parameter over the refits, laid out as the
        EM parameters (a :class:`MixtureParams` holding standard errors)."""
        sd = {k: np.std(v, axis=0, ddof=1) for k, v in self.draws.items()}
        weights = sd.pop("weights")
        return MixtureParams.trusted(weights, sd, self.family)


def bootstrap(
    result: Any,
    n_boot: int = 200,
    kind: str = "nonparametric",
    key: Any = 0,
    X: Any = None,
    sample_weight: Any = None,
    tol: float | None = None,
    max_iter: int | None = None,
    progress: bool | None = None,
) -> Bootstrap:
    """Refit an EM result on ``n_boot`` resampled data sets in one compiled program.

    Every refit starts at the EM estimate and uses the fit's settings (tol,
    max_iter, reg_covar, fixed parameters, collapse policy); the refits run
    batched with ``vmap``.  Labels follow the EM estimate's (aligned by the
    same matching as the posterior's, to be safe).

    Parameters
    ----------
    result : FitResult
        An EM fit (soft assignments).
    n_boot : int
    kind : {"nonparametric", "weighted", "parametric"}
        ``"nonparametric"``: rows drawn with replacement (multinomial counts
        as frequency weights, so no data are copied); ``"weighted"``: the
        Bayesian bootstrap (Dirichlet weights, Rubin 1981; mclust's
        weighted-likelihood bootstrap); ``"parametric"``: whole data sets
        drawn from the fitted mixture.  With frequency weights the rows are
        drawn in proportion to them.
    key : int or jax.random key
    X, sample_weight : optional
        The data; by default the fitted data.
    tol, max_iter : optional
        Stopping rule of the refits; by default the fit's, tightened to at most
        ``1e-7`` and at least 1000 iterations: a refit starts at the estimate,
        where a loose ``tol`` would stop it before it moves (and understate the
        spread).
    progress : bool or None, default None
        A progress bar over the iterations of the refits (they run together;
        the bar shows the furthest); ``None``: only when stderr is a terminal.
    """
    from mixlab._jaxutil import as_key
    from mixlab._validation import check_choice, check_float, check_int
    from mixlab.align import apply_permutations, permutations_to_reference
    from mixlab.em.driver import EMStatus, refit_em

    n_boot = check_int(n_boot, "n_boot", minimum=2)
    if max_iter is not None:
        max_iter = check_int(max_iter, "max_iter", minimum=1)
    check_choice(kind, "kind", BOOTSTRAP_KINDS)
    X, sample_weight, fixed = result._information_inputs(X, sample_weight)
    start = maximum_for_uncertainty(result, X, sample_weight, "bootstrap refits started")
    continued = start.diagnostics.get("continued") if start is not result else None
    result = start
    X = np.asarray(X, result.params.weights.dtype)
    n = X.shape[0]
    w0 = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64)
    n_obs = round(float(w0.sum()))
    keys = jax.random.split(as_key(key), 2)
    rng = np.random.default_rng(np.asarray(keys[0]).tolist())  # the same key, the same draws
    row_weights, data = None, None
    if kind == "nonparametric":
        row_weights = rng.multinomial(n_obs, w0 / w0.sum(), size=n_boot).astype(np.float64)
    elif kind == "weighted":
        g = rng.gamma(np.broadcast_to(w0, (n_boot, n)))
        row_weights = g / g.sum(axis=1, keepdims=True) * w0.sum()
    else:
        data = np.stack(
            [result.params.sample(jax.random.fold_in(keys[1], b), n_obs)[0] for b in range(n_boot)]
        )
    s = result.settings
    params, lls, status, _ = refit_em(
        result.params,
        X,
        row_weights=row_weights,
        data=data,
        tol=min(s.get("tol", 1e-3), 1e-7) if tol is None else check_float(tol, "tol", 0.0),
        criterion=s.get("criterion", "change"),
        max_iter=max(s.get("max_iter", 100), 1000) if max_iter is None else max_iter,
        reg_covar=s.get("reg_covar", 1e-6),
        fixed=fixed,
        formulation=s.get("formulation", "auto"),
        on_collapse=s.get("on_collapse", "reinit"),
        chunk_size=s.get("chunk_size"),
        progress=progress,
    )
    family = result.params.family
    draws = {"weights": np.asarray(params.weights)}
    draws.update({k: np.asarray(v) for k, v in params.components.items()})
    perms = permutations_to_reference(draws, result.params, np.std(X, axis=0))
    draws = apply_permutations(draws, perms, family)
    return Bootstrap(kind, family, draws, lls, status == EMStatus.CONVERGED, continued)


__all__ = [
    "BOOTSTRAP_KINDS",
    "Bootstrap",
    "EstimateCovariance",
    "bootstrap",
    "covariance_of_estimates",
    "standard_errors",
]
