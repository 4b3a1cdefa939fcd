"""EM against the posterior: label alignment, one table, an agreement verdict."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from mixlab._validation import check_int
from mixlab.align import apply_permutations, permutations_to_reference
from mixlab.result import FitResult

if TYPE_CHECKING:
    import pandas as pd


#: Free parameters above which compare() leaves out EM's standard errors (the
#: Hessian has this many squared entries); call result.standard_errors() directly.
SE_MAX_PARAMETERS = 500


#: Width of ``str(comparison)``: a terminal of 100 columns.
TEXT_WIDTH = 100
#: Longest row label of the text view with feature names (else feature numbers).
TEXT_LABEL_WIDTH = 30


class _Column(NamedTuple):
    header: str
    cells: list[str]
    drop: int | None = None  # None: always shown; else dropped first when smaller


def _numbers(values: Any, fmt: str = "{:.4g}") -> list[str]:
    return ["" if not np.isfinite(v) else fmt.format(v) for v in np.asarray(values, float)]


def _flags(values: Any) -> list[str]:
    return ["yes" if bool(v) else "no" for v in values]


def _ratios(sd: Any, se: Any) -> list[str]:
    sd, se = np.asarray(sd, float), np.asarray(se, float)
    return [f"{a / b:.2f}" if b > 0 and np.isfinite(a / b) else "" for a, b in zip(sd, se)]


def _intervals(lo: Any, hi: Any) -> list[str]:
    return [
        "" if not (np.isfinite(a) and np.isfinite(b)) else f"{a:.4g}, {b:.4g}"
        for a, b in zip(np.asarray(lo, float), np.asarray(hi, float))
    ]


def _render(
    head: str, labels: list[str], columns: list[_Column], width: int, grouped: bool = False
) -> list[str]:
    """A fixed-width text table at most ``width`` wide.

    Columns with no value are left out; then optional columns (lowest ``drop``
    first) until the table fits; then labels are shortened (middle elided).
    ``grouped``: labels ``"group[index]"`` are shown as a line ``group`` followed by
    indented ``[index]`` rows.
    """

    def widths(cols: list[_Column]) -> list[int]:
        return [max(len(c.header), *(len(v) for v in c.cells)) for c in cols]

    rows: list[tuple[str, int | None]] = []
    current = None
    for i, label in enumerate(labels):
        group, bracket, rest = label.partition("[")
        if grouped and bracket:
            if group != current:
                rows.append((group, None))
                current = group
            rows.append(("  [" + rest, i))
        else:
            rows.append((label, i))
            current = None
    cols = [c for c in columns if any(c.cells)]
    label_width = max(len(head), *(len(text) for text, _ in rows))
    while cols and label_width + sum(w + 2 for w in widths(cols)) > width:
        optional = [c for c in cols if c.drop is not None]
        if not optional:
            break
        cols.remove(min(optional, key=lambda c: c.drop))
    room = width - sum(w + 2 for w in widths(cols))
    label_width = min(label_width, max(room, 12))

    def fit(text: str) -> str:
        if len(text) <= label_width:
            return text
        keep = label_width - 2
        return text[: keep - keep // 2] + ".." + text[len(text) - keep // 2 :]

    sizes = widths(cols)
    lines = [
        head.ljust(label_width) + "".join("  " + c.header.rjust(w) for c, w in zip(cols, sizes))
    ]
    for text, i in rows:
        cells = (
            "" if i is None else "".join("  " + c.cells[i].rjust(w) for c, w in zip(cols, sizes))
        )
        lines.append(fit(text).ljust(label_width) + cells)
    return [line.rstrip() for line in lines]


def _em_at_maximum(em: FitResult) -> tuple[FitResult, list[str]]:
    """The EM fit to compare: continued to the maximum where it stopped short of it
    (:func:`mixlab.uncertainty.maximum_for_uncertainty`), with a note saying so; else
    as it is.  A comparison with an EM estimate short of the maximum would measure how
    far EM stopped, not how EM differs from the posterior."""
    import warnings

    from mixlab.errors import ConvergenceWarning
    from mixlab.uncertainty import maximum_for_uncertainty

    if em.method != "em" or em.data is None or em.settings.get("assignment") == "hard":
        return em, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        top = maximum_for_uncertainty(em, em.data, em.sample_weight, "comparison made")
    for w in caught[:1]:  # said in the result's summary and as a warning
        warnings.warn(str(w.message), ConvergenceWarning, stacklevel=3)
    return top, [f"EM: {w.message}" for w in caught[:1]]


def _em_standard_errors(em: FitResult, rows: list) -> tuple[list[float] | None, list[str]]:
    """EM's standard errors per table row (``None`` where they cannot be had) and notes."""
    import warnings

    from mixlab.errors import ConvergenceWarning, FitError

    if em.method != "em" or em.data is None or em.settings.get("assignment") == "hard":
        return None, []
    if em.n_parameters > SE_MAX_PARAMETERS:
        return None, [f"EM standard errors left out ({em.n_parameters} parameters)."]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            se = em.standard_errors()
    except FitError as exc:
        return None, [f"EM standard errors unavailable: {exc}"]
    notes = [f"EM standard errors: {w.message}" for w in caught[:1]]
    return [float(_value(se, g)[i]) for _, g, i in rows], notes


def element_label(
    name: str,
    index: tuple[int, ...],
    dims: tuple[str, ...],
    feature_names: tuple[str, ...] | None = None,
) -> str:
    """``"means[1, 0]"``, or with feature names ``"means[1, waiting]"``: an element of a
    parameter whose axes are ``dims`` (feature axes are named ``"feature..."``)."""
    parts = [
        feature_names[i] if feature_names is not None and dim.startswith("feature") else str(i)
        for i, dim in zip(index, dims)
    ]
    return f"{name}[{', '.join(parts)}]"


def parameter_names(result: FitResult) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """Row labels and array indices of every free parameter element, by parameter.

    ``weights`` first, then the family's parameters in order; symmetric
    matrices list their upper triangle only.  Labels name the features where
    the fit has :attr:`~FitResult.feature_names` (``"means[0, waiting]"``).
    """
    p = result.params
    K, D = p.n_components, p.n_features
    out: dict[str, list[tuple[str, tuple[int, ...]]]] = {
        "weights": [(f"weights[{k}]", (k,)) for k in range(K)],
    }
    for spec in p.family.param_specs():
        rows = []
        for idx in np.ndindex(*spec.shape(K, D)):
            if spec.symmetric and idx[-2] > idx[-1]:
                continue  # lower triangle repeats the upper one
            rows.append((element_label(spec.name, idx, spec.dims, result.feature_names), idx))
        out[spec.name] = rows
    return out


def _value(params: Any, group: str) -> np.ndarray:
    return np.asarray(params.weights if group == "weights" else params.components[group])


def _aligned_draws(em: FitResult, other: FitResult) -> dict[str, np.ndarray]:
    """``other``'s draws relabelled to ``em``'s components (one permutation for all draws:
    they are already aligned among themselves)."""
    point = {k: np.asarray(v)[None] for k, v in other.params.components.items()}
    data = em.data if em.data is not None else other.data
    scale = None if data is None else np.std(data, axis=0)
    perm = permutations_to_reference(point, em.params, scale)[0]
    lead = other.posterior["weights"].shape[:2]
    flat = {
        k: np.asarray(v).reshape((-1, *np.asarray(v).shape[2:])) for k, v in other.posterior.items()
    }
    perms = np.broadcast_to(perm, (flat["weights"].shape[0], len(perm)))
    aligned = apply_permutations(flat, perms, em.params.family)
    return {k: v.reshape((*lead, *v.shape[1:])) for k, v in aligned.items()}


def _method_tags(others: tuple[FitResult, ...]) -> list[str]:
    """Column prefixes: "nuts", "svi_normal", ... made unique by a suffix where needed."""
    base = [
        f"{o.method}_{o.diagnostics['guide']}" if "guide" in o.diagnostics else o.method
        for o in others
    ]
    return [b if base.count(b) == 1 else f"{b}{base[:i].count(b) + 1}" for i, b in enumerate(base)]


@dataclass(frozen=True)
class Comparison:
    """The result of :func:`compare`.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per parameter element: the EM value and EM's standard error
        (``em_se``, from the observed information, when the EM result holds its
        data), then per method its posterior mean, sd, HDI bounds, whether EM
        lies inside the HDI, whether EM's Wald interval at the same probability
        overlaps the HDI (``wald_overlap``), r-hat and effective sample size.
    methods : pandas.DataFrame
        One row per method: log-likelihood at its point estimate, ELBO (and
        its standard error) where it has one, divergences, worst r-hat and
        smallest ESS, run and compile time.
    agree : dict of str to bool
        Per method: EM lies inside its HDI for every weight and every element
        of the family's location parameter (means, rates, probabilities; for
        a MAP: within 1 % of it for every parameter).
    summary : str
        A sentence per method saying whether EM and the posterior agree.
    hdi_prob : float
    feature_names : tuple of str, optional
        The EM fit's feature names (they appear in the table's row labels).
    """

    table: pd.DataFrame
    methods: pd.DataFrame
    agree: dict[str, bool]
    summary: str
    hdi_prob: float
    feature_names: tuple[str, ...] | None = None

    def to_pandas(self) -> pd.DataFrame:
        """The wide table: one row per parameter element, every column of every method
        (a copy of :attr:`table`)."""
        return self.table.copy()

    def to_text(self, width: int = TEXT_WIDTH) -> str:
        """The comparison as text at most ``width`` characters wide: one block per
        method (EM's estimate and standard error beside the method's posterior mean,
        sd, HDI and diagnostics), the per-method table and the verdicts.  Columns that
        do not fit are left out, least important first (ESS, r-hat, the sd / SE ratio,
        the Wald check, EM's SE); :meth:`to_pandas` has them all."""
        width = check_int(width, "width", minimum=60)
        tags = [t for t in self.methods.index if t != "em"]
        pct = round(100 * self.hdi_prob)
        out = []
        table = self.table
        labels, legend = self._text_labels(width)
        out += legend
        has_se = "em_se" in table
        if tags:
            out += textwrap.wrap(
                f"EM's estimate and standard error beside each method's posterior mean, sd and "
                f"{pct}% HDI; in: EM inside the HDI; Wald: EM's Wald interval meets the HDI; "
                "sd/se: posterior sd over EM's standard error.",
                width,
            )
            out.append("")
        for tag in tags:
            cols: list[_Column] = [
                _Column("em", _numbers(table["em"])),
                _Column("em_se", _numbers(table["em_se"]), drop=4) if has_se else None,
                _Column("mean", _numbers(table[f"{tag}_mean"])),
                _Column("sd", _numbers(table[f"{tag}_sd"])),
                _Column(
                    f"{pct}% HDI",
                    _intervals(table[f"{tag}_hdi_low"], table[f"{tag}_hdi_high"]),
                ),
                _Column("in", _flags(table[f"{tag}_em_in_hdi"])),
                _Column("sd/se", _ratios(table[f"{tag}_sd"], table["em_se"]), drop=2)
                if has_se
                else None,
                _Column("Wald", _flags(table[f"{tag}_wald_overlap"]), drop=3)
                if f"{tag}_wald_overlap" in table
                else None,
                _Column("r_hat", _numbers(table[f"{tag}_r_hat"], "{:.3f}"), drop=1),
                _Column("ess", _numbers(table[f"{tag}_ess"], "{:.0f}"), drop=0),
            ]
            out.append(f"{tag}:")
            out += _render(
                "parameter", labels, [c for c in cols if c is not None], width, grouped=True
            )
            out.append("")
        m = self.methods
        method_cols = [
            _Column("log-lik", _numbers(m["log_likelihood"], "{:.6g}")),
            _Column("ELBO", _numbers(m["elbo"], "{:.6g}"), drop=5),
            _Column("ELBO se", _numbers(m["elbo_se"]), drop=1),
            _Column("diverg.", _numbers(m["divergences"], "{:.0f}"), drop=4),
            _Column("max r_hat", _numbers(m["max_r_hat"], "{:.3f}"), drop=3),
            _Column("min ess", _numbers(m["min_ess"], "{:.0f}"), drop=2),
            _Column("seconds", _numbers(m["seconds"], "{:.3g}"), drop=6),
            _Column("compile s", _numbers(m["compile_seconds"], "{:.3g}"), drop=0),
        ]
        out += _render("method", [str(t) for t in m.index], method_cols, width)
        out.append("")
        for line in self.summary.splitlines():
            out += textwrap.wrap(line, width, subsequent_indent="  ") or [""]
        return "\n".join(out)

    def _text_labels(self, width: int) -> tuple[list[str], list[str]]:
        """Row labels for the text view: with feature names, unless names make a row
        label longer than ``TEXT_LABEL_WIDTH``; then feature numbers and a legend."""
        labels = [str(n) for n in self.table.index]
        names = self.feature_names
        if names is None or max(len(x) - len(x.partition("[")[0]) for x in labels) <= (
            TEXT_LABEL_WIDTH - 2
        ):
            return labels, []
        number = {name: str(j) for j, name in enumerate(names)}
        short = []
        for label in labels:
            group, _, rest = label.partition("[")
            parts = rest[:-1].split(", ")
            short.append(f"{group}[{', '.join(number.get(x, x) for x in parts)}]")
        legend = "features: " + ", ".join(f"{j} = {name}" for j, name in enumerate(names))
        return short, [*textwrap.wrap(legend, width, subsequent_indent="  "), ""]

    def __str__(self) -> str:
        return self.to_text()

    __repr__ = __str__


def compare(em: FitResult, *others: FitResult, hdi_prob: float = 0.94) -> Comparison:
    """Compare an EM fit with SVI and NUTS fits of the same mixture.

    Parameters
    ----------
    em : FitResult
        The EM fit (its components are the reference labelling).
    *others : FitResult
        SVI and/or NUTS fits with the same number of components and
        covariance type; their draws are relabelled to EM's components.
    hdi_prob : float, default 0.94
        Probability mass of the highest-density intervals.

    Returns
    -------
    Comparison
    """
    from numpyro.diagnostics import effective_sample_size, hpdi, split_gelman_rubin

    if not isinstance(em, FitResult):
        raise TypeError(f"em must be a FitResult, got {type(em).__name__}")
    if not 0.0 < hdi_prob < 1.0:
        raise ValueError(f"hdi_prob must be between 0 and 1, got {hdi_prob}")
    for other in others:
        if not isinstance(other, FitResult) or other.posterior is None:
            raise TypeError("every other result must be an SVI or NUTS FitResult with draws")
        if (other.params.n_components, other.params.family, other.params.n_features) != (
            em.params.n_components,
            em.params.family,
            em.params.n_features,
        ):
            raise ValueError(
                f"{other.method} fit has {other.params.n_components} components "
                f"({other.params.family!r}) but the EM fit has {em.params.n_components} "
                f"({em.params.family!r}); compare fits of the same model"
            )
    em, max_note = _em_at_maximum(em)
    names = parameter_names(em)
    # The verdict rests on the weights and the location parameters (the first of each
    # family: means, rates, probabilities); scales are reported but not required.
    key_groups = ("weights", em.params.family.param_names()[0])
    rows = [(label, group, idx) for group, items in names.items() for label, idx in items]
    table: dict[str, list[Any]] = {
        "parameter": [r[0] for r in rows],
        "em": [float(_value(em.params, g)[i]) for _, g, i in rows],
    }
    em_se, se_note = _em_standard_errors(em, rows)
    se_note = max_note + se_note
    if em_se is not None:
        table["em_se"] = em_se
    methods: list[dict[str, Any]] = [
        {
            "method": "em",
            "log_likelihood": em.log_likelihood,
            "elbo": np.nan,
            "elbo_se": np.nan,
            "divergences": np.nan,
            "max_r_hat": np.nan,
            "min_ess": np.nan,
            "seconds": em.elapsed,
            "compile_seconds": em.compile_time,
        }
    ]
    agree: dict[str, bool] = {}
    lines = []
    tags = _method_tags(others)
    for tag, other in zip(tags, others):
        draws = _aligned_draws(em, other)
        point_only = other.posterior["weights"].shape[:2] == (1, 1)
        mean, sd, lo, hi, inside, rhat, ess = ([] for _ in range(7))
        for _, group, idx in rows:
            x = np.asarray(draws[group])[(slice(None), slice(None), *idx)].astype(np.float64)
            flat = x.reshape(-1)
            interval = (
                np.asarray(hpdi(flat, prob=hdi_prob))
                if flat.size > 1
                else (np.array([flat[0], flat[0]]))
            )
            em_value = float(_value(em.params, group)[idx])
            mean.append(float(flat.mean()))
            sd.append(float(flat.std(ddof=1)) if flat.size > 1 else 0.0)
            lo.append(float(interval[0]) if not point_only else np.nan)
            hi.append(float(interval[1]) if not point_only else np.nan)
            if point_only:  # a MAP: agreement is being within 1 % of EM
                inside.append(bool(abs(flat[0] - em_value) <= 0.01 * abs(em_value) + 1e-10))
            else:
                inside.append(bool(interval[0] <= em_value <= interval[1]))
            with np.errstate(invalid="ignore", divide="ignore"):  # a constant: NaN
                rhat.append(
                    float(split_gelman_rubin(x)) if x.shape[0] > 1 and x.shape[1] > 3 else np.nan
                )
                ess.append(float(effective_sample_size(x)) if x.shape[1] > 3 else np.nan)
        if em_se is not None and not point_only:
            from statistics import NormalDist

            z = NormalDist().inv_cdf(0.5 + hdi_prob / 2.0)
            em_values = np.asarray(table["em"], dtype=np.float64)
            half = z * np.asarray(em_se)
            table[f"{tag}_wald_overlap"] = list(
                (em_values - half <= np.asarray(hi)) & (np.asarray(lo) <= em_values + half)
            )
        for col, values in (
            ("mean", mean),
            ("sd", sd),
            ("hdi_low", lo),
            ("hdi_high", hi),
            ("em_in_hdi", inside),
            ("r_hat", rhat),
            ("ess", ess),
        ):
            table[f"{tag}_{col}"] = values
        key_rows = [i for i, r in enumerate(rows) if r[1] in key_groups]
        outside = [rows[i][0] for i in range(len(rows)) if not inside[i]]
        agree[tag] = all(inside[i] for i in key_rows)
        pct = round(100 * hdi_prob)
        if point_only:
            agree[tag] = not outside
            lines.append(
                f"{tag}: a point estimate (MAP); "
                + (
                    "within 1% of EM for every parameter."
                    if not outside
                    else f"{len(outside)} parameter(s) differ from EM by more than 1% "
                    f"({', '.join(outside[:6])})."
                )
            )
        elif not outside:
            lines.append(
                f"{tag}: EM agrees with the posterior: all {len(rows)} parameters lie "
                f"inside the {pct}% HDI."
            )
        else:
            verdict = f"agrees on {' and '.join(key_groups)}" if agree[tag] else "DISAGREES"
            shown = ", ".join(outside[:6]) + (" ..." if len(outside) > 6 else "")
            lines.append(
                f"{tag}: EM {verdict}: {len(outside)} of {len(rows)} parameters outside "
                f"the {pct}% HDI ({shown})."
            )
        if em_se is not None and not point_only:
            ratio = np.asarray(sd) / np.asarray(em_se)
            ratio = ratio[np.isfinite(ratio) & (np.asarray(em_se) > 0)]
            if ratio.size:
                lines.append(
                    f"{tag}: posterior sd / EM standard error: median {np.median(ratio):.2f} "
                    f"(range {ratio.min():.2f}-{ratio.max():.2f})."
                )
        d = other.diagnostics
        methods.append(
            {
                "method": tag,
                "log_likelihood": other.log_likelihood,
                "elbo": d.get("elbo", np.nan),
                "elbo_se": d.get("elbo_se", np.nan),
                "divergences": d.get("divergences", np.nan),
                "max_r_hat": np.nanmax(rhat) if np.isfinite(rhat).any() else np.nan,
                "min_ess": np.nanmin(ess) if np.isfinite(ess).any() else np.nan,
                "seconds": other.elapsed,
                "compile_seconds": other.compile_time,
            }
        )
    import pandas as pd  # loaded on first use: `import mixlab` stays light

    frame = pd.DataFrame(table).set_index("parameter")
    return Comparison(
        table=frame,
        methods=pd.DataFrame(methods).set_index("method"),
        agree=agree,
        summary="\n".join([*lines, *se_note]) if lines else "EM only: nothing to compare with.",
        hdi_prob=hdi_prob,
        feature_names=em.feature_names,
    )
