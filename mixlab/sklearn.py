"""scikit-learn estimators backed by mixlab's EM.

>>> import mixlab as ml
>>> from mixlab.sklearn import GaussianMixture
>>> X = ml.datasets.load("faithful")
>>> gmm = GaussianMixture(n_components=2, random_state=0).fit(X)
>>> labels, bic = gmm.predict(X), gmm.bic(X)
>>> print(gmm.result_.summary())  # the mixlab FitResult behind it

:class:`GaussianMixture` takes scikit-learn's arguments (same names and
defaults as :class:`sklearn.mixture.GaussianMixture`), sets its fitted
attributes in scikit-learn's layouts, and works in pipelines, grid searches,
``clone`` and ``pickle``; the fit itself is :func:`mixlab.fit` with
:class:`mixlab.EM`.  It also fits mixlab's other families (``family="poisson"``,
``"bernoulli"``, ``"student_t"`` or a family object).

scikit-learn is optional for mixlab and imported here only: ``import mixlab``
never imports this module.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from typing import Any

import numpy as np
import scipy.linalg

try:
    from sklearn.base import BaseEstimator, DensityMixin
    from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning
    from sklearn.utils import check_random_state
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn >= 1.6
    raise ImportError(
        "mixlab.sklearn needs scikit-learn >= 1.6; install it with: pip install mixlab[sklearn]"
    ) from exc

from mixlab._validation import check_choice, check_float, check_int
from mixlab.api import fit as ml_fit
from mixlab.api import resolve_family
from mixlab.errors import ConvergenceWarning as MixlabConvergenceWarning
from mixlab.families import Family, covariance_types, get_family
from mixlab.methods import EM
from mixlab.params import MixtureParams
from mixlab.result import FitResult

#: scikit-learn's ``init_params`` names and mixlab's ``EM(init=...)`` names.
INIT_PARAMS = {
    "kmeans": "kmeans",
    "k-means++": "kmeans++",
    "random": "random",
    "random_from_data": "random_from_data",
}

#: The starting-value arguments and the family parameter each one sets.
_START_ARGUMENTS = (
    ("weights_init", "weights"),
    ("means_init", "means"),
    ("precisions_init", "covariances"),
)


def _seed(random_state: Any) -> int:
    """A mixlab key (an int seed) from scikit-learn's ``random_state``.

    An int is used as it is; ``None`` draws from NumPy's global random state
    (as scikit-learn does: valid, not reproducible); a ``RandomState`` or a
    ``Generator`` draws an int from it (advancing it, as scikit-learn does).
    """
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        seed = int(random_state)
        if not 0 <= seed < 2**63:
            raise ValueError(f"random_state must be a non-negative int below 2**63, got {seed}")
        return seed
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(np.iinfo(np.int32).max))
    if random_state is None or isinstance(random_state, np.random.RandomState):
        return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
    raise TypeError(
        "random_state must be None, an int, a numpy.random.RandomState or a "
        f"numpy.random.Generator; got {type(random_state).__name__}"
    )


def _is_matrix_layout(family: Family) -> bool:
    """True when the family's covariances are matrices (full, tied), False for variances."""
    return family.spec("covariances").dims[-1] == "feature_"


def _precision_cholesky(covariances: np.ndarray, matrix: bool) -> np.ndarray:
    """scikit-learn's ``precisions_cholesky_`` from ``covariances_`` (same layout).

    For matrices (full ``(K, D, D)``, tied ``(D, D)``): ``inv(L).T`` with ``L``
    the lower Cholesky factor of the covariance, an upper-triangular ``U`` with
    ``U @ U.T`` the precision (scikit-learn's ``_compute_precision_cholesky``);
    for variances (diag ``(K, D)``, spherical ``(K,)``): ``1 / sqrt``.
    """
    covariances = np.asarray(covariances)
    if not matrix:
        return 1.0 / np.sqrt(covariances)
    stack = covariances.reshape(-1, *covariances.shape[-2:])
    eye = np.eye(stack.shape[-1], dtype=stack.dtype)
    out = np.empty_like(stack)
    for k, cov in enumerate(stack):
        chol = scipy.linalg.cholesky(cov, lower=True)
        out[k] = scipy.linalg.solve_triangular(chol, eye, lower=True).T
    return out.reshape(covariances.shape)


def _precisions(prec_chol: np.ndarray, matrix: bool) -> np.ndarray:
    """scikit-learn's ``precisions_``: ``U @ U.T`` per matrix, else the squares."""
    if not matrix:
        return prec_chol**2
    return prec_chol @ np.swapaxes(prec_chol, -1, -2)


class GaussianMixture(DensityMixin, BaseEstimator):
    """Finite mixture fitted by mixlab's jitted EM, with scikit-learn's interface.

    A drop-in for :class:`sklearn.mixture.GaussianMixture`: the same
    arguments, defaults, methods and fitted attributes, backed by
    :func:`mixlab.fit` with :class:`mixlab.EM`; ``family`` fits mixlab's other
    component families with the same interface.

    Parameters
    ----------
    n_components : int, default 1
    covariance_type : {"full", "tied", "diag", "spherical"}, default "full"
        Covariance layout of families that have one (``"gaussian"``,
        ``"student_t"``).  Other families have none: leave it at its default
        (any other value raises).  With a family object, its own layout is
        used and ``covariance_type`` must equal it or be left at its default.
    tol : float, default 1e-3
        Stop when the mean per-sample log-likelihood changes by less than
        ``tol`` between iterations; ``0`` runs exactly ``max_iter``.
    reg_covar : float, default 1e-6
        Added to the covariance diagonals.
    max_iter : int, default 100
        EM iterations per start, at least 1 (scikit-learn also allows 0 to
        read off the start; use ``mixlab.fit(..., EM(record_params=True))``
        and ``params_trace[0]`` for that).
    n_init : int, default 1
        Starts, run batched in one compiled program; the best log-likelihood
        wins.  One start is run with ``warm_start`` on a fitted estimator and
        with explicit starting values (``weights_init``, ...).
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default "kmeans"
        How starts are drawn: mixlab's ``"kmeans"`` (k-means++ seeding and
        Lloyd iterations), ``"kmeans++"``, ``"random"`` and
        ``"random_from_data"`` (:mod:`mixlab.em.init`).  mixlab draws them
        with its own JAX keys, so starts (hence local optima) may differ from
        scikit-learn's with the same ``random_state``.
    weights_init : array of shape (n_components,), optional
    means_init : array of shape (n_components, n_features), optional
        Families with means only (gaussian, student_t).
    precisions_init : array, optional
        Families with a covariance layout only; scikit-learn's layout for the
        covariance type: ``full (K, D, D)``, ``tied (D, D)``, ``diag (K, D)``,
        ``spherical (K,)`` precisions (inverse covariances), inverted here to
        the covariances mixlab's explicit start takes.
        Pieces left out of a partial start (a family's other parameters
        included, e.g. Student-t degrees of freedom) come from the start
        ``init_params`` draws with ``random_state``, as in scikit-learn,
        where the missing pieces come from the ``init_params`` estimate.
    random_state : int, RandomState, Generator or None, default None
        Seeds the starts and :meth:`sample`: an int is the mixlab key itself
        (``random_state=0`` is ``mixlab.fit(..., key=0)``); ``None`` draws a
        seed from NumPy's global random state and a ``RandomState`` or
        ``Generator`` draws one from itself (each call then differs, as in
        scikit-learn).
    warm_start : bool, default False
        Start the next :meth:`fit` from this fit's parameters (one start).
        The first iteration's convergence test compares with minus infinity,
        not with the previous fit's bound as scikit-learn does, so a warm
        start runs at least two iterations.
    verbose : int, default 0
        ``> 0``: show mixlab's EM progress bar (on stderr).  Nothing is
        printed otherwise.
    verbose_interval : int, default 10
        Accepted for compatibility; the progress bar updates on its own.
    family : str or mixlab.families.Family, default "gaussian"
        ``"gaussian"``, ``"poisson"``, ``"bernoulli"``, ``"student_t"`` or a
        family object such as ``mixlab.families.StudentT(dofs=4.0)``.

    Attributes
    ----------
    weights_ : array of shape (n_components,)
    means_ : array of shape (n_components, n_features)
        Gaussian and Student-t.
    covariances_ : array
        Gaussian and Student-t, in scikit-learn's layout for the covariance
        type (for Student-t: the scale matrices, whose covariance is
        ``dofs / (dofs - 2)`` times them).
    precisions_, precisions_cholesky_ : array
        Gaussian and Student-t, as scikit-learn defines them:
        ``precisions_cholesky_`` is the upper-triangular ``inv(L).T`` of the
        lower Cholesky factor ``L`` of each covariance (``1 / sqrt`` for diag
        and spherical) and ``precisions_`` its ``U @ U.T`` (squares).
    rates_ : array of shape (n_components, n_features)
        Poisson.
    probs_ : array of shape (n_components, n_features)
        Bernoulli.
    dofs_ : array of shape (n_components,)
        Student-t degrees of freedom.  In general every parameter ``p`` of the
        family (``result_.params.family.param_names()``) is the attribute ``p_``.
    converged_ : bool
        The best start met ``tol``.
    n_iter_ : int
        EM iterations of the best start.
    lower_bound_ : float
        scikit-learn's definition: the mean per-sample log-likelihood computed
        in the last iteration's E-step, i.e. of the parameters *before* the
        last M-step (``result_.trace[n_iter_ - 1] / n_samples``).
        ``score(X)`` on the training data gives that of the returned
        parameters.
    lower_bounds_ : array of shape (n_iter_,)
        The same bound after each iteration.
    n_features_in_ : int
    feature_names_in_ : array of str, shape (n_features_in_,)
        Set when ``X`` is a DataFrame with string column names.
    result_ : mixlab.FitResult
        The mixlab fit, for the rest of mixlab's API (``summary()``,
        ``standard_errors(X)``, ``bootstrap(X=X)``, ``trace``, ``restarts``).
        It does not keep the training data (``result_.data`` is ``None``), so
        that a pickled estimator holds the model only: pass ``X`` to
        ``standard_errors``, ``to_arviz`` and the like.

    Notes
    -----
    Dtypes follow mixlab (and scikit-learn's own ``GaussianMixture``, which
    also accepts float32): float32 data are fitted in float32 and the fitted
    attributes are float32; everything else (float64, integers, booleans,
    numeric object arrays) is fitted in float64.

    Components are numbered as the start had them (as in scikit-learn; an
    explicit ``means_init`` keeps its order), not in mixlab's canonical order
    (``mixlab.fit(..., order="location")``); ``result_.reorder()`` gives that.

    Collapsing components are restarted (mixlab's ``EM(on_collapse="reinit")``,
    its default) where scikit-learn carries on; the fit then differs from
    scikit-learn's, and ``result_.diagnostics`` lists the restarts.

    A best start that does not converge raises
    :class:`sklearn.exceptions.ConvergenceWarning`, as scikit-learn does (so
    also with ``tol=0``).
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        weights_init: Any = None,
        means_init: Any = None,
        precisions_init: Any = None,
        random_state: Any = None,
        warm_start: bool = False,
        verbose: int = 0,
        verbose_interval: int = 10,
        family: str | Family = "gaussian",
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.family = family

    # ------------------------------------------------------------------ checks
    def _family(self) -> Family:
        """The mixlab family for ``family`` and ``covariance_type``, with clear errors."""
        check_choice(self.covariance_type, "covariance_type", covariance_types())
        family = self.family
        if isinstance(family, Family):
            layout = family.covariance_type
            if layout is None and self.covariance_type != "full":
                raise ValueError(
                    f"covariance_type={self.covariance_type!r} does not apply to {family!r}, "
                    "which has no covariance layout; leave covariance_type at its default"
                )
            if layout is not None and self.covariance_type not in ("full", layout):
                raise ValueError(
                    f"covariance_type={self.covariance_type!r} conflicts with {family!r}; "
                    "set the layout in one place (the family object's covariance, or "
                    "covariance_type with the family given by name)"
                )
            return family
        base = get_family(family)  # a clear error for an unknown name or a wrong type
        if base.covariance_type is None:
            if self.covariance_type != "full":
                raise ValueError(
                    f"covariance_type={self.covariance_type!r} applies to families with a "
                    f"covariance layout (gaussian, student_t), not to family={family!r}; "
                    "leave covariance_type at its default"
                )
            return base
        return resolve_family(family, self.covariance_type)

    def _check_settings(self) -> None:
        check_int(self.n_components, "n_components", minimum=1)
        check_float(self.tol, "tol", minimum=0.0)
        check_float(self.reg_covar, "reg_covar", minimum=0.0)
        check_int(self.max_iter, "max_iter", minimum=1)
        check_int(self.n_init, "n_init", minimum=1)
        check_choice(self.init_params, "init_params", tuple(INIT_PARAMS))
        if not isinstance(self.warm_start, bool | np.bool_):
            raise TypeError(f"warm_start must be True or False, got {self.warm_start!r}")
        check_int(self.verbose, "verbose", minimum=0)
        check_int(self.verbose_interval, "verbose_interval", minimum=1)

    def _given_start(self, family: Family, n_features: int) -> dict[str, np.ndarray]:
        """The explicit starting values, validated, as mixlab parameters (covariances)."""
        names = family.param_names()
        start: dict[str, np.ndarray] = {}
        for argument, name in _START_ARGUMENTS:
            value = getattr(self, argument)
            if value is None:
                continue
            if name != "weights" and name not in names:
                raise ValueError(
                    f"{argument} applies to families with {name} (gaussian, student_t), "
                    f"not to {family!r}; leave it None"
                )
            shape = (
                (self.n_components,)
                if name == "weights"
                else family.spec(name).shape(self.n_components, n_features)
            )
            try:
                arr = np.array(value, dtype=np.float64, copy=True)
            except (TypeError, ValueError):
                raise TypeError(f"{argument} must be numeric, got {type(value).__name__}") from None
            if arr.shape != shape:
                raise ValueError(
                    f"{argument} must have shape {shape} for n_components={self.n_components}, "
                    f"{n_features} feature(s) and {family!r}; got shape {arr.shape}"
                )
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{argument} contains NaN or infinite values")
            if name == "covariances":
                arr = self._covariances_from_precisions(arr, family, argument)
            start[name] = arr
        return start

    @staticmethod
    def _covariances_from_precisions(
        precisions: np.ndarray, family: Family, argument: str
    ) -> np.ndarray:
        if not _is_matrix_layout(family):
            if np.any(precisions <= 0):
                raise ValueError(f"{argument} must be positive (they are inverse variances)")
            return 1.0 / precisions
        stack = precisions.reshape(-1, *precisions.shape[-2:])
        for k, prec in enumerate(stack):
            where = f"{argument}[{k}]" if precisions.ndim == 3 else argument
            if not np.allclose(prec, prec.T, rtol=1e-7, atol=0.0):
                raise ValueError(f"{where} must be symmetric")
            if np.linalg.eigvalsh(prec)[0] <= 0:
                raise ValueError(f"{where} must be positive definite")
        covariances = np.linalg.inv(precisions)
        return 0.5 * (covariances + np.swapaxes(covariances, -1, -2))

    # --------------------------------------------------------------------- fit
    def _start(self, X: np.ndarray, family: Family, seed: int) -> Any:
        """``EM(init=...)``: the warm start, an explicit start or an init method's name."""
        init = INIT_PARAMS[self.init_params]
        if self.warm_start and hasattr(self, "result_"):
            previous = self.result_.params
            now = (family, self.n_components, X.shape[1])
            if (previous.family, previous.n_components, previous.n_features) != now:
                raise ValueError(
                    f"warm_start continues the previous fit ({previous.family!r}, "
                    f"{previous.n_components} component(s), {previous.n_features} feature(s)), "
                    f"but this fit has {family!r}, n_components={self.n_components} and "
                    f"{X.shape[1]} feature(s); set warm_start=False to start afresh"
                )
            return previous
        given = self._given_start(family, X.shape[1])
        if not given:
            return init
        if set(given) < {"weights", *family.param_names()}:
            # A partial start: the rest from the start the init method draws.
            probe = ml_fit(
                X,
                self.n_components,
                EM(init=init, tol=0.0, max_iter=1, reg_covar=self.reg_covar, record_params=True),
                family=family,
                key=seed,
                order=None,
            )
            drawn = probe.params_trace[0]
            given = {
                "weights": np.asarray(drawn.weights, np.float64),
                **{k: np.asarray(v, np.float64) for k, v in drawn.components.items()},
                **given,
            }
        return MixtureParams.from_dict(given, family=family)

    def _fit(self, X: Any) -> np.ndarray:
        """Fit and return the validated data."""
        self._check_settings()
        family = self._family()
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        if X.shape[0] < self.n_components:
            raise ValueError(
                f"Expected n_samples >= n_components but got n_components = "
                f"{self.n_components}, n_samples = {X.shape[0]}"
            )
        seed = _seed(self.random_state)
        init = self._start(X, family, seed)
        method = EM(
            tol=self.tol,
            criterion="change",  # scikit-learn's tol, exactly
            standardize=False,  # starts in the data's units, as scikit-learn's
            max_iter=self.max_iter,
            n_init=self.n_init if isinstance(init, str) else 1,
            init=init,
            reg_covar=self.reg_covar,
            progress=bool(self.verbose > 0),
        )
        with warnings.catch_warnings():
            # Reported below as scikit-learn's ConvergenceWarning, which its users filter.
            warnings.simplefilter("ignore", MixlabConvergenceWarning)
            result = ml_fit(
                X,
                self.n_components,
                method,
                family=family,
                key=seed,
                feature_names=self._feature_names(),
                order=None,  # scikit-learn's numbering: as the start had them
            )
        if not result.converged:
            warnings.warn(
                f"Best performing initialization did not converge within max_iter="
                f"{self.max_iter} iterations (tol={self.tol}). Try different init parameters, "
                "or increase max_iter, tol, or check for degenerate data.",
                SklearnConvergenceWarning,
                stacklevel=3,
            )
        self._set_fitted(dataclasses.replace(result, data=None), X.shape[0])
        return X

    def _feature_names(self) -> list[str] | None:
        names = getattr(self, "feature_names_in_", None)
        return None if names is None else [str(name) for name in names]

    def _set_fitted(self, result: FitResult, n_samples: int) -> None:
        # A refit with another family or layout must not leave the last fit's attributes.
        for name in [n for n in vars(self) if n.endswith("_") and not n.startswith("_")]:
            if name not in ("n_features_in_", "feature_names_in_"):  # set by this fit
                delattr(self, name)
        params = result.params
        family = params.family
        self.result_ = result
        self.weights_ = np.asarray(params.weights)
        for name, value in params.components.items():
            setattr(self, f"{name}_", np.asarray(value))
        if family.covariance_type is not None:
            matrix = _is_matrix_layout(family)
            self.precisions_cholesky_ = _precision_cholesky(self.covariances_, matrix)
            self.precisions_ = _precisions(self.precisions_cholesky_, matrix)
        self.converged_ = bool(result.converged)
        self.n_iter_ = int(result.n_iter)
        bounds = np.asarray(result.trace, np.float64) / n_samples
        self.lower_bounds_ = bounds[: max(self.n_iter_, 1)]
        self.lower_bound_ = float(self.lower_bounds_[-1])

    def fit(self, X: Any, y: Any = None) -> GaussianMixture:
        """Fit the mixture by EM.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            NumPy, pandas (column names are kept in ``feature_names_in_``) or
            anything ``sklearn.utils.check_array`` reads; never modified.
        y : ignored

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Bad settings or data (with what to change), fewer samples than
            components, or a fit with no usable start
            (:class:`mixlab.errors.FitError`).
        """
        self._fit(X)
        return self

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit, then the most probable component of each row of ``X``, shape ``(n_samples,)``.

        The same labels as ``fit(X).predict(X)``.
        """
        X = self._fit(X)
        return self.result_.predict(X)

    # ------------------------------------------------------------- prediction
    def _validated(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, reset=False, dtype=[np.float64, np.float32])

    def predict(self, X: Any) -> np.ndarray:
        """Most probable component of each row, int array of shape ``(n_samples,)``."""
        X = self._validated(X)
        return self.result_.predict(X)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Responsibilities ``p(z = k | x)``, shape ``(n_samples, n_components)``."""
        X = self._validated(X)
        return self.result_.predict_proba(X)

    def score_samples(self, X: Any) -> np.ndarray:
        """Log-density ``log p(x_i)`` of each row, shape ``(n_samples,)``."""
        X = self._validated(X)
        return self.result_.score_samples(X)

    def score(self, X: Any, y: Any = None) -> float:
        """Mean per-sample log-likelihood of ``X`` (higher is better)."""
        return float(np.mean(self.score_samples(X)))

    def bic(self, X: Any) -> float:
        """Bayesian information criterion on ``X`` (lower is better).

        ``-2 * log-likelihood + n_parameters * log(n_samples)``, parameters
        counted as scikit-learn does (``result_.n_parameters``).
        """
        X = self._validated(X)
        return float(
            -2.0 * np.sum(self.result_.score_samples(X))
            + self.result_.n_parameters * np.log(X.shape[0])
        )

    def aic(self, X: Any) -> float:
        """Akaike information criterion on ``X`` (lower is better)."""
        X = self._validated(X)
        return float(-2.0 * np.sum(self.result_.score_samples(X)) + 2.0 * self.result_.n_parameters)

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw from the fitted mixture, keyed by ``random_state`` as :meth:`fit` is.

        Parameters
        ----------
        n_samples : int, default 1

        Returns
        -------
        X : array of shape (n_samples, n_features)
        y : int array of shape (n_samples,)
            The component each row was drawn from (in draw order; scikit-learn
            groups the rows by component).
        """
        check_is_fitted(self)
        if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral):
            raise TypeError(f"n_samples must be an int, got {type(n_samples).__name__}")
        if n_samples < 1:
            raise ValueError(
                f"Invalid value for 'n_samples': {n_samples}. The sampling requires at least "
                "one sample."
            )
        return self.result_.sample(_seed(self.random_state), int(n_samples))


__all__ = ["INIT_PARAMS", "GaussianMixture"]
