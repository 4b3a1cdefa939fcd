"""Choosing the number of components (and the family and covariance layout) by a criterion.

``ml.select(X, range(1, 9))`` fits every candidate with :func:`mixlab.fit` and ranks
them by BIC, AIC, ICL or, for Bayesian fits, PSIS-LOO, all on the deviance scale
(lower is better), as :meth:`FitResult.bic` is.
"""

from __future__ import annotations

import numbers
import textwrap
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from mixlab._jaxutil import KeyLike, Progress, resolve_dtype
from mixlab._validation import (
    check_data,
    check_sample_weight,
    feature_names_of,
    feature_units_of,
)
from mixlab.api import fit, resolve_family
from mixlab.em.steps import log_likelihood
from mixlab.errors import ConvergenceWarning, FitError
from mixlab.families import Family, get_family
from mixlab.families import families as registered_families
from mixlab.methods import EM, NUTS, SVI, Method
from mixlab.result import FitResult

if TYPE_CHECKING:
    import pandas as pd

#: Criteria ``select`` ranks by; every one is lower-is-better.
CRITERIA = ("bic", "aic", "icl", "loo")

#: Restarts of the default method, ``EM(n_init=DEFAULT_N_INIT)``.
DEFAULT_N_INIT = 5

#: Key of a candidate: (family name, covariance layout or None, number of components).
CandidateKey = tuple[str, str | None, int]

_NAMES = {"bic": "BIC", "aic": "AIC", "icl": "ICL", "loo": "LOO"}


@dataclass(frozen=True, eq=False)
class Selection:
    """The result of :func:`select`.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per candidate, in the order fitted: ``family``, ``covariance``
        (``None`` for families without a covariance layout), ``n_components``,
        ``log_likelihood`` (of the point estimate on the data, weighted),
        ``n_parameters``, ``bic``, ``aic``, ``icl``, with a Bayesian method
        ``loo`` and ``loo_se`` (PSIS-LOO on the deviance scale, ``-2 *
        elpd_loo``, and its standard error), ``converged`` and ``error`` (empty,
        or why the candidate was skipped or failed; its criteria are then NaN)
        and ``note`` (empty, or how an EM candidate whose own starts ended below
        the fit of one component fewer was refitted: from split starts of that
        fit, so that the log-likelihood does not fall as K grows).
    results : dict of (str, str or None, int) to FitResult
        The fitted candidates by ``(family, covariance, n_components)``.
    criterion : str
        The criterion of the ranking: ``"bic"``, ``"aic"``, ``"icl"`` or ``"loo"``.
    best_key : (str, str or None, int)
        The key of the candidate with the lowest criterion (the first in table
        order on a tie).
    """

    table: pd.DataFrame
    results: dict[CandidateKey, FitResult]
    criterion: str
    best_key: CandidateKey

    @property
    def best(self) -> FitResult:
        """The fit with the lowest criterion."""
        return self.results[self.best_key]

    def to_pandas(self) -> pd.DataFrame:
        """A copy of :attr:`table`."""
        return self.table.copy()

    def summary(self) -> str:
        """The table as text (at most 100 characters wide), the best row marked ``*``."""
        table = self.table
        has_loo = "loo" in table.columns
        names = ["", "family", "covariance", "K", "log-lik", "n_par", "BIC", "AIC", "ICL"]
        names += ["LOO", "LOO se"] if has_loo else []
        best_row = _row_of(table, self.best_key)
        notes = []
        for row in table.itertuples(index=False):
            if row.error:
                label = _label(row.family, row.covariance, row.n_components)
                notes.append(f"{label}: {row.error}")
        # Fewer digits, then a terse last column, where wide values would pass 100 columns.
        for digits, terse in ((None, False), (5, False), (3, False), (3, True)):
            lines = [[*names, "conv" if terse else "converged"]]
            for i, row in enumerate(table.itertuples(index=False)):
                cov = "-" if row.covariance is None else str(row.covariance)
                values = [row.log_likelihood, row.bic, row.aic, row.icl]
                values += [row.loo, row.loo_se] if has_loo else []
                cells = ["*" if i == best_row else "", row.family, cov, str(row.n_components)]
                cells += [_number(values[0], digits), str(int(row.n_parameters))]
                cells += [_number(v, digits) for v in values[1:]]
                if row.error:
                    status = "skipped" if row.error.startswith("skipped") else "failed"
                else:
                    status = "yes" if row.converged else "no"
                cells.append(status[:4] if terse else status)
                lines.append(cells)
            rows = _columns(lines, left={1, 2, len(names)})
            if max(len(r) for r in rows) <= 100:
                break
        best = _label(*self.best_key)
        head = f"Model selection by {_NAMES[self.criterion]} (lower is better); * best: {best}"
        text = [textwrap.fill(head, 100), *rows]
        if has_loo:
            text.append("LOO: -2 * elpd_loo (PSIS-LOO, deviance scale), lower is better.")
        noted = [
            f"{_label(r.family, r.covariance, r.n_components)}: {r.note}"
            for r in table.itertuples(index=False)
            if getattr(r, "note", "")
        ]
        if noted:
            text.append("Notes:")
            text += [
                textwrap.fill(n, 100, initial_indent="  ", subsequent_indent="    ") for n in noted
            ]
        if notes:
            text.append("Skipped or failed:")
            text += [
                textwrap.fill(n, 100, initial_indent="  ", subsequent_indent="    ") for n in notes
            ]
        return "\n".join(text)

    __str__ = summary

    def __repr__(self) -> str:
        return (
            f"Selection(criterion={self.criterion!r}, best_key={self.best_key!r}, "
            f"candidates={len(self.table)})"
        )


def _label(family: str, covariance: str | None, n_components: int) -> str:
    return f"{family}{'' if covariance is None else ', ' + str(covariance)}, K={n_components}"


def _number(value: float, digits: int | None = None) -> str:
    """Two decimals below 1e5 (six significant digits above), or ``digits`` significant."""
    value = float(value)
    if not np.isfinite(value):
        return "-" if np.isnan(value) else str(value)
    if digits is not None:
        return f"{value:.{digits}g}"
    return f"{value:.2f}" if abs(value) < 1e5 else f"{value:.6g}"


def _columns(lines: list[list[str]], left: set[int]) -> list[str]:
    """Cells aligned in columns: left-aligned where ``left`` says, right-aligned elsewhere."""
    widths = [max(len(cells[c]) for cells in lines) for c in range(len(lines[0]))]
    return [
        " ".join(
            c.ljust(w) if j in left else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()
        for cells in lines
    ]


def _row_of(table: pd.DataFrame, key: CandidateKey) -> int:
    for i, row in enumerate(table[["family", "covariance", "n_components"]].itertuples(False)):
        if (row.family, row.covariance, row.n_components) == key:
            return i
    raise KeyError(key)


# ----------------------------------------------------------------------------- arguments
def _check_n_components(n_components: Any) -> tuple[int, ...]:
    example = "e.g. range(1, 9) or [2, 3, 4]"
    if isinstance(n_components, numbers.Integral) and not isinstance(n_components, bool):
        n_components = [n_components]
    if isinstance(n_components, str | bytes) or not isinstance(n_components, Iterable):
        raise TypeError(
            f"n_components must be an int or a sequence of ints ({example}), "
            f"got {type(n_components).__name__}"
        )
    values = list(n_components)
    if not values:
        raise ValueError(f"n_components is empty; pass the numbers of components to try, {example}")
    for k in values:
        if isinstance(k, bool | np.bool_) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(
                f"n_components must hold positive ints (numbers of components), got {k!r}; "
                f"{example}"
            )
    ks = tuple(int(k) for k in values)
    repeated = sorted({k for k in ks if ks.count(k) > 1})
    if repeated:
        raise ValueError(
            f"n_components lists {', '.join(map(str, repeated))} more than once; "
            "give each number of components once"
        )
    return ks


def _as_list(value: Any, name: str, kinds: tuple[type, ...]) -> list[Any]:
    if isinstance(value, kinds):
        return [value]
    if not isinstance(value, list | tuple):
        raise TypeError(f"{name} must be one value or a list of them, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} is an empty list; pass at least one, or leave it out")
    return list(value)


def _family_label(family: Family) -> str:
    extra = {k: v for k, v in family.options().items() if k != "covariance"}
    if not extra:
        return family.name
    return f"{family.name}({', '.join(f'{k}={v!r}' for k, v in extra.items())})"


def _models(family: Any, covariance: Any) -> list[tuple[str, str | None, Family]]:
    """(family label, covariance, Family) of every model, in the order given."""
    specs = _as_list(family, "family", (str, Family))
    layouts = None if covariance is None else _as_list(covariance, "covariance", (str,))
    for c in layouts or ():
        if not isinstance(c, str):
            raise TypeError(
                f"covariance must be a layout name such as 'full' or a list of them, got {c!r}"
            )
    models: list[tuple[str, str | None, Family]] = []
    for spec in specs:
        if not isinstance(spec, str | Family):
            raise TypeError(
                "family must be a name such as 'gaussian', a family object, or a list of them; "
                f"got {type(spec).__name__}"
            )
        base = resolve_family(spec, None)
        if base.covariance_type is None or layouts is None:
            models.append((_family_label(base), base.covariance_type, base))
            continue
        for layout in layouts:
            if isinstance(spec, str):
                fam = resolve_family(spec, layout)
            else:  # the same family, its other options kept, with another layout
                options = {**base.options(), "covariance": layout}
                registered = base.name in registered_families()
                fam = get_family(base.name, **options) if registered else type(base)(**options)
            models.append((_family_label(fam), fam.covariance_type, fam))
    if layouts is not None and all(m[1] is None for m in models):
        raise ValueError(
            f"covariance={covariance!r} applies to families with a covariance layout "
            f"(gaussian, student_t), not to {', '.join(m[0] for m in models)}; leave it out"
        )
    seen: set[tuple[str, str | None]] = set()
    for label, layout, _ in models:
        if (label, layout) in seen:
            raise ValueError(
                f"the model {label!r} with covariance {layout!r} is listed twice; "
                "give each family and covariance once"
            )
        seen.add((label, layout))
    return models


# ----------------------------------------------------------------------------- criteria
def _entropy(result: FitResult, data: np.ndarray, weights: np.ndarray | None) -> float:
    """Classification entropy ``-sum_i w_i sum_k r_ik log r_ik`` of the responsibilities."""
    resp = np.asarray(result.predict_proba(data), dtype=np.float64)
    log_resp = np.log(np.where(resp > 0.0, resp, 1.0))
    per_row = -np.sum(resp * log_resp, axis=1)
    return float(np.sum(per_row if weights is None else weights * per_row))


#: A candidate whose log-likelihood is this far (relative) below that of one fewer
#: component of the same model is below a smaller nested model: started again from splits.
NESTED_RTOL = 1e-9


def split_starts(
    result: FitResult, data: np.ndarray, weights: np.ndarray | None, reg_covar: float
) -> list[Any]:
    """Starts of ``K + 1`` components from a ``K``-component fit, one per component:
    that component's rows (by responsibility) cut in two along their principal axis,
    the halves and every other component fitted by one M-step from those
    responsibilities.  Any family: the cut is made in the data, the M-step is the
    family's."""
    from mixlab.em.steps import m_step

    resp = result.predict_proba(data)
    w = np.ones(len(data)) if weights is None else np.asarray(weights, np.float64)
    x = np.asarray(data, np.float64)
    starts = []
    for j in range(resp.shape[1]):
        rj = resp[:, j] * w
        if rj.sum() < 2.0:
            continue
        centred = x - rj @ x / rj.sum()
        cov = (centred * rj[:, None]).T @ centred / rj.sum()
        axis = np.linalg.eigh(cov)[1][:, -1]
        side = (centred @ axis > 0)[:, None]
        new = np.concatenate(
            [resp[:, :j], resp[:, j : j + 1] * side, resp[:, j : j + 1] * ~side, resp[:, j + 1 :]],
            axis=1,
        )
        starts.append(
            m_step(x, new, family=result.params.family, reg_covar=reg_covar, sample_weight=weights)
        )
    return starts


def _refit_from_splits(
    smaller: FitResult, data: np.ndarray, weights: np.ndarray | None, method: EM, names: Any
) -> FitResult | None:
    """The best EM fit of one more component than ``smaller`` from its split starts."""
    best = None
    for start in split_starts(smaller, data, weights, method.reg_covar):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                r = fit(
                    data,
                    start.n_components,
                    replace(method, init=start, n_init=1),
                    family=smaller.params.family,
                    sample_weight=weights,
                    feature_names=names,
                    order="location",
                )
        except FitError:
            continue
        if best is None or r.log_likelihood > best.log_likelihood:
            best = r
    return best


def _nested(
    result: FitResult,
    smaller: FitResult | None,
    data: np.ndarray,
    weights: np.ndarray | None,
    method: Method,
    names: Any,
    row: dict[str, Any],
) -> FitResult:
    """``result``, or where it ends below the fit of one component fewer (a nested
    model, so a poorer local maximum), the best EM fit from that fit's split starts;
    ``row["note"]`` says which, and whether it is still below."""
    if not isinstance(method, EM) or smaller is None:
        return result
    if smaller.n_components != result.n_components - 1:
        return result
    floor = smaller.log_likelihood - NESTED_RTOL * abs(smaller.log_likelihood)
    if result.log_likelihood >= floor:
        return result
    better = _refit_from_splits(smaller, data, weights, method, names)
    k = smaller.n_components
    if better is not None and better.log_likelihood > result.log_likelihood:
        result = replace(better, feature_units=result.feature_units)
        row["note"] = f"from a split of K={k}: its own starts ended below K={k}"
    if result.log_likelihood < floor:
        row["note"] = (
            f"log-likelihood below K={k}'s (a poorer local maximum, also from splits of "
            f"K={k}); more restarts (n_init) may find a better one"
        )
    return result


def _integer_weights(weights: np.ndarray | None) -> bool:
    return weights is None or bool(np.all(weights == np.round(weights)))


# ----------------------------------------------------------------------------- select
def select(
    X: Any,
    n_components: Any = range(1, 9),
    *,
    covariance: str | list[str] | None = None,
    family: str | Family | list[str | Family] = "gaussian",
    criterion: str = "bic",
    method: Method | None = None,
    key: KeyLike = 0,
    sample_weight: Any = None,
    progress: bool | None = None,
) -> Selection:
    """Fit mixtures over numbers of components (and families, covariance layouts); rank them.

    Every candidate ``(family, covariance, K)`` is ``ml.fit(X, K, method,
    family=..., covariance=..., key=key, sample_weight=sample_weight)``, so
    any row can be refitted alone with the same call.  With EM each candidate
    is one compiled program whose restarts run batched (``vmap``); candidates
    of different K have different shapes, so each K compiles its own program
    (about a second or two on a CPU); they run one after another.

    Parameters
    ----------
    X : array of shape (n_samples, n_features) or (n_samples,)
        Data; 1-D input is one feature.  Never modified.  Checked and copied
        to the host once for all candidates.
    n_components : int or sequence of int, default range(1, 9)
        Numbers of components to try, each once.  Candidates with more
        components than samples (with a positive weight) are skipped, with
        the reason in the table.
    covariance : str or list of str, optional
        Covariance layouts (``"full"``, ``"diag"``, ``"spherical"``,
        ``"tied"``) to try for every family that has one (Gaussian,
        Student-t); families without a layout (Poisson, Bernoulli) are fitted
        once and get ``covariance=None`` in the table.  Default: each
        family's own layout (``"full"`` for Gaussian).
    family : str, Family or list of them, default "gaussian"
        Component families to try.
    criterion : {"bic", "aic", "icl", "loo"}, default "bic"
        What ranks the candidates; all are lower-is-better.  ``"bic"`` and
        ``"aic"`` are :meth:`FitResult.bic` and :meth:`FitResult.aic` of the
        point estimate on ``X``; ``"icl"`` is BIC plus twice the
        classification entropy ``-sum_i w_i sum_k r_ik log r_ik`` of the
        responsibilities ``r = result.predict_proba(X)`` (``w``: the sample
        weights, else 1), so it penalises overlapping components; ``"loo"``
        is PSIS-LOO on the deviance scale, ``-2 * elpd_loo`` (ArviZ's
        ``az.loo(result.to_arviz(), scale="deviance")``), for SVI and NUTS
        fits only.
    method : EM, SVI or NUTS, default EM(n_init=5)
        How every candidate is fitted.  The default runs five k-means++
        restarts per candidate (``DEFAULT_N_INIT``): one restart is too easily
        caught in a poor local maximum when K is larger than the data
        support, which would bias the comparison towards small K.  With SVI
        or NUTS the table also holds ``loo`` and ``loo_se`` (from the draws;
        for an SVI ``guide="delta"`` fit the draws have no spread and LOO
        means little).
    key : int or jax.random key, default 0
        The key of every candidate's fit.
    sample_weight : array of shape (n_samples,), optional
        Frequency weights: log-likelihoods and entropies are weighted and BIC
        counts ``sum(sample_weight)`` observations, so integer weights give the
        criteria of the data with each row repeated.  LOO uses the repeated
        rows; with non-integer weights it is left out (NaN).
    progress : bool or None, default None
        A progress bar over the candidates; ``None``: only when stderr is a
        terminal.

    Returns
    -------
    Selection
        ``table``, ``results``, ``criterion``, ``best`` and ``best_key``.

    Raises
    ------
    ValueError
        Bad data or weights, an empty or invalid ``n_components`` (or one
        where every value exceeds the number of samples), an unknown
        criterion, ``criterion="loo"`` with EM (PSIS-LOO needs posterior
        draws) or with non-integer weights, a covariance for families that
        have none, data that a family cannot model.
    TypeError
        A wrong argument type.
    mixlab.errors.FitError
        No candidate gave a finite criterion; the message lists why.  A
        single candidate that fails does not raise: its row holds the error.
    """
    if criterion not in CRITERIA:
        raise ValueError(
            f"criterion must be one of {', '.join(map(repr, CRITERIA))}; got {criterion!r}"
        )
    if method is None:
        method = EM(n_init=DEFAULT_N_INIT)
    if not isinstance(method, Method):
        raise TypeError(
            f"method must be ml.EM(...), ml.SVI(...) or ml.NUTS(...), got {type(method).__name__}"
        )
    bayesian = isinstance(method, SVI | NUTS)
    if criterion == "loo" and not bayesian:
        raise ValueError(
            "criterion='loo' (PSIS-LOO) needs posterior draws, and EM gives a point estimate; "
            "use method=ml.NUTS(...) or ml.SVI(...), or criterion='bic', 'aic' or 'icl'"
        )
    if progress is not None and not isinstance(progress, bool | np.bool_):
        raise TypeError("progress must be True, False or None (shown on a terminal)")
    ks = _check_n_components(n_components)
    models = _models(family, covariance)
    data = check_data(X, resolve_dtype(None, X))
    names = feature_names_of(X)  # the frame's names and units go to every candidate
    units = feature_units_of(X, names)
    weights = None
    if sample_weight is not None:
        weights = check_sample_weight(sample_weight, data.shape[0], data.dtype)
    if bayesian and not _integer_weights(weights) and criterion == "loo":
        raise ValueError(
            "criterion='loo' needs integer sample weights (PSIS-LOO is computed on the rows "
            "the weights stand for); use criterion='bic', 'aic' or 'icl'"
        )
    n_rows = data.shape[0] if weights is None else int(np.count_nonzero(weights))
    if min(ks) > n_rows:
        raise ValueError(
            f"every n_components ({', '.join(map(str, ks))}) exceeds the {n_rows} sample(s) "
            "with data; use fewer components or more data"
        )
    for _, _, fam in models:
        fam.check_data(data)
    if isinstance(method, EM):
        for _, _, fam in models:
            method.check_for(fam)
    n_features = data.shape[1]
    with_loo = bayesian and _integer_weights(weights)

    rows: list[dict[str, Any]] = []
    results: dict[CandidateKey, FitResult] = {}
    high_pareto: list[str] = []
    bar = None
    if Progress.wanted(progress):
        from tqdm.auto import tqdm

        bar = tqdm(total=len(models) * len(ks), desc="select")
    try:
        for label, layout, fam in models:
            smaller: FitResult | None = None  # the fit of the next smaller K of this model
            for k in ks:
                candidate: CandidateKey = (label, layout, k)
                if bar is not None:
                    bar.set_postfix_str(_label(*candidate), refresh=False)
                row: dict[str, Any] = {
                    "family": label,
                    "covariance": layout,
                    "n_components": k,
                    "log_likelihood": np.nan,
                    "n_parameters": int(fam.n_parameters(k, n_features)),
                    "bic": np.nan,
                    "aic": np.nan,
                    "icl": np.nan,
                }
                if bayesian:
                    row.update(loo=np.nan, loo_se=np.nan)
                row.update(converged=False, error="", note="")
                rows.append(row)
                if k > n_rows:
                    row["error"] = f"skipped: {k} components but only {n_rows} sample(s)" + (
                        "" if weights is None else " with a positive weight"
                    )
                else:
                    try:
                        result = fit(
                            data,
                            k,
                            method,
                            family=fam,
                            sample_weight=weights,
                            key=key,
                            feature_names=names,
                        )
                        result = replace(result, feature_units=units)
                    except FitError as exc:
                        row["error"] = f"FitError: {exc}"
                    else:
                        result = _nested(result, smaller, data, weights, method, names, row)
                        results[candidate] = result
                        smaller = result
                        ll = log_likelihood(data, result.params, sample_weight=weights)
                        bic = result.bic(data, sample_weight=weights)
                        row.update(
                            log_likelihood=float(ll),
                            n_parameters=int(result.n_parameters),
                            bic=bic,
                            aic=result.aic(data, sample_weight=weights),
                            icl=bic + 2.0 * _entropy(result, data, weights),
                            converged=bool(result.converged),
                        )
                        if with_loo:
                            from mixlab.arviz_io import psis_loo

                            loo = psis_loo(result)
                            row.update(loo=loo.deviance, loo_se=loo.se)
                            if loo.n_high_pareto_k:
                                high_pareto.append(
                                    f"{_label(*candidate)} ({loo.n_high_pareto_k} of "
                                    f"{len(loo.pareto_k)})"
                                )
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if high_pareto:
        warnings.warn(
            "PSIS-LOO: observations with a Pareto k above ArviZ's threshold (the LOO estimate "
            f"is unreliable there) in {'; '.join(high_pareto)}",
            UserWarning,
            stacklevel=2,
        )

    import pandas as pd

    table = pd.DataFrame(rows)
    # None (no covariance layout) stays None: pandas would read it as a missing string.
    table["covariance"] = pd.Series([r["covariance"] for r in rows], dtype=object)
    values = table[criterion].to_numpy(dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        reasons = "; ".join(
            f"{_label(r['family'], r['covariance'], r['n_components'])}: {r['error'] or 'NaN'}"
            for r in rows
        )
        raise FitError(f"no candidate gave a finite {criterion}: {reasons}")
    best = int(np.flatnonzero(values == np.min(values[finite]))[0])
    best_row = rows[best]
    best_key: CandidateKey = (best_row["family"], best_row["covariance"], best_row["n_components"])
    return Selection(table=table, results=results, criterion=criterion, best_key=best_key)


__all__ = ["CRITERIA", "DEFAULT_N_INIT", "Selection", "select"]
