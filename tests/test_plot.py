"""Figures of ``mixlab.plot``: the artists drawn, not just that a file appears.

One real EM fit (faithful, 8 restarts, parameters recorded) serves most tests; the 1-D,
diagonal, SVI and NUTS inputs are built as ``FitResult`` objects directly, so no other
program is compiled and NumPyro never runs.
"""

from __future__ import annotations

import dataclasses
import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.lines import Line2D
from matplotlib.patches import Ellipse

import mixlab as ml
from mixlab import plot

matplotlib.use("Agg")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def em(faithful):
    """Faithful, K=2, 8 restarts, exactly 15 iterations with every iteration's parameters."""
    return ml.fit(
        faithful, 2, method=ml.EM(n_init=8, record_params=True, tol=0.0, max_iter=15), key=0
    )


@pytest.fixture(scope="session")
def galaxies_result():
    """A 1-D, 3-component result near the EM fit of the galaxy velocities."""
    G = ml.datasets.load("galaxies")
    params = ml.MixtureParams(
        [0.085, 0.80, 0.115], [[9710.0], [21230.0], [26390.0]], [1.8e5, 4.0e6, 2.9e7], "spherical"
    )
    return ml.FitResult(
        method="em",
        params=params,
        log_likelihood=-800.0,
        trace=np.array([-820.0, -805.0, -800.0]),
        converged=True,
        n_iter=2,
        elapsed=0.0,
        n_samples=len(G),
        data=G,
    )


@pytest.fixture(scope="session")
def diag_result():
    """A diagonal-covariance result on 1000 rows (more than the default 500 drawn)."""
    data = ml.datasets.two_gaussians_2d()
    params = ml.MixtureParams(
        [0.5, 0.5], [[0.0, 0.0], [-6.0, 3.0]], [[2.9, 0.2], [0.49, 0.49]], "diag"
    )
    return ml.FitResult(
        method="em",
        params=params,
        log_likelihood=-3000.0,
        trace=np.array([-3100.0, -3000.0]),
        converged=True,
        n_iter=1,
        elapsed=0.0,
        n_samples=len(data.X),
        data=data.X,
    )


def _draws(em, chains, draws, scale, seed):
    """Posterior-like draws of shape (chains, draws, ...) around the EM parameters."""
    rng = np.random.default_rng(seed)
    p = em.params
    logits = np.log(p.weights) + scale * rng.standard_normal((chains, draws, p.n_components))
    w = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    m = p.means + scale * np.abs(p.means) * rng.standard_normal((chains, draws, *p.means.shape))
    factor = np.exp(scale * rng.standard_normal((chains, draws, p.n_components, 1, 1)))
    c = np.asarray(p.covariances) * factor  # positive multiples stay positive definite
    return {"weights": w, "means": m, "covariances": c}


@pytest.fixture(scope="session")
def nuts(em):
    return ml.FitResult(
        method="nuts",
        params=em.params,
        log_likelihood=em.log_likelihood,
        trace=np.zeros(8),
        converged=True,
        n_iter=4,
        elapsed=0.0,
        n_samples=em.n_samples,
        posterior=_draws(em, 2, 40, 0.02, seed=1),
        diagnostics={"draw_log_likelihood": np.arange(80.0).reshape(2, 40) - 1200.0},
        data=em.data,
    )


@pytest.fixture(scope="session")
def svi_delta(em):
    return ml.FitResult(
        method="svi",
        params=em.params,
        log_likelihood=em.log_likelihood,
        trace=np.linspace(-1500.0, -1140.0, 30),
        converged=True,
        n_iter=30,
        elapsed=0.0,
        n_samples=em.n_samples,
        posterior=_draws(em, 1, 1, 0.0, seed=2),
        diagnostics={"guide": "delta"},
        data=em.data,
    )


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ----------------------------------------------------------------------------- helpers
def _saved(fig, tmp_path, name="fig.png"):
    path = tmp_path / name
    fig.savefig(path)
    assert path.stat().st_size > 1000
    plt.close(fig)


def _by_gid(ax, gid, kind=None):
    artists = [*ax.collections, *ax.lines, *ax.patches]
    found = [a for a in artists if a.get_gid() == gid]
    if kind is not None:
        found = [a for a in found if isinstance(a, kind)]
    return found


def _one(ax, gid, kind=None):
    found = _by_gid(ax, gid, kind)
    assert len(found) == 1, f"expected one artist with gid {gid!r}, found {len(found)}"
    return found[0]


def _ellipses(ax):
    return [p for p in ax.patches if isinstance(p, Ellipse)]


def _mahalanobis_on_ellipse(ellipse, mean, cov):
    """Mahalanobis radius of points on the ellipse's outline (all equal to its n_std)."""
    t = np.linspace(0.0, 2.0 * np.pi, 13)
    unit = np.c_[np.cos(t), np.sin(t)]
    pts = ellipse.get_patch_transform().transform(unit)
    d = pts - mean
    return np.sqrt(np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d))


def _check_ellipses(ax, params, features=(0, 1)):
    i, j = features
    means = np.asarray(params.means)[:, [i, j]]
    covs = params.full_covariances()[:, [i, j]][:, :, [i, j]]
    ellipses = _ellipses(ax)
    assert len(ellipses) == 2 * params.n_components
    for k in range(params.n_components):
        for n_std in (1, 2):
            (e,) = [x for x in ellipses if x.get_gid() == f"ellipse-{k}-{n_std}sd"]
            np.testing.assert_allclose(e.center, means[k], rtol=1e-10)
            r = _mahalanobis_on_ellipse(e, means[k], covs[k])
            np.testing.assert_allclose(r, n_std, rtol=1e-6)
    np.testing.assert_allclose(_one(ax, "means").get_offsets(), means, rtol=1e-10)


# ----------------------------------------------------------------------------- trace
def test_trace_em_draws_the_log_likelihood(em, tmp_path):
    fig = plot.trace(em)
    (ax,) = fig.axes
    line = _one(ax, "trace-0", Line2D)
    np.testing.assert_array_equal(line.get_ydata(), em.trace)
    np.testing.assert_array_equal(line.get_xdata(), np.arange(em.n_iter + 1))
    assert ax.get_xlabel() == "iteration"
    assert ax.get_ylabel() == "log-likelihood"
    assert ax.get_legend() is None
    _saved(fig, tmp_path)


def test_trace_labels_hard_em(em):
    hard = dataclasses.replace(em, settings={**em.settings, "assignment": "hard"})
    fig = plot.trace(hard)
    assert fig.axes[0].get_ylabel() == "classification log-likelihood"


def test_trace_overlays_svi_and_nuts_chains(svi_delta, nuts, tmp_path):
    fig0, ax = plt.subplots()
    fig = plot.trace(svi_delta, nuts, ax=ax, labels=["MAP", "NUTS"])
    assert fig is fig0 is ax.figure
    svi_line = _one(ax, "trace-0", Line2D)
    np.testing.assert_array_equal(svi_line.get_ydata(), svi_delta.trace)
    draws = nuts.diagnostics["draw_log_likelihood"]
    for c in range(draws.shape[0]):
        line = _one(ax, f"trace-1-chain-{c}", Line2D)
        np.testing.assert_array_equal(line.get_ydata(), draws[c])
    assert len(ax.lines) == 1 + draws.shape[0]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["MAP", "NUTS chain 0", "NUTS chain 1"]
    assert ax.get_xlabel() == "step / draw"
    assert ax.get_ylabel() == "ELBO / log-likelihood"
    _saved(fig, tmp_path)


def test_trace_bad_input(em, nuts):
    with pytest.raises(TypeError, match="at least one FitResult"):
        plot.trace()
    with pytest.raises(TypeError, match=r"results\[1\] must be a FitResult"):
        plot.trace(em, np.zeros(3))
    with pytest.raises(ValueError, match="one label per result"):
        plot.trace(em, nuts, labels=["only one"])
    no_draws = dataclasses.replace(nuts, diagnostics={})
    with pytest.raises(ValueError, match="draw_log_likelihood"):
        plot.trace(no_draws)
    with pytest.raises(TypeError, match="matplotlib Axes"):
        plot.trace(em, ax="not an axes")


# ----------------------------------------------------------------------------- scatter_2d
def test_scatter_2d_points_colours_and_ellipses(em, tmp_path):
    X = em.data
    fig = plot.scatter_2d(em, n_points=100, seed=3)
    (ax,) = fig.axes
    points = _one(ax, "points", PathCollection)
    xy = np.asarray(points.get_offsets())
    assert xy.shape == (100, 2)
    # rows drawn without replacement by np.random.default_rng(seed)
    rows = np.random.default_rng(3).choice(len(X), size=100, replace=False)
    np.testing.assert_array_equal(xy, X[rows])
    # coloured by the most probable component, categorical colours
    labels = em.predict(xy)
    tab10 = np.asarray(matplotlib.colormaps["tab10"](labels))
    np.testing.assert_allclose(points.get_facecolors()[:, :3], tab10[:, :3])
    _check_ellipses(ax, em.params)
    _saved(fig, tmp_path)


def test_scatter_2d_draws_all_rows_when_fewer_than_n_points(em):
    fig = plot.scatter_2d(em)  # 272 rows < 500
    xy = np.asarray(_one(fig.axes[0], "points").get_offsets())
    assert xy.shape == (len(em.data), 2)
    np.testing.assert_array_equal(np.sort(xy, axis=0), np.sort(em.data, axis=0))


def test_scatter_2d_subsample_is_seeded(diag_result, tmp_path):
    a = np.asarray(_one(plot.scatter_2d(diag_result, seed=5).axes[0], "points").get_offsets())
    b = np.asarray(_one(plot.scatter_2d(diag_result, seed=5).axes[0], "points").get_offsets())
    c = np.asarray(_one(plot.scatter_2d(diag_result, seed=6).axes[0], "points").get_offsets())
    assert a.shape == (500, 2)  # min(n_points, N) with N = 1000
    assert len(np.unique(a, axis=0)) == 500  # without replacement
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_scatter_2d_diag_covariances_and_swapped_features(diag_result, tmp_path):
    fig0, ax = plt.subplots()
    fig = plot.scatter_2d(diag_result, features=(1, 0), ax=ax)
    assert fig is fig0 is ax.figure
    _check_ellipses(ax, diag_result.params, features=(1, 0))
    _saved(fig, tmp_path)


def test_scatter_2d_without_ellipses_still_marks_means(em):
    ax = plot.scatter_2d(em, ellipses=False).axes[0]
    assert _ellipses(ax) == []
    np.testing.assert_allclose(_one(ax, "means").get_offsets(), em.params.means)


def test_scatter_2d_bad_input(em, galaxies_result):
    with pytest.raises(ValueError, match="at least 2 features.*density_1d"):
        plot.scatter_2d(galaxies_result)
    with pytest.raises(ValueError, match=r"features\[1\]=2 is out of range.*between 0 and 1"):
        plot.scatter_2d(em, features=(0, 2))
    with pytest.raises(ValueError, match="two different columns"):
        plot.scatter_2d(em, features=(1, 1))
    with pytest.raises(ValueError, match="exactly 2 columns"):
        plot.scatter_2d(em, features=(0, 1, 0))
    with pytest.raises(ValueError, match="3 feature.*fitted on 2"):
        plot.scatter_2d(em, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="n_points must be >= 1"):
        plot.scatter_2d(em, n_points=0)
    with pytest.raises(TypeError, match="pair of column indices"):
        plot.scatter_2d(em, features=0)
    no_data = dataclasses.replace(em, data=None)
    with pytest.raises(ValueError, match="holds no data.*pass the data as X"):
        plot.scatter_2d(no_data)


# ----------------------------------------------------------------------------- density_1d
def test_density_1d_mixture_is_a_density(galaxies_result, tmp_path):
    fig = plot.density_1d(galaxies_result, bins=20)
    (ax,) = fig.axes
    mixture = _one(ax, "mixture", Line2D)
    x, y = mixture.get_xdata(), mixture.get_ydata()
    assert abs(np.trapezoid(y, x) - 1.0) < 1e-3
    components = [_one(ax, f"component-{k}", Line2D) for k in range(3)]
    total = np.sum([c.get_ydata() for c in components], axis=0)
    np.testing.assert_allclose(y, total, rtol=1e-12)
    p = galaxies_result.params
    for k, c in enumerate(components):
        np.testing.assert_array_equal(c.get_xdata(), x)
        sd = np.sqrt(p.full_covariances()[k, 0, 0])
        assert abs(np.trapezoid(c.get_ydata(), x) - p.weights[k]) < 1e-3
        assert np.max(c.get_ydata()) == pytest.approx(
            p.weights[k] / (sd * np.sqrt(2 * np.pi)), 1e-3
        )
    bars = [b for b in ax.patches if b.get_gid() == "histogram"]
    heights = np.array([b.get_height() for b in bars])
    widths = np.array([b.get_width() for b in bars])
    assert len(bars) == 20
    assert np.sum(heights * widths) == pytest.approx(1.0)  # density=True
    _saved(fig, tmp_path)


def test_density_1d_uses_the_marginal_of_the_chosen_feature(em, tmp_path):
    fig0, ax = plt.subplots()
    fig = plot.density_1d(em, feature=1, ax=ax)
    assert fig is fig0 is ax.figure
    p = em.params
    for k in range(2):
        line = _one(ax, f"component-{k}", Line2D)
        x, y = line.get_xdata(), line.get_ydata()
        var = p.full_covariances()[k, 1, 1]
        expected = p.weights[k] * np.exp(-0.5 * (x - p.means[k, 1]) ** 2 / var)
        np.testing.assert_allclose(y, expected / np.sqrt(2 * np.pi * var), rtol=1e-10)
    assert abs(np.trapezoid(_one(ax, "mixture").get_ydata(), x) - 1.0) < 1e-3
    assert ax.get_xlabel() == "feature 1"
    _saved(fig, tmp_path)


def test_density_1d_bad_input(em, galaxies_result):
    with pytest.raises(ValueError, match="feature=2 is out of range.*2 feature"):
        plot.density_1d(em, feature=2)
    with pytest.raises(ValueError, match="feature=1 is out of range"):
        plot.density_1d(galaxies_result, feature=1)
    with pytest.raises(ValueError, match="2 feature.*fitted on 1"):
        plot.density_1d(galaxies_result, em.data)
    with pytest.raises(TypeError, match="feature must be a column index or a feature name"):
        plot.density_1d(em, feature=1.0)
    with pytest.raises(ValueError, match="'waiting' is not a feature.*no feature names"):
        plot.density_1d(em, feature="waiting")  # the fit had an array: no names
    with pytest.raises(ValueError, match="bins must be >= 1"):
        plot.density_1d(em, bins=0)


# ----------------------------------------------------------------------------- restarts
def test_restarts_points_and_best(em, tmp_path):
    fig = plot.restarts(em, tolerance=1.0)
    (ax,) = fig.axes
    ll = em.restarts.log_likelihood
    pts = np.asarray(_one(ax, "restarts").get_offsets())
    assert pts.shape == (8, 2)
    np.testing.assert_array_equal(pts[:, 1], np.sort(ll)[::-1])
    best = np.asarray(_one(ax, "best").get_offsets())
    np.testing.assert_array_equal(best, [[1.0, np.max(ll)]])
    share = em.restarts.share_reaching_best(1.0)
    assert f"{share:.0%} of 8 restarts within 1 of the best" in ax.get_title()
    _saved(fig, tmp_path)


def test_restarts_with_failures_and_tolerance(em):
    ll = np.array([-10.0, np.nan, -12.5, -10.4, -30.0])
    failing = dataclasses.replace(
        em,
        restarts=ml.Restarts(
            log_likelihood=ll,
            converged=np.isfinite(ll),
            n_iter=np.full(5, 3),
            status=np.array(["converged", "nonfinite", "converged", "converged", "converged"]),
            best=0,
        ),
    )
    ax = plot.restarts(failing, tolerance=0.5).axes[0]
    pts = np.asarray(_one(ax, "restarts").get_offsets())
    np.testing.assert_array_equal(pts[:, 1], [-10.0, -10.4, -12.5, -30.0])
    np.testing.assert_array_equal(_one(ax, "best").get_offsets(), [[1.0, -10.0]])
    assert "40% of 5 restarts within 0.5 of the best" in ax.get_title()
    assert "1 failed" in ax.get_title()


def test_restarts_bad_input(em, nuts):
    with pytest.raises(ValueError, match="no restarts.*n_init"):
        plot.restarts(nuts)
    with pytest.raises(ValueError, match="tolerance must be a finite number >= 0"):
        plot.restarts(em, tolerance=-1.0)
    all_failed = dataclasses.replace(
        em, restarts=dataclasses.replace(em.restarts, log_likelihood=np.full(8, np.nan))
    )
    with pytest.raises(ValueError, match="all 8 restarts failed"):
        plot.restarts(all_failed)


# ----------------------------------------------------------------------------- snapshots
def test_snapshots_panels_ellipses_and_responsibilities(em, tmp_path):
    iterations = (0, 1, 5, 15)
    fig = plot.snapshots(em, iterations=iterations)
    assert len(fig.axes) == len(iterations)
    X = em.data
    pt = em.params_trace
    for ax, t in zip(fig.axes, iterations):
        assert ax.get_title() == f"iteration {t}"
        params_t = ml.MixtureParams(
            pt.weights[t], pt.means[t], pt.covariances[t], covariance_type=pt.covariance_type
        )
        _check_ellipses(ax, params_t)
        points = _one(ax, "points", PathCollection)
        np.testing.assert_array_equal(points.get_offsets(), X)
        resp0 = np.exp(ml.e_step(X, params_t).log_resp)[:, 0]
        np.testing.assert_allclose(points.get_array(), resp0, atol=1e-10)
    # the last snapshot is the returned fit
    np.testing.assert_allclose(_one(fig.axes[-1], "means").get_offsets(), em.params.means)
    # the start and the end differ
    assert not np.allclose(_one(fig.axes[0], "means").get_offsets(), em.params.means)
    _saved(fig, tmp_path)


def test_snapshots_bad_input(em, galaxies_result):
    with pytest.raises(ValueError, match="iteration 16 was not recorded.*largest available is 15"):
        plot.snapshots(em, iterations=(1, 16))
    with pytest.raises(ValueError, match=r"record_params=True"):
        plot.snapshots(dataclasses.replace(em, params_trace=None))
    with pytest.raises(ValueError, match="each iteration must be >= 0"):
        plot.snapshots(em, iterations=(-1,))
    with pytest.raises(ValueError, match="iterations is empty"):
        plot.snapshots(em, iterations=())
    with pytest.raises(ValueError, match=r"features\[0\]=5 is out of range"):
        plot.snapshots(em, features=(5, 0))


# ----------------------------------------------------------------------------- forest
def test_forest_intervals_means_and_em(em, nuts, svi_delta, tmp_path):
    fig = plot.forest(em, nuts, svi_delta, hdi_prob=0.9)
    table = ml.compare(em, nuts, svi_delta, hdi_prob=0.9).table
    # one panel per parameter element, in the table's order, titled at each group's start
    names = [n for n in table.index if n.startswith(("weights[", "means["))]
    assert len(fig.axes) == len(names) == 6
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["weights", "", "means", "", "", ""]
    for ax, name in zip(fig.axes, names):
        assert [t.get_text() for t in ax.get_yticklabels()] == [name]
        row = table.loc[name]
        (segment,) = _one(ax, "hdi-nuts", LineCollection).get_segments()
        np.testing.assert_allclose(segment[:, 0], [row["nuts_hdi_low"], row["nuts_hdi_high"]])
        assert row["nuts_hdi_low"] < row["nuts_hdi_high"]
        (nuts_dot,) = np.asarray(_one(ax, "mean-nuts").get_offsets())
        assert nuts_dot[0] == pytest.approx(row["nuts_mean"], rel=1e-12)
        assert segment[0, 1] == segment[1, 1] == nuts_dot[1]  # the interval on its dot's line
        # the point estimate has no interval, only its dot
        assert _by_gid(ax, "hdi-svi_delta") == []
        (svi_dot,) = np.asarray(_one(ax, "mean-svi_delta").get_offsets())
        assert svi_dot[0] == pytest.approx(row["svi_delta_mean"], rel=1e-12)
        (em_mark,) = np.asarray(_one(ax, "em").get_offsets())
        assert em_mark[0] == pytest.approx(row["em"], rel=1e-12)
        # methods are offset from each other, EM sits on the row
        assert em_mark[1] == 0.0 and nuts_dot[1] < 0.0 < svi_dot[1]
        # each parameter on its own scale: everything drawn is inside the axis, and
        # the interval spans a readable share of it (the issue: Old Faithful's two means
        # of one feature on one axis from 2 to 4.3 hid their intervals)
        lo, hi = ax.get_xlim()
        shown = [row["nuts_hdi_low"], row["nuts_hdi_high"], row["em"], row["svi_delta_mean"]]
        assert lo < min(shown) and max(shown) < hi
        assert (row["nuts_hdi_high"] - row["nuts_hdi_low"]) / (hi - lo) > 0.5
    _saved(fig, tmp_path)


def test_forest_draws_ems_wald_interval_from_its_standard_errors(em, nuts):
    from statistics import NormalDist

    fig = plot.forest(em, nuts, hdi_prob=0.9, em_interval=True)
    table = ml.compare(em, nuts, hdi_prob=0.9).table
    se = em.standard_errors()
    z = NormalDist().inv_cdf(0.95)
    for k in (0, 1):
        ax = fig.axes[2 + 2 * k]  # means[k, 0]
        assert ax.get_yticklabels()[0].get_text() == f"means[{k}, 0]"
        (seg,) = _one(ax, "em-interval", LineCollection).get_segments()
        centre = em.params.means[k, 0]
        np.testing.assert_allclose(
            seg[:, 0], [centre - z * se.means[k, 0], centre + z * se.means[k, 0]]
        )
        lo, hi = ax.get_xlim()
        assert lo < seg[0, 0] and seg[1, 0] < hi
    # the comparison says whether each Wald interval meets the HDI
    half = z * table["em_se"]
    overlap = (table["em"] - half <= table["nuts_hdi_high"]) & (
        table["nuts_hdi_low"] <= table["em"] + half
    )
    assert list(table["nuts_wald_overlap"]) == list(overlap) and overlap.all()


def test_forest_covariances_only(em, nuts):
    fig = plot.forest(em, nuts, parameters=("covariances",))
    assert len(fig.axes) == 2 * 3  # upper triangles of 2x2
    assert fig.axes[0].get_title(loc="left") == "covariances"
    for ax in fig.axes:
        assert len(_one(ax, "hdi-nuts").get_segments()) == 1
        assert len(_one(ax, "em").get_offsets()) == 1


def test_forest_bad_input(em, nuts):
    with pytest.raises(ValueError, match="unknown parameter group.*'sigma'"):
        plot.forest(em, nuts, parameters=("sigma",))
    with pytest.raises(ValueError, match="first result must be the EM fit"):
        plot.forest(nuts, em)
    with pytest.raises(TypeError, match="em must be a FitResult"):
        plot.forest("em", nuts)
    with pytest.raises(ValueError, match="hdi_prob"):
        plot.forest(em, nuts, hdi_prob=1.5)


def test_matplotlib_is_imported_lazily():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(plot))
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not any(name.startswith("matplotlib") for name in names)


def test_plots_of_count_and_binary_families():
    """density_1d draws a count family's probabilities of each integer; scatter and forest
    work through the family protocol (moments, parameter names)."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(np.array([[2.0, 9.0], [12.0, 1.0]])[rng.integers(0, 2, 200)])
    fit = ml.fit(counts.astype(float), 2, family="poisson", key=0)
    fig = plot.density_1d(fit, feature=1)
    ax = fig.axes[0]
    mixture = next(line for line in ax.get_lines() if line.get_gid() == "mixture")
    x, y = mixture.get_data()
    np.testing.assert_array_equal(x, np.round(x))  # integers only
    assert abs(y.sum() - 1.0) < 1e-6  # a probability mass function over the integers
    w, r = fit.params.weights, fit.params.rates[:, 1]
    k = 5
    want = np.sum(w * np.exp(-r) * r**k / math.factorial(k))
    np.testing.assert_allclose(y[list(x).index(k)], want, rtol=1e-10)
    fig2 = plot.scatter_2d(fit, counts.astype(float))
    means = next(c for c in fig2.axes[0].collections if c.get_gid() == "means")
    np.testing.assert_allclose(np.sort(means.get_offsets()[:, 0]), np.sort(fit.params.rates[:, 0]))
    plt.close("all")
