"""Matplotlib figures for mixture fits: traces, scatter with ellipses, densities, restarts,
EM snapshots and a forest plot of EM against posterior intervals.

Matplotlib is imported inside each function, so ``import mixlab`` never needs it.  Every
function returns a :class:`matplotlib.figure.Figure`; the ones that take ``ax`` draw into
that Axes and return its figure.  Nothing here prints or touches NumPy's global random
state.

Artists carry a ``gid`` so that they can be found again (e.g. in tests):
``"points"``, ``"means"``, ``"ellipse-{k}-{n}sd"``, ``"mixture"``, ``"component-{k}"``,
``"restarts"``, ``"best"``, ``"hdi-{tag}"``, ``"mean-{tag}"``, ``"em"`` and, for traces,
``"trace-{i}"`` (``"trace-{i}-chain-{c}"`` for NUTS chains).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mixlab._validation import check_data, check_int
from mixlab.em.steps import log_prob_components
from mixlab.params import MixtureParams
from mixlab.result import FitResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


# ----------------------------------------------------------------------------- helpers
def _check_result(result: Any, name: str = "result") -> FitResult:
    if not isinstance(result, FitResult):
        raise TypeError(
            f"{name} must be a FitResult (the return value of ml.fit), got {type(result).__name__}"
        )
    return result


def _check_ax(ax: Any) -> Axes | None:
    if ax is None:
        return None
    from matplotlib.axes import Axes

    if not isinstance(ax, Axes):
        raise TypeError(
            f"ax must be a matplotlib Axes (e.g. from plt.subplots()) or None, "
            f"got {type(ax).__name__}"
        )
    return ax


def _root_figure(ax: Axes) -> Figure:
    """The Figure that holds ``ax`` (not a SubFigure); matplotlib >= 3.7."""
    try:
        return ax.get_figure(root=True)  # matplotlib >= 3.10
    except TypeError:
        fig = ax.figure
        while getattr(fig, "figure", fig) is not fig:  # a SubFigure's parent chain
            fig = fig.figure
        return fig


def _new_axes(ax: Axes | None, figsize: tuple[float, float] = (6.0, 4.0)) -> tuple[Figure, Axes]:
    """``ax``'s figure and ``ax``, or a new figure with one Axes."""
    ax = _check_ax(ax)
    if ax is not None:
        return _root_figure(ax), ax
    import matplotlib.pyplot as plt

    fig, new_ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, new_ax


def _data(result: FitResult, X: Any) -> np.ndarray:
    """``X`` (or the fitted data) as a float array of shape (n_samples, n_features)."""
    if X is None:
        if result.data is None:
            raise ValueError(
                "the result holds no data (e.g. loaded from a file saved without "
                "include_data=True); pass the data as X"
            )
        X = result.data
    Xc = check_data(result._input(X), np.dtype(np.float64))
    if Xc.shape[1] != result.n_features:
        raise ValueError(
            f"X has {Xc.shape[1]} feature(s) but the mixture was fitted on "
            f"{result.n_features}; pass data with the columns the mixture was fitted on"
        )
    return Xc


def _check_feature(feature: Any, result: FitResult, name: str = "feature") -> int:
    """A column index from an index or (for named data) a feature name."""
    n_features = result.n_features
    names = result.feature_names
    if isinstance(feature, str):
        if names is None or feature not in names:
            known = (
                f"the features are {', '.join(map(repr, names))}"
                if names
                else ("the data have no feature names (fit a DataFrame or pass feature_names=)")
            )
            raise ValueError(f"{name}={feature!r} is not a feature of the fit; {known}")
        return names.index(feature)
    if isinstance(feature, bool | np.bool_) or not isinstance(feature, numbers.Integral):
        raise TypeError(
            f"{name} must be a column index or a feature name, got {type(feature).__name__}"
        )
    feature = int(feature)
    if not 0 <= feature < n_features:
        raise ValueError(
            f"{name}={feature} is out of range: the data have {n_features} feature(s); "
            f"choose a column index between 0 and {n_features - 1}"
        )
    return feature


def _check_features(features: Any, result: FitResult, what: str) -> tuple[int, int]:
    n_features = result.n_features
    if n_features < 2:
        raise ValueError(
            f"{what} needs at least 2 features but the mixture has {n_features}; "
            "use density_1d for one-dimensional data"
        )
    if isinstance(features, str | bytes) or not isinstance(features, Sequence):
        raise TypeError(
            f"features must be a pair of column indices such as (0, 1), "
            f"got {type(features).__name__}"
        )
    if len(features) != 2:
        raise ValueError(
            f"features must name exactly 2 columns, e.g. (0, 1); got {len(features)}: "
            f"{tuple(features)}"
        )
    i = _check_feature(features[0], result, "features[0]")
    j = _check_feature(features[1], result, "features[1]")
    if i == j:
        raise ValueError(f"features must be two different columns, got ({i}, {j})")
    return i, j


def _component_colors(n_components: int) -> np.ndarray:
    """A categorical colour per component, shape (n_components, 4)."""
    import matplotlib

    if n_components <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return np.asarray(cmap(np.arange(n_components)))
    if n_components <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return np.asarray(cmap(np.arange(n_components)))
    return np.asarray(matplotlib.colormaps["turbo"](np.linspace(0.0, 1.0, n_components)))


def _ellipse_geometry(cov: np.ndarray, n_std: float) -> tuple[float, float, float]:
    """Width, height and angle (degrees) of the ``n_std`` ellipse of a 2x2 covariance."""
    vals, vecs = np.linalg.eigh(cov)
    vals = np.clip(vals, 0.0, None)
    angle = float(np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1])))
    return 2.0 * n_std * float(np.sqrt(vals[1])), 2.0 * n_std * float(np.sqrt(vals[0])), angle


def _draw_components(
    ax: Axes,
    params: MixtureParams,
    features: tuple[int, int],
    colors: np.ndarray,
    ellipses: bool = True,
) -> None:
    """Every component's mean and (optionally) its ellipses at 1 and 2 standard deviations."""
    from matplotlib.patches import Ellipse

    i, j = features
    means, covs = params.moments()
    means = np.asarray(means, dtype=np.float64)[:, [i, j]]
    covs = np.asarray(covs, dtype=np.float64)[:, [i, j]][:, :, [i, j]]
    for k in range(params.n_components if ellipses else 0):
        for n_std, alpha in ((1, 0.9), (2, 0.5)):
            width, height, angle = _ellipse_geometry(covs[k], n_std)
            ax.add_patch(
                Ellipse(
                    xy=(means[k, 0], means[k, 1]),
                    width=width,
                    height=height,
                    angle=angle,
                    facecolor="none",
                    edgecolor=colors[k],
                    linewidth=1.5,
                    alpha=alpha,
                    gid=f"ellipse-{k}-{n_std}sd",
                )
            )
    ax.scatter(
        means[:, 0],
        means[:, 1],
        marker="X",
        s=90,
        c=colors,
        edgecolors="black",
        linewidths=1.0,
        zorder=4,
        gid="means",
    )


def _feature_labels(ax: Axes, result: FitResult, features: tuple[int, int]) -> None:
    ax.set_xlabel(result.feature_label(features[0]))
    ax.set_ylabel(result.feature_label(features[1]))


# ----------------------------------------------------------------------------- trace
def _trace_lines(result: FitResult) -> tuple[list[tuple[np.ndarray, np.ndarray]], str, str]:
    """(x, y) pairs, x label and y label of one result's objective."""
    if result.method == "em":
        y = np.asarray(result.trace, dtype=np.float64)
        hard = result.settings.get("assignment") == "hard"
        ylabel = "classification log-likelihood" if hard else "log-likelihood"
        return [(np.arange(len(y)), y)], "iteration", ylabel
    if result.method == "svi":
        y = np.asarray(result.trace, dtype=np.float64)
        return [(np.arange(1, len(y) + 1), y)], "step", "ELBO"
    if result.method == "online_em":  # n x each minibatch's mean log-density
        y = np.asarray(result.trace, dtype=np.float64)
        return [(np.arange(1, len(y) + 1), y)], "step", "log-likelihood (minibatch estimate)"
    if result.method == "nuts":
        draws = result.diagnostics.get("draw_log_likelihood")
        if draws is None:
            raise ValueError(
                "this NUTS result has no diagnostics['draw_log_likelihood'] of shape "
                "(chains, draws); refit it with ml.fit(..., method=ml.NUTS(...))"
            )
        draws = np.asarray(draws, dtype=np.float64)
        if draws.ndim != 2:
            raise ValueError(
                "diagnostics['draw_log_likelihood'] must have shape (chains, draws), "
                f"got {draws.shape}"
            )
        x = np.arange(1, draws.shape[1] + 1)
        return [(x, chain) for chain in draws], "draw", "log-likelihood"
    raise ValueError(
        f"unknown method {result.method!r}; expected 'em', 'online_em', 'svi' or 'nuts'"
    )


def trace(
    *results: FitResult, ax: Axes | None = None, labels: Sequence[str] | None = None
) -> Figure:
    """The objective per iteration, step or draw of one or more fits.

    Parameters
    ----------
    *results : FitResult
        EM fits (``trace``, shape ``(n_iter + 1,)``: the total log-likelihood after
        each iteration, ``trace[0]`` at the start; the classification log-likelihood
        for hard EM), SVI fits (``trace``, shape ``(num_steps,)``: the ELBO per step)
        and NUTS fits (``diagnostics["draw_log_likelihood"]``, shape
        ``(chains, draws)``: one line per chain).  Several are overlaid with a legend.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; by default a new figure.
    labels : sequence of str, optional
        One legend label per result; by default the method names.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    TypeError
        No result, or something that is not a FitResult.
    ValueError
        ``labels`` of the wrong length, or a NUTS result without draw log-likelihoods.
    """
    if not results:
        raise TypeError("trace needs at least one FitResult, e.g. trace(result)")
    for n, result in enumerate(results):
        _check_result(result, f"results[{n}]")
    if labels is None:
        methods = [r.method for r in results]
        labels = [
            m if methods.count(m) == 1 else f"{m} {methods[:n].count(m) + 1}"
            for n, m in enumerate(methods)
        ]
    else:
        if isinstance(labels, str):
            labels = [labels]
        labels = [str(label) for label in labels]
        if len(labels) != len(results):
            raise ValueError(
                f"labels has {len(labels)} entries but {len(results)} result(s) were given; "
                "pass one label per result"
            )
    lines = [_trace_lines(r) for r in results]
    fig, ax = _new_axes(ax)
    n_lines = 0
    for n, ((pairs, _, _), label) in enumerate(zip(lines, labels)):
        for c, (x, y) in enumerate(pairs):
            many = len(pairs) > 1
            ax.plot(
                x,
                y,
                linewidth=1.2,
                label=f"{label} chain {c}" if many else label,
                gid=f"trace-{n}-chain-{c}" if many else f"trace-{n}",
            )
            n_lines += 1
    xlabels = list(dict.fromkeys(xl for _, xl, _ in lines))
    ylabels = list(dict.fromkeys(yl for _, _, yl in lines))
    ax.set_xlabel(" / ".join(xlabels))
    ax.set_ylabel(" / ".join(ylabels))
    if n_lines > 1:
        ax.legend()
    return fig


# ----------------------------------------------------------------------------- scatter
def scatter_2d(
    result: FitResult,
    X: Any = None,
    *,
    n_points: int = 500,
    seed: int = 0,
    features: tuple[int, int] = (0, 1),
    ellipses: bool = True,
    ax: Axes | None = None,
) -> Figure:
    """Data coloured by their most probable component, with the components' ellipses.

    Parameters
    ----------
    result : FitResult
        A fit with at least 2 features (any covariance type).
    X : array of shape (n_samples, n_features), optional
        Data to draw; by default the data that were fitted (``result.data``).
    n_points : int, default 500
        At most this many rows are drawn, chosen at random without replacement.
    seed : int, default 0
        Seed of ``np.random.default_rng`` for that choice.
    features : (int, int) or (str, str), default (0, 1)
        Columns on the x and y axes, by index or by feature name
        (:attr:`FitResult.feature_names`); axes are labelled with the names
        and units where the fit has them.
    ellipses : bool, default True
        Draw every component's ellipses at 1 and 2 standard deviations (from the 2x2
        block of ``result.params.full_covariances()``, shape (K, D, D)).  The means are
        marked either way.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; by default a new figure.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        Fewer than 2 features, features out of range, or data that do not match the fit.
    """
    result = _check_result(result)
    features = _check_features(features, result, "scatter_2d")
    n_points = check_int(n_points, "n_points", 1)
    seed = check_int(seed, "seed", 0)
    Xc = _data(result, X)
    if Xc.shape[0] > n_points:
        rows = np.random.default_rng(seed).choice(Xc.shape[0], size=n_points, replace=False)
        Xc = Xc[rows]
    labels = np.asarray(result.predict(Xc))
    colors = _component_colors(result.n_components)
    fig, ax = _new_axes(ax)
    i, j = features
    ax.scatter(Xc[:, i], Xc[:, j], c=colors[labels], s=12, alpha=0.7, linewidths=0, gid="points")
    _draw_components(ax, result.params, features, colors, ellipses=bool(ellipses))
    _feature_labels(ax, result, features)
    ax.set_title(f"{result.method.upper()} fit, {result.n_components} component(s)")
    return fig


# ----------------------------------------------------------------------------- density
def density_1d(
    result: FitResult,
    X: Any = None,
    *,
    bins: int = 50,
    feature: int = 0,
    ax: Axes | None = None,
) -> Figure:
    """Histogram of one feature with the fitted mixture density and its weighted components.

    For data with several features the marginal of ``feature`` is drawn (the family's
    :meth:`~mixlab.families.Family.marginal`; for a Gaussian component ``k`` it is
    ``w_k N(x | means[k, feature], full_covariances()[k, feature, feature])``).  Counts
    and binary data are drawn as probabilities of each integer over a histogram with
    one bar per integer.

    Parameters
    ----------
    result : FitResult
    X : array of shape (n_samples, n_features) or (n_samples,), optional
        Data of the histogram; by default the data that were fitted.
    bins : int, default 50
        Histogram bins.
    feature : int or str, default 0
        Column to draw, by index or by feature name.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; by default a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        The histogram (``density=True``), a line per weighted component density
        (gid ``"component-{k}"``) and the mixture density, their sum (gid ``"mixture"``),
        on a grid that reaches 6 standard deviations beyond every component.

    Raises
    ------
    ValueError
        ``feature`` out of range, ``bins`` < 1, or data that do not match the fit.
    """
    result = _check_result(result)
    feature = _check_feature(feature, result)
    bins = check_int(bins, "bins", 1)
    Xc = _data(result, X)
    x = Xc[:, feature]
    p = result.params
    weights = np.asarray(p.weights, dtype=np.float64)
    family, comps = p.family.marginal(p.components, feature)
    marginal = MixtureParams.trusted(p.weights, comps, family)
    means, covs = marginal.moments()
    means, sds = means[:, 0], np.sqrt(covs[:, 0, 0])
    finite = np.isfinite(sds)
    lo = min(float(x.min()), float(np.min((means - 6.0 * sds)[finite], initial=x.min())))
    hi = max(float(x.max()), float(np.max((means + 6.0 * sds)[finite], initial=x.max())))
    if family.discrete:
        lo, hi = max(np.floor(lo), 0.0), np.ceil(hi)
        grid = np.arange(lo, hi + 1.0)
        edges = np.arange(lo - 0.5, hi + 1.0)
    else:
        grid = np.linspace(lo, hi, 2000)
        edges = bins
    components = (
        weights[:, None]
        * np.exp(log_prob_components(grid[:, None].astype(marginal.dtype), marginal)).T
    )
    colors = _component_colors(p.n_components)
    fig, ax = _new_axes(ax)
    ax.hist(x, bins=edges, density=True, color="0.85", edgecolor="0.6", gid="histogram")
    ax.plot(
        grid, components.sum(axis=0), color="black", linewidth=2.5, label="mixture", gid="mixture"
    )
    for k in range(p.n_components):
        ax.plot(
            grid,
            components[k],
            color=colors[k],
            linestyle="--",
            linewidth=1.5,
            label=f"component {k} (w={weights[k]:.2f})",
            gid=f"component-{k}",
        )
    span = float(x.max() - x.min()) or 1.0
    ax.set_xlim(float(x.min()) - 0.1 * span, float(x.max()) + 0.1 * span)
    ax.set_xlabel(result.feature_label(feature))
    ax.set_ylabel("density")
    ax.legend()
    return fig


# ----------------------------------------------------------------------------- restarts
def restarts(result: FitResult, *, tolerance: float = 1.0, ax: Axes | None = None) -> Figure:
    """The initialisation study: the final log-likelihood of every EM restart, sorted.

    Parameters
    ----------
    result : FitResult
        An EM fit; ``result.restarts.log_likelihood`` has shape (n_init,) (NaN for failed
        restarts, which are counted in the title but not drawn).
    tolerance : float, default 1.0
        A restart "reaches the best" when its total log-likelihood is within this of the
        best; the share that does is given in the title and the band is shaded.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; by default a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        The finite restarts as points (gid ``"restarts"``) at ranks 1, 2, ... from best to
        worst, the best marked by a star (gid ``"best"``).

    Raises
    ------
    ValueError
        The result has no restarts (not an EM fit), every restart failed, or a negative
        ``tolerance``.
    """
    result = _check_result(result)
    if result.restarts is None:
        raise ValueError(
            f"this {result.method.upper()} result has no restarts; restarts are recorded by EM "
            "fits, e.g. ml.fit(X, k, method=ml.EM(n_init=8))"
        )
    if isinstance(tolerance, bool | np.bool_) or not isinstance(tolerance, numbers.Real):
        raise TypeError(f"tolerance must be a number, got {type(tolerance).__name__}")
    tolerance = float(tolerance)
    if not (np.isfinite(tolerance) and tolerance >= 0.0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance}")
    ll = np.asarray(result.restarts.log_likelihood, dtype=np.float64).reshape(-1)
    finite = np.isfinite(ll)
    if not finite.any():
        raise ValueError(
            f"all {len(ll)} restarts failed (no finite log-likelihood); nothing to draw. "
            "Check result.restarts.status"
        )
    share = result.restarts.share_reaching_best(tolerance)
    values = np.sort(ll[finite])[::-1]
    ranks = np.arange(1, len(values) + 1)
    best = values[0]
    fig, ax = _new_axes(ax)
    ax.axhspan(best - tolerance, best, color="tab:green", alpha=0.15, label=f"within {tolerance:g}")
    ax.scatter(ranks, values, s=25, color="tab:blue", zorder=3, label="restart", gid="restarts")
    ax.scatter([1], [best], marker="*", s=200, color="tab:red", zorder=4, label="best", gid="best")
    n_failed = int(np.sum(~finite))
    failed = f", {n_failed} failed" if n_failed else ""
    ax.set_title(
        f"{share:.0%} of {len(ll)} restarts within {tolerance:g} of the best ({best:.6g}){failed}"
    )
    ax.set_xlabel("restart, sorted by final log-likelihood")
    ax.set_ylabel("final log-likelihood")
    ax.legend(loc="lower left")
    return fig


# ----------------------------------------------------------------------------- snapshots
def snapshots(
    result: FitResult,
    X: Any = None,
    iterations: Sequence[int] = (1, 5, 10, 15),
    *,
    features: tuple[int, int] = (0, 1),
) -> Figure:
    """The EM fit at chosen iterations, side by side.

    Each panel shows the data coloured by the responsibility of component 0 at that
    iteration (``coolwarm_r``: red 0, blue 1, the colour of component 0) and that
    iteration's ellipses at 1 and 2 standard deviations, with the means marked.

    Parameters
    ----------
    result : FitResult
        An EM fit made with ``ml.EM(record_params=True)``: ``result.params_trace`` holds
        arrays with a leading axis of length ``n_iter + 1`` (iteration ``t`` at index ``t``,
        0 being the start).
    X : array of shape (n_samples, n_features), optional
        Data to draw; by default the data that were fitted.
    iterations : sequence of int, default (1, 5, 10, 15)
        Iterations to show, each between 0 and ``result.n_iter``; one panel each.
    features : (int, int) or (str, str), default (0, 1)
        Columns on the x and y axes, by index or by feature name
        (:attr:`FitResult.feature_names`); axes are labelled with the names
        and units where the fit has them.

    Returns
    -------
    matplotlib.figure.Figure
        One Axes per iteration.

    Raises
    ------
    ValueError
        No recorded parameters, an iteration beyond ``result.n_iter``, fewer than 2
        features or features out of range.
    """
    from mixlab.em.steps import e_step

    result = _check_result(result)
    if result.params_trace is None:
        raise ValueError(
            "this result has no params_trace: snapshots need the parameters of every EM "
            "iteration; refit with ml.fit(X, k, method=ml.EM(record_params=True))"
        )
    features = _check_features(features, result, "snapshots")
    if isinstance(iterations, numbers.Integral):
        iterations = (iterations,)
    if isinstance(iterations, str | bytes) or not isinstance(iterations, Sequence | np.ndarray):
        raise TypeError(
            "iterations must be a sequence of ints, e.g. (1, 5, 10), "
            f"got {type(iterations).__name__}"
        )
    its = [check_int(t, "each iteration", 0) for t in iterations]
    if not its:
        raise ValueError("iterations is empty; pass at least one iteration, e.g. (1, 5, 10)")
    pt = result.params_trace
    last = min(int(result.n_iter), int(np.shape(pt.weights)[0]) - 1)
    beyond = [t for t in its if t > last]
    if beyond:
        raise ValueError(
            f"iteration {beyond[0]} was not recorded: the fit stopped after {last} iteration(s), "
            f"so the largest available is {last}; choose iterations between 0 and {last}"
        )
    Xc = _data(result, X)
    colors = _component_colors(result.n_components)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1,
        len(its),
        figsize=(3.6 * len(its), 3.8),
        sharex=True,
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    i, j = features
    for ax, t in zip(axes[0], its):
        params_t = pt[t]
        resp0 = np.exp(np.asarray(e_step(Xc, params_t).log_resp))[:, 0]
        ax.scatter(
            Xc[:, i],
            Xc[:, j],
            c=resp0,
            cmap="coolwarm_r",
            vmin=0.0,
            vmax=1.0,
            s=10,
            alpha=0.8,
            linewidths=0,
            gid="points",
        )
        _draw_components(ax, params_t, features, colors)
        ax.set_title(f"iteration {t}")
        ax.set_xlabel(result.feature_label(i))
    axes[0, 0].set_ylabel(result.feature_label(j))
    fig.suptitle("EM snapshots (colour: responsibility of component 0)")
    return fig


# ----------------------------------------------------------------------------- forest
def _readable_limits(values: np.ndarray) -> tuple[float, float]:
    """x-limits around ``values`` with a 15% margin (a point gets +-1% of its size)."""
    values = values[np.isfinite(values)]
    lo, hi = float(values.min()), float(values.max())
    span = hi - lo
    if span <= 1e-12 * max(abs(lo), abs(hi), 1e-300):
        span = max(abs(lo), 1e-12) * 0.02
        return lo - span / 2.0, hi + span / 2.0
    return lo - 0.15 * span, hi + 0.15 * span


def forest(
    em: FitResult,
    *others: FitResult,
    hdi_prob: float = 0.94,
    parameters: Sequence[str] | None = None,
    em_interval: bool = False,
) -> Figure:
    """EM's estimates over the posterior intervals of SVI and NUTS fits.

    Calls :func:`mixlab.compare` (which relabels the draws to EM's components) and draws,
    per parameter element, a horizontal HDI per method (slightly offset, gid
    ``"hdi-{tag}"``), its posterior mean as a dot (gid ``"mean-{tag}"``) and EM's value as
    a red cross (gid ``"em"``).  Point estimates (SVI delta guide) have no interval: only
    the dot is drawn.  One panel per parameter element, each with its own x scale around
    its intervals, so that parameters of very different sizes (and features in their own
    units) all show their intervals at a readable width; panels of one parameter group
    follow each other under the group's name.

    Parameters
    ----------
    em : FitResult
        The EM fit (the reference labelling).
    *others : FitResult
        SVI and/or NUTS fits of the same model.
    hdi_prob : float, default 0.94
        Probability mass of the highest-density intervals.
    parameters : sequence of str, optional
        Parameter groups to draw, in order: ``"weights"`` and the family's
        parameters; default the weights and the family's location (``means``,
        ``rates``, ``probs``).
    em_interval : bool, default False
        Also draw EM's Wald interval, estimate ± z standard errors with
        ``z`` the normal quantile of ``hdi_prob`` (gid ``"em-interval"``; from
        :meth:`FitResult.standard_errors`, as in the comparison's ``em_se``).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    TypeError
        ``em`` or one of ``others`` is not a suitable FitResult.
    ValueError
        An unknown parameter group, ``em`` not an EM fit, ``hdi_prob`` outside (0, 1) or
        fits of different models.
    """
    from mixlab.compare import compare

    em = _check_result(em, "em")
    if em_interval and em.method == "em" and em.data is None:
        raise ValueError(
            "em_interval needs the fitted data for EM's standard errors; the result holds "
            "none (loaded without include_data=True)"
        )
    if em.method != "em":
        raise ValueError(
            f"the first result must be the EM fit, got a {em.method.upper()} fit; "
            "call forest(em, svi, nuts)"
        )
    if parameters is None:
        parameters = ("weights", em.params.family.param_names()[0])
    if isinstance(parameters, str):
        parameters = (parameters,)
    groups = list(dict.fromkeys(parameters))
    known = ("weights", *em.params.family.param_names())
    unknown = [g for g in groups if g not in known]
    if unknown or not groups:
        raise ValueError(
            f"unknown parameter group(s) {unknown}; parameters must name one or more of {known}"
        )
    cmp = compare(em, *others, hdi_prob=hdi_prob)
    table = cmp.table
    tags = [tag for tag in cmp.methods.index if tag != "em"]
    elements = [
        (group, label)
        for group in groups
        for label in (str(n) for n in table.index)
        if label.startswith(f"{group}[")
    ]
    import matplotlib
    import matplotlib.pyplot as plt

    tab10 = matplotlib.colormaps["tab10"]
    palette = [tab10(c) for c in (0, 1, 2, 4, 5, 6, 7, 8, 9)]
    fig, axes = plt.subplots(
        len(elements),
        1,
        figsize=(8.0, 1.0 + 0.55 * len(elements)),
        squeeze=False,
        layout="constrained",
    )
    step = min(0.6 / max(len(tags), 1), 0.2)
    z = None
    if em_interval and "em_se" in table:
        from statistics import NormalDist

        z = NormalDist().inv_cdf(0.5 + cmp.hdi_prob / 2.0)
    previous_group = None
    for ax, (group, label) in zip(axes[:, 0], elements):
        row = table.loc[label]
        shown = [float(row["em"])]
        for m, tag in enumerate(tags):
            offset = (m - (len(tags) - 1) / 2.0) * step
            color = palette[m % len(palette)]
            lo, hi = float(row[f"{tag}_hdi_low"]), float(row[f"{tag}_hdi_high"])
            mean = float(row[f"{tag}_mean"])
            has = np.isfinite(lo) and np.isfinite(hi)
            if has:
                ax.hlines(
                    [offset],
                    [lo],
                    [hi],
                    colors=[color],
                    linewidth=2.0,
                    label=f"{tag} {round(100 * cmp.hdi_prob)}% HDI",
                    gid=f"hdi-{tag}",
                )
                shown += [lo, hi]
            ax.scatter(
                [mean],
                [offset],
                color=color,
                s=22,
                zorder=3,
                label=f"{tag} mean" if has else f"{tag} (point estimate)",
                gid=f"mean-{tag}",
            )
            shown.append(mean)
        if z is not None:
            centre, half = float(row["em"]), z * float(row["em_se"])
            ax.hlines(
                [0.0],
                [centre - half],
                [centre + half],
                colors="red",
                linewidth=1.0,
                zorder=3,
                label=f"EM ± {z:.2f} SE (Wald, {round(100 * cmp.hdi_prob)}%)",
                gid="em-interval",
            )
            shown += [centre - half, centre + half]
        ax.scatter(
            [float(row["em"])],
            [0.0],
            marker="x",
            color="red",
            s=50,
            linewidths=2.0,
            zorder=4,
            label="EM",
            gid="em",
        )
        ax.set_xlim(*_readable_limits(np.asarray(shown, dtype=np.float64)))
        ax.ticklabel_format(axis="x", useOffset=False)
        ax.tick_params(axis="x", labelsize="small")
        ax.set_yticks([0.0], [label])
        ax.set_ylim(-0.5, 0.5)
        ax.grid(axis="x", alpha=0.3)
        if group != previous_group:
            ax.set_title(group, loc="left", fontsize="medium")
            previous_group = group
    handles, texts = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, texts, loc="outside right upper", fontsize="small")
    fig.suptitle(f"EM against {round(100 * cmp.hdi_prob)}% posterior intervals")
    return fig


# ----------------------------------------------------------------------------- selection
def selection(selection: Any, criterion: str | None = None, ax: Axes | None = None) -> Figure:
    """A criterion against the number of components, one line per model (as mclust draws BIC).

    Parameters
    ----------
    selection : Selection
        The result of :func:`mixlab.select`.
    criterion : {"bic", "aic", "icl", "loo"}, optional
        The criterion to draw; by default the one ``selection`` ranked by.  ``"loo"``
        needs a selection made with SVI or NUTS.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; by default a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        The figure of the Axes drawn into: one line with markers per (family,
        covariance) model, in table order (gid ``"selection-{m}"``, labelled
        ``"family, covariance"``; points sorted by K,
        NaN where a candidate was skipped or failed), and the lowest point of the
        criterion ringed (gid ``"best"``; the first in table order on a tie, which for
        the selection's own criterion is ``selection.best_key``).

    Raises
    ------
    TypeError
        ``selection`` is not a Selection.
    ValueError
        An unknown criterion, ``"loo"`` for a selection without LOO, or no finite value
        to draw.
    """
    from matplotlib.ticker import MaxNLocator

    from mixlab.select import CRITERIA, Selection

    if not isinstance(selection, Selection):
        raise TypeError(
            "selection must be a Selection (the return value of ml.select), "
            f"got {type(selection).__name__}"
        )
    table = selection.table
    criterion = selection.criterion if criterion is None else criterion
    if criterion not in CRITERIA:
        raise ValueError(
            f"criterion must be one of {', '.join(map(repr, CRITERIA))}; got {criterion!r}"
        )
    if criterion not in table.columns:
        raise ValueError(
            f"this selection has no {criterion!r} column: PSIS-LOO comes with "
            "ml.select(..., method=ml.NUTS(...) or ml.SVI(...)); draw 'bic', 'aic' or 'icl'"
        )
    values = table[criterion].to_numpy(dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        raise ValueError(f"no candidate has a finite {criterion}; nothing to draw")
    families = table["family"].tolist()
    layouts = table["covariance"].tolist()
    ks = table["n_components"].to_numpy(dtype=np.int64)
    models = list(dict.fromkeys(zip(families, layouts)))
    markers = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
    fig, ax = _new_axes(ax)
    for m, model in enumerate(models):
        rows = np.array([i for i, key in enumerate(zip(families, layouts)) if key == model])
        rows = rows[np.argsort(ks[rows], kind="stable")]
        family, layout = model
        ax.plot(
            ks[rows],
            values[rows],
            marker=markers[m % len(markers)],
            linewidth=1.5,
            markersize=6,
            label=family if layout is None else f"{family}, {layout}",
            gid=f"selection-{m}",
        )
    best = int(np.flatnonzero(values == np.min(values[finite]))[0])
    best_label = families[best] if layouts[best] is None else f"{families[best]}, {layouts[best]}"
    ax.scatter(
        [ks[best]],
        [values[best]],
        s=250,
        facecolors="none",
        edgecolors="red",
        linewidths=2.0,
        zorder=4,
        label=f"best: {best_label}, K={ks[best]}",
        gid="best",
    )
    name = criterion.upper()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of components K")
    scale = ": -2 elpd_loo" if criterion == "loo" else ""
    ax.set_ylabel(f"{name}{scale} (lower is better)")
    ax.legend()
    return fig


__all__ = [
    "density_1d",
    "forest",
    "restarts",
    "scatter_2d",
    "selection",
    "snapshots",
    "trace",
]
