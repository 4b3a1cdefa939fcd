"""The EM driver: one ``lax.while_loop`` owns the loop; families supply the maths.

Iteration ``t`` (counting from 1) does an E-step at ``theta_{t-1}``, which
gives the log-likelihood ``ll_{t-1}``, then an M-step giving ``theta_t``.  It
stops by the rule of :mod:`mixlab.em.stopping` (by default when the
log-likelihood still to gain, estimated from the last three, is below ``tol``;
or scikit-learn's rule on the change of the mean per-row log-likelihood) or
after ``max_iter`` iterations; ``tol = 0`` runs exactly ``max_iter``.  A final E-step gives the
exact log-likelihood of the returned parameters, so ``trace`` has ``n_iter +
1`` entries: ``trace[t]`` is the total log-likelihood of ``theta_t`` and
``trace[0]`` that of the start.

Every family goes through the same loop (:mod:`mixlab.families`): the family
prepares its per-iteration quantities once, gives log-densities per row
chunk, sums sufficient statistics over the chunks and turns them into
components.  Weights, collapse handling, restarts and the stopping rule are
the driver's.

Restarts run batched with ``vmap`` inside one compiled program; the program is
compiled ahead of time once per (shapes, settings) and cached, so compile time
is reported apart from run time.

Data of location families are centred on their (weighted) mean; all data are
split into row chunks (``X3`` of shape ``(n_chunks, chunk, D)``, zero-padded,
with row weights ``W3`` that are zero on padding) so that the per-chunk
intermediates stay small whatever the number of rows is.
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
from mixlab.em.data import (
    chunk_layout,
    chunked,
    free_device_memory,
    on_device,
    platform_of,
    row_mesh,
    shard_chunks,
    summarize,
    to_chunks,
)
from mixlab.em.init import initial_params, pooled_params, resolve_init
from mixlab.em.steps import e_pass, m_step_from_pass, objectives, worst_row
from mixlab.em.stopping import DEFAULT_TOL, StopRule, should_stop, stop_rule
from mixlab.errors import ConvergenceWarning, FitError
from mixlab.families import Family
from mixlab.params import MixtureParams

Array = jax.Array

#: Row features are computed once per fit when they take at most this many
#: bytes, else recomputed per chunk each iteration (about 10-20 % slower).
FEATURE_CACHE_BYTES = 2**30


class EMStatus(IntEnum):
    """Why the loop stopped."""

    RUNNING = 0
    CONVERGED = 1
    MAX_ITER = 2
    NONFINITE = 3  # the log-likelihood became NaN or infinite
    DEGENERATE = 4  # an M-step produced an invalid component (e.g. a covariance not PD)
    COLLAPSED = 5  # a component collapsed and on_collapse="raise"

    @property
    def failed(self) -> bool:
        return self in (EMStatus.NONFINITE, EMStatus.DEGENERATE, EMStatus.COLLAPSED)


#: ``on_collapse`` as the runtime code the compiled loop takes: one program serves all
#: three policies (the restart machinery costs little and "reinit" is the default).
COLLAPSE_POLICIES = ("reinit", "ignore", "raise")


class EMSettings(NamedTuple):
    """Static settings of one compiled EM program (hashable)."""

    family: Family
    n_components: int
    capacity: int  # length of the trace buffers: above max_iter (a runtime argument)
    hard: bool = False
    record_params: bool = False
    fixed: tuple[str, ...] = ()
    init: str | None = None  # None: explicit starting parameters are passed in
    formulation: str = "centred"
    precompute_features: bool = False  # row features once per fit
    matmul_precision: str = "highest"  # jax.default_matmul_precision while lowering
    progress_every: int = 0  # report iterations to a progress bar every n (0: never)
    standardize: bool = True  # starts measure distances on standardised data

    @property
    def max_reinit(self) -> int:
        """Reinitialisations allowed per run (``on_collapse="reinit"``)."""
        return max(10, 5 * self.n_components)

    @property
    def two_pass(self) -> bool:
        return self.family.two_pass(self.formulation)


class EMState(NamedTuple):
    """Carry of the ``while_loop``."""

    params: MixtureParams
    prepared: Any  # the family's per-iteration quantities for ``params``
    n_iter: Array  # iterations completed (accepted M-steps)
    objective: Array  # objective at the parameters before the latest M-step
    status: Array  # EMStatus
    bad_component: Array  # component that broke the last M-step, or -1
    trace: Array  # (capacity,) objective per iteration
    params_trace: MixtureParams | None  # leading axis capacity, when recorded
    collapse_kind: Array  # 0: weight below one point, 1: degenerate, 2: bad start, -1: none
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


def _component_ok(params: MixtureParams, prepared: Any) -> Array:
    """Per component: usable parameters and a finite weight (shape ``(K,)``)."""
    return params.family.component_ok(params.components, prepared) & jnp.isfinite(params.weights)


def _reinitialise(
    params: MixtureParams, k: Array, point: Array, pooled: MixtureParams
) -> MixtureParams:
    """Component ``k`` restarted at ``point`` from the whole data's fit, with weight 1/K."""
    family = params.family
    n_components = params.weights.shape[0]
    mask = jnp.arange(n_components) == k
    points = jnp.broadcast_to(point, (n_components, point.shape[-1]))
    components = family.restart(params.components, mask, points, pooled.components)
    others = params.weights.at[k].set(0.0)
    others = others / jnp.maximum(jnp.sum(others), tiny(others.dtype)) * (1.0 - 1.0 / n_components)
    weights = others.at[k].set(1.0 / n_components)
    return MixtureParams.trusted(weights, components, family)


def run_em(
    params0: MixtureParams,
    X3: Array,
    F3: Array | None,
    W3: Array | None,
    n_samples: Array,
    rule: StopRule,
    max_iter: Array,
    reg: Array,
    data_var: Array,
    policy: Array,
    settings: EMSettings,
    pooled: MixtureParams | None = None,
    restart_axis: str | None = None,
) -> EMOutput:
    """Run EM from ``params0`` until the stopping rule holds (pure, jittable).

    ``n_samples`` is the total row weight; ``rule`` the stopping rule
    (:mod:`mixlab.em.stopping`); ``max_iter`` (at most
    ``settings.capacity - 1``) an int32 scalar, so that fits differing only in
    it share a program; ``policy`` indexes
    :data:`COLLAPSE_POLICIES` (an int32 scalar); ``pooled`` is the whole
    data's fit that collapsed components restart from (computed here if not
    given: pass it to share it between restarts).  Under ``vmap`` over
    restarts, name the mapped axis ``restart_axis``: the pass that finds a
    restart point then runs only on iterations where some restart needs one.
    """
    family, n_components = settings.family, settings.n_components
    formulation = settings.formulation
    dtype = X3.dtype
    trace0 = jnp.full(settings.capacity, jnp.nan, dtype)
    ptrace0 = None
    if settings.record_params:
        ptrace0 = jax.tree_util.tree_map(
            lambda a: jnp.zeros((settings.capacity, *a.shape), a.dtype).at[0].set(a), params0
        )
    prepared0 = family.prepare(params0.components, formulation)
    # A start that is degenerate already (only possible with reg_covar=0 on data with
    # too few distinct points, or an explicit start built inside jit) stops before
    # the first iteration, with collapse_kind 2 saying so.
    ok0 = _component_ok(params0, prepared0)
    start_ok = jnp.all(ok0)
    state0 = EMState(
        params=params0,
        prepared=prepared0,
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
    if pooled is None:
        pooled = pooled_params(X3, W3, n_components, family, reg)
    components_k = jnp.arange(n_components)

    def body(state: EMState) -> EMState:
        sums, resp3 = e_pass(
            X3,
            F3,
            W3,
            state.params,
            state.prepared,
            settings.hard,
            keep_resp=settings.two_pass,
            formulation=formulation,
        )
        weights, components = m_step_from_pass(
            X3, resp3, sums, family, state.params.components, reg, settings.fixed
        )
        if "weights" in settings.fixed:
            weights = state.params.weights
        new = MixtureParams.trusted(weights, components, family)
        finite = jnp.isfinite(sums.objective)
        iteration = state.n_iter + 1

        # Collapse: a component left with under one point, or degenerate by its family's
        # test (a covariance singular above reg_covar); with reinit, an invalid one too.
        weight_gone, degenerate = collapse_flags(family, components, sums.nk, reg, data_var)
        gone = weight_gone | degenerate
        kind_now = jnp.where(weight_gone, 0, 1).astype(jnp.int32)
        newly = finite & gone & (state.first_collapse[:, 0] < 0)
        first_collapse = jnp.where(
            newly[:, None],
            jnp.stack([jnp.full_like(kind_now, iteration), kind_now], 1),
            state.first_collapse,
        )
        # Restarts (on_collapse="reinit"); the policy is traced, so this is always
        # computed and the policy selects.  A component that collapses again right
        # after its restart has no data to go to (fewer distinct points than
        # components, say): it is left be.
        settled = state.settled | (gone & (components_k == state.last_restart))
        broken = (gone & ~settled) | ~family.components_finite(components)
        restarted = reinit & finite & jnp.any(broken) & (state.n_reinit < settings.max_reinit)
        k_restart = jnp.argmax(broken).astype(jnp.int32)
        # The restart goes where data lack a home: the row the new fit explains worst,
        # not the collapsed component's own few points.  Finding it is a pass over the
        # data, needed only on the rare iteration with a restart: the predicate is
        # reduced over the restart axis, so under vmap the cond stays a real branch
        # (a batched one would run the pass every iteration, 15% of an iteration at
        # N=1e5, K=8, D=2, when it was folded into the E-pass).
        needed = restarted & (state.status == EMStatus.RUNNING)
        if restart_axis is not None:
            needed = jax.lax.psum(needed.astype(jnp.int32), restart_axis) > 0
        worst = jax.lax.cond(
            needed,
            lambda: worst_row(
                X3, F3, W3, new, family.prepare(components, formulation), formulation
            ),
            lambda: jnp.zeros(X3.shape[-1], dtype),
        )
        fresh = _reinitialise(new, k_restart, worst, pooled)
        if settings.fixed:
            fixed_values = {n: components[n] for n in settings.fixed if n != "weights"}
            fresh = MixtureParams.trusted(
                new.weights if "weights" in settings.fixed else fresh.weights,
                {**fresh.components, **fixed_values},
                family,
            )
        new = _select(restarted, fresh, new)
        prepared_new = family.prepare(new.components, formulation)  # once per iteration
        entry = jnp.stack([iteration, k_restart]).astype(jnp.int32)
        slot = jnp.minimum(state.n_reinit, settings.max_reinit - 1)
        reinit_log = jnp.where(restarted, state.reinit_log.at[slot].set(entry), state.reinit_log)
        n_reinit = state.n_reinit + restarted.astype(jnp.int32)
        last_restart = jnp.where(restarted, k_restart, -1).astype(jnp.int32)
        # What is left after the restart decides whether to go on.
        was_restarted = restarted & (components_k == k_restart)
        weight_gone = weight_gone & ~was_restarted
        degenerate = degenerate & ~was_restarted

        ok = _component_ok(new, prepared_new)
        bad = jnp.where(jnp.all(ok), -1, jnp.argmin(ok)).astype(jnp.int32)
        valid = finite & (bad < 0)
        gone = weight_gone | degenerate
        k = jnp.argmax(gone).astype(jnp.int32)
        # Only "raise" stops at a collapse; "reinit" carries on once its budget is spent.
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
        params = _select(accept, new, state.params)
        prepared = _select(accept, prepared_new, state.prepared)
        ptrace = state.params_trace
        if ptrace is not None:
            ptrace = jax.tree_util.tree_map(lambda buf, p: buf.at[n_iter].set(p), ptrace, params)
        Progress.report(state.n_iter, settings.progress_every, max_iter)
        culprit = jnp.where(bad >= 0, bad, jnp.where(still_collapsed, k, state.bad_component))
        return EMState(
            params=params,
            prepared=prepared,
            n_iter=n_iter,
            objective=sums.objective,
            status=status,
            bad_component=culprit,
            trace=state.trace.at[state.n_iter].set(sums.objective),
            params_trace=ptrace,
            collapse_kind=kind,
            n_reinit=n_reinit,
            reinit_log=reinit_log,
            first_collapse=first_collapse,
            last_restart=last_restart,
            settled=settled,
        )

    state = jax.lax.while_loop(lambda s: s.status == EMStatus.RUNNING, body, state0)
    log_lik, classification = objectives(X3, F3, W3, state.params, state.prepared, formulation)
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


def _row_features(X3: Array, settings: EMSettings) -> Array | None:
    """The family's row features for every chunk, when they are computed once per fit."""
    if not settings.precompute_features:
        return None
    return jax.vmap(lambda x: settings.family.row_features(x, settings.formulation))(X3)


def _program(
    starts: Any,
    X3: Array,
    W3: Array | None,
    n_samples: Array,
    rule: StopRule,
    max_iter: Array,
    reg: Array,
    data_var: Array,
    policy: Array,
    settings: EMSettings,
) -> EMOutput:
    """All restarts in one program: ``starts`` are PRNG keys or stacked parameters."""
    F3 = _row_features(X3, settings)
    pooled = pooled_params(X3, W3, settings.n_components, settings.family, reg)  # once

    def one(start: Any) -> EMOutput:
        if settings.init is None:
            params0 = start
        else:
            params0 = initial_params(
                start,
                X3,
                W3,
                settings.n_components,
                settings.family,
                settings.init,
                reg,
                data_var,
                settings.standardize,
            )
        return run_em(
            params0,
            X3,
            F3,
            W3,
            n_samples,
            rule,
            max_iter,
            reg,
            data_var,
            policy,
            settings,
            pooled,
            restart_axis="restarts",
        )

    return jax.vmap(one, axis_name="restarts")(starts)


_PROGRAMS = CompiledCache(size=32)


def trace_capacity(max_iter: int) -> int:
    """Length of the trace buffers for ``max_iter`` iterations: a power of two
    (at least 16) above ``max_iter``, so that fits with nearby ``max_iter`` share
    one compiled program (a sweep over ``max_iter`` compiles a few, not one each)."""
    return max(16, 1 << int(max_iter).bit_length())


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
    compile_source: str  # "memory", "disk" (persistent cache) or "compiled"


def _failure_message(
    family: Family, status: EMStatus, bad: int, n_iter: int, kind: int = -1, n_reinit: int = 0
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
            else family.degeneracy_message
        )
        hint = "" if n_reinit else ", or pass EM(on_collapse='reinit')"
        return f"{where}: {what}; {advice}{hint}"
    if status == EMStatus.DEGENERATE:
        return (
            f"{where}: its parameters are no longer valid (a covariance not positive "
            f"definite, or a non-finite value); {advice}"
        )
    return f"the log-likelihood became non-finite at iteration {n_iter + 1}; {advice}"


def _plan(
    X: Any,
    summary: Any,
    family: Family,
    n_components: int,
    formulation: str,
    reg_covar: float,
    chunk_size: int | None,
    n_sets: int = 1,
    n_shards: int = 1,
) -> tuple[str, bool, int, int]:
    """How the EM program reads the data: formulation, whether row features are
    computed once per fit (for ``n_sets`` data sets), and the row chunks by backend
    (a chunk a multiple of ``n_shards`` rows when rows are spread over devices)."""
    n_samples, n_features, dtype = summary.n_samples, summary.n_features, summary.dtype
    formulation = family.choose_formulation(formulation, summary, reg_covar)
    width = family.work_width(n_components, n_features, formulation)
    feature_bytes = n_samples * family.row_feature_width(n_features, formulation) * dtype.itemsize
    precompute = 0 < feature_bytes * n_sets <= FEATURE_CACHE_BYTES
    platform = platform_of(X)
    n_chunks, chunk = chunk_layout(
        n_samples,
        width * dtype.itemsize,
        chunk_size,
        platform,
        None if platform == "cpu" else free_device_memory(X),
    )
    if n_shards > 1:
        chunk = -(-chunk // n_shards) * n_shards
        n_chunks = -(-n_samples // chunk)
    return formulation, precompute, n_chunks, chunk


def restart_keys(key: Array, n_init: int) -> Array:
    """Keys of ``n_init`` restarts: ``key`` itself, then ``fold_in(key, i)``.

    Restart 0 is the ``n_init=1`` fit, and the restarts of ``n_init=a`` are the
    first ``a`` of ``n_init=b > a``, so more restarts never end worse.  Any
    restart's key passed with ``n_init=1`` reproduces that restart alone.
    """
    if n_init == 1:
        return jax.device_put(np.asarray(key)[None])  # no compiled program for one key
    rest = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(1, n_init, dtype=jnp.uint32))
    return jnp.concatenate([key[None], rest])


def fit_em(
    X: np.ndarray,
    n_components: int,
    family: Family,
    *,
    key: Array,
    tol: float | None,
    max_iter: int,
    n_init: int,
    init: str | MixtureParams,
    reg_covar: float,
    sample_weight: np.ndarray | None = None,
    hard: bool = False,
    fixed: tuple[str, ...] = (),
    record_params: bool = False,
    chunk_size: int | None = None,
    formulation: str = "auto",
    on_collapse: str = "reinit",
    matmul_precision: str = "highest",
    devices: Any = None,
    progress: bool = False,
    criterion: str = "gap",
    standardize: bool = True,
) -> EMRun:
    """Fit by EM with ``n_init`` batched restarts.

    ``X`` is a 2-D array of the computation dtype: NumPy (values validated
    already) or a JAX array, whose values are checked on its device
    (:mod:`mixlab.em.data`), which also sets the row chunks by backend.
    With ``devices`` (or a JAX array sharded over several devices) every
    chunk's rows are spread over the devices and XLA adds the sums across them.

    ``sample_weight`` (validated, or ``None``) are frequency weights; rows of
    weight zero are left out, exactly as if they were not there.  Runs under
    float64 when ``X`` is float64.  Raises :class:`FitError` when no restart
    produced finite, valid parameters.
    """
    dtype = np.dtype(X.dtype)
    if tol is None:
        tol = DEFAULT_TOL[criterion]
    if sample_weight is not None:
        keep = sample_weight > 0
        if not keep.all():
            sample_weight = sample_weight[keep]
            X = jnp.take(X, jnp.asarray(np.flatnonzero(keep)), axis=0) if on_device(X) else X[keep]
    n_samples = X.shape[0]
    with jax.enable_x64(dtype == np.float64):
        summary, shift = summarize(X, sample_weight, family)
    dominated = family.check_fit_data(summary, reg_covar)
    mesh = row_mesh(X, devices)
    formulation, precompute, n_chunks, chunk = _plan(
        X,
        summary,
        family,
        n_components,
        formulation,
        reg_covar,
        chunk_size,
        n_shards=1 if mesh is None else mesh.size,
    )

    if isinstance(init, MixtureParams):
        start = init.astype(dtype)
        start = MixtureParams.trusted(start.weights, family.shift(start.components, -shift), family)
        starts = jax.tree_util.tree_map(lambda a: np.asarray(a, dtype)[None], start)
        init_method = None
    else:
        starts = restart_keys(key, n_init)
        init_method = resolve_init(init, family)
    settings = EMSettings(
        family=family,
        n_components=n_components,
        capacity=trace_capacity(max_iter),
        hard=hard,
        record_params=record_params,
        fixed=tuple(sorted(fixed)),
        init=init_method,
        formulation=formulation,
        precompute_features=precompute,
        matmul_precision=matmul_precision,
        progress_every=Progress.every(max_iter, progress),
        standardize=standardize,
    )
    total_weight = n_samples if sample_weight is None else float(sample_weight.sum())
    with jax.enable_x64(dtype == np.float64):
        # Ready before the clock starts: ``elapsed`` is the EM program alone.
        if mesh is None:
            X3, W3 = chunked(X, sample_weight, shift, n_chunks, chunk)
        else:
            X3, W3 = shard_chunks(X, sample_weight, shift, n_chunks, chunk, mesh)
        X3, W3 = jax.block_until_ready((X3, W3))
        # Scalars as NumPy values: each jnp.asarray would compile a small program in a
        # new process.
        args = (
            starts,
            X3,
            W3,
            np.asarray(total_weight, dtype),
            stop_rule(tol, criterion, dtype),
            np.asarray(max_iter, np.int32),
            np.asarray(reg_covar, dtype),
            np.asarray(summary.var, dtype),
            np.asarray(COLLAPSE_POLICIES.index(on_collapse), np.int32),
        )
        with jax.default_matmul_precision(matmul_precision):
            compiled, compile_time, compile_source = _PROGRAMS.get(
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
                family,
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
    best_params = out.params[best]
    params = MixtureParams.trusted(
        best_params.weights, family.shift(best_params.components, shift), family
    )
    params_trace = None
    if out.params_trace is not None:
        ptrace = out.params_trace[best][: n_iter + 1]
        params_trace = MixtureParams.trusted(
            ptrace.weights, family.shift(ptrace.components, shift), family
        )
    converged = best_status == EMStatus.CONVERGED
    if not converged and tol > 0:
        warnings.warn(
            f"the best of {len(status)} EM restart(s) did not converge within max_iter={max_iter} "
            f"iterations (tol={tol}, criterion={criterion!r}); increase max_iter or tol, or "
            "check the data for degenerate structure",
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
            (int(k), int(t), ("weight", family.degeneracy)[int(kind)])
            for k, (t, kind) in enumerate(out.first_collapse[best])
            if t >= 0
        ],
        reg_covar_dominates=dominated,
        elapsed=elapsed,
        compile_time=compile_time,
        compile_source=compile_source,
    )


def _refit_program(
    params0: MixtureParams,
    X3: Array,
    W3: Array,
    totals: Array,
    rule: StopRule,
    max_iter: Array,
    reg: Array,
    data_var: Array,
    policy: Array,
    settings: EMSettings,
    batched_data: bool,
) -> EMOutput:
    """EM from one start over a batch of row weights ``W3`` (and data ``X3`` when
    ``batched_data``), all in one program: the bootstrap's refits."""

    def one(X3: Array, W3: Array, total: Array) -> EMOutput:
        pooled = pooled_params(X3, W3, settings.n_components, settings.family, reg)
        loop = (rule, max_iter, reg, data_var, policy, settings, pooled)
        return run_em(params0, X3, _row_features(X3, settings), W3, total, *loop, "replicates")

    in_axes = (0 if batched_data else None, 0, 0)
    return jax.vmap(one, in_axes=in_axes, axis_name="replicates")(X3, W3, totals)


def refit_em(
    start: MixtureParams,
    X: np.ndarray,
    *,
    row_weights: np.ndarray | None = None,
    data: np.ndarray | None = None,
    tol: float,
    max_iter: int,
    criterion: str = "gap",
    reg_covar: float,
    fixed: tuple[str, ...] = (),
    formulation: str = "auto",
    on_collapse: str = "reinit",
    chunk_size: int | None = None,
    progress: bool | None = False,
) -> tuple[MixtureParams, np.ndarray, np.ndarray, np.ndarray]:
    """Refit EM from ``start`` on many versions of the data in one compiled program.

    Either ``row_weights`` (``(B, n)``: frequency weights of the rows of ``X``,
    as the nonparametric and weighted bootstraps draw them) or ``data``
    (``(B, n, D)``: whole data sets, as the parametric bootstrap draws them).
    ``X`` (validated, 2-D, of the computation dtype) sets the centring, the
    data scale and the formulation.  Returns the batched parameters (leading
    axis ``B``), the final log-likelihoods, the statuses and the iteration counts.
    ``progress``: a bar over the iterations (the refits run together; it shows the
    furthest), as :class:`~mixlab.methods.EM`'s.
    """
    family = start.family
    X = np.asarray(X)
    dtype = np.dtype(X.dtype)
    n_components = start.n_components
    summary, shift = summarize(X, None, family)
    if data is not None:
        row_weights = np.ones(data.shape[:2], dtype)
    formulation, precompute, n_chunks, chunk = _plan(
        X,
        summary,
        family,
        n_components,
        formulation,
        reg_covar,
        chunk_size,
        n_sets=1 if data is None else len(data),
    )
    batch = (X if data is None else np.asarray(data, dtype)) - shift
    X3, W3 = to_chunks(batch, n_chunks, chunk, row_weights)
    settings = EMSettings(
        family=family,
        n_components=n_components,
        capacity=trace_capacity(max_iter),
        fixed=tuple(sorted(fixed)),
        formulation=formulation,
        precompute_features=precompute,
        progress_every=Progress.every(max_iter, progress),
    )
    p0 = start.astype(dtype)
    p0 = MixtureParams.trusted(p0.weights, family.shift(p0.components, -shift), family)
    with jax.enable_x64(dtype == np.float64):
        args = (
            jax.tree_util.tree_map(jnp.asarray, p0),
            jnp.asarray(X3),
            jnp.asarray(W3),
            jnp.asarray(row_weights.sum(axis=1), dtype),
            stop_rule(tol, criterion, dtype),
            jnp.asarray(max_iter, jnp.int32),
            jnp.asarray(reg_covar, dtype),
            jnp.asarray(summary.var, dtype),
            jnp.asarray(COLLAPSE_POLICIES.index(on_collapse), jnp.int32),
        )
        compiled, _, _ = _PROGRAMS.get(
            ("refit", settings, data is not None),
            functools.partial(_refit_program, settings=settings, batched_data=data is not None),
            args,
        )
        desc = f"bootstrap ({len(row_weights)} refits, iterations)"
        out, _ = Progress.run(compiled, args, max_iter, desc, progress)
        out = jax.tree_util.tree_map(np.asarray, out)
    params = MixtureParams.trusted(
        out.params.weights, family.shift(out.params.components, shift), family
    )
    return params, out.log_likelihood.astype(np.float64), out.status, out.n_iter
