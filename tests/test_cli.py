"""The mixlab command: good and bad input, exit codes, messages, and the files it writes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

import mixlab as ml
from mixlab import cli


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "mixlab", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="session")
def faithful_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "faithful.csv"
    X = ml.datasets.load("faithful")
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["eruptions", "waiting"])
        w.writerows(X.tolist())
    return path


def _png_ok(path):
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_fit_writes_parsable_outputs(faithful_csv, tmp_path):
    out = tmp_path / "out"
    res = run("fit", faithful_csv, "-k", 2, "--n-init", 4, "--out", out, "--quiet")
    assert res.returncode == 0, res.stderr
    assert res.stderr == "" and res.stdout == ""  # --quiet: nothing printed
    params = json.loads((out / "params.json").read_text())
    assert params["columns"] == ["eruptions", "waiting"]
    assert abs(sum(params["weights"]) - 1) < 1e-12
    ref = ml.fit(ml.datasets.load("faithful"), 2, ml.EM(n_init=4), key=0)
    np.testing.assert_allclose(params["log_likelihood"], ref.log_likelihood, rtol=1e-10)
    np.testing.assert_allclose(
        np.sort(np.asarray(params["means"])[:, 0]), np.sort(ref.params.means[:, 0]), rtol=1e-8
    )
    with (out / "labels.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["label", "p0", "p1"] and len(rows) == 273
    probs = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    labels = np.array([int(r[0]) for r in rows[1:]])
    np.testing.assert_array_equal(labels, probs.argmax(1))
    trace = np.loadtxt(out / "trace.csv", delimiter=",", skiprows=1)[:, 1]
    assert np.all(np.diff(trace) >= -1e-6)
    for name in ("trace.png", "scatter.png", "restarts.png"):
        assert _png_ok(out / name), name
    loaded = ml.FitResult.load(out / "result.npz")
    np.testing.assert_allclose(loaded.log_likelihood, params["log_likelihood"])


def test_fit_prints_a_summary_and_reads_npy_and_headerless_csv(tmp_path):
    X = ml.datasets.load("galaxies")[:, 0]
    np.save(tmp_path / "g.npy", X)
    res = run("fit", tmp_path / "g.npy", "-k", 3, "--n-init", 2)
    assert res.returncode == 0, res.stderr
    assert "EM fit: 3 component(s), 1 feature(s)" in res.stdout
    headerless = tmp_path / "g.csv"
    headerless.write_text("\n".join(f"{v}" for v in X) + "\n")
    assert cli.read_data(str(headerless))[1] == ["x0"]
    np.testing.assert_array_equal(cli.read_data(str(headerless))[0][:, 0], X)


BAD = [
    # (file contents or None for no file, extra args, message fragment)
    (None, [], "no such file"),
    ("", [], "is empty"),
    ("a,b\n", [], "has a header but no data rows"),
    (
        "name,x,y\nann,1,2\nbob,3,4\n",
        [],
        "text in column(s) name; select numeric columns with --columns x,y",
    ),
    ("x,y\n1,2\n,4\n5,NA\n7,8\n", [], "2 missing value(s) in 2 row(s); pass --drop-missing"),
    ("x,y\n1,2\n3,4\n", ["-k", "3"], "-k 3 is larger than the 2 rows"),
    ("x,y\n1,2\n3\n", [], "line 3 has 1 fields, expected 2"),
    ("x,y\n1,2\n3,4\n", ["--columns", "z"], "has no column 'z'; columns are x, y"),
    ("x,y\n1,2\n3,4\n", ["-k", "0"], "-k must be at least 1"),
    ("x,y\n1,2\n3,4\n", ["--weights", "w"], "has no weight column 'w'; columns are x, y"),
    ("w\n1\n3\n", ["--weights", "w"], "no data columns besides the weights 'w'"),
    ("x,w\n1,2\n3,-1\n", ["--weights", "w"], "sample_weight[1] = -1 is negative"),
    (
        "x,y\n1,2\n3,4\n",
        ["--family", "poisson", "--covariance", "diag"],
        "covariance='diag' applies to families with a covariance layout",
    ),
    (
        "x,y\n1,2\n3.5,4\n",
        ["--family", "poisson"],
        "must hold counts (non-negative integers) for the Poisson family; column 0 has 3.5",
    ),
    ("x,y\n1,2\n0,1\n", ["--family", "bernoulli"], "binary values (0 or 1)"),
]


@pytest.mark.parametrize(("content", "extra", "message"), BAD)
def test_bad_input_is_one_line_and_exit_2(tmp_path, content, extra, message):
    path = tmp_path / "data.csv"
    if content is not None:
        path.write_text(content)
    args = ["fit", path, *(extra if "-k" in extra else ["-k", 1, *extra])]
    res = run(*args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert message in lines[0]


def test_drop_missing_drops_the_rows(tmp_path):
    path = tmp_path / "data.csv"
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(40, 2)).round(4).astype(str)
    rows[3, 1] = ""
    path.write_text("x,y\n" + "\n".join(",".join(r) for r in rows) + "\n")
    X, names = cli.read_data(str(path), drop_missing=True)
    assert X.shape == (39, 2) and names == ["x", "y"]


def test_family_and_weights_give_the_api_fit(tmp_path):
    """mixlab fit lsat6 --family bernoulli --weights count is ml.fit(..., sample_weight=)."""
    out = tmp_path / "lsat"
    res = run(
        "fit",
        "lsat6",
        "-k",
        2,
        "--family",
        "bernoulli",
        "--weights",
        "count",
        "--quiet",
        "--out",
        out,
    )
    assert res.returncode == 0, res.stderr
    params = json.loads((out / "params.json").read_text())
    assert params["family"] == "bernoulli" and params["columns"] == ["Q1", "Q2", "Q3", "Q4", "Q5"]
    X, w = ml.datasets.load("lsat6", with_weights=True)
    r = ml.fit(X, 2, ml.EM(n_init=4), family="bernoulli", sample_weight=w, key=0)
    np.testing.assert_allclose(params["probs"], r.params.probs, rtol=1e-10)
    np.testing.assert_allclose(params["bic"], r.bic(X, sample_weight=w), rtol=1e-10)
    with (out / "labels.csv").open() as fh:
        assert len(list(csv.reader(fh))) == 1 + 32  # one row per pattern


def test_compare_and_demo_write_the_comparison(tmp_path, capsys):
    """In process, with the settings the Bayesian tests compiled, so programs are reused."""
    out = tmp_path / "cmp"
    code = cli.main(
        [
            "compare",
            "faithful",
            "-k",
            "2",
            "--warmup",
            "300",
            "--samples",
            "300",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "nuts: EM agrees with the posterior" in printed
    import pandas as pd

    table = pd.read_csv(out / "comparison.csv", index_col="parameter")
    assert len(table) == 12 and table["nuts_em_in_hdi"].all()
    assert "means[0, waiting]" in table.index  # the columns' names
    assert _png_ok(out / "forest.png") and _png_ok(out / "nuts_scatter.png")
    from mixlab.arviz_io import import_arviz

    idata = import_arviz().from_netcdf(str(out / "nuts_posterior.nc"))
    assert idata.posterior["means"].shape == (4, 300, 2, 2)
    assert list(idata.posterior["feature"].values) == ["eruptions", "waiting"]
    demo_out = tmp_path / "demo"
    assert (
        cli.main(
            [
                "demo",
                "--warmup",
                "300",
                "--samples",
                "300",
                "--svi-steps",
                "3000",
                "--quiet",
                "--out",
                str(demo_out),
            ]
        )
        == 0
    )
    assert "Old Faithful" not in capsys.readouterr().out  # --quiet skips the banner
    assert (demo_out / "comparison.csv").exists() and _png_ok(demo_out / "forest.png")


def test_fit_names_the_features_of_an_embedded_data_set(tmp_path, capsys):
    out = tmp_path / "named"
    assert cli.main(["fit", "faithful", "-k", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "features: eruptions (min), waiting (min)" in printed
    saved = ml.FitResult.load(out / "result.npz")
    assert saved.feature_names == ("eruptions", "waiting")
    assert json.loads((out / "params.json").read_text())["columns"] == ["eruptions", "waiting"]
