"""Online EM: stochastic approximation of the sufficient statistics (Cappé and Moulines 2009).

For data read once or a few times.  Batch EM reads every row at every
iteration; online EM reads the rows in minibatches and, after each one,
moves a running average of the *normalised* sufficient statistics (the
family's :class:`~mixlab.families.Family` ``Stats`` per unit of row weight)
towards that minibatch's, then re-estimates the parameters from the running
statistics with the family's ordinary M-step:

.. code-block:: text

    s_b   = mean statistics of minibatch t under theta_{t-1}        (E-step)
    s_t   = (1 - gamma_t) s_{t-1} + gamma_t s_b,  gamma_t = (t + t0)^(-alpha)
    theta_t = M-step(n * s_t)                    (from step burn_in + 1 on)

with ``n`` the total row weight, so that the M-step and its regularisation
(``reg_covar``, a pseudo-count) mean what they mean in batch EM.

What it converges to
    Under the usual stochastic-approximation conditions (``alpha`` in (0.5, 1],
    so that the steps sum to infinity and their squares do not; an
    identifiable, regular model; statistics that stay in a compact set), the
    iterates converge almost surely to a stationary point of the likelihood:
    of the limiting (population) likelihood when the rows are a stream of new
    draws, of the data's own likelihood when the same rows are read over many
    epochs with shrinking steps.  It is **not** exact EM: its likelihood does
    not increase monotonically, the answer depends on the batch size, the step
    schedule, the order of the rows and the start, and after finitely many
    steps it lies within a noise band around the stationary point, whose width
    shrinks with the step size.  Where little information is missing
    (well-separated components), the last iterate of ``T`` steps differs from
    batch EM's estimate by about ``sqrt(gamma_T T / 2 - 1)`` of that
    estimate's standard errors (2.6 for one epoch of 1,000 steps at the
    defaults), and the average of averaging by about one (it is roughly the
    estimate from the half of the data it averages over).  tests/test_online.py
    measures both on 1e6 rows.

Statistics of families whose M-step takes a second pass
    Gaussian covariances in the exact ``"centred"`` formulation and Student-t
    scale matrices are sums of squares about the *new* centres, which a
    single pass cannot give.  Those sums are quadratic in the centre, so a
    running sum about one centre is moved to another exactly from each
    component's row-weight total and weighted mean (both additive): the
    running statistics carry their second-pass sums about the current
    centres, each minibatch is summed about the same centres, and after the
    update everything is moved to the new ones.  The Gaussian ``"expanded"``
    formulation (one pass, the default in float64 where it is accurate, as in
    batch EM) needs none of this.  A custom family whose second-pass sums are
    not known to be quadratic in the centre is not supported.

Student-t
    ECM's degrees-of-freedom step uses the expected log latent precision,
    which the family sums with a correction for the previous degrees of
    freedom.  Online, that correction is applied with the current degrees of
    freedom to statistics gathered under earlier ones; the two agree at any
    fixed point, so the stationary points are those of batch ECM, but the
    path differs slightly from a textbook online EM.

Averaging (``averaging=True``)
    Polyak-Ruppert averaging of the *statistics*: the running statistics are
    averaged over the steps from ``averaging_start`` on and the returned
    parameters are ``M-step(n * mean of s_t)``.  The recursion itself goes on
    unaveraged.  The statistics are what the stochastic approximation
    iterates, so their average is the one the averaging theory is about; it
    is also invariant to how the parameters are written (covariances or
    precisions) and always gives valid parameters through the family's own
    M-step.  To first order it equals averaging the parameters.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mixlab._jaxutil import CompiledCache, Progress, tiny
from mixlab._validation import check_choice, check_float, check_int
from mixlab.density import normalise
from mixlab.em.data import chunk_layout, free_device_memory, platform_of, summarize
from mixlab.em.init import INIT_METHODS, initial_params
from mixlab.errors import FitError
from mixlab.families import Family
from mixlab.methods import Method
from mixlab.params import MixtureParams, explicit_start
from mixlab.result import FitResult

Array = jax.Array

#: Rows per component the minibatches cover before the first M-step, by default.
BURN_IN_ROWS_PER_COMPONENT = 20


@dataclass(frozen=True)
class OnlineEM(Method):
    """Online EM (Cappé and Moulines 2009): minibatch stochastic approximation of
    the sufficient statistics.

    Converges (almost surely, under the usual stochastic-approximation
    conditions) to a stationary point of the likelihood; it is not exact EM,
    and its answer depends on the batch size, the step schedule, the order of
    the rows and the start.  See :mod:`mixlab.online` for the recursion.

    Parameters
    ----------
    batch_size : int, default 1000
        Rows per step (at most the number of rows).  The last minibatch of an
        epoch is padded with rows of weight zero, so every step has one shape;
        its statistics are means over its own rows, so it is a noisier step.
    n_epochs : int, default 1
        Passes over the data.
    step_exponent : float, default 0.6
        ``alpha`` in the step ``gamma_t = (t + step_offset)^(-alpha)``, in
        (0.5, 1].  Smaller forgets the start faster, larger is less noisy at
        the end; 0.6 with averaging is the usual choice.
    step_offset : float, default 10.0
        ``t0 >= 0``.  The running statistics start from those of the start's
        E-step on the initialisation subsample (``init_size`` rows, about ten
        default minibatches), so the first steps should not overwrite them:
        with ``t0 = 10`` the first minibatch weighs ``11^-0.6 = 0.24``, and the
        steps still add up to about 30 over 1,000 steps, ample to forget the
        start.  ``t0 = 0`` with ``alpha = 1`` makes step ``t`` the plain
        running mean of the minibatch statistics.
    averaging : bool, default False
        Polyak-Ruppert averaging of the running statistics (not of the
        parameters: see :mod:`mixlab.online`) over the steps after
        ``averaging_start``; the returned parameters come from the average.
    averaging_start : float, default 0.5
        Fraction of all steps (over all epochs) after which averaging starts,
        in [0, 1): the early steps, still on their way from the start, are
        left out.
    burn_in : int, optional
        Steps during which the statistics are updated but the parameters stay
        at the start (the M-step is not applied), as Cappé and Moulines do so
        that the first M-steps do not rest on a handful of rows.  Default:
        enough steps for the minibatches to cover 20 rows per component,
        ``ceil(20 * n_components / batch_size)`` (one step of the default
        size for up to 50 components).
    init : {"kmeans++", "kmeans", "random_from_data", "random"} or dict or MixtureParams
        How to start, as for :class:`~mixlab.EM`; a method runs on a seeded
        uniform subsample of ``init_size`` rows.  Explicit parameters are used
        as they are.
    n_init : int, default 1
        Starts drawn by the init method on the subsample (restart 0 with the
        fit's initialisation key ``k``, restart ``i`` with ``fold_in(k, i)``),
        run batched; after ``init_iter`` batch EM iterations on the subsample,
        the one with the highest subsample log-likelihood starts online EM.
        Online EM, like EM, cannot leave the basin of a poor start (two
        components in one cluster, one across two): restarts are the remedy.
    init_iter : int, default 10
        Batch EM iterations on the subsample that refine each start of an init
        method before the starts are compared (the "short runs of EM" of
        Biernacki, Celeux and Govaert 2003).  On the default 10,000 rows they
        cost about a tenth of one epoch over 1e6 rows.  ``0``: start from the
        init method's parameters, as Cappé and Moulines do.
    init_size : int, default 10000
        Rows of the initialisation subsample (all rows when there are fewer).
        The start's E-step on them gives the initial running statistics.
    reg_covar : float, default 1e-6
        The family's regulariser, as in batch EM (added to covariance
        diagonals).
    formulation : {"auto", "centred", "expanded"}
        How the Gaussian statistics are formed, as for :class:`~mixlab.EM`
        (``"auto"`` picks what batch EM picks for these data).
    shuffle : bool, default True
        Read the rows of each epoch in a seeded random order (epoch ``e``:
        ``jax.random.permutation(fold_in(fold_in(key, 1), e), n)``,
        :func:`epoch_order`); ``False`` reads them in order.
    progress : bool or None, default False
        A progress bar over the steps; ``None``: when stderr is a terminal.

    Notes
    -----
    There is no stopping rule: every step of every epoch runs.
    ``FitResult.converged`` is the same plateau test SVI uses on its ELBO,
    applied to the per-step log-likelihood estimates (the mean of the last
    10 % within 3 standard errors, plus 1e-4 relative, of the 10 % before):
    the iterates have settled at the noise level of the steps, which is not
    a proof of having reached a stationary point.
    """

    name: ClassVar[str] = "online_em"

    batch_size: int = 1000
    n_epochs: int = 1
    step_exponent: float = 0.6
    step_offset: float = 10.0
    averaging: bool = False
    averaging_start: float = 0.5
    burn_in: int | None = None
    init: Any = "kmeans++"
    n_init: int = 1
    init_iter: int = 10
    init_size: int = 10_000
    reg_covar: float = 1e-6
    formulation: str = "auto"
    shuffle: bool = True
    progress: bool | None = False

    def __post_init__(self) -> None:
        check_int(self.batch_size, "batch_size", minimum=1)
        check_int(self.n_epochs, "n_epochs", minimum=1)
        alpha = check_float(self.step_exponent, "step_exponent")
        if not 0.5 < alpha <= 1.0:
            raise ValueError(
                f"step_exponent must be in (0.5, 1] (steps (t + t0)^-alpha that sum to "
                f"infinity while their squares do not), got {alpha}"
            )
        check_float(self.step_offset, "step_offset", minimum=0.0)
        if not isinstance(self.averaging, bool | np.bool_):
            raise TypeError("averaging must be True or False")
        start = check_float(self.averaging_start, "averaging_start", minimum=0.0)
        if start >= 1.0:
            raise ValueError(
                f"averaging_start is the fraction of steps after which averaging starts and "
                f"must be below 1, got {start}"
            )
        if self.burn_in is not None:
            check_int(self.burn_in, "burn_in", minimum=0)
        if isinstance(self.init, str):
            check_choice(self.init, "init", INIT_METHODS)
        elif not isinstance(self.init, Mapping | MixtureParams):
            raise TypeError(
                f"init must be one of {INIT_METHODS}, a dict of starting parameters or a "
                f"MixtureParams; got {type(self.init).__name__}"
            )
        check_int(self.n_init, "n_init", minimum=1)
        check_int(self.init_iter, "init_iter", minimum=0)
        if not isinstance(self.init, str) and self.n_init != 1:
            raise ValueError(
                "explicit starting parameters give the same start to every restart; "
                f"use n_init=1 (got n_init={self.n_init})"
            )
        check_int(self.init_size, "init_size", minimum=1)
        check_float(self.reg_covar, "reg_covar", minimum=0.0)
        if not isinstance(self.formulation, str):
            raise TypeError(f"formulation must be a string, got {type(self.formulation).__name__}")
        if not isinstance(self.shuffle, bool | np.bool_):
            raise TypeError("shuffle must be True or False")
        if self.progress is not None and not isinstance(self.progress, bool | np.bool_):
            raise TypeError("progress must be True, False or None (shown on a terminal)")

    def resolved_burn_in(self, n_components: int) -> int:
        """The burn-in in steps (the default when ``burn_in`` is ``None``)."""
        if self.burn_in is not None:
            return int(self.burn_in)
        return -(-BURN_IN_ROWS_PER_COMPONENT * n_components // self.batch_size)


# ----------------------------------------------------------------------------- the recursion
class RunningStats(NamedTuple):
    """Sufficient statistics per unit of row weight (normalised sums).

    ``second``, ``centre``, ``w2`` and ``s1`` are ``None`` for one-pass
    formulations; otherwise ``second`` holds the second-pass sums about
    ``centre``, and ``w2`` (K,) and ``s1`` (K, D) the totals and weighted sums
    of the rows under the second pass's weights, which move them.
    """

    nk: Array  # (K,)
    stats: Any  # the family's Stats
    second: Any = None
    centre: Any = None
    w2: Array | None = None
    s1: Array | None = None


class OnlineState(NamedTuple):
    """Carry of the scan over minibatches."""

    params: MixtureParams
    running: RunningStats
    averaged: RunningStats
    n_averaged: Array  # steps in the average so far
    step: Array  # steps done (over all epochs)
    rejected: Array  # M-steps whose parameters were invalid (kept the previous ones)


class OnlineSettings(NamedTuple):
    """Static settings of the compiled programs (hashable)."""

    family: Family
    n_components: int
    formulation: str
    batch_size: int
    n_rows: int  # rows with positive weight
    n_batches: int  # minibatches per epoch
    init_rows: int
    init: str | None  # None: explicit starting parameters
    n_init: int
    shuffle: bool
    progress_every: int = 0
    total_steps: int = 0

    @property
    def two_pass(self) -> bool:
        return self.family.two_pass(self.formulation)


def epoch_order(
    key: Array, n_rows: int, batch_size: int, epoch: int | Array, shuffle: bool = True
) -> tuple[Array, Array]:
    """The rows of one epoch's minibatches: ``(index, mask)``, each of shape
    ``(n_batches, batch_size)`` with ``n_batches = ceil(n_rows / batch_size)``.

    ``key`` is the order key (``fold_in(key, 1)`` of the fit's key); epoch
    ``e`` reads ``jax.random.permutation(fold_in(key, e), n_rows)`` (or
    ``arange(n_rows)`` without ``shuffle``) in consecutive slices.  ``mask``
    is false on the padding of the last minibatch (whose index is 0).
    """
    n_batches = -(-n_rows // batch_size)
    if shuffle:
        order = jax.random.permutation(jax.random.fold_in(key, epoch), n_rows)
    else:
        order = jnp.arange(n_rows)
    pad = n_batches * batch_size - n_rows
    index = jnp.pad(order, (0, pad)).reshape(n_batches, batch_size)
    mask = (jnp.arange(n_batches * batch_size) < n_rows).reshape(n_batches, batch_size)
    return index, mask


def _scaled(tree: Any, factor: Array) -> Any:
    return jax.tree_util.tree_map(lambda a: factor * a, tree)


def _moved(family: Family, second: Any, w2: Array, s1: Array, old: Any, new: Any) -> Any:
    """Second-pass sums about centre ``old`` moved to centre ``new``.

    The sums are ``sum_i r_ik q(x_i - c_k)`` with ``q`` quadratic, so ``S(new)
    - S(old)`` depends on the rows only through each component's total
    ``w2_k`` and weighted sum ``s1_k``: it equals the same sums over the ``K``
    points ``s1_k / w2_k`` with weights ``w2_k`` (as :mod:`mixlab.stream` moves
    its sums).
    """
    points = s1 / jnp.where(w2 > 0, w2, 1.0)[:, None]
    resp = jnp.diag(w2)
    about_new = family.summarize_second(points, resp, new)
    about_old = family.summarize_second(points, resp, old)
    return jax.tree_util.tree_map(lambda s, a, b: s + a - b, second, about_new, about_old)


def _centre(family: Family, stats: Any, nk: Array, n_total: Array, components: Any) -> Any:
    """The second pass's centre of normalised statistics (as batch EM computes it)."""
    return family.second_pass(
        _scaled(stats, n_total), n_total * nk + tiny(nk.dtype), components, ()
    )


def _batch_stats(
    family: Family,
    formulation: str,
    params: MixtureParams,
    prepared: Any,
    xb: Array,
    wb: Array,
    n_total: Array,
    centre: Any = None,
) -> tuple[RunningStats, Array]:
    """One minibatch's statistics per unit of row weight under ``params``, and its
    mean log-likelihood per unit of weight.  Second-pass sums go about ``centre``
    (``None``: about the centre of these statistics themselves)."""
    features = family.row_features(xb, formulation)
    log_prob, aux = family.log_prob_and_aux(xb, prepared, features)
    resp, row_ll = normalise(log_prob + jnp.log(params.weights))
    resp = resp * wb[:, None]
    total = jnp.sum(wb)
    scale = 1.0 / total
    mean_ll = jnp.sum(jnp.where(wb > 0, wb * row_ll, 0.0)) * scale
    nk = jnp.sum(resp, axis=0) * scale
    stats = _scaled(family.summarize(xb, resp, prepared, features, aux), scale)
    if not family.two_pass(formulation):
        return RunningStats(nk, stats), mean_ll
    resp2 = family.second_pass_resp(resp, aux)
    if centre is None:
        centre = _centre(family, stats, nk, n_total, params.components)
    second = _scaled(family.summarize_second(xb, resp2, centre), scale)
    w2 = jnp.sum(resp2, axis=0) * scale
    s1 = (resp2.T @ xb) * scale
    return RunningStats(nk, stats, second, centre, w2, s1), mean_ll


def _combine(
    family: Family,
    old: RunningStats,
    new: RunningStats,
    weight: Array,
    n_total: Array,
    components: Any,
) -> RunningStats:
    """``(1 - weight) old + weight new``, second-pass sums about the result's centre.

    ``new``'s second-pass sums must be about ``old.centre``."""

    def mix(a: Any, b: Any) -> Any:
        return jax.tree_util.tree_map(lambda x, y: (1.0 - weight) * x + weight * y, a, b)

    nk, stats = mix(old.nk, new.nk), mix(old.stats, new.stats)
    if old.second is None:
        return RunningStats(nk, stats)
    second, w2, s1 = mix(old.second, new.second), mix(old.w2, new.w2), mix(old.s1, new.s1)
    centre = _centre(family, stats, nk, n_total, components)
    second = _moved(family, second, w2, s1, old.centre, centre)
    return RunningStats(nk, stats, second, centre, w2, s1)


def _recentred(family: Family, running: RunningStats, centre: Any) -> RunningStats:
    """The same statistics with their second-pass sums about ``centre``."""
    if running.second is None:
        return running
    second = _moved(family, running.second, running.w2, running.s1, running.centre, centre)
    return running._replace(second=second, centre=centre)


def m_step_from_stats(
    family: Family, running: RunningStats, n_total: Array, components: Any, reg: Array
) -> MixtureParams:
    """Parameters from normalised statistics: the family's M-step on ``n_total``
    times them (so regularisers weigh as in batch EM), weights ``N_k / N``."""
    nk = n_total * running.nk + tiny(running.nk.dtype)
    second = None if running.second is None else _scaled(running.second, n_total)
    new = family.m_step(_scaled(running.stats, n_total), nk, components, reg, (), second)
    return MixtureParams.trusted(nk / jnp.sum(nk), new, family)


def _valid(params: MixtureParams, formulation: str) -> Array:
    family = params.family
    prepared = family.prepare(params.components, formulation)
    ok = family.component_ok(params.components, prepared) & jnp.isfinite(params.weights)
    return jnp.all(ok)


def _select(pred: Array, a: Any, b: Any) -> Any:
    return jax.tree_util.tree_map(lambda x, y: jnp.where(pred, x, y), a, b)


def _start_program(
    start: Any,
    X: Array,
    W: Array,
    n_total: Array,
    reg: Array,
    data_var: Array,
    init_iter: Array,
    settings: OnlineSettings,
) -> tuple[OnlineState, Array]:
    """The start and the running statistics of its E-step on the initialisation
    subsample.

    With an init method: ``n_init`` starts on the subsample, each refined by
    ``init_iter`` batch EM iterations there; the one with the highest subsample
    log-likelihood wins.  Returns the state and every start's mean log-likelihood
    per unit of weight on the subsample.
    """
    family, formulation = settings.family, settings.formulation
    if settings.init is None:
        params0, sample_key = start
    else:
        sample_key = start
    rows = jax.random.permutation(jax.random.fold_in(sample_key, 0), settings.n_rows)
    rows = rows[: settings.init_rows]
    xs, ws = X[rows], W[rows]
    if settings.init is None:
        prepared = family.prepare(params0.components, formulation)
        running, mean_ll = _batch_stats(family, formulation, params0, prepared, xs, ws, n_total)
        lls = mean_ll[None]
    else:
        n_sample = jnp.sum(ws)
        first = jax.random.fold_in(sample_key, 1)
        keys = jnp.stack(
            [first] + [jax.random.fold_in(first, i) for i in range(1, settings.n_init)]
        )

        def em_iteration(_: Any, params: MixtureParams) -> MixtureParams:
            prepared = family.prepare(params.components, formulation)
            stats, _ = _batch_stats(family, formulation, params, prepared, xs, ws, n_sample)
            new = m_step_from_stats(family, stats, n_sample, params.components, reg)
            return _select(_valid(new, formulation), new, params)

        def one(key: Array) -> tuple[MixtureParams, RunningStats, Array]:
            params = initial_params(
                key, xs[None], ws[None], settings.n_components, family, settings.init, reg, data_var
            )
            params = jax.lax.fori_loop(0, init_iter, em_iteration, params)
            prepared = family.prepare(params.components, formulation)
            running, mean_ll = _batch_stats(family, formulation, params, prepared, xs, ws, n_total)
            return params, running, mean_ll

        starts, stats, lls = jax.vmap(one)(keys)
        best = jnp.argmax(jnp.where(jnp.isfinite(lls), lls, -jnp.inf))
        params0, running = jax.tree_util.tree_map(lambda a: a[best], (starts, stats))
    zero = jnp.zeros((), jnp.int32)
    return OnlineState(params0, running, running, zero, zero, zero), lls


def _epoch_program(
    state: OnlineState,
    X: Array,
    W: Array,
    order_key: Array,
    epoch: Array,
    n_total: Array,
    reg: Array,
    exponent: Array,
    offset: Array,
    burn_in: Array,
    averaging: Array,
    average_after: Array,
    settings: OnlineSettings,
) -> tuple[OnlineState, tuple[Array, Array]]:
    """One epoch: a ``lax.scan`` over its minibatches.  Returns the state and, per
    step, the log-likelihood estimate and the step size.  ``averaging`` (a bool
    array) is a runtime switch, so one program serves fits with and without it."""
    family, formulation = settings.family, settings.formulation
    index, mask = epoch_order(
        order_key, settings.n_rows, settings.batch_size, epoch, settings.shuffle
    )
    dtype = X.dtype

    def step(state: OnlineState, batch: tuple[Array, Array]) -> tuple[OnlineState, Any]:
        idx, keep = batch
        xb = X[idx]
        wb = jnp.where(keep, W[idx], 0.0)
        params = state.params
        prepared = family.prepare(params.components, formulation)
        running = state.running
        b, mean_ll = _batch_stats(
            family, formulation, params, prepared, xb, wb, n_total, running.centre
        )
        t = state.step + 1
        gamma = (t.astype(dtype) + offset) ** (-exponent)
        running = _combine(family, running, b, gamma, n_total, params.components)
        new = m_step_from_stats(family, running, n_total, params.components, reg)
        apply = t > burn_in
        ok = _valid(new, formulation)
        params = _select(apply & ok, new, params)
        rejected = state.rejected + (apply & ~ok).astype(jnp.int32)
        averaged, n_averaged = state.averaged, state.n_averaged
        take = averaging & (t > average_after)
        weight = 1.0 / (n_averaged + 1).astype(dtype)
        moved = _recentred(family, running, averaged.centre)
        mean = _combine(family, averaged, moved, weight, n_total, params.components)
        averaged = _select(take, mean, averaged)
        n_averaged = n_averaged + take.astype(jnp.int32)
        Progress.report(t - 1, settings.progress_every, settings.total_steps)
        out = OnlineState(params, running, averaged, n_averaged, t, rejected)
        return out, (n_total * mean_ll, gamma)

    return jax.lax.scan(step, state, (index, mask))


def _final_program(
    state: OnlineState,
    X: Array,
    W: Array,
    n_total: Array,
    reg: Array,
    averaging: Array,
    settings: OnlineSettings,
    chunk: int,
) -> tuple[MixtureParams, Array, Array]:
    """The returned parameters (from the averaged statistics with averaging), whether
    they are valid, and their exact total log-likelihood over all rows."""
    family, formulation = settings.family, settings.formulation
    averaged = m_step_from_stats(family, state.averaged, n_total, state.params.components, reg)
    params = _select(averaging, averaged, state.params)
    ok = _valid(params, formulation)
    prepared = family.prepare(params.components, formulation)
    log_weights = jnp.log(params.weights)
    index, mask = epoch_order(jnp.zeros(2, jnp.uint32), settings.n_rows, chunk, 0, False)

    def one(total: Array, batch: tuple[Array, Array]) -> tuple[Array, None]:
        idx, keep = batch
        xb = X[idx]
        wb = jnp.where(keep, W[idx], 0.0)
        log_prob = family.log_prob(xb, prepared, family.row_features(xb, formulation))
        row_ll = normalise(log_prob + log_weights)[1]
        return total + jnp.sum(jnp.where(wb > 0, wb * row_ll, 0.0)), None

    total, _ = jax.lax.scan(one, jnp.zeros((), X.dtype), (index, mask))
    return params, ok, total


_PROGRAMS = CompiledCache(size=32)


# ----------------------------------------------------------------------------- driver
class OnlineRun(NamedTuple):
    """Host-side outcome of :func:`fit_online` (NumPy arrays)."""

    params: MixtureParams
    log_likelihood: float
    trace: np.ndarray  # per step: the minibatch's log-likelihood estimate (a total)
    step_sizes: np.ndarray
    n_iter: int
    converged: bool
    burn_in: int
    averaged_steps: int
    rejected_steps: int
    formulation: str
    init_log_likelihood: np.ndarray  # (n_init,) per unit weight, on the init subsample
    best_init: int
    elapsed: float
    compile_time: float


def _plateau(trace: np.ndarray) -> bool:
    """The last 10 % of the per-step estimates within 3 standard errors (plus 1e-4
    relative) of the 10 % before (SVI's rule on its ELBO)."""
    n = len(trace) // 10
    if n < 5:
        return False
    last, prev = trace[-n:], trace[-2 * n : -n]
    se = np.sqrt(np.var(last) / n + np.var(prev) / n)
    return bool(abs(last.mean() - prev.mean()) < 3 * se + 1e-4 * abs(last.mean()))


def _quadratic_second_pass(family: Family) -> bool:
    """Whether the family's second-pass sums can be moved between centres
    (:attr:`mixlab.families.Family.second_pass_quadratic`)."""
    return bool(family.second_pass_quadratic)


def _choose_formulation(family: Family, requested: str, summary: Any, reg: float) -> str:
    formulation = family.choose_formulation(requested, summary, reg)
    if family.two_pass(formulation) and not _quadratic_second_pass(family):
        one_pass = [f for f in family.formulations if not family.two_pass(f)]
        if requested == "auto" and one_pass:
            return one_pass[0]
        raise NotImplementedError(
            f"online EM needs sufficient statistics it can update step by step; the "
            f"{formulation!r} M-step of {family!r} takes a second pass over the data about "
            "the new parameters, and its second-pass sums are not known to be quadratic in "
            "the centre (as mixlab's Gaussian and Student-t ones are), so they cannot be "
            "carried from step to step. Fit it by batch EM (ml.EM), or give the family a "
            "one-pass formulation"
        )
    return formulation


def fit_online(
    X: Any,
    n_components: int,
    family: Family,
    method: OnlineEM,
    key: Array,
    sample_weight: np.ndarray | None = None,
) -> OnlineRun:
    """Fit by online EM (see :mod:`mixlab.online`).

    ``X`` is a validated 2-D array of the computation dtype (NumPy or JAX),
    ``sample_weight`` validated frequency weights or ``None``; rows of weight
    zero are left out.  Keys: ``fold_in(key, 0)`` draws the initialisation
    subsample and start, ``fold_in(key, 1)`` the row order of every epoch.

    Raises
    ------
    FitError
        The returned parameters are invalid or their log-likelihood is not
        finite.
    NotImplementedError
        A family whose statistics cannot be updated step by step.
    """
    dtype = np.dtype(X.dtype)
    if sample_weight is not None:
        keep = np.asarray(sample_weight) > 0
        if not keep.all():
            sample_weight = np.asarray(sample_weight)[keep]
            X = X[jnp.asarray(np.flatnonzero(keep))] if isinstance(X, jax.Array) else X[keep]
    n_rows, n_features = X.shape
    with jax.enable_x64(dtype == np.float64):
        summary, shift = summarize(X, sample_weight, family)
        formulation = _choose_formulation(family, method.formulation, summary, method.reg_covar)
        batch_size = min(method.batch_size, n_rows)
        n_batches = -(-n_rows // batch_size)
        total_steps = n_batches * method.n_epochs
        burn_in = method.resolved_burn_in(n_components)
        average_after = math.floor(method.averaging_start * total_steps)
        init = method.init
        if isinstance(init, str):
            start_method: str | None = init
        else:
            start_method = None
            p0 = explicit_start(init, family, n_components, n_features, dtype)
            p0 = MixtureParams.trusted(p0.weights, family.shift(p0.components, -shift), family)
        settings = OnlineSettings(
            family=family,
            n_components=n_components,
            formulation=formulation,
            batch_size=batch_size,
            n_rows=n_rows,
            n_batches=n_batches,
            init_rows=min(method.init_size, n_rows),
            init=start_method,
            n_init=method.n_init,
            shuffle=bool(method.shuffle),
            progress_every=Progress.every(total_steps, method.progress),
            total_steps=total_steps,
        )
        Xd = jnp.asarray(X, dtype) - jnp.asarray(shift, dtype)  # one device copy, centred
        Wd = jnp.ones(n_rows, dtype) if sample_weight is None else jnp.asarray(sample_weight)
        n_total = jnp.asarray(
            n_rows if sample_weight is None else float(sample_weight.sum()), dtype
        )
        reg = jnp.asarray(method.reg_covar, dtype)
        averaging = jnp.asarray(bool(method.averaging))
        init_key, order_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
        start = (
            init_key
            if start_method is not None
            else (jax.tree_util.tree_map(jnp.asarray, p0), init_key)
        )
        start_args = (
            start,
            Xd,
            Wd,
            n_total,
            reg,
            jnp.asarray(summary.var, dtype),
            jnp.asarray(method.init_iter, jnp.int32),
        )
        compiled_start, t_start, _ = _PROGRAMS.get(
            ("start", settings),
            functools.partial(_start_program, settings=settings),
            start_args,
        )
        compile_time = t_start
        clock = time.perf_counter()
        state, init_lls = compiled_start(*start_args)
        elapsed = time.perf_counter() - clock

        def epoch_args(epoch: int) -> tuple:
            return (
                state,
                Xd,
                Wd,
                order_key,
                jnp.asarray(epoch, jnp.int32),
                n_total,
                reg,
                jnp.asarray(method.step_exponent, dtype),
                jnp.asarray(method.step_offset, dtype),
                jnp.asarray(burn_in, jnp.int32),
                averaging,
                jnp.asarray(average_after, jnp.int32),
            )

        compiled, seconds, _ = _PROGRAMS.get(
            ("epoch", settings),
            functools.partial(_epoch_program, settings=settings),
            epoch_args(0),
        )
        compile_time += seconds
        traces, steps = [], []
        bar = None
        if Progress.wanted(method.progress):
            from tqdm.auto import tqdm

            bar = tqdm(total=total_steps, desc="online EM (steps)")
        Progress.bar = bar
        try:
            for epoch in range(method.n_epochs):
                clock = time.perf_counter()
                state, (trace, gammas) = jax.block_until_ready(compiled(*epoch_args(epoch)))
                elapsed += time.perf_counter() - clock
                traces.append(trace)
                steps.append(gammas)
        finally:
            Progress.bar = None
            if bar is not None:
                bar.close()

        platform = platform_of(Xd)
        _, chunk = chunk_layout(
            n_rows,
            family.work_width(n_components, n_features, formulation) * dtype.itemsize,
            None,
            platform,
            None if platform == "cpu" else free_device_memory(Xd),
        )
        final_args = (state, Xd, Wd, n_total, reg, averaging)
        compiled_final, seconds, _ = _PROGRAMS.get(
            ("final", settings, chunk),
            functools.partial(_final_program, settings=settings, chunk=chunk),
            final_args,
        )
        compile_time += seconds
        clock = time.perf_counter()
        params, ok, total = jax.block_until_ready(compiled_final(*final_args))
        elapsed += time.perf_counter() - clock
        params, ok, total = jax.tree_util.tree_map(np.asarray, (params, ok, total))
        state = jax.tree_util.tree_map(np.asarray, state)
        init_lls = np.asarray(init_lls, np.float64)

    log_likelihood = float(total)
    if not bool(ok) or not np.isfinite(log_likelihood):
        raise FitError(
            "online EM ended with invalid parameters (a covariance not positive definite or a "
            "non-finite value) or a non-finite log-likelihood; use a larger batch_size, a "
            "larger step_offset or burn_in, increase reg_covar, or use fewer components"
        )
    trace = np.concatenate(traces).astype(np.float64)
    params = MixtureParams.trusted(params.weights, family.shift(params.components, shift), family)
    return OnlineRun(
        params=params,
        log_likelihood=log_likelihood,
        trace=trace,
        step_sizes=np.concatenate(steps).astype(np.float64),
        n_iter=int(state.step),
        converged=_plateau(trace),
        burn_in=burn_in,
        averaged_steps=int(state.n_averaged),
        rejected_steps=int(state.rejected),
        formulation=formulation,
        init_log_likelihood=init_lls,
        best_init=int(np.argmax(np.where(np.isfinite(init_lls), init_lls, -np.inf))),
        elapsed=elapsed,
        compile_time=compile_time,
    )


def fit_online_em(
    X: Any,
    n_components: int,
    family: Family,
    method: OnlineEM,
    key: Array,
    sample_weight: np.ndarray | None,
) -> FitResult:
    """The ``ml.fit`` backend of :class:`OnlineEM` (``mixlab.api._BACKENDS``).

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
        Validated data of the computation dtype.
    n_components : int
    family : Family
    method : OnlineEM
    key : jax.random key (raw ``uint32[2]``)
    sample_weight : array of shape (n_samples,) or None
        Validated frequency weights.

    Returns
    -------
    FitResult
        ``method="online_em"``; ``log_likelihood`` is exact (a final pass over
        all rows); ``trace`` holds one *estimate* per step, ``n`` times the
        weighted mean log-density of that step's minibatch under the parameters
        the step started from (noisy: it is not the exact log-likelihood and it
        need not increase); ``n_iter`` the steps; ``converged`` the plateau
        test of :class:`OnlineEM`; ``diagnostics`` the step sizes, the burn-in,
        the averaged steps, the M-steps rejected for invalid parameters and the
        formulation.
    """
    from mixlab.api import _result  # api imports this module: here, not at the top

    run = fit_online(X, n_components, family, method, key, sample_weight)
    return _result(
        OnlineEM.name,
        run,
        X,
        method,
        sample_weight,
        diagnostics={
            "step_sizes": run.step_sizes,
            "burn_in": run.burn_in,
            "averaged_steps": run.averaged_steps,
            "rejected_steps": run.rejected_steps,
            "formulation": run.formulation,
            "init_log_likelihood": run.init_log_likelihood,
            "best_init": run.best_init,
        },
    )


__all__ = [
    "OnlineEM",
    "OnlineRun",
    "RunningStats",
    "epoch_order",
    "fit_online",
    "fit_online_em",
    "m_step_from_stats",
]
