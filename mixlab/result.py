"""``FitResult``: the one result type of every method (EM, SVI, NUTS)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mixlab._jaxutil import KeyLike
from mixlab._version import __version__
from mixlab.em.steps import e_step, log_likelihood
from mixlab.params import MixtureParams


@dataclass(frozen=True, eq=False)
class Restarts:
    """Every EM restart's outcome (seed 001's initialisation study needs them).

    Attributes
    ----------
    log_likelihood : array of shape (n_init,)
        Final total log-likelihood of each restart (NaN where it failed).
    converged : bool array of shape (n_init,)
    n_iter : int array of shape (n_init,)
    status : array of str, shape (n_init,)
        ``"converged"``, ``"max_iter"``, ``"nonfinite"`` or ``"degenerate"``.
    best : int
        Index of the restart whose parameters were kept.
    keys : uint32 array of shape (n_init, 2), optional
        Each restart's PRNG key: ``ml.fit(X, k, EM(n_init=1), key=keys[i])``
        reproduces restart ``i`` alone.  ``None`` for an explicit start.
    """

    log_likelihood: np.ndarray
    converged: np.ndarray
    n_iter: np.ndarray
    status: np.ndarray
    best: int
    keys: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.log_likelihood)

    def share_reaching_best(self, tolerance: float = 1.0) -> float:
        """Fraction of restarts ending within ``tolerance`` (total log-likelihood) of the best."""
        ll = self.log_likelihood
        best = np.nanmax(ll)
        return float(np.mean(np.isfinite(ll) & (ll >= best - tolerance)))


@dataclass(frozen=True, eq=False)
class FitResult:
    """A fitted mixture, whatever the method.

    Attributes
    ----------
    method : {"em", "online_em", "svi", "nuts"}
    params : MixtureParams
        Point estimate: the EM solution, the MAP (SVI delta guide) or the
        posterior mean of the label-aligned draws.
    log_likelihood : float
        Total log-likelihood ``sum_i log p(x_i | params)`` of the fitted data.
    trace : array
        EM: the log-likelihood after each iteration (``trace[0]`` is the
        start, ``trace[n_iter]`` the returned parameters); hard EM: the
        classification log-likelihood. SVI: the ELBO per step.
    converged : bool
        From the stopping rule (never inferred from ``n_iter < max_iter``).
    n_iter : int
        EM iterations or SVI steps done.
    elapsed : float
        Seconds of compiled run time, compilation excluded.
    compile_time : float
        Seconds spent compiling, or loading the compiled program from the
        persistent cache of an earlier process (0 when this process had it);
        EM's ``diagnostics["compile_cache"]`` says which: ``"compiled"``,
        ``"disk"`` or ``"memory"``.
    n_samples : int
        Rows of the data fitted.
    posterior : dict of str to array, optional
        SVI/NUTS draws with leading ``(chain, draw)`` axes, labels aligned.
    params_trace : MixtureParams, optional
        EM parameters after every iteration (leading axis ``n_iter + 1``),
        when ``EM(record_params=True)``.
    restarts : Restarts, optional
        EM: every restart's final log-likelihood and convergence flag.
    settings : dict
        The method's settings and the fit's arguments.
    diagnostics : dict
        Method-specific extras (divergences, ELBO estimate, status).
    data : array of shape (n_samples, n_features), optional
        The (validated copy of the) data that were fitted; used by
        :meth:`to_arviz` and the comparison.  Saved only on request.
    sample_weight : array of shape (n_samples,), optional
        The frequency weights of the rows, when the fit had them.
    mixlab_version : str
        The mixlab version that made the fit (kept through save and load).
    feature_names : tuple of str, optional
        The data's column names (a pandas or polars DataFrame, a named Series,
        or ``fit(..., feature_names=)``); they label the summary, the
        comparison's rows, plot axes, ArviZ coordinates and the CLI's files.
        A DataFrame given to :meth:`predict` and friends is matched to them by
        name.  ``None`` for unnamed arrays.
    feature_units : tuple of str, optional
        Each feature's unit (``""`` where none), from a pandas DataFrame's
        ``attrs["units"]`` (a dict from column to unit, as the embedded data
        sets carry); shown on plot axes, e.g. "waiting (min)".
    """

    method: str
    params: MixtureParams
    log_likelihood: float
    trace: np.ndarray
    converged: bool
    n_iter: int
    elapsed: float
    n_samples: int
    compile_time: float = 0.0
    posterior: dict[str, np.ndarray] | None = None
    params_trace: MixtureParams | None = None
    restarts: Restarts | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    data: np.ndarray | None = field(default=None, repr=False)
    sample_weight: np.ndarray | None = field(default=None, repr=False)
    mixlab_version: str = __version__
    feature_names: tuple[str, ...] | None = None
    feature_units: tuple[str, ...] | None = None

    # ------------------------------------------------------------ prediction
    @property
    def n_components(self) -> int:
        return self.params.n_components

    @property
    def n_features(self) -> int:
        return self.params.n_features

    @property
    def family(self) -> Any:
        """The component family (:class:`mixlab.families.Family`)."""
        return self.params.family

    @property
    def n_observations(self) -> float:
        """Observations the fit counts: the rows, or the sum of their frequency weights."""
        if self.sample_weight is None:
            return float(self.n_samples)
        return float(np.sum(self.sample_weight))

    def feature_label(self, j: int, units: bool = True) -> str:
        """The name of feature ``j`` for display: ``"waiting (min)"``, ``"waiting"``, or
        ``"feature j"`` for unnamed data."""
        if self.feature_names is None:
            return f"feature {j}"
        unit = self.feature_units[j] if units and self.feature_units is not None else ""
        return f"{self.feature_names[j]} ({unit})" if unit else self.feature_names[j]

    def _input(self, X: Any) -> Any:
        """``X`` with a data frame's columns put in the fitted order, by name."""
        from mixlab._validation import feature_names_of

        names = feature_names_of(X)
        if self.feature_names is None or names is None or names == self.feature_names:
            return X
        missing = [n for n in self.feature_names if n not in names]
        if missing:
            raise ValueError(
                f"X has no column(s) {', '.join(map(repr, missing))}; the mixture was fitted on "
                f"{', '.join(map(repr, self.feature_names))}; pass a frame with those columns"
            )
        return X[list(self.feature_names)]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Responsibilities ``p(z = k | x)``, shape ``(n_samples, n_components)``.

        A DataFrame's columns are matched to :attr:`feature_names` by name."""
        return np.exp(e_step(self._input(X), self.params).log_resp)

    def predict(self, X: Any) -> np.ndarray:
        """Most probable component of each row, shape ``(n_samples,)``."""
        return np.argmax(e_step(self._input(X), self.params).log_resp, axis=1)

    def score_samples(self, X: Any) -> np.ndarray:
        """Per-sample log-likelihood ``log p(x_i)``, shape ``(n_samples,)``."""
        return np.asarray(e_step(self._input(X), self.params).log_prob_norm)

    def score(self, X: Any) -> float:
        """Mean per-sample log-likelihood (scikit-learn's ``score``)."""
        return float(np.mean(self.score_samples(X)))

    def sample(self, key: KeyLike, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``(X, labels)`` from the fitted mixture; see :meth:`MixtureParams.sample`."""
        return self.params.sample(key, n_samples)

    # ---------------------------------------------------------------- labels
    def reorder(self, order: str | None = "location") -> FitResult:
        """The same fit with its components numbered in a canonical order.

        A mixture's labels are arbitrary: two fits of the same data (other
        keys, other methods) find the same components under different
        numbers.  ``fit(..., order=)`` applies this to every result, so fits
        line up.

        Parameters
        ----------
        order : {"location", "weights"} or None
            ``"location"``: by the family's location parameter (``means``,
            ``rates``, ``probs``), ascending in the first feature, later
            features breaking ties.  ``"weights"``: largest weight first.
            ``None``: the result as it is.

        Returns
        -------
        FitResult
            Parameters, the EM parameter trace, posterior draws (and their
            r-hat, ESS and label permutations) and the component numbers in
            the collapse diagnostics, all renumbered alike; the data, the
            log-likelihood and everything else unchanged.
        """
        from dataclasses import replace

        from mixlab.align import canonical_permutation, permute_components

        perm = canonical_permutation(self.params, order)
        settings = {**self.settings, "order": order}
        if np.array_equal(perm, np.arange(self.n_components)):
            return replace(self, settings=settings)
        family = self.family

        def params_in_order(params: MixtureParams, axis: int) -> MixtureParams:
            values = permute_components(
                {"weights": params.weights, **params.components}, perm, family, axis
            )
            weights = values.pop("weights")
            return MixtureParams.trusted(weights, values, family)

        new_number = np.argsort(perm)  # old component k is now new_number[k]
        diagnostics = dict(self.diagnostics)
        for name in ("collapses", "reinitialisations"):
            if diagnostics.get(name):
                at = 0 if name == "collapses" else 1  # (k, t, kind) / (t, k)
                diagnostics[name] = [
                    tuple(int(new_number[v]) if i == at else v for i, v in enumerate(entry))
                    for entry in diagnostics[name]
                ]
        if "label_permutations" in diagnostics:
            diagnostics["label_permutations"] = np.asarray(diagnostics["label_permutations"])[
                ..., perm
            ]
        if isinstance(diagnostics.get("reference_params"), MixtureParams):
            diagnostics["reference_params"] = params_in_order(diagnostics["reference_params"], 0)
        for name in ("r_hat", "ess"):
            if isinstance(diagnostics.get(name), dict):
                diagnostics[name] = permute_components(diagnostics[name], perm, family, 0)
        return replace(
            self,
            params=params_in_order(self.params, 0),
            params_trace=None
            if self.params_trace is None
            else params_in_order(self.params_trace, 1),
            posterior=None
            if self.posterior is None
            else permute_components(self.posterior, perm, family, 2),
            settings=settings,
            diagnostics=diagnostics,
        )

    # ------------------------------------------------------ model selection
    @property
    def n_parameters(self) -> int:
        """Free parameters (weights included), counted as scikit-learn does for Gaussians."""
        return self.params.family.n_parameters(self.n_components, self.n_features)

    def bic(self, X: Any, sample_weight: Any = None) -> float:
        """Bayesian information criterion on ``X`` (lower is better).

        With ``sample_weight`` the log-likelihood is weighted and the number of
        observations is ``sum(sample_weight)``.
        """
        n = np.shape(X)[0] if sample_weight is None else float(np.sum(sample_weight))
        ll = log_likelihood(self._input(X), self.params, sample_weight=sample_weight)
        return float(-2.0 * ll + self.n_parameters * np.log(n))

    def aic(self, X: Any, sample_weight: Any = None) -> float:
        """Akaike information criterion on ``X`` (lower is better)."""
        ll = log_likelihood(self._input(X), self.params, sample_weight=sample_weight)
        return float(-2.0 * ll + 2.0 * self.n_parameters)

    # ----------------------------------------------------------- uncertainty
    @property
    def remaining_gain(self) -> float:
        """How much log-likelihood EM had still to gain when it stopped (an estimate).

        Aitken's acceleration of the last three log-likelihoods of the trace
        (:func:`mixlab.em.stopping.remaining_gain`): ``|d1| / (1 - a)`` with
        ``d1`` the last increment and ``a`` the ratio of the last two.  Near a
        maximum every parameter is then within about ``sqrt(2 * gain)``
        standard errors of it (:attr:`max_distance_se`).  ``inf`` where the
        last increments do not shrink or fewer than two iterations were run;
        ``nan`` for anything but a soft EM fit (hard EM, online EM, SVI, NUTS).
        """
        from mixlab.em.stopping import remaining_gain

        if self.method != "em" or self.settings.get("assignment") == "hard":
            return float("nan")
        t = np.asarray(self.trace, np.float64)
        if len(t) < 3:
            return float("inf")
        eps = float(np.finfo(np.asarray(self.params.weights).dtype).eps)
        return float(remaining_gain(t[-3], t[-2], t[-1], eps))

    @property
    def max_distance_se(self) -> float:
        """Bound on how far any parameter may be from the maximum, in standard errors:
        ``sqrt(2 * remaining_gain)`` (the quadratic approximation of the
        log-likelihood; see :mod:`mixlab.em.stopping`)."""
        return float(np.sqrt(2.0 * self.remaining_gain))

    def at_maximum(self, tol: float | None = None, max_iter: int | None = None) -> FitResult:
        """The fit continued by EM from its estimate until it is at the maximum.

        Runs EM from :attr:`params` with the fit's own settings (regulariser,
        fixed parameters, collapse policy) and the ``"gap"`` rule at a tight
        ``tol`` (default ``1e-9``; ``max_iter`` default 100000), on the
        fitted data.  Returns ``self`` when the estimate is there already (EM
        gains under ``tol``), else the continued fit, whose
        ``diagnostics["continued"]`` holds the iterations and the
        log-likelihood gained.  :meth:`standard_errors`, :meth:`bootstrap`,
        :meth:`covariance_of_estimates` and :func:`mixlab.compare` do this
        themselves (with a warning) when the estimate is short of the maximum.
        """
        from mixlab.uncertainty import continue_to_maximum

        X, sample_weight, _ = self._information_inputs(None, None)
        return continue_to_maximum(self, X, sample_weight, tol, max_iter)

    def _information_inputs(self, X: Any, sample_weight: Any) -> tuple[Any, Any, tuple]:
        if self.method != "em":
            whose = (
                "whose posterior draws give its uncertainty (result.posterior)"
                if self.posterior is not None
                else "which need not sit at the maximum (refit with ml.EM for them)"
            )
            raise ValueError(
                f"standard errors from the observed information are for EM fits; this is a "
                f"{self.method.upper()} fit, {whose}"
            )
        if self.settings.get("assignment") == "hard":
            raise ValueError(
                "hard (classification) EM does not maximise the mixture likelihood, so its "
                "observed information gives no standard errors; refit with assignment='soft'"
            )
        if X is None:
            if self.data is None:
                raise ValueError(
                    "the result holds no data (e.g. loaded from a file saved without "
                    "include_data=True); pass the fitted data as X"
                )
            X, sample_weight = self.data, self.sample_weight
        return X, sample_weight, tuple(self.settings.get("fixed") or ())

    def standard_errors(self, X: Any = None, sample_weight: Any = None) -> MixtureParams:
        """Standard errors of the EM estimates from the observed information.

        Minus the Hessian of the total log-likelihood (exact, by autodiff, in
        float64) at the estimate, inverted; see :mod:`mixlab.uncertainty`.
        Returns a :class:`MixtureParams` laid out as :attr:`params` that holds
        standard errors (``.weights``, ``.means``, ``.covariances``, ``.rates``,
        ...); fixed parameters have 0.  ``X`` (and ``sample_weight``) default
        to the fitted data.

        An estimate short of the maximum (an estimated log-likelihood gain
        still to come above ``1.25e-3``, i.e. parameters possibly more than
        0.05 standard errors away; or a fit that did not converge) is first
        continued by EM to the maximum (:meth:`at_maximum`), with a
        :class:`~mixlab.errors.ConvergenceWarning` that says by how much it
        moved: the errors are then those of the continued estimate.

        Raises
        ------
        FitError
            The information is singular at the maximum (a component with too
            few points, a rate or probability on its boundary) or not positive
            definite (a saddle point); the message names the component.
        """
        from mixlab.uncertainty import maximum_for_uncertainty, standard_errors

        X, sample_weight, fixed = self._information_inputs(X, sample_weight)
        params = maximum_for_uncertainty(self, X, sample_weight, "standard errors computed").params
        return standard_errors(params, X, sample_weight, fixed)

    def bootstrap(
        self,
        n_boot: int = 200,
        kind: str = "nonparametric",
        key: KeyLike = 0,
        X: Any = None,
        progress: bool | None = None,
    ) -> Any:
        """Refit on ``n_boot`` resampled data sets in one compiled program; see
        :func:`mixlab.uncertainty.bootstrap`.  ``.standard_errors()`` of the
        returned :class:`~mixlab.uncertainty.Bootstrap` are the bootstrap's.
        ``progress``: a bar over the refits' iterations (``None``: on a terminal)."""
        from mixlab.uncertainty import bootstrap

        return bootstrap(self, n_boot, kind, key, X, progress=progress)

    def covariance_of_estimates(self, X: Any = None, sample_weight: Any = None) -> Any:
        """The full asymptotic covariance of the free EM estimates (an
        :class:`~mixlab.uncertainty.EstimateCovariance`: ``names`` and ``matrix``)."""
        from mixlab.uncertainty import covariance_of_estimates, maximum_for_uncertainty

        X, sample_weight, fixed = self._information_inputs(X, sample_weight)
        params = maximum_for_uncertainty(self, X, sample_weight, "covariance computed").params
        return covariance_of_estimates(params, X, sample_weight, fixed)

    # --------------------------------------------------------------- output
    def to_arviz(self, X: Any = None, feature_names: list[str] | None = None) -> Any:
        """The fit as an ``arviz.InferenceData``.

        ``posterior`` (for EM, its point estimate as a single draw),
        ``sample_stats`` (NUTS), ``log_likelihood`` per observation (so
        ``az.loo``/``az.compare`` work) and ``observed_data``.  ``X`` defaults
        to the data that were fitted.
        """
        from mixlab.arviz_io import to_inference_data

        return to_inference_data(self, X, feature_names)

    def save(self, path: str | os.PathLike, include_data: bool = False) -> Path:
        """Save to one ``.npz`` file (arrays + JSON metadata; no pickle).

        Everything round-trips exactly: parameters, trace, posterior draws,
        restarts, settings, diagnostics and the mixlab version.  The fitted
        data are included only with ``include_data=True``.  Returns the path.
        """
        from mixlab.persist import save_result

        return save_result(self, path, include_data=include_data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FitResult:
        """Load a result written by :meth:`save`; loading runs no code.

        Raises
        ------
        FileNotFoundError
            No file at ``path``.
        mixlab.errors.LoadError
            A truncated or corrupted file, or one in another format version.
        """
        from mixlab.persist import load_result

        values = load_result(path)
        restarts = values.pop("restarts")
        if restarts is not None:
            restarts = Restarts(**restarts)
        return cls(restarts=restarts, **values)

    # ------------------------------------------------------------- display
    def summary(self) -> str:
        """A short human-readable table of the fit."""
        p = self.params
        weighted = "" if self.sample_weight is None else f" (weight {self.n_observations:g})"
        loaded = self.diagnostics.get("compile_cache") == "disk"
        lines = [
            f"{self.method.upper()} fit: {p.n_components} component(s), {p.n_features} feature(s), "
            f"{p.family!r}, n_samples={self.n_samples}{weighted}",
            f"log-likelihood {self.log_likelihood:.6g}  converged={self.converged}  "
            f"n_iter={self.n_iter}  time {self.elapsed:.3g}s (+{self.compile_time:.3g}s "
            + ("loading the compiled program)" if loaded else "compile)"),
        ]
        gain = self.remaining_gain
        if np.isfinite(gain):
            lines.append(
                f"distance to the maximum: an estimated {gain:.2g} of log-likelihood still to "
                f"gain, so every parameter within about {self.max_distance_se:.2g} standard "
                "errors of it"
            )
        elif np.isinf(gain):
            lines.append(
                "distance to the maximum: unknown (the last increments did not shrink); "
                "result.at_maximum() continues EM to it"
            )
        if self.restarts is not None and len(self.restarts) > 1:
            ll = self.restarts.log_likelihood
            lines.append(
                f"restarts: {len(ll)}, best #{self.restarts.best}, final log-likelihoods "
                f"min {np.nanmin(ll):.6g} / median {np.nanmedian(ll):.6g} / max {np.nanmax(ll):.6g}"
            )
        collapses = self.diagnostics.get("collapses") or []
        if collapses:
            told = ", ".join(f"{k} ({kind}, iteration {t})" for k, t, kind in collapses[:5])
            restarts = len(self.diagnostics.get("reinitialisations") or [])
            lines.append(
                f"collapsed component(s): {told}" + (f"; {restarts} restart(s)" if restarts else "")
            )
        if self.feature_names is not None:
            named = ", ".join(self.feature_label(j) for j in range(p.n_features))
            lines.append(f"features: {named}")
        mean, cov = p.moments()
        for k in range(p.n_components):
            sd = np.sqrt(np.diagonal(cov[k]))
            more = p.family.describe_component(p.components, k)
            lines.append(
                f"  component {k}: weight {p.weights[k]:.4f}  mean "
                f"{np.array2string(mean[k], precision=4)}  sd "
                f"{np.array2string(sd, precision=4)}{'  ' + more if more else ''}"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"FitResult(method={self.method!r}, n_components={self.n_components}, "
            f"family={self.params.family!r}, "
            f"log_likelihood={self.log_likelihood:.6g}, converged={self.converged}, "
            f"n_iter={self.n_iter})"
        )
