"""``ml.select``: criteria against FitResult and plain NumPy, weights, families, LOO, plot.

Compiled programs dominate the time: the 4-cluster data (400 x 2) and EM(n_init=5) are
shared, so the repeated-rows selection and most re-fits reuse the programs of the main
selection.
"""

from __future__ import annotations

import warnings

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy.special import xlogy
from scipy.stats import multivariate_normal

import mixlab as ml
from mixlab import plot
from mixlab.arviz_io import import_arviz
from mixlab.select import DEFAULT_N_INIT

matplotlib.use("Agg")

CENTRES = np.array([[0.0, 0.0], [9.0, 1.0], [1.0, 7.0], [10.0, 11.0]])


def _clusters(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([c + rng.normal(size=(100, 2)) for c in CENTRES])


def _entropy(result: ml.FitResult, X: np.ndarray, weights: np.ndarray | None = None) -> float:
    r = result.predict_proba(X)
    per_row = -np.sum(xlogy(r, r), axis=1)
    return float(np.sum(per_row if weights is None else weights * per_row))


@pytest.fixture(scope="module")
def data():
    return _clusters()


@pytest.fixture(scope="module")
def selection(data):
    X = data.copy()
    sel = ml.select(X, range(1, 7))
    np.testing.assert_array_equal(X, data)  # the caller's data are not modified
    return sel


@pytest.fixture(scope="module")
def counts():
    rng = np.random.default_rng(3)
    rates = np.array([[2.0, 10.0], [15.0, 3.0]])
    return rng.poisson(rates[rng.integers(0, 2, 400)]).astype(np.float64)


@pytest.fixture(scope="module")
def mixed(counts):
    # A family object with a covariance list: its layout is replaced by each of the list's.
    return ml.select(
        counts,
        2,
        family=[ml.families.Gaussian(covariance="tied"), "poisson"],
        covariance=["full", "diag"],
    )


# ----------------------------------------------------------------------------- choice of K
def test_bic_and_icl_pick_the_four_clusters(data, selection):
    table = selection.table
    assert list(table["n_components"]) == [1, 2, 3, 4, 5, 6]
    assert selection.best_key == ("gaussian", "full", 4)
    assert selection.best is selection.results[("gaussian", "full", 4)]
    assert int(table.loc[table["bic"].idxmin(), "n_components"]) == 4
    by_icl = ml.select(data, range(1, 7), criterion="icl")
    assert by_icl.criterion == "icl" and by_icl.best_key == ("gaussian", "full", 4)
    # K=5 and K=6 split a cluster: their classification entropy makes ICL grow faster than BIC
    assert np.all(np.diff(table["icl"].to_numpy()[3:]) > np.diff(table["bic"].to_numpy()[3:]))
    assert list(table["n_parameters"]) == [6 * k - 1 for k in range(1, 7)]
    assert table["error"].eq("").all() and table["converged"].all()
    assert "loo" not in table.columns


def test_criteria_equal_fit_result_and_numpy(data, selection):
    n = len(data)
    for row in selection.table.itertuples():
        result = selection.results[(row.family, row.covariance, row.n_components)]
        assert row.bic == result.bic(data) and row.aic == result.aic(data)
        ll = np.sum(result.score_samples(data))
        np.testing.assert_allclose(row.log_likelihood, ll, rtol=1e-12)
        p = row.n_parameters
        np.testing.assert_allclose(row.bic, -2.0 * ll + p * np.log(n), rtol=1e-12)
        np.testing.assert_allclose(row.aic, -2.0 * ll + 2.0 * p, rtol=1e-12)
        icl = result.bic(data) + 2.0 * _entropy(result, data)
        np.testing.assert_allclose(row.icl, icl, rtol=1e-12)
    # every candidate is ml.fit with the same key: a row refits alone
    again = ml.fit(data, 3, ml.EM(n_init=DEFAULT_N_INIT), key=0)
    assert again.log_likelihood == selection.results[("gaussian", "full", 3)].log_likelihood


def test_integer_weights_equal_repeated_rows(data):
    half = data[::2]
    weights = np.tile([1.0, 3.0], 100)  # 200 rows standing for 400
    repeated = np.repeat(half, weights.astype(int), axis=0)
    method = ml.EM(n_init=5, tol=0.0)  # 100 iterations: both reach the maximum to rounding
    weighted = ml.select(half, 4, method=method, sample_weight=weights)
    plain = ml.select(repeated, 4, method=method)
    for col in ("log_likelihood", "bic", "aic", "icl"):
        np.testing.assert_allclose(weighted.table[col], plain.table[col], rtol=0, atol=1e-8)
    assert weighted.best_key == plain.best_key == ("gaussian", "full", 4)
    for row in weighted.table.itertuples():
        result = weighted.results[(row.family, row.covariance, row.n_components)]
        bic = result.bic(half, sample_weight=weights)
        assert row.bic == bic
        # n in BIC is the weight total, the entropy weighted
        ll = np.sum(weights * result.score_samples(half))
        np.testing.assert_allclose(bic, -2 * ll + row.n_parameters * np.log(400), rtol=1e-12)
        icl = bic + 2.0 * _entropy(result, half, weights)
        np.testing.assert_allclose(row.icl, icl, rtol=1e-12)
        assert row.icl - row.bic > 0.01  # an entropy that the weights change


# ----------------------------------------------------------------------------- models
def test_families_and_covariances_give_their_rows(counts, mixed):
    table = mixed.table
    keys = list(zip(table["family"], table["covariance"], table["n_components"]))
    assert keys == [("gaussian", "full", 2), ("gaussian", "diag", 2), ("poisson", None, 2)]
    assert list(table["n_parameters"]) == [11, 9, 5]  # 6K-1, 5K-1, 3K-1
    for row in table.itertuples():
        result = mixed.results[(row.family, row.covariance, row.n_components)]
        assert result.family == ml.families.get_family(row.family, covariance=row.covariance)
        alone = ml.fit(
            counts, 2, ml.EM(n_init=5), family=row.family, covariance=row.covariance, key=0
        )
        assert row.bic == alone.bic(counts) and row.aic == alone.aic(counts)
    # the counts come from two Poisson components: the Poisson mixture of 2 wins
    assert mixed.best_key == ("poisson", None, 2)


def test_skipped_and_failed_candidates_get_rows():
    # Four distinct points, 100 copies each (the main data's shape: no new program).  K=3
    # must sit a component on a single point, which EM(on_collapse="raise") refuses.
    square = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    X = np.repeat(square, 100, axis=0)
    sel = ml.select(X, (1, 3, 500), method=ml.EM(n_init=5, on_collapse="raise"))
    table = sel.table
    assert table["error"][0] == ""
    assert table["error"][1].startswith("FitError:") and "collapsed" in table["error"][1]
    assert table["error"][2] == "skipped: 500 components but only 400 sample(s)"
    assert np.all(np.isnan(table.loc[1:, ["log_likelihood", "bic", "aic", "icl"]].to_numpy()))
    assert list(table["n_parameters"]) == [5, 17, 2999]
    assert not table["converged"][1] and not table["converged"][2]
    assert set(sel.results) == {("gaussian", "full", 1)} and sel.best_key[2] == 1
    # one Gaussian: the ML mean and covariance (plus reg_covar on the diagonal), closed form
    cov = np.cov(X.T, bias=True) + 1e-6 * np.eye(2)
    ll = np.sum(multivariate_normal(X.mean(axis=0), cov).logpdf(X))
    np.testing.assert_allclose(table["log_likelihood"][0], ll, rtol=1e-10)
    np.testing.assert_allclose(table["bic"][0], -2 * ll + 5 * np.log(400), rtol=1e-10)
    text = sel.summary()
    assert "failed" in text and "skipped: 500 components" in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_summary_marks_the_best_row(selection):
    text = str(selection)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert "BIC (lower is better)" in lines[0]
    marked = [line for line in lines if line.startswith("*")]
    assert len(marked) == 1 and marked[0].split()[1:4] == ["gaussian", "full", "4"]
    assert f"{selection.table['bic'][3]:.2f}" in marked[0]
    frame = selection.to_pandas()
    frame.loc[0, "bic"] = 0.0
    assert selection.table["bic"][0] != 0.0  # a copy


def test_progress_bar_over_candidates(data, selection, capsys):
    ml.select(data, (3, 4), progress=True)
    err = capsys.readouterr().err
    assert "select" in err and "2/2" in err
    ml.select(data, (3, 4), progress=None)  # stderr is not a terminal here: silent
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- LOO
def test_loo_equals_arviz_on_the_deviance_scale():
    # One NUTS program (each costs seconds to compile); K=41 > 40 rows gives a skipped row,
    # whose NaN LOO the ranking passes over.  Ranking is the argmin of the column, as for
    # BIC and ICL above, so the column's scale (-2 elpd_loo) is what needs checking.
    rng = np.random.default_rng(1)
    y = np.concatenate([rng.normal(-3.0, 1.0, 20), rng.normal(3.0, 1.0, 20)])
    nuts = ml.NUTS(
        num_warmup=100,
        num_samples=100,
        num_chains=1,
        max_tree_depth=5,
        progress=False,
        em=ml.EM(n_init=2),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        sel = ml.select(y, (2, 41), method=nuts, criterion="loo")
    table = sel.table
    assert sel.criterion == "loo" and sel.best_key == ("gaussian", "full", 2)
    assert np.isnan(table["loo"][1]) and np.isnan(table["loo_se"][1])
    assert table["error"][1] == "skipped: 41 components but only 40 sample(s)"
    result = sel.best
    assert result.method == "nuts" and table["bic"][0] == result.bic(y)
    az = import_arviz()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto")
        ref = az.loo(result.to_arviz(), pointwise=True)
    np.testing.assert_allclose(table["loo"][0], -2.0 * ref.elpd_loo, rtol=0, atol=1e-10)
    np.testing.assert_allclose(table["loo_se"][0], 2.0 * ref.se, rtol=0, atol=1e-10)
    # the only warning is select's own about high Pareto k, when ArviZ finds any
    messages = [str(w.message) for w in caught]
    n_high = int(np.sum(np.asarray(ref.pareto_k) > ref.good_k))
    if n_high:
        assert messages == [
            "PSIS-LOO: observations with a Pareto k above ArviZ's threshold (the LOO "
            f"estimate is unreliable there) in gaussian, full, K=2 ({n_high} of 40)"
        ]
    else:
        assert messages == []
    text = str(sel)
    assert "LOO (lower is better)" in text and "-2 * elpd_loo" in text
    assert max(len(line) for line in text.splitlines()) <= 100


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_components": []}, ValueError, "n_components is empty"),
        ({"n_components": [0, 1]}, ValueError, "positive ints"),
        ({"n_components": [2, 2.5]}, ValueError, "positive ints"),
        ({"n_components": "3"}, TypeError, "int or a sequence"),
        ({"n_components": [True]}, ValueError, "positive ints"),
        ({"n_components": [2, 3, 2]}, ValueError, "more than once"),
        ({"n_components": [500, 600]}, ValueError, "exceeds the 400 sample"),
        ({"criterion": "BIC2"}, ValueError, "criterion must be one of"),
        ({"criterion": "loo"}, ValueError, "use method=ml.NUTS"),
        ({"family": "poisson", "covariance": "diag"}, ValueError, "leave it out"),
        ({"covariance": "banana"}, ValueError, "banana"),
        ({"covariance": []}, ValueError, "empty list"),
        ({"family": []}, ValueError, "empty list"),
        ({"family": "weibull"}, ValueError, "unknown family"),
        ({"family": ["gaussian", "gaussian"]}, ValueError, "listed twice"),
        ({"method": "em"}, TypeError, "method must be"),
        ({"progress": "yes"}, TypeError, "progress must be"),
        ({"sample_weight": np.ones(3)}, ValueError, "3 entries"),
        (
            {"method": ml.NUTS(), "criterion": "loo", "sample_weight": np.full(400, 0.5)},
            ValueError,
            "integer sample weights",
        ),
    ],
)
def test_bad_arguments_name_the_fix(data, kwargs, error, match):
    args = {"n_components": (1, 2), **kwargs}
    with pytest.raises(error, match=match):
        ml.select(data, **args)


def test_data_a_family_cannot_model_fail_before_fitting(data):
    with pytest.raises(ValueError, match="poisson|count|integer|non-negative"):
        ml.select(data, (1, 2), family=["gaussian", "poisson"])


# ----------------------------------------------------------------------------- plot
def test_plot_lines_are_the_table_and_the_best_is_ringed():
    # A hand-made table: two models, K out of order, a failed candidate (NaN: a gap).
    table = pd.DataFrame(
        {
            "family": ["gaussian"] * 3 + ["poisson"] * 3,
            "covariance": pd.Series(["diag"] * 3 + [None] * 3, dtype=object),
            "n_components": [3, 1, 2, 1, 2, 3],
            "log_likelihood": [-95.0, -120.0, -100.0, -130.0, -101.0, -99.0],
            "n_parameters": [14, 4, 9, 2, 5, 8],
            "bic": [230.5, 250.0, np.nan, 270.0, 226.0, 226.0],
            "aic": [218.0, 248.0, np.nan, 264.0, 212.0, 214.0],
            "icl": [240.0, 250.0, np.nan, 270.0, 230.0, 229.0],
            "converged": [True, True, False, True, True, True],
            "error": ["", "", "FitError: collapsed", "", "", ""],
        }
    )
    sel = ml.Selection(table=table, results={}, criterion="bic", best_key=("poisson", None, 2))
    (ax,) = plot.selection(sel).axes
    lines = {line.get_gid(): line for line in ax.get_lines()}
    assert set(lines) == {"selection-0", "selection-1"}
    gauss, poisson = lines["selection-0"], lines["selection-1"]
    np.testing.assert_array_equal(gauss.get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(gauss.get_ydata(), [250.0, np.nan, 230.5])
    np.testing.assert_array_equal(poisson.get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(poisson.get_ydata(), [270.0, 226.0, 226.0])
    assert gauss.get_label() == "gaussian, diag" and poisson.get_label() == "poisson"
    assert gauss.get_marker() != poisson.get_marker()
    (best,) = [c for c in ax.collections if c.get_gid() == "best"]
    assert tuple(best.get_offsets()[0]) == (2.0, 226.0)  # the first of the tie, as best_key
    assert "poisson, K=2" in best.get_label()
    assert ax.get_ylabel() == "BIC (lower is better)"
    assert ax.get_xlabel() == "number of components K"
    (ax_icl,) = plot.selection(sel, criterion="icl").axes
    (best,) = [c for c in ax_icl.collections if c.get_gid() == "best"]
    assert tuple(best.get_offsets()[0]) == (3.0, 229.0)
    plt.close("all")


def test_plot_other_criterion_into_given_axes(selection):
    fig, given = plt.subplots()
    assert plot.selection(selection, criterion="aic", ax=given) is fig
    ax = given
    (line,) = [line for line in ax.get_lines() if line.get_gid() == "selection-0"]
    np.testing.assert_array_equal(line.get_ydata(), selection.table["aic"].to_numpy())
    (best,) = [c for c in ax.collections if c.get_gid() == "best"]
    aic = selection.table["aic"].to_numpy()
    assert tuple(best.get_offsets()[0]) == (np.argmin(aic) + 1, aic.min())
    assert "AIC (lower is better)" == ax.get_ylabel()
    with pytest.raises(ValueError, match="no 'loo' column"):
        plot.selection(selection, criterion="loo")
    with pytest.raises(ValueError, match="criterion must be one of"):
        plot.selection(selection, criterion="hqc")
    with pytest.raises(TypeError, match="Selection"):
        plot.selection(selection.table)
    plt.close(fig)
