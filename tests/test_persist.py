"""FitResult.save / FitResult.load: exact round trips, and clear errors for bad files."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import mixlab as ml
from mixlab.errors import LoadError


def assert_same(a, b, path="result"):
    """Deep equality: arrays bit for bit, dicts and lists recursively, params by fields."""
    if isinstance(a, ml.MixtureParams):
        assert isinstance(b, ml.MixtureParams) and a.family == b.family
        assert set(a.components) == set(b.components), path
        assert_same(a.weights, b.weights, f"{path}.weights")
        for f in a.components:
            assert_same(a.components[f], b.components[f], f"{path}.{f}")
    elif isinstance(a, ml.Restarts):
        for f in ("log_likelihood", "converged", "n_iter", "status", "best", "keys"):
            assert_same(getattr(a, f), getattr(b, f), f"{path}.{f}")
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_array_equal(a, b, err_msg=path)
    else:
        assert a == b or (a != a and b != b), (path, a, b)  # NaN == NaN here


FIELDS = (
    "method",
    "params",
    "log_likelihood",
    "trace",
    "converged",
    "n_iter",
    "elapsed",
    "n_samples",
    "compile_time",
    "posterior",
    "params_trace",
    "restarts",
    "settings",
    "diagnostics",
    "mixlab_version",
)


def assert_round_trip(result, loaded):
    for f in FIELDS:
        assert_same(getattr(result, f), getattr(loaded, f), f)


@pytest.fixture(scope="session")
def em_result(faithful):
    start = {
        "weights": [0.5, 0.5],
        "means": [[2.0, 55.0], [4.5, 80.0]],
        "covariances": np.tile(np.eye(2), (2, 1, 1)),
    }
    ml.fit(faithful, 2, ml.EM(init=start))  # explicit starts are settings too
    return ml.fit(faithful, 2, ml.EM(n_init=3, record_params=True), key=0)


def test_em_result_round_trips_exactly(em_result, tmp_path, faithful):
    path = em_result.save(tmp_path / "em.npz")
    loaded = ml.FitResult.load(path)
    assert_round_trip(em_result, loaded)
    assert loaded.data is None
    np.testing.assert_array_equal(loaded.predict(faithful), em_result.predict(faithful))
    with_data = ml.FitResult.load(em_result.save(tmp_path / "em_data.npz", include_data=True))
    np.testing.assert_array_equal(with_data.data, faithful)


def test_bayesian_shaped_result_round_trips_exactly(em_result, tmp_path):
    rng = np.random.default_rng(0)
    p = em_result.params
    draws = {
        "weights": np.broadcast_to(p.weights, (2, 5, 2)) + rng.normal(0, 1e-3, (2, 5, 2)),
        "means": np.broadcast_to(p.means, (2, 5, 2, 2)) + rng.normal(0, 1e-2, (2, 5, 2, 2)),
        "covariances": np.broadcast_to(p.covariances, (2, 5, 2, 2, 2)).copy(),
    }
    result = ml.FitResult(
        method="nuts",
        params=p,
        log_likelihood=-1.5,
        trace=rng.normal(size=10),
        converged=False,
        n_iter=5,
        elapsed=0.25,
        n_samples=272,
        posterior=draws,
        settings=ml.NUTS(num_samples=5, priors=ml.Priors(mean_loc=[1.0, 2.0])).settings(),
        diagnostics={
            "divergences": 3,
            "r_hat": {"weights": np.array([1.0, np.nan])},
            "reference_params": p,
            "label_permutations": np.zeros((2, 5, 2), int),
            "events": [(1, 2), (3, 0)],
            "note": None,
            "flag": True,
        },
    )
    assert_round_trip(result, ml.FitResult.load(result.save(tmp_path / "nuts.npz")))


def test_saved_file_is_plain_npz_and_json(em_result, tmp_path):
    path = em_result.save(tmp_path / "fit.npz")
    with np.load(path, allow_pickle=False) as npz:  # readable with no pickle at all
        meta = json.loads(str(npz["__meta__"]))
        assert all(npz[name].dtype != object for name in npz.files)
    assert meta["format"] == "mixlab-fit" and meta["mixlab_version"] == ml.__version__
    assert not list(tmp_path.glob(".mixlab-*"))  # the temporary file was renamed away


def _rewrite(path, mutate):
    """Copy a saved .npz with ``mutate(name, bytes) -> bytes`` applied to each member."""
    with zipfile.ZipFile(path) as src:
        members = {n: src.read(n) for n in src.namelist()}
    with zipfile.ZipFile(path, "w") as dst:
        for name, data in members.items():
            dst.writestr(name, mutate(name, data))


def test_truncated_file_is_a_clear_error(em_result, tmp_path):
    path = em_result.save(tmp_path / "fit.npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LoadError, match="truncated, corrupted or not a .npz"):
        ml.FitResult.load(path)


def test_corrupted_array_is_caught_by_its_checksum(em_result, tmp_path):
    path = em_result.save(tmp_path / "fit.npz")

    def flip(name, data):
        if name == "a0.npy":  # params/weights
            data = bytearray(data)
            data[-1] ^= 0x01
            return bytes(data)
        return data

    _rewrite(path, flip)
    with pytest.raises(LoadError, match="array 'params/weights' is corrupted"):
        ml.FitResult.load(path)


def test_other_format_version_is_refused(em_result, tmp_path):
    path = em_result.save(tmp_path / "fit.npz")
    with np.load(path, allow_pickle=False) as npz:
        files = {n: npz[n] for n in npz.files}
    meta = json.loads(str(files["__meta__"]))
    meta["format_version"] = 99
    files["__meta__"] = np.array(json.dumps(meta))
    np.savez(path, **files)
    with pytest.raises(LoadError, match="format 99.*reads formats 1, 2"):
        ml.FitResult.load(path)


def test_other_files_are_refused(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("not a zip file")
    with pytest.raises(LoadError, match="not a readable mixlab result"):
        ml.FitResult.load(text)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.arange(3))
    with pytest.raises(LoadError, match="not a mixlab result"):
        ml.FitResult.load(other)
    with pytest.raises(FileNotFoundError, match="no saved mixlab result"):
        ml.FitResult.load(tmp_path / "missing.npz")


def test_invalid_parameters_in_a_file_are_refused(em_result, tmp_path):
    bad = ml.FitResult(
        **{f: getattr(em_result, f) for f in FIELDS if f != "params"},
        params=ml.MixtureParams.trusted(
            np.array([0.5, 0.6]), em_result.params.components, em_result.params.family
        ),
    )
    path = bad.save(tmp_path / "bad.npz")
    with pytest.raises(LoadError, match="saved parameters are invalid.*weights sum to 1.1"):
        ml.FitResult.load(path)


def test_saved_file_has_the_permissions_open_would_give(em_result, tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        path = em_result.save(tmp_path / "fit.npz")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644
