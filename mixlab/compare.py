"""EM against the posterior: label alignment, one table, an agreement verdict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mixlab.align import apply_permutations, permutations_to_reference
from mixlab.result import FitResult

if TYPE_CHECKING:
    import pandas as pd


#: Free parameters above which compare() leaves out EM's standard errors (the
#: Hessian has this many squared entries); call result.standard_errors() directly.
SE_MAX_PARAMETERS = 500


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


def parameter_names(result: FitResult) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """Row labels and array indices of every free parameter element, by parameter.

    ``weights`` first, then the family's parameters in order; symmetric
    matrices list their upper triangle only.
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
            rows.append((f"{spec.name}[{','.join(map(str, idx))}]", idx))
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
    """

    table: pd.DataFrame
    methods: pd.DataFrame
    agree: dict[str, bool]
    summary: str
    hdi_prob: float

    def __str__(self) -> str:
        import pandas as pd

        with pd.option_context(
            "display.max_rows",
            500,
            "display.width",
            160,
            "display.max_columns",
            50,
            "display.float_format",
            "{:.4g}".format,
        ):
            return f"{self.table}\n\n{self.methods}\n\n{self.summary}"

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
    )
