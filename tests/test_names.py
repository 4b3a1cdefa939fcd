"""Named data in and out (DataFrame columns, units), the canonical component order and
the 100-column comparison view."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

import mixlab as ml
from mixlab import plot
from mixlab.align import canonical_permutation


@pytest.fixture(scope="module")
def frame():
    return ml.datasets.load("faithful", as_frame=True)


@pytest.fixture(scope="module")
def named(frame):
    return ml.fit(frame, 2, method=ml.EM(n_init=4, record_params=True), key=0)


def _fake_posterior(em: ml.FitResult, method: str, seed: int, n_draws: int = 200):
    """A fit of ``method`` whose draws scatter around EM's estimate (sd 1% of each value)."""
    rng = np.random.default_rng(seed)
    values = {"weights": em.params.weights, **em.params.components}
    draws = {
        k: np.asarray(v)[None, None] * (1 + 0.01 * rng.standard_normal((2, n_draws, *np.shape(v))))
        for k, v in values.items()
    }
    draws["weights"] = draws["weights"] / draws["weights"].sum(-1, keepdims=True)
    cov = draws.get("covariances")
    if cov is not None:  # keep the draws symmetric
        draws["covariances"] = (cov + np.swapaxes(cov, -1, -2)) / 2
    return dataclasses.replace(em, method=method, posterior=draws, restarts=None, diagnostics={})


# ----------------------------------------------------------------------------- names in
def test_a_dataframe_fit_keeps_its_column_names_and_units(frame, named):
    assert named.feature_names == ("eruptions", "waiting")
    assert named.feature_units == ("min", "min")
    plain = ml.fit(frame.to_numpy(), 2, method=ml.EM(n_init=4, record_params=True), key=0)
    assert plain.feature_names is None and plain.feature_units is None
    np.testing.assert_array_equal(named.params.means, plain.params.means)
    assert named.feature_label(1) == "waiting (min)"
    assert plain.feature_label(1) == "feature 1"


def test_feature_names_argument_series_and_bad_names(frame):
    X = frame.to_numpy()
    r = ml.fit(X, 2, feature_names=["a", "b"], method=ml.EM(n_init=4), key=0)
    assert r.feature_names == ("a", "b") and r.feature_units is None
    s = ml.fit(frame["waiting"], 2, key=0)
    assert s.feature_names == ("waiting",)
    with pytest.raises(ValueError, match="feature_names has 3 name.*2 feature"):
        ml.fit(X, 2, feature_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="distinct; repeated: a"):
        ml.fit(X, 2, feature_names=["a", "a"])
    with pytest.raises(TypeError, match="list of strings"):
        ml.fit(X, 2, feature_names="ab")
    # a frame with repeated column names fits, without names
    twice = pd.DataFrame(X, columns=["x", "x"])
    assert ml.fit(twice, 2, method=ml.EM(n_init=4), key=0).feature_names is None


def test_prediction_matches_a_frames_columns_by_name(frame, named):
    X = frame.to_numpy()
    swapped = frame[["waiting", "eruptions"]]
    np.testing.assert_array_equal(named.predict_proba(swapped), named.predict_proba(X))
    assert named.score(swapped) == named.score(X)
    assert named.bic(swapped) == named.bic(X)
    with pytest.raises(ValueError, match="no column.*'waiting'.*fitted on 'eruptions', 'waiting'"):
        named.predict(frame.rename(columns={"waiting": "wait"}))


def test_names_survive_save_and_load(named, tmp_path):
    back = ml.FitResult.load(named.save(tmp_path / "named.npz"))
    assert back.feature_names == named.feature_names
    assert back.feature_units == named.feature_units


# ---------------------------------------------------------------------------- names out
def test_summary_names_the_features(named):
    assert "features: eruptions (min), waiting (min)" in named.summary()


def test_plot_axes_say_the_names_and_units(named, frame):
    fig = plot.scatter_2d(named)
    (ax,) = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("eruptions (min)", "waiting (min)")
    fig = plot.scatter_2d(named, features=("waiting", "eruptions"))
    assert fig.axes[0].get_xlabel() == "waiting (min)"
    fig = plot.density_1d(named, feature="waiting")
    assert fig.axes[0].get_xlabel() == "waiting (min)"
    fig = plot.snapshots(named, iterations=(0, 1))
    assert fig.axes[0].get_xlabel() == "eruptions (min)"
    with pytest.raises(ValueError, match="'wait' is not a feature.*'eruptions', 'waiting'"):
        plot.scatter_2d(named, features=("wait", "eruptions"))
    galaxies = ml.fit(ml.datasets.load("galaxies", as_frame=True), 3, key=0)
    assert plot.density_1d(galaxies).axes[0].get_xlabel() == "velocity (km/s)"
    import matplotlib.pyplot as plt

    plt.close("all")


def test_compare_rows_and_arviz_coordinates_name_the_features(named):
    nuts = _fake_posterior(named, "nuts", 0)
    table = ml.compare(named, nuts).table
    assert "means[0, waiting]" in table.index
    assert "covariances[1, eruptions, waiting]" in table.index
    assert table.loc["means[0, waiting]", "em"] == named.params.means[0, 1]
    idata = dataclasses.replace(nuts, method="svi").to_arviz()  # no NUTS sample stats
    assert list(idata.posterior.coords["feature"].values) == ["eruptions", "waiting"]


# ------------------------------------------------------------------------ terminal view
def test_the_comparison_fits_100_columns_and_keeps_the_wide_table(named):
    svi = _fake_posterior(named, "svi", 1)
    nuts = _fake_posterior(named, "nuts", 2)
    cmp = ml.compare(named, svi, nuts)
    text = str(cmp)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert len(cmp.table.columns) * 10 > 150  # the wide table would not fit
    wide = cmp.to_pandas()
    pd.testing.assert_frame_equal(wide, cmp.table)
    assert wide is not cmp.table
    # every parameter and method shows up, with EM's value as the table has it
    rows = [line for line in lines if line.startswith("  [0, waiting]")]
    assert len(rows) == 2  # one per method block
    assert f"{named.params.means[0, 1]:.4g}" in rows[0].split()
    assert any(line.startswith("nuts ") for line in lines)


def test_the_comparison_view_fits_100_columns_for_a_wide_model():
    rng = np.random.default_rng(5)
    names = [f"measurement_{c}_long_name" for c in "abcde"]
    X = np.vstack([rng.normal(m, 1.0, size=(80, 5)) for m in (0.0, 6.0, 12.0)])
    em = ml.fit(pd.DataFrame(X, columns=names), 3, key=0)
    cmp = ml.compare(em, _fake_posterior(em, "nuts", 3), _fake_posterior(em, "svi", 4))
    lines = str(cmp).splitlines()
    assert max(len(line) for line in lines) <= 100
    assert max(len(line) for line in cmp.to_text(width=80).splitlines()) <= 80
    # names too long for the rows: feature numbers in the rows and a legend above
    assert "features: 0 = measurement_a_long_name, 1 = measurement_b_long_name" in str(cmp)
    rows = [line.split() for line in lines if line.startswith("  [1, 3]")]
    assert len(rows) == 2 and rows[0][2] == f"{em.params.means[1, 3]:.4g}"


# ----------------------------------------------------------------------- canonical order
def test_canonical_permutation_against_numpy():
    means = np.array([[2.0, 1.0], [1.0, 5.0], [2.0, 0.0], [-1.0, 3.0]])
    weights = np.array([0.1, 0.4, 0.4, 0.1])
    p = ml.MixtureParams(weights, means, np.ones(4), "spherical")
    # by the first feature, the second breaking ties
    want = sorted(range(4), key=lambda k: (means[k, 0], means[k, 1]))
    np.testing.assert_array_equal(canonical_permutation(p, "location"), want)
    # largest weight first, location breaking ties
    want = sorted(range(4), key=lambda k: (-weights[k], means[k, 0], means[k, 1]))
    np.testing.assert_array_equal(canonical_permutation(p, "weights"), want)
    np.testing.assert_array_equal(canonical_permutation(p, None), np.arange(4))
    with pytest.raises(ValueError, match="order must be one of"):
        canonical_permutation(p, "size")


def test_fits_with_other_keys_and_methods_number_components_alike(frame):
    X = frame.to_numpy()
    raw = [ml.fit(X, 2, key=k, order=None) for k in range(6)]
    first = [int(np.argmin(r.params.means[:, 0])) for r in raw]
    assert len(set(first)) == 2  # the engine's own numbering differs between keys
    for k, r in enumerate(raw):
        ordered = ml.fit(X, 2, key=k)
        assert ordered.settings["order"] == "location"
        assert np.all(np.diff(ordered.params.means[:, 0]) > 0)
        perm = np.argsort(r.params.means[:, 0])
        np.testing.assert_array_equal(ordered.params.means, r.params.means[perm])
        np.testing.assert_array_equal(ordered.params.covariances, r.params.covariances[perm])
        assert ordered.log_likelihood == r.log_likelihood
    with pytest.raises(ValueError, match="order must be one of"):
        ml.fit(X, 2, order="size")


def test_reorder_moves_every_per_component_array_alike(named):
    perm = np.array([1, 0])
    nuts = _fake_posterior(named, "nuts", 5)
    nuts = dataclasses.replace(
        nuts,
        diagnostics={
            "label_permutations": np.broadcast_to([0, 1], (2, 200, 2)),
            "r_hat": {"means": np.array([[1.0, 1.1], [1.2, 1.3]])},
            "collapses": [(0, 3, "weight")],
            "reinitialisations": [(3, 0)],
        },
    )
    flipped = nuts.reorder("weights")  # component 1 of faithful is the heavier
    assert named.params.weights[1] > named.params.weights[0]
    np.testing.assert_array_equal(flipped.params.weights, named.params.weights[perm])
    np.testing.assert_array_equal(flipped.posterior["means"], nuts.posterior["means"][:, :, perm])
    np.testing.assert_array_equal(
        flipped.posterior["covariances"], nuts.posterior["covariances"][:, :, perm]
    )
    np.testing.assert_array_equal(flipped.diagnostics["label_permutations"][0, 0], [1, 0])
    np.testing.assert_array_equal(flipped.diagnostics["r_hat"]["means"], [[1.2, 1.3], [1.0, 1.1]])
    assert flipped.diagnostics["collapses"] == [(1, 3, "weight")]
    assert flipped.diagnostics["reinitialisations"] == [(3, 1)]
    trace = named.reorder("weights").params_trace
    np.testing.assert_array_equal(trace.means, named.params_trace.means[:, perm])
    # a tied covariance is shared: left as it is
    tied = ml.fit(named.data, 2, covariance="tied", key=0)
    again = tied.reorder("weights")
    np.testing.assert_array_equal(again.params.covariances, tied.params.covariances)


def test_an_explicit_start_keeps_its_numbering(frame):
    X = frame.to_numpy()
    start = {
        "weights": [0.5, 0.5],
        "means": [[4.0, 80.0], [2.0, 55.0]],  # the later component first
        "covariances": [np.eye(2), np.eye(2)],
    }
    r = ml.fit(X, 2, method=ml.EM(init=start), key=0)
    assert r.settings["order"] is None
    assert r.params.means[0, 0] > r.params.means[1, 0]
    assert ml.fit(X, 2, method=ml.EM(init=start), order="location").params.means[0, 0] < 3


def test_select_keeps_the_names(frame):
    sel = ml.select(frame, [2], method=ml.EM(n_init=4))
    assert sel.best.feature_names == ("eruptions", "waiting")
    assert sel.best.feature_units == ("min", "min")
