"""Every example runs with small sizes and gives the numbers its study is about."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_seed000_reproduces_the_study_and_separates_its_mistakes(capsys):
    out = load("seed000_cs229").main(["--iterations", "100", "--every", "50"])
    printed = capsys.readouterr().out
    assert "reproduces the study's printed k=99 line: True" in printed
    s = out["summary"]
    study, hard_only = s["both mistakes (the study)"], s["mistake 1 only (hard-count weights)"]
    np.testing.assert_allclose(hard_only["means"], study["means"], atol=1e-6)
    np.testing.assert_allclose(study["weights"], [0.43, 0.57])
    old_only, correct = s["mistake 2 only (variance about old means)"], s["correct EM (mixlab)"]
    np.testing.assert_allclose(old_only["means"], correct["means"], atol=0.02)
    assert out["gain_from_one_step"] > 1e-5 and out["monotone"]


def test_seed002_estimates_near_truth_with_small_data():
    out = load("seed002_breuel").main(
        ["--n0", "600", "--n1", "1400", "--iterations", "60", "--bootstrap", "3"]
    )
    z = (out["estimate"] - out["truth"]) / out["se"]
    assert np.all(np.isfinite(out["se"])) and np.all(out["se"] > 0)
    assert np.all(np.abs(z) < 6)


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.py")))
def test_every_example_has_main_and_docstring(name):
    module = load(name)
    assert callable(module.main) and module.__doc__ and "Run:" in module.__doc__


def test_seed001_initialisation_study_and_parameters_near_truth():
    out = load("seed001_four_clusters").main(["--n-samples", "1000", "--n-init", "8"])
    best = out["best_log_likelihood"]
    for name in ("random", "kmeans++"):
        r = out["restarts"][name]
        assert 0.0 < r["share_reaching_best"] <= 1.0
        finite = r["log_likelihood"][np.isfinite(r["log_likelihood"])]
        assert len(finite) > 0 and np.all(finite <= best + 1e-9)
    # Matched to the generating components: every mean within sampling error.
    assert np.all(np.abs(out["mean_z"]) < 5)
    np.testing.assert_allclose(out["learned"]["weights"], out["truth"].weights, atol=0.05)
    # The study's covariance-about-old-means update ends where correct EM does.
    assert abs(out["study_update_log_likelihood"] - out["same_start_log_likelihood"]) < 1.0
    # Its random integer means: coinciding means stay coinciding and never reach the best.
    starts = out["study_starts"]
    assert len(starts) == 35
    assert sum(s["probability"] for s in starts) == pytest.approx(1.0)
    for s in starts:
        if len(set(s["corners"])) < 4:
            assert s["log_likelihood"] < best - 1.0
    assert 0.0 < out["study_start_share"] <= 24 / 256 + 1e-12


def test_seed003_building_blocks_match_closed_forms_and_scipy():
    out = load("seed003_building_blocks").main(["--n-per-component", "100", "--n-draws", "5000"])
    assert out["ml_mean_error"] < 1e-10 and out["ml_cov_error"] < 1e-10
    assert out["single_log_likelihood"] == pytest.approx(
        out["closed_form_log_likelihood"], rel=1e-12
    )
    assert out["logpdf_error"] < 1e-10
    assert out["monotone"] and np.all(np.diff(out["trace"]) >= -1e-12 * np.abs(out["trace"][1:]))
    assert out["same_start_difference"] < 1e-10
    assert out["translated_rule_loglik_rel"] < 1e-7
    assert out["nan_rows_study"] > 0 and out["mixlab_finite"]
    errors = out["errors"]
    assert (
        "not positive definite" in errors["indefinite"] and "covariances[0]" in errors["indefinite"]
    )
    assert "not positive definite" in errors["singular"]
    assert "not symmetric" in errors["asymmetric"] and out["study_accepts_asymmetric"]
    assert "weights" in errors["weights"] and "feature" in errors["shape"]
    assert out["study_accepts_singular"] > 0  # rank-deficient, passed by a rounding error
    w = out["hand"].weights
    se = np.sqrt(w * (1 - w) / out["n_draws"])
    assert np.all(np.abs(out["sample_share"] - w) < 5 * se)
    np.testing.assert_allclose(out["sample_means"], out["hand"].means, atol=0.1)


def test_seed004_elbo_identity_kmeans_and_sklearn_agreement(tmp_path):
    pytest.importorskip("sklearn")
    out = load("seed004_elbo_kmeans").main(
        ["--n-per-component", "200", "--plot-dir", str(tmp_path)]
    )
    rows = out["elbo_rows"]
    assert out["identity_error"] < 1e-10
    scale = np.abs(rows["logp_old"])
    assert np.all(np.abs(rows["kl_e"]) <= 1e-10 * scale)  # E-step: q is the posterior
    assert np.all(rows["kl_m"] >= -1e-10 * scale) and np.any(rows["kl_m"] > 1e-3)
    assert np.all(rows["L_m"] >= rows["L_e"] - 1e-10 * scale)  # M-step raises L
    assert np.all(np.diff(out["fit"].trace) >= -1e-10 * np.abs(out["fit"].trace[1:]))
    assert out["m_step_error"] < 1e-10
    assert out["kmeans_centre_diff"] < 1e-8 and out["kmeans_inertia_rel"] < 1e-10
    assert set(out["sklearn_agreement"]) == {1, 5, 10, 15}
    assert max(out["sklearn_agreement"].values()) < 1e-6
    assert max(out["study_call_agreement"].values()) < 1e-6
    assert (tmp_path / "seed004_snapshots.png").stat().st_size > 0


def test_compare_galaxies_tables_have_every_k(tmp_path):
    out = load("compare_galaxies").main(
        [
            "--k-min",
            "3",
            "--k-max",
            "4",
            "--warmup",
            "200",
            "--samples",
            "150",
            "--chains",
            "2",
            "--methods",
            "em,nuts",
            "--n-init",
            "4",
            "--plot-dir",
            str(tmp_path),
        ]
    )
    bic = out["bic"]
    assert list(bic.index) == [3, 4]
    assert np.all(np.isfinite(bic[["log_likelihood", "BIC", "AIC"]].to_numpy()))
    assert list(bic["n_parameters"]) == [8, 11]
    loo = out["loo"]
    assert list(loo.index) == [3, 4] and np.all(np.isfinite(loo["elpd_loo"]))
    ranked = out["loo_compare"]
    assert sorted(ranked.index) == ["K=3", "K=4"] and sorted(ranked["rank"]) == [0, 1]
    assert out["loo_best"] in (3, 4) and out["loo_best"] in out["loo_close"]
    assert set(out["comparisons"]) == {3, 4}
    for cmp in out["comparisons"].values():
        assert set(cmp.methods.index) == {"em", "nuts"}
    assert (tmp_path / f"galaxies_forest_K{out['loo_best']}.png").stat().st_size > 0


def test_counts_poisson_captures_the_overdispersion_of_quine():
    out = load("counts_poisson").main(["--max-k", "3", "--n-init", "4", "--samples", "150"])
    days = __import__("mixlab").datasets.load("quine")[:, 0]
    fits = out["fits"]
    # the one-component fit is the sample mean; every fit keeps the weighted mean of rates
    np.testing.assert_allclose(fits[1].params.rates[0, 0], days.mean(), rtol=1e-12)
    for fit in fits.values():
        np.testing.assert_allclose(
            fit.params.weights @ fit.params.rates[:, 0], days.mean(), rtol=1e-9
        )
    assert out["best"] == 3  # BIC keeps improving up to the largest K tried (1434.5 -> 1221.7)
    lls = [fits[k].log_likelihood for k in (1, 2, 3)]
    np.testing.assert_allclose(lls, [-1331.00, -709.79, -598.37], atol=0.01)
    assert out["mixture_variance"] > 10 * out["mixture_mean"]  # overdispersed, as the data
    assert out["comparison"].agree["nuts"]


def test_latent_class_lsat_weighted_patterns_are_the_1000_rows():
    out = load("latent_class_lsat").main(["--max-k", "3", "--n-init", "10"])
    assert out["best"] == 2
    # Bock and Lieberman's data: the two-class maximum (as published for LCA of LSAT-6)
    np.testing.assert_allclose(out["fits"][2].log_likelihood, -2467.4055, atol=1e-3)
    np.testing.assert_allclose(out["fits"][1].log_likelihood, -2493.4367, atol=1e-3)
    assert out["weighted"].n_iter == out["expanded"].n_iter
    assert out["probability_gap"] < 1e-10
    np.testing.assert_allclose(
        out["weighted"].log_likelihood, out["expanded"].log_likelihood, rtol=1e-12
    )


def test_distributed_em_two_processes_get_the_one_process_fit():
    """Two processes (jax.distributed, gloo collectives on the CPU), each holding half of
    the rows: both get the fit of all rows in one process."""
    out = load("distributed_em").main([])
    single = out["single"]
    assert [r["process"] for r in out["processes"]] == [0, 1]
    for r in out["processes"]:
        assert r["processes"] == 2 and r["n_iter"] == single.n_iter
        assert r["log_likelihood"] == pytest.approx(single.log_likelihood, rel=1e-12)
        np.testing.assert_allclose(r["means"], single.params.means, rtol=1e-10)
        np.testing.assert_allclose(r["weights"], single.params.weights, rtol=1e-10)
