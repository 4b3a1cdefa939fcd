"""The EM driver: one ``lax.while_loop`` owns the loop; families supply the maths.

Iteration ``t`` (counting from 1) does an E-step at ``theta_{t-1}``, which
gives the log-likelihood ``ll_{t-1}``, then an M-step giving ``theta_t``.  It
stops when ``|ll_{t-1} - ll_{t-2}| / n_samples < tol`` (scikit-learn's rule, so
the iteration counts agree) or after ``max_iter`` iterations; ``tol = 0`` runs
exactly ``max_iter``.  A final E-step gives the exact log-likelihood of the
returned parameters, so ``trace`` has ``n_iter + 1`` entries: ``trace[t]`` is
the total log-likelihood of ``theta_t`` and ``trace[0]`` that of the start.

Restarts run batched with ``vmap`` inside one compiled program; the program is
compiled ahead of time once per (shapes, settings) and cached, so compile time
is reported apart from run time.

Data are centred on their mean and split into row chunks (``X3`` of shape
``(n_chunks, chunk, D)``, zero-padded, with a 0/1 mask) so that the
``(chunk, K*D)`` intermediates stay small whatever ``n_samples`` is.
"""

from __future__ import annotations

import functools
import warnings
from enum import IntEnum
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mixlab._jaxutil import CompiledCache, Progress, tiny
from mixlab.em.collapse import collapse_flags
from mixlab.em.init import initial_params, pooled_params
from mixlab.em.steps import e_pass, m_step_from_pass, objectives
from mixlab.errors import ConvergenceWarning, DataScaleWarning, FitError
from mixlab.families import Family
from mixlab.params import MixtureParams, index_params

Array = jax.Array

#: Bytes of one chunk's widest per-row intermediate: ``(chunk, K * D)`` in the
#: centred formulation, ``(chunk, T)`` moment features in the expanded one.
#: Measured on a 2-core AVX2 machine: 1-4 MiB chunks stay in cache and run
#: 1.2-2x faster than one big chunk (see benchmarks/em_speed.py).
CHUNK_BYTES = 4 * 2**20
MIN_CHUNK = 256
#: Moment features are computed once per fit when they take at most this many
#: bytes, else recomputed per chunk each iteration (about 10-20 % slower).
FEATURE_CACHE_BYTES = 2**30
#: "auto" uses the expanded formulation only when its worst-case rounding in a
#: variance, about ``eps * max |x - mean|^2``, is at most this fraction of the
#: ``reg_covar`` floor.  ``reg_covar = 0`` therefore always runs centred (exact).
EXPANDED_MAX_REL_ERROR = 1e-4


class EMStatus(IntEnum):
    """Why the loop stopped."""

    RUNNING = 0
    CONVERGED = 1
    MAX_ITER = 2
    NONFINITE = 3  # the log-likelihood became NaN or infinite
    DEGENERATE = 4  # an M-step produced a non-positive-definite or non-finite component
    COLLAPSED = 5  # a component's weight or covariance collapsed (see collapse_flags)

    @property
    def failed(self) -> bool:
        return self in (EMStatus.NONFINITE, EMStatus.DEGENERATE, EMStatus.COLLAPSED)


class EMSettings(NamedTuple):
    """Static settings of one compiled EM program (hashable)."""

    family: Family
    n_components: int
    max_iter: int
    hard: bool = False
    record_params: bool = False
    fixed: tuple[str, ...] = ()
    init: str | None = None  # None: explicit starting parameters are passed in
    formulation: str = "centred"  # "centred" (exact, two passes) or "expanded" (one pass)
    precompute_features: bool = False  # expanded: moment features once per fit
    progress_every: int = 0  # report iterations to a progress bar every n (0: never)

    @property
    def max_reinit(self) -> int:
        """Reinitialisations allowed per run (``on_collapse="reinit"``)."""
        return max(10, 5 * self.n_components)


#: ``on_collapse`` as the runtime code the compiled loop takes: one program serves all
#: three policies (the restart machinery costs little and "reinit" is the default).
COLLAPSE_POLICIES = ("reinit", "ignore", "raise")


class EMState(NamedTuple):
    """Carry of the ``while_loop``."""

    params: MixtureParams
    n_iter: Array  # iterations completed (accepted M-steps)
    objective: Array  # objective at the parameters before the latest M-step
    status: Array  # EMStatus
    bad_component: Array  # component that broke the last M-step, or -1
    trace: Array  # (max_iter + 1,) objective per iteration
    params_trace: MixtureParams | None  # leading axis max_iter + 1, when recorded
    collapse_kind: Array  # 0: weight below one point, 1: covariance collapsed, -1: none
    n_reinit: Array  # reinitialisations so far
    reinit_log: Array  # (max_reinit, 2): iteration and component of each reinitialisation
    first_collapse: Array  # (K, 2): first iteration and kind of each component's collapse
    last_restart: Array  # component restarted by the previous iteration, or -1
    settled: Array  # (K,) bool: collapsed again right after a restart; not restarted again


class EMOutput(NamedTuple):
    """What one EM run returns (arrays; batched over restarts by ``vmap``)."""

    params: MixtureParams
    n_iter: Array
    status: Array
    bad_component: Array
    trace: Array
    params_trace: MixtureParams | None
    log_likelihood: Array  # total, at the returned parameters
    collapse_kind: Array
    n_reinit: Array
    reinit_log: Array
    first_collapse: Array


def _select(pred: Array, a: Any, b: Any) -> Any:
    return jax.tree_util.tree_map(lambda x, y: jnp.where(pred, x, y), a, b)


def _keep_fixed(new: MixtureParams, old: MixtureParams, fixed: tuple[str, ...]) -> MixtureParams:
    if not fixed:
        return new
    weights = old.weights if "weights" in fixed else new.weights
    means = old.means if "means" in fixed else new.means
    if "covariances" in fixed:
        covariances, prec_chol = old.covariances, old.prec_chol
    else:
        covariances, prec_chol = new.covariances, new.prec_chol
    return MixtureParams.trusted(
        weights, means, covariances, prec_chol, new.covariance_type, new.family
    )


def _component_ok(params: MixtureParams, family: Family, n_components: int) -> Array:
    """Per component: finite precision factors, mean and weight (shape ``(K,)``)."""
    return (
        family.component_ok(params.prec_chol, n_components)
        & jnp.all(jnp.isfinite(params.means), axis=1)
        & jnp.isfinite(params.weights)
    )


def _reinitialise(
    params: MixtureParams, k: Array, point: Array, pooled: MixtureParams
) -> MixtureParams:
    """Component ``k`` restarted at ``point`` with the data's covariance and weight 1/K.

    The pooled parameters carry their precision factors already, so a restart
    costs no factorisation (it is computed every iteration, restart or not).
    """
    family = params.family_impl
    n_components = params.weights.shape[0]
    means = params.means.at[k].set(point)
    covariances, prec_chol = params.covariances, params.prec_chol
    if family.per_component_covariance:
        covariances = covariances.at[k].set(pooled.covariances[k])
        prec_chol = prec_chol.at[k].set(pooled.prec_chol[k])
    others = params.weights.at[k].set(0.0)
    others = others / jnp.maximum(jnp.sum(others), tiny(others.dtype)) * (1.0 - 1.0 / n_components)
    weights = others.at[k].set(1.0 / n_components)
    return MixtureParams.trusted(
        weights, means, covariances, prec_chol, params.covariance_type, params.family
    )


def run_em(
    params0: MixtureParams,
    X3: Array,
    F3: Array | None,
    mask: Array | None,
    n_samples: Array,
    tol: Array,
    reg_covar: Array,
    data_var: Array,
    policy: Array,
    settings: EMSettings,
) -> EMOutput:
    """Run EM from ``params0`` until the stopping rule holds (pure, jittable).

    ``policy`` indexes :data:`COLLAPSE_POLICIES` (an int32 scalar).
    """
    family, n_components = settings.family, settings.n_components
    dtype = X3.dtype
    trace0 = jnp.full(settings.max_iter + 1, jnp.nan, dtype)
    ptrace0 = None
    if settings.record_params:
        ptrace0 = jax.tree_util.tree_map(
            lambda a: jnp.zeros((settings.max_iter + 1, *a.shape), a.dtype).at[0].set(a), params0
        )
    # A start that is degenerate already (only possible with reg_covar=0 on data with
    # too few distinct points, or an explicit start built inside jit) stops before
    # the first iteration, with collapse_kind 2 saying so.
    ok0 = _component_ok(params0, family, n_components)
    start_ok = jnp.all(ok0)
    state0 = EMState(
        params=params0,
        n_iter=jnp.zeros((), jnp.int32),
        objective=jnp.asarray(-jnp.inf, dtype),
        status=jnp.where(start_ok, EMStatus.RUNNING, EMStatus.DEGENERATE).astype(jnp.int32),
        bad_component=jnp.where(start_ok, -1, jnp.argmin(ok0)).astype(jnp.int32),
        trace=trace0,
        params_trace=ptrace0,
        collapse_kind=jnp.where(start_ok, -1, 2).astype(jnp.int32),
        n_reinit=jnp.zeros((), jnp.int32),
        reinit_log=jnp.full((settings.max_reinit, 2), -1, jnp.int32),
        first_collapse=jnp.full((n_components, 2), -1, jnp.int32),
        last_restart=jnp.asarray(-1, jnp.int32),
        settled=jnp.zeros(n_components, bool),
    )
    reinit = policy == COLLAPSE_POLICIES.index("reinit")
    pooled = pooled_params(X3, mask, n_components, family, reg_covar)

    def body(state: EMState) -> EMState:
        stats, resp3, worst = e_pass(
            X3, F3, mask, state.params, settings.hard, settings.formulation, track_worst=True
        )
        fixed_means = state.params.means if "means" in settings.fixed else None
        new = m_step_from_pass(X3, resp3, stats, family, reg_covar, means=fixed_means)
        new = _keep_fixed(new, state.params, settings.fixed)
        finite = jnp.isfinite(stats.objective)
        iteration = state.n_iter + 1

        # Collapse: a component left with under one point, or a covariance singular
        # above reg_covar; with reinit, a non-finite (degenerate) component too.
        weight_gone, cov_gone = collapse_flags(new, stats.nk, reg_covar, data_var, n_components)
        gone = weight_gone | cov_gone
        kind_now = jnp.where(weight_gone, 0, 1).astype(jnp.int32)
        newly = finite & gone & (state.first_collapse[:, 0] < 0)
        first_collapse = jnp.where(
            newly[:, None],
            jnp.stack([jnp.full_like(kind_now, iteration), kind_now], 1),
            state.first_collapse,
        )
        # Restarts (on_collapse="reinit"); the policy is traced, so this is always
        # computed and the policy selects.
        reinit_log, n_reinit = state.reinit_log, state.n_reinit
        settled = state.settled
        # A component that collapses again right after its restart has no data to
        # go to (fewer distinct points than components, say): leave it be.
        components = jnp.arange(n_components)
        settled = settled | (gone & (components == state.last_restart))
        broken = (gone & ~settled) | ~_component_ok(new, family, n_components)
        restarted = reinit & finite & jnp.any(broken) & (state.n_reinit < settings.max_reinit)
        k_restart = jnp.argmax(broken).astype(jnp.int32)
        # The row the current fit explains worst, found by this iteration's E-pass
        # (a second pass under the collapsed fit cost ~50% per iteration, collapse or
        # not: under vmap a cond runs both branches).  The restart goes where data
        # lack a home, not onto the collapsed component's own few points.
        fresh = _keep_fixed(_reinitialise(new, k_restart, worst, pooled), new, settings.fixed)
        new = _select(restarted, fresh, new)
        entry = jnp.stack([iteration, k_restart]).astype(jnp.int32)
        slot = jnp.minimum(state.n_reinit, settings.max_reinit - 1)
        reinit_log = jnp.where(restarted, reinit_log.at[slot].set(entry), reinit_log)
        n_reinit = n_reinit + restarted.astype(jnp.int32)
        last_restart = jnp.where(restarted, k_restart, -1).astype(jnp.int32)
        # What is left after the restart decides whether to go on.
        weight_gone = weight_gone & ~(restarted & (components == k_restart))
        cov_gone = cov_gone & ~(restarted & (components == k_restart))

        ok = _component_ok(new, family, n_components)
        bad = jnp.where(jnp.all(ok), -1, jnp.argmin(ok)).astype(jnp.int32)
        valid = finite & (bad < 0)
        gone = weight_gone | cov_gone
        k = jnp.argmax(gone).astype(jnp.int32)
        # Only "raise" stops at a collapse; "reinit" carries on once its budget is spent.
        still_collapsed = valid & jnp.any(gone) & (policy == COLLAPSE_POLICIES.index("raise"))
        kind = jnp.where(still_collapsed, jnp.where(weight_gone[k], 0, 1), state.collapse_kind)

        accept = valid & ~still_collapsed
        n_iter = state.n_iter + accept.astype(jnp.int32)
        change = (stats.objective - state.objective) / n_samples
        status = jnp.select(
            [
                ~finite,
                bad >= 0,
                still_collapsed,
                (jnp.abs(change) < tol) & ~restarted,
                n_iter >= settings.max_iter,
            ],
            [
                EMStatus.NONFINITE,
                EMStatus.DEGENERATE,
                EMStatus.COLLAPSED,
                EMStatus.CONVERGED,
                EMStatus.MAX_ITER,
            ],
            EMStatus.RUNNING,
        ).astype(jnp.int32)
        params = _select(accept, new, state.params)
        ptrace = state.params_trace
        if ptrace is not None:
            ptrace = jax.tree_util.tree_map(lambda buf, p: buf.at[n_iter].set(p), ptrace, params)
        Progress.report(state.n_iter, settings.progress_every, settings.max_iter)
        culprit = jnp.where(bad >= 0, bad, jnp.where(still_collapsed, k, state.bad_component))
        return EMState(
            params=params,
            n_iter=n_iter,
            objective=stats.objective,
            status=status,
            bad_component=culprit,
            trace=state.trace.at[state.n_iter].set(stats.objective),
            params_trace=ptrace,
            collapse_kind=kind,
            n_reinit=n_reinit,
            reinit_log=reinit_log,
            first_collapse=first_collapse,
            last_restart=last_restart,
            settled=settled,
        )

    state = jax.lax.while_loop(lambda s: s.status == EMStatus.RUNNING, body, state0)
    log_lik, classification = objectives(X3, F3, mask, state.params, settings.formulation)
    final_objective = classification if settings.hard else log_lik
    return EMOutput(
        params=state.params,
        n_iter=state.n_iter,
        status=state.status,
        bad_component=state.bad_component,
        trace=state.trace.at[state.n_iter].set(final_objective),
        params_trace=state.params_trace,
        log_likelihood=log_lik,
        collapse_kind=state.collapse_kind,
        n_reinit=state.n_reinit,
        reinit_log=state.reinit_log,
        first_collapse=state.first_collapse,
    )


def _program(
    starts: Any,
    X3: Array,
    mask: Array | None,
    n_samples: Array,
    tol: Array,
    reg_covar: Array,
    data_var: Array,
    policy: Array,
    settings: EMSettings,
) -> EMOutput:
    """All restarts in one program: ``starts`` are PRNG keys or stacked parameters."""
    F3 = jax.vmap(settings.family.moment_features)(X3) if settings.precompute_features else None

    def one(start: Any) -> EMOutput:
        if settings.init is None:
            params0 = start
        else:
            params0 = initial_params(
                start,
                X3,
                mask,
                settings.n_components,
                settings.family,
                settings.init,
                reg_covar,
                data_var,
            )
        return run_em(params0, X3, F3, mask, n_samples, tol, reg_covar, data_var, policy, settings)

    return jax.vmap(one)(starts)


_PROGRAMS = CompiledCache(size=32)


def chunk_layout(n_samples: int, row_bytes: int, chunk_size: int | None) -> tuple[int, int]:
    """``(n_chunks, chunk)``: balanced chunks of at most ``chunk_size`` rows.

    By default a chunk's widest intermediate (``row_bytes`` per row) takes
    about :data:`CHUNK_BYTES`.  Padding is under one row per chunk.
    """
    if chunk_size is None:
        chunk_size = max(MIN_CHUNK, CHUNK_BYTES // max(row_bytes, 1))
    n_chunks = -(-n_samples // min(chunk_size, n_samples))
    return n_chunks, -(-n_samples // n_chunks)


def choose_formulation(requested: str, centred_X: np.ndarray, reg_covar: float) -> str:
    """Resolve ``"auto"``: expanded (fast) where its rounding is harmless, else centred.

    The expanded M-step forms a variance as ``E[x^2] - mean^2`` and loses
    about ``eps * max x^2``; that is negligible when ``reg_covar`` keeps every
    variance well above it, and never acceptable in float32.
    """
    if requested != "auto":
        return requested
    if centred_X.dtype != np.float64:
        return "centred"
    worst = float(np.finfo(np.float64).eps) * float(np.max(np.square(centred_X)))
    return "expanded" if worst <= EXPANDED_MAX_REL_ERROR * reg_covar else "centred"


def to_chunks(X: np.ndarray, n_chunks: int, chunk: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Zero-pad ``X`` to ``n_chunks * chunk`` rows and reshape; the mask marks real rows."""
    n_samples, n_features = X.shape
    pad = n_chunks * chunk - n_samples
    if pad == 0:
        return X.reshape(n_chunks, chunk, n_features), None
    X3 = np.concatenate([X, np.zeros((pad, n_features), X.dtype)]).reshape(
        n_chunks, chunk, n_features
    )
    mask = np.concatenate([np.ones(n_samples, X.dtype), np.zeros(pad, X.dtype)])
    return X3, mask.reshape(n_chunks, chunk)


class EMRun(NamedTuple):
    """Host-side outcome of :func:`fit_em` (NumPy arrays)."""

    params: MixtureParams
    log_likelihood: float
    trace: np.ndarray
    n_iter: int
    converged: bool
    status: EMStatus
    params_trace: MixtureParams | None
    restart_log_likelihood: np.ndarray
    restart_converged: np.ndarray
    restart_n_iter: np.ndarray
    restart_status: np.ndarray
    restart_keys: np.ndarray | None
    best_restart: int
    reinitialisations: list[tuple[int, int]]
    collapses: list[tuple[int, int, str]]
    reg_covar_dominates: list[int]
    elapsed: float
    compile_time: float


def _shift_means(params: MixtureParams, shift: np.ndarray) -> MixtureParams:
    return MixtureParams.trusted(
        params.weights,
        params.means + shift,
        params.covariances,
        params.prec_chol,
        params.covariance_type,
        params.family,
    )


def _failure_message(
    status: EMStatus, bad: int, n_iter: int, kind: int = -1, n_reinit: int = 0
) -> str:
    advice = "increase reg_covar, use fewer components, or rescale the data"
    if status == EMStatus.DEGENERATE and kind == 2:
        return (
            f"the start of component {bad} is degenerate before the first iteration: its "
            "covariance is singular (the data have too few distinct points for it, and "
            f"reg_covar is 0); {advice}"
        )
    where = f"component {bad} collapsed at iteration {n_iter + 1}"
    if n_reinit:
        where += f" after {n_reinit} restarts of collapsed components"
    if status == EMStatus.COLLAPSED:
        what = (
            "it holds less than one data point's worth of responsibility"
            if kind == 0
            else "its covariance became singular (it sits on too few distinct points)"
        )
        hint = "" if n_reinit else ", or pass EM(on_collapse='reinit')"
        return f"{where}: {what}; {advice}{hint}"
    if status == EMStatus.DEGENERATE:
        return (
            f"{where}: its covariance is no longer positive definite (or its mean is not "
            f"finite); {advice}"
        )
    return f"the log-likelihood became non-finite at iteration {n_iter + 1}; {advice}"


#: ``reg_covar`` this many times the variance of every varying feature makes every
#: component at least ``sqrt`` of it (10x) as wide as the whole data set in every
#: direction: the mixture density is flat over the data and separates nothing.
SWAMPED_RATIO = 100.0


def check_scale(centred_X: np.ndarray, reg_covar: float) -> list[int]:
    """Refuse data whose squares overflow; flag features that ``reg_covar`` dominates.

    Returns the features whose variance is below ``reg_covar`` (every
    component's variance there exceeds the data's, so that feature cannot
    separate components; the fit records them as a diagnostic).  Warns with
    :class:`DataScaleWarning` only when the fit is ruined: ``reg_covar`` is at
    least :data:`SWAMPED_RATIO` times the variance of every varying feature, as
    with data in tiny units.  A deliberate large ``reg_covar`` (scikit-learn
    users set 0.1 on unit-scale data) stays silent.
    """
    dtype = centred_X.dtype
    limit = float(np.sqrt(np.finfo(dtype).max)) / 1e4
    biggest = float(np.max(np.abs(centred_X)))
    if biggest > limit:
        raise ValueError(
            f"X deviates from its mean by up to {biggest:.3g}: squares overflow {dtype}; "
            "rescale the data (e.g. divide each column by its standard deviation)"
        )
    var = centred_X.var(axis=0, dtype=np.float64)
    varying = var > 0
    if reg_covar <= 0 or not varying.any():
        return []
    if reg_covar >= SWAMPED_RATIO * float(var[varying].max()):
        warnings.warn(
            f"reg_covar={reg_covar:g} is over {SWAMPED_RATIO:g} times the variance of every "
            f"feature (largest {var[varying].max():.3g}): every component is wider than the "
            "whole data set and the mixture cannot separate anything. Rescale the data "
            "(e.g. divide each column by its standard deviation) or lower reg_covar",
            DataScaleWarning,
            stacklevel=4,
        )
    return [int(j) for j in np.flatnonzero(varying & (var < reg_covar))]


def restart_keys(key: Array, n_init: int) -> Array:
    """Keys of ``n_init`` restarts: ``key`` itself, then ``fold_in(key, i)``.

    Restart 0 is the ``n_init=1`` fit, and the restarts of ``n_init=a`` are the
    first ``a`` of ``n_init=b > a``, so more restarts never end worse.  Any
    restart's key passed with ``n_init=1`` reproduces that restart alone.
    """
    if n_init == 1:
        return key[None]
    rest = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(1, n_init, dtype=jnp.uint32))
    return jnp.concatenate([key[None], rest])


def fit_em(
    X: np.ndarray,
    n_components: int,
    family: Family,
    *,
    key: Array,
    tol: float,
    max_iter: int,
    n_init: int,
    init: str | MixtureParams,
    reg_covar: float,
    hard: bool = False,
    fixed: tuple[str, ...] = (),
    record_params: bool = False,
    chunk_size: int | None = None,
    formulation: str = "auto",
    on_collapse: str = "reinit",
    progress: bool = False,
) -> EMRun:
    """Fit by EM with ``n_init`` batched restarts; ``X`` is a validated 2-D array.

    Runs under float64 when ``X`` is float64.  Raises :class:`FitError` when no
    restart produced finite, positive-definite parameters.
    """
    n_samples, n_features = X.shape
    dtype = X.dtype
    shift = X.mean(axis=0, dtype=np.float64).astype(dtype)
    centred_X = X - shift
    dominated = check_scale(centred_X, reg_covar)
    formulation = choose_formulation(formulation, centred_X, reg_covar)
    if formulation == "expanded":
        n_moments = family.n_moment_features(n_features)
        row_bytes = max(n_moments, n_components) * dtype.itemsize
        precompute = n_samples * n_moments * dtype.itemsize <= FEATURE_CACHE_BYTES
    else:
        row_bytes = n_components * n_features * dtype.itemsize
        precompute = False
    n_chunks, chunk = chunk_layout(n_samples, row_bytes, chunk_size)
    X3, mask = to_chunks(centred_X, n_chunks, chunk)

    if isinstance(init, MixtureParams):
        starts = jax.tree_util.tree_map(
            lambda a: np.asarray(a, dtype)[None], _shift_means(init, -shift)
        )
        init_method = None
    else:
        starts = restart_keys(key, n_init)
        init_method = init
    settings = EMSettings(
        family=family,
        n_components=n_components,
        max_iter=max_iter,
        hard=hard,
        record_params=record_params,
        fixed=tuple(sorted(fixed)),
        init=init_method,
        formulation=formulation,
        precompute_features=precompute,
        progress_every=Progress.every(max_iter, progress),
    )
    with jax.enable_x64(dtype == np.float64):
        args = (
            jax.tree_util.tree_map(jnp.asarray, starts),
            jnp.asarray(X3),
            None if mask is None else jnp.asarray(mask),
            jnp.asarray(n_samples, dtype),
            jnp.asarray(tol, dtype),
            jnp.asarray(reg_covar, dtype),
            jnp.asarray(np.var(centred_X, axis=0), dtype),
            jnp.asarray(COLLAPSE_POLICIES.index(on_collapse), jnp.int32),
        )
        compiled, compile_time = _PROGRAMS.get(
            settings, functools.partial(_program, settings=settings), args
        )
        desc = f"EM ({len(starts) if init_method else 1} restart(s), iterations)"
        out, elapsed = Progress.run(compiled, args, max_iter, desc, progress)
        out = jax.tree_util.tree_map(np.asarray, out)

    status = out.status.astype(int)
    lls = out.log_likelihood.astype(np.float64)
    failed = np.array([EMStatus(v).failed for v in status]) | ~np.isfinite(lls)
    if failed.all():
        i = 0
        raise FitError(
            ("every restart failed; first: " if len(status) > 1 else "EM failed: ")
            + _failure_message(
                EMStatus(status[i]),
                int(out.bad_component[i]),
                int(out.n_iter[i]),
                int(out.collapse_kind[i]),
                int(out.n_reinit[i]),
            )
        )
    best = int(np.argmax(np.where(failed, -np.inf, lls)))
    best_status = EMStatus(int(status[best]))
    n_iter = int(out.n_iter[best])
    params = _shift_means(index_params(out.params, best), shift)
    params_trace = None
    if out.params_trace is not None:
        ptrace = index_params(out.params_trace, best)
        ptrace = jax.tree_util.tree_map(lambda a: a[: n_iter + 1], ptrace)
        params_trace = _shift_means(ptrace, shift[None, None, :])
    converged = best_status == EMStatus.CONVERGED
    if not converged and tol > 0:
        warnings.warn(
            f"the best of {len(status)} EM restart(s) did not converge within max_iter={max_iter} "
            f"iterations (tol={tol}); increase max_iter or tol, or check the data for "
            "degenerate structure",
            ConvergenceWarning,
            stacklevel=3,
        )
    return EMRun(
        params=params,
        log_likelihood=float(lls[best]),
        trace=out.trace[best, : n_iter + 1].astype(np.float64),
        n_iter=n_iter,
        converged=converged,
        status=best_status,
        params_trace=params_trace,
        restart_log_likelihood=np.where(failed, np.nan, lls),
        restart_converged=status == EMStatus.CONVERGED,
        restart_n_iter=out.n_iter.astype(int),
        restart_status=status,
        restart_keys=None if init_method is None else np.asarray(starts),
        best_restart=best,
        reinitialisations=[
            (int(t), int(k)) for t, k in out.reinit_log[best, : int(out.n_reinit[best])]
        ],
        collapses=[
            (int(k), int(t), ("weight", "covariance")[int(kind)])
            for k, (t, kind) in enumerate(out.first_collapse[best])
            if t >= 0
        ],
        reg_covar_dominates=dominated,
        elapsed=elapsed,
        compile_time=compile_time,
    )
