"""Method objects: the settings of each way to fit a mixture.

``ml.fit(X, k, method=ml.EM(...) | ml.SVI(...) | ml.NUTS(...))``.  Each is a
frozen dataclass validated on construction, so a bad setting fails where it is
written, not deep inside a compiled loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from mixlab._validation import check_choice, check_float, check_int
from mixlab.em.init import INIT_METHODS
from mixlab.em.stopping import CRITERIA as STOP_CRITERIA
from mixlab.em.stopping import DEFAULT_TOL
from mixlab.params import MixtureParams
from mixlab.priors import Priors


class Method:
    """Base class of the method objects."""

    name: ClassVar[str]

    def settings(self) -> dict[str, Any]:
        """Settings as plain JSON-friendly values (explicit starts become lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            out[f.name] = _jsonable(getattr(self, f.name))
        out["method"] = self.name
        return out


#: ``EM(matmul_precision=...)``: JAX's names for full float32, TensorFloat-32 and fastest.
MATMUL_PRECISIONS = ("highest", "high", "default")


def _check_devices(devices: Any) -> Any:
    """``EM(devices=)``: None, "all" or a non-empty tuple of distinct JAX devices."""
    if devices is None or devices == "all":
        return devices
    import jax

    if isinstance(devices, str) or not hasattr(devices, "__iter__"):
        raise TypeError(
            f"devices must be 'all' or a list of jax devices (jax.devices()), got {devices!r}"
        )
    devices = tuple(devices)
    if not devices:
        raise ValueError("devices is empty; pass 'all', a list of jax devices, or None")
    bad = [d for d in devices if not isinstance(d, jax.Device)]
    if bad:
        raise TypeError(f"devices must be jax devices (from jax.devices()), got {bad[0]!r}")
    if len(set(devices)) != len(devices):
        raise ValueError("devices lists a device more than once; give each device once")
    return devices


def _jsonable(value: Any) -> Any:
    if hasattr(value, "platform") and hasattr(value, "id") and hasattr(value, "device_kind"):
        return f"{value.platform}:{value.id}"  # a jax Device
    if isinstance(value, Priors):
        return value.settings()
    if isinstance(value, Method):
        return value.settings()
    if isinstance(value, MixtureParams):
        return {k: _jsonable(v) for k, v in value.to_dict().items()}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray | np.generic):
        return np.asarray(value).tolist()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class EM(Method):
    """Maximum likelihood by expectation-maximisation (jitted JAX).

    Parameters
    ----------
    tol : float, optional
        The stopping tolerance of ``criterion``; by default ``1e-4`` for
        ``"gap"`` and ``1e-3`` for ``"change"``.  ``0`` runs exactly
        ``max_iter`` iterations.
    criterion : {"gap", "change"}, default "gap"
        When to stop (:mod:`mixlab.em.stopping`).  ``"gap"``: when the
        log-likelihood still to gain, estimated from the last three
        iterations by Aitken's acceleration, is below ``tol`` (a total over
        rows).  Near a maximum that leaves every parameter within about
        ``sqrt(2 * tol)`` standard errors of it (0.014 at the default), so
        EM's own error is negligible beside the statistical one, whatever the
        number of rows; an increment at the rounding level of the
        log-likelihood also stops it (float32 fits of many rows).
        ``"change"``: scikit-learn's rule, the change of the mean per-row
        log-likelihood below ``tol``; iteration counts then agree with
        scikit-learn's, but a fit can stop well short of the maximum (on Old
        Faithful, K=2: 0.92 log-likelihood units, with standard errors that
        cannot be computed there).
    max_iter : int, default 1000
        Iterations per restart at most.
    n_init : int, default 1
        Restarts, run batched with ``vmap``; the best final log-likelihood wins.
        Restart 0 uses ``key`` itself and restart ``i`` uses
        ``jax.random.fold_in(key, i)``, so ``n_init=b`` runs every start of
        ``n_init=a < b`` and never ends below it.
    init : str or dict or MixtureParams, default "auto"
        How to start (:mod:`mixlab.em.init`): ``"auto"``, ``"kmeans++"``,
        ``"kmeans"``, ``"random_from_data"``, ``"random"`` or ``"trimmed"``.
        ``"auto"``: the family's own, ``"trimmed"`` (k-means on the densest
        75% of the rows, so that gross outliers seed no component) for
        Student-t, whose point is data with outliers, and ``"kmeans++"``
        otherwise.  A dict ``{"weights", "means", "covariances"}``
        (scikit-learn's layout for the covariance type) or a
        :class:`MixtureParams` gives an explicit start.
    reg_covar : float, default 1e-6
        Added to every covariance diagonal (scikit-learn's regularisation).
        The M-step then no longer maximises the ELBO exactly, so the
        log-likelihood may dip between iterations by a second-order amount,
        about ``reg_covar**2 / 4 * sum_k N_k tr(Sigma_k^-2)``; ``reg_covar=0``
        is exact EM, whose log-likelihood never decreases.
    assignment : {"soft", "hard"}
        ``"hard"`` is classification EM: each point goes wholly to its most
        probable component; the trace then holds the classification
        log-likelihood ``sum_i max_k log(pi_k p(x_i | theta_k))``, which hard EM
        never decreases.
    fixed : tuple of str
        Parameters held at their starting values: ``"weights"`` or any of the
        family's parameters (``"means"``, ``"covariances"``, ``"dofs"``, ...);
        the others are estimated given them.  Hard EM with fixed equal weights
        and fixed equal spherical covariances is k-means.
    record_params : bool
        Keep the parameters of every iteration (``FitResult.params_trace``).
    chunk_size : int, optional
        Rows per chunk of the E- and M-steps.  By default, on a CPU about 4 MiB
        of intermediates per chunk, which keeps them in cache; on a GPU or TPU
        all rows in one pass, unless the intermediates would take over a
        quarter of the device's free memory.
    matmul_precision : {"highest", "high", "default"}
        Precision of the matrix products in float32 on accelerators (JAX's
        ``default_matmul_precision``).  ``"highest"`` (default): full float32
        accuracy.  ``"high"``: TensorFloat-32 on NVIDIA GPUs (faster; products
        carry about 1e-3 relative error, which moves the fitted parameters at
        that level); ``"default"``: the backend's fastest (bfloat16 passes on
        TPU).  No effect on CPUs or in float64.
    formulation : {"auto", "centred", "expanded"}
        How the statistics are computed (Gaussian; other families have one
        formulation and accept ``"auto"``). ``"centred"``: log-densities through
        ``x P_k - mu_k P_k`` and covariances centred on the new means (two
        passes over the data; exact in float32).  ``"expanded"``: quadratic
        forms on the data's second moments (one pass, two to three times
        faster; uncentred, so a variance loses about ``eps * max |x|^2``).
        ``"auto"`` uses expanded in float64 when that loss is under 1e-4 of
        ``reg_covar`` (data centred on its mean), else centred; always centred
        in float32 and for ``reg_covar=0``.
    on_collapse : {"reinit", "ignore", "raise"}
        What to do when a component collapses during EM: its responsibility
        falls below one data point, or its covariance above ``reg_covar``
        becomes singular (its smallest variance above ``reg_covar`` drops below
        1e-12 of the data's own variance in float64, 1e-8 in float32: it sits
        on too few distinct points, a spurious maximum of the likelihood).
        ``"reinit"`` (default): restart the component at the data point the
        mixture explains worst, with the data's covariance and weight 1/K, and
        go on (also for a component whose covariance is no longer positive
        definite, possible with ``reg_covar=0``).  At most ``max(10, 5 K)``
        restarts per run; after that the fit carries on as ``"ignore"``, so
        the default never raises for a collapse.  The log-likelihood can drop
        at a restart; ``FitResult.diagnostics["reinitialisations"]`` lists
        (iteration, component).  ``"ignore"``: carry on as scikit-learn does
        (the regulariser keeps the covariance positive definite).
        ``"raise"``: a :class:`~mixlab.errors.FitError` naming the component
        and iteration.  Whatever the policy,
        ``diagnostics["collapses"]`` lists (component, first iteration,
        ``"weight"`` or ``"covariance"``) for every component of the returned
        restart that collapsed at some point, and a fit whose log-likelihood
        or parameters become non-finite is never returned.
        Measured over 4,800 small fits (``benchmarks/defaults_study.py``):
        ``"reinit"`` ends above scikit-learn's fit (same init method, other
        random starts) more often than below; see the README.
    devices : "all" or sequence of jax.Device, optional
        Fit with the rows spread over several devices (data-parallel EM): each
        device holds a share of every row chunk, its sums are added across
        devices by XLA's collectives, and the M-step runs once on the total,
        so the result is the one-device result up to the order of additions.
        ``"all"``: every local device (``jax.local_devices()``).  ``None``
        (default): one device, except that a JAX array already sharded over
        several devices is fitted on those devices.  Restarts, every
        initialisation, collapse handling and sample weights work as on one
        device.
    standardize : bool, default True
        Measure the distances of the starting methods on data scaled to unit
        variance per feature (location families: Gaussian, Student-t), so the
        start does not depend on the data's units; ``False``: in the data's
        units, as scikit-learn does.
    progress : bool or None, default False
        Show a progress bar over the iterations (all restarts run together;
        the bar shows the furthest and never goes back); ``None``: when stderr
        is a terminal.  Off by default: most EM fits take milliseconds, and a
        bar's host callbacks keep the program out of the persistent cache.
    """

    name: ClassVar[str] = "em"

    tol: float | None = None
    max_iter: int = 1000
    n_init: int = 1
    init: Any = "auto"
    reg_covar: float = 1e-6
    assignment: str = "soft"
    fixed: tuple[str, ...] = field(default=())
    record_params: bool = False
    chunk_size: int | None = None
    formulation: str = "auto"
    on_collapse: str = "reinit"
    matmul_precision: str = "highest"
    devices: Any = None
    progress: bool | None = False
    criterion: str = "gap"
    standardize: bool = True

    def __post_init__(self) -> None:
        check_choice(self.criterion, "criterion", STOP_CRITERIA)
        if self.tol is None:
            object.__setattr__(self, "tol", DEFAULT_TOL[self.criterion])
        check_float(self.tol, "tol", minimum=0.0)
        check_int(self.max_iter, "max_iter", minimum=1)
        check_int(self.n_init, "n_init", minimum=1)
        check_float(self.reg_covar, "reg_covar", minimum=0.0)
        check_choice(self.assignment, "assignment", ("soft", "hard"))
        if isinstance(self.init, str):
            check_choice(self.init, "init", INIT_METHODS)
        elif isinstance(self.init, Mapping | MixtureParams):
            if self.n_init != 1:
                raise ValueError(
                    "explicit starting parameters give the same start to every restart; "
                    f"use n_init=1 (got n_init={self.n_init})"
                )
        else:
            raise TypeError(
                f"init must be one of {INIT_METHODS}, a dict of starting parameters or a "
                f"MixtureParams; got {type(self.init).__name__}"
            )
        fixed = (self.fixed,) if isinstance(self.fixed, str) else tuple(self.fixed)
        for name in fixed:
            if not isinstance(name, str):
                raise TypeError(f"fixed must hold parameter names, got {name!r}")
        object.__setattr__(self, "fixed", fixed)
        if not isinstance(self.record_params, bool | np.bool_):
            raise TypeError("record_params must be True or False")
        if not isinstance(self.standardize, bool | np.bool_):
            raise TypeError("standardize must be True or False")
        if self.chunk_size is not None:
            check_int(self.chunk_size, "chunk_size", minimum=1)
        if not isinstance(self.formulation, str):
            raise TypeError(f"formulation must be a string, got {type(self.formulation).__name__}")
        check_choice(self.on_collapse, "on_collapse", ("reinit", "ignore", "raise"))
        check_choice(self.matmul_precision, "matmul_precision", MATMUL_PRECISIONS)
        if self.progress is not None and not isinstance(self.progress, bool | np.bool_):
            raise TypeError("progress must be True, False or None (shown on a terminal)")
        object.__setattr__(self, "devices", _check_devices(self.devices))

    def check_for(self, family: Any) -> None:
        """Check the settings that depend on the family (fixed names, formulation)."""
        names = ("weights", *family.param_names())
        for name in self.fixed:
            if name not in names:
                raise ValueError(
                    f"fixed must name parameters of {family!r}: {', '.join(map(repr, names))}; "
                    f"got {name!r}"
                )
        if set(self.fixed) >= set(names):
            raise ValueError("fixed holds every parameter; leave at least one free to fit")
        if self.formulation != "auto" and self.formulation not in family.formulations:
            raise ValueError(
                f"formulation must be 'auto' or one of "
                f"{', '.join(map(repr, family.formulations))} for {family!r}; "
                f"got {self.formulation!r}"
            )

    def engine_options(self) -> dict[str, Any]:
        """The loop settings as keyword arguments of the engine's ``fit_em``.

        Leaves out what each caller decides itself: the start (``init``),
        ``record_params`` and ``progress``.
        """
        return dict(
            tol=self.tol,
            criterion=self.criterion,
            standardize=self.standardize,
            max_iter=self.max_iter,
            n_init=self.n_init,
            reg_covar=self.reg_covar,
            hard=self.assignment == "hard",
            fixed=self.fixed,
            chunk_size=self.chunk_size,
            formulation=self.formulation,
            on_collapse=self.on_collapse,
            matmul_precision=self.matmul_precision,
            devices=self.devices,
        )


def _check_bayes_common(method: Any) -> None:
    if method.priors is not None and not isinstance(method.priors, Priors):
        raise TypeError(f"priors must be a ml.Priors, got {type(method.priors).__name__}")
    if method.em is not None and not isinstance(method.em, EM):
        raise TypeError(
            f"em must be a ml.EM (the fit used to start and to align), got "
            f"{type(method.em).__name__}"
        )
    if method.progress is not None and not isinstance(method.progress, bool | np.bool_):
        raise TypeError("progress must be True, False or None (shown on a terminal)")


@dataclass(frozen=True)
class SVI(Method):
    """Stochastic variational inference (NumPyro) on the Bayesian mixture.

    The component assignments are summed out exactly, so the guide covers the
    continuous parameters only.

    Parameters
    ----------
    num_steps : int, default 2000
    guide : {"delta", "normal", "mvn", "lowrank"}
        ``"delta"``: MAP (``AutoDelta``); its ELBO is ``log p(X, theta)``.
        ``"normal"``: mean-field Gaussian (``AutoNormal``). ``"mvn"``: full-rank
        (``AutoMultivariateNormal``). ``"lowrank"``: low-rank plus diagonal
        (``AutoLowRankMultivariateNormal``, rank ``rank``).
    optimizer : numpyro optimizer, optional
        Default ``numpyro.optim.Adam(learning_rate)``.
    learning_rate : float, default 0.01
    num_particles : int, default 1
        Monte Carlo samples per ELBO gradient.
    num_draws : int, default 1000
        Draws taken from the fitted guide for the posterior summaries.
    elbo_particles : int, default 1000
        Particles of the final ELBO estimate (reported with its standard error).
    init : {"em", "prior"}
        Start the guide at the EM solution (default) or at a prior median.
    rank : int, optional
        Rank of the ``"lowrank"`` guide.
    priors : Priors, optional
    em : EM, optional
        Settings of the EM fit used to start and to align labels
        (default ``EM(n_init=4)``).
    progress : bool, optional
        Show a progress bar over the SVI steps.  Default: when stderr is a
        terminal.
    """

    name: ClassVar[str] = "svi"

    num_steps: int = 2000
    guide: str = "normal"
    optimizer: Any = None
    learning_rate: float = 0.01
    num_particles: int = 1
    num_draws: int = 1000
    elbo_particles: int = 1000
    init: str = "em"
    rank: int | None = None
    priors: Priors | None = None
    em: EM | None = None
    progress: bool | None = None

    def __post_init__(self) -> None:
        check_int(self.num_steps, "num_steps", minimum=1)
        check_choice(self.guide, "guide", ("delta", "normal", "mvn", "lowrank"))
        check_float(self.learning_rate, "learning_rate", 0.0, strict=True)
        check_int(self.num_particles, "num_particles", minimum=1)
        check_int(self.num_draws, "num_draws", minimum=1)
        check_int(self.elbo_particles, "elbo_particles", minimum=1)
        check_choice(self.init, "init", ("em", "prior"))
        if self.rank is not None:
            check_int(self.rank, "rank", minimum=1)
        _check_bayes_common(self)

    def settings(self) -> dict[str, Any]:
        out = super().settings()
        out["optimizer"] = None if self.optimizer is None else repr(self.optimizer)
        return out


@dataclass(frozen=True)
class NUTS(Method):
    """MCMC with the No-U-Turn sampler (NumPyro) on the Bayesian mixture.

    The component assignments are summed out exactly, so NUTS samples a
    smooth density over the continuous parameters; draws are relabelled
    against label switching to match the EM solution.

    Parameters
    ----------
    num_warmup : int, default 1000
    num_samples : int, default 1000
        Draws kept per chain.
    num_chains : int, default 4
    init : {"em", "prior"}
        Start every chain near the EM solution (default; each chain jittered
        by ``init_jitter`` in the unconstrained space) or at prior draws.
    chain_method : {"vectorized", "sequential"}
        ``"vectorized"`` (default) runs all chains in lockstep in one compiled
        program, the fastest on CPU where per-operation overhead dominates
        small models; ``"sequential"`` runs the same one-chain program chain
        after chain (less memory, chains do not wait for each other).
    target_accept : float, default 0.8
    max_tree_depth : int, default 10
    init_jitter : float, default 0.1
    priors : Priors, optional
    em : EM, optional
        Settings of the EM fit used to start and to align (default ``EM(n_init=4)``).
    progress : bool, optional
        Show a progress bar over the NUTS steps (all chains together; it never
        goes back).  Default: when stderr is a terminal.
    """

    name: ClassVar[str] = "nuts"

    num_warmup: int = 1000
    num_samples: int = 1000
    num_chains: int = 4
    init: str = "em"
    chain_method: str = "vectorized"
    target_accept: float = 0.8
    max_tree_depth: int = 10
    init_jitter: float = 0.1
    priors: Priors | None = None
    em: EM | None = None
    progress: bool | None = None

    def __post_init__(self) -> None:
        check_int(self.num_warmup, "num_warmup", minimum=0)
        check_int(self.num_samples, "num_samples", minimum=1)
        check_int(self.num_chains, "num_chains", minimum=1)
        check_choice(self.init, "init", ("em", "prior"))
        check_choice(self.chain_method, "chain_method", ("vectorized", "sequential"))
        check_float(self.target_accept, "target_accept", 0.0, strict=True)
        if self.target_accept >= 1.0:
            raise ValueError(f"target_accept must be below 1, got {self.target_accept}")
        check_int(self.max_tree_depth, "max_tree_depth", minimum=1)
        check_float(self.init_jitter, "init_jitter", minimum=0.0)
        _check_bayes_common(self)
