"""Streaming EM (mixlab.stream): the in-memory answer from data read in chunks.

Every comparison is against ``ml.fit`` on the same data in memory from the same
start (parameters to 1e-10 relative, same ``n_iter``, same log-likelihood), with
blocks of 97 rows, which divide none of the data sizes, so the last block is
padded.  All fits share one block shape, so the compiled pass programs are
reused across sources.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

import mixlab as ml
from mixlab.stream import (
    ChunkError,
    NpySource,
    SourceReadError,
    chunks,
    fit_stream,
    reservoir_sample,
)

N, D, K = 1003, 3, 3
BLOCK = 97  # divides neither N nor the chunk sizes of the generator source
RTOL = 1e-10


def _blobs(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[-4.0, 0.0, 1.0], [0.0, 3.0, -1.0], [5.0, -2.0, 0.0]])
    labels = rng.integers(0, K, N)
    return centres[labels] + rng.normal(0.0, 1.0, (N, D)) * (0.6 + 0.3 * labels)[:, None]


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return _blobs()


def _start(family: str, covariance: str | None, X: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    rows = X[rng.choice(len(X), K, replace=False)]
    weights = np.full(K, 1.0 / K)
    if family == "poisson":
        return {"weights": weights, "rates": rows + 0.5}
    if family == "bernoulli":
        return {"weights": weights, "probs": np.clip(0.25 + 0.5 * rows, 0.1, 0.9)}
    covs = {
        "full": np.stack([np.eye(D)] * K),
        "diag": np.ones((K, D)),
        "spherical": np.ones(K),
        "tied": np.eye(D),
    }[covariance]
    start = {"weights": weights, "means": rows + 0.1, "covariances": covs}
    if family == "student_t":
        start["dofs"] = np.full(K, 6.0)
    return start


def _data_for(family: str, X: np.ndarray) -> np.ndarray:
    if family == "poisson":
        rng = np.random.default_rng(2)
        labels = rng.integers(0, K, N)
        return rng.poisson(np.array([[1.0, 6.0, 2.0], [8.0, 1.0, 3.0], [3.0, 3.0, 12.0]])[labels])
    if family == "bernoulli":
        rng = np.random.default_rng(3)
        labels = rng.integers(0, K, N)
        p = np.array([[0.9, 0.1, 0.8], [0.1, 0.9, 0.7], [0.5, 0.5, 0.05]])[labels]
        return (rng.uniform(size=(N, D)) < p).astype(float)
    return X


def _assert_same(mem: ml.FitResult, streamed: ml.FitResult, rtol: float = RTOL) -> None:
    assert streamed.n_iter == mem.n_iter
    assert streamed.converged == mem.converged
    np.testing.assert_allclose(streamed.log_likelihood, mem.log_likelihood, rtol=rtol)
    np.testing.assert_allclose(streamed.trace, mem.trace, rtol=rtol)
    np.testing.assert_allclose(streamed.params.weights, mem.params.weights, rtol=rtol, atol=1e-14)
    for name, value in mem.params.components.items():
        got = np.asarray(streamed.params.components[name])
        scale = np.max(np.abs(value))
        np.testing.assert_allclose(got, value, rtol=rtol, atol=rtol * scale, err_msg=name)


CASES = [  # (family, covariance, formulation)
    ("gaussian", "full", "centred"),  # covariances about the new means: a second pass
    ("gaussian", "diag", "centred"),
    ("gaussian", "spherical", "centred"),
    ("gaussian", "tied", "centred"),
    ("student_t", "full", "auto"),
    ("poisson", None, "auto"),
    ("bernoulli", None, "auto"),
]


@pytest.mark.parametrize(("family", "covariance", "formulation"), CASES)
def test_streaming_equals_in_memory(X, family, covariance, formulation):
    data = _data_for(family, X)
    method = ml.EM(
        init=_start(family, covariance, data),
        tol=1e-5,
        criterion="change",
        max_iter=300,
        on_collapse="ignore",
        formulation=formulation,
    )
    kwargs = dict(family=family, covariance=covariance, order=None)
    mem = ml.fit(data, K, method, **kwargs)
    streamed = fit_stream(data, K, method, chunk_rows=BLOCK, **kwargs)
    assert mem.n_iter > 3  # a real run, not a start that stops at once
    _assert_same(mem, streamed)
    assert streamed.data is None and streamed.n_samples == N
    info = streamed.diagnostics["stream"]
    assert info["block_rows"] == BLOCK and info["rows"] == N
    # one pass per iteration, the second-pass sums of the centred formulations
    # included, plus the scan and the final log-likelihood
    assert info["passes"] == mem.n_iter + 2


@pytest.fixture(scope="module")
def reference(X):
    """The in-memory fit every source must reproduce (Gaussian, full covariances)."""
    method = ml.EM(
        init=_start("gaussian", "full", X),
        tol=1e-5,
        max_iter=300,
        on_collapse="ignore",
        formulation="centred",
    )
    return method, ml.fit(X, K, method, order=None)


def test_npy_path_source(X, reference, tmp_path):
    method, mem = reference
    path = tmp_path / "x.npy"
    np.save(path, X)
    _assert_same(mem, fit_stream(str(path), K, method, chunk_rows=BLOCK, order=None))


def test_memmap_and_sliceable_sources(X, reference, tmp_path):
    method, mem = reference
    path = tmp_path / "m.npy"
    np.save(path, X)
    mapped = np.load(path, mmap_mode="r")
    _assert_same(mem, fit_stream(mapped, K, method, chunk_rows=BLOCK, order=None))

    class Sliceable:  # duck-typed like a zarr array or an h5py dataset
        shape, dtype = X.shape, X.dtype

        def __getitem__(self, index):
            return X[index].copy()

    _assert_same(mem, fit_stream(Sliceable(), K, method, chunk_rows=BLOCK, order=None))


def test_generator_source_with_uneven_chunks(X, reference):
    method, mem = reference
    sizes = [1, 250, 33, 400, 7, 312]  # sums to N; blocks of 97 straddle them
    assert sum(sizes) == N
    calls = []

    def make_chunks():
        calls.append(1)
        start = 0
        for size in sizes:
            yield X[start : start + size]
            start += size

    recording = dataclasses.replace(method, record_params=True)
    streamed = fit_stream(make_chunks, K, recording, chunk_rows=BLOCK, order=None)
    _assert_same(mem, streamed)
    assert len(calls) == streamed.diagnostics["stream"]["passes"]  # re-called each pass
    # the parameters after every iteration: the start first, the result last
    ptrace = streamed.params_trace
    assert ptrace.weights.shape == (streamed.n_iter + 1, K)
    np.testing.assert_allclose(ptrace.means[0], method.init["means"], rtol=1e-12)
    np.testing.assert_allclose(ptrace.covariances[-1], streamed.params.covariances, rtol=1e-12)
    assert not np.allclose(ptrace.means[1], ptrace.means[0])


def test_second_pass_that_cannot_be_moved_takes_two_passes(X, reference, monkeypatch):
    # A family whose second-pass sums are not known to be quadratic in the centre (a
    # custom family's) gets an exact second pass per iteration instead.
    import mixlab.stream as stream

    monkeypatch.setattr(stream, "_quadratic_second_pass", lambda family: False)
    method, mem = reference
    streamed = fit_stream(X, K, method, chunk_rows=BLOCK, order=None)
    _assert_same(mem, streamed)
    assert streamed.diagnostics["stream"]["passes"] == 2 * mem.n_iter + 2


def test_sample_weights(X, reference):
    method, _ = reference
    w = np.random.default_rng(5).integers(0, 4, N).astype(float)
    mem = ml.fit(X, K, method, sample_weight=w, order=None)
    _assert_same(
        mem, fit_stream(chunks(X, sample_weight=w), K, method, chunk_rows=BLOCK, order=None)
    )


def test_restarts_from_the_sample_share_the_pass(X):
    # With fewer rows than the sample, the sample is the data: the same starts as in
    # memory for every restart key, and the same best restart.  (float64 data this
    # well scaled get the expanded formulation: one pass per iteration.)
    method = ml.EM(n_init=3, init="random", tol=1e-5, max_iter=300, on_collapse="ignore")
    mem = ml.fit(X, K, method, key=7, order=None)
    streamed = fit_stream(X, K, method, key=7, chunk_rows=BLOCK, order=None)
    _assert_same(mem, streamed)
    np.testing.assert_array_equal(streamed.restarts.keys, mem.restarts.keys)
    np.testing.assert_array_equal(streamed.restarts.n_iter, mem.restarts.n_iter)
    np.testing.assert_allclose(
        streamed.restarts.log_likelihood, mem.restarts.log_likelihood, rtol=RTOL
    )
    assert streamed.restarts.best == mem.restarts.best
    # every restart runs in the same passes: passes follow the slowest restart
    assert streamed.diagnostics["stream"]["passes"] == max(mem.restarts.n_iter) + 2


def test_collapse_reinit_matches_in_memory(X):
    # One component starts far from every row: it collapses at once and restarts at
    # the row the mixture explains worst, found in an extra pass.
    start = _start("gaussian", "full", X)
    start["means"] = start["means"].copy()
    start["means"][2] = [60.0, 60.0, 60.0]
    method = ml.EM(init=start, tol=1e-5, max_iter=300, formulation="centred")
    mem = ml.fit(X, K, method, order=None)
    assert mem.diagnostics["reinitialisations"]  # the case does what it is meant to
    streamed = fit_stream(X, K, method, chunk_rows=BLOCK, order=None)
    assert streamed.diagnostics["reinitialisations"] == mem.diagnostics["reinitialisations"]
    assert streamed.diagnostics["collapses"] == mem.diagnostics["collapses"]
    _assert_same(mem, streamed)
    # one more pass on each iteration with a restart, to find the worst-explained row
    restarts = {t for t, _ in mem.diagnostics["reinitialisations"]}
    assert streamed.diagnostics["stream"]["passes"] == mem.n_iter + 2 + len(restarts)

    raising = ml.EM(init=start, tol=1e-5, max_iter=300, formulation="centred", on_collapse="raise")
    with pytest.raises(ml.errors.FitError, match="component 2 collapsed at iteration 1"):
        fit_stream(X, K, raising, chunk_rows=BLOCK)


# ------------------------------------------------------------------ reservoir sample
def test_reservoir_sample_is_seeded_and_chunking_free(X):
    a = reservoir_sample(chunks(X, 97), 50, key=3)
    b = reservoir_sample(chunks(X, 400), 50, key=3)
    c = reservoir_sample(chunks(X, 97), 50, key=4)
    np.testing.assert_array_equal(a.index, b.index)
    np.testing.assert_array_equal(a.values, X[a.index])
    assert len(a.index) == 50 and len(np.unique(a.index)) == 50
    assert np.all(np.diff(a.index) > 0)
    assert not np.array_equal(a.index, c.index)
    everything = reservoir_sample(X, 5000, key=3)
    np.testing.assert_array_equal(everything.index, np.arange(N))


def test_reservoir_inclusion_probability():
    # Each row is in the sample with probability n / N: over many keys, each row's
    # count is Binomial(keys, n / N).
    n_rows, n, n_keys = 60, 15, 800
    data = np.arange(n_rows, dtype=float)[:, None]
    counts = np.zeros(n_rows)
    for key in range(n_keys):
        counts[reservoir_sample(chunks(data, 7), n, key=key).index] += 1
    p = n / n_rows
    mean, sd = n_keys * p, np.sqrt(n_keys * p * (1 - p))
    assert np.all(np.abs(counts - mean) < 4.5 * sd)
    chi2 = np.sum((counts - mean) ** 2) / (n_keys * p * (1 - p))
    # chi-square with about n_rows - 1 degrees of freedom: mean 59, sd 11
    assert 25 < chi2 < 110
    # weighted sources leave out the rows of weight zero
    w = (np.arange(n_rows) % 3 != 0).astype(float)
    sample = reservoir_sample(chunks(data, 7, sample_weight=w), n, key=1)
    assert np.all(w[sample.index] > 0) and sample.n_seen == 40


# ------------------------------------------------------------------ bad chunks
def test_wrong_width_names_the_chunk(X):
    def make_chunks():
        yield X[:100]
        yield X[100:200]
        yield X[200:300, :2]

    with pytest.raises(
        ChunkError, match=r"chunk 2 \(rows 200-299\) has 2 column\(s\) but the data have 3"
    ):
        fit_stream(make_chunks, K)


def test_nan_in_chunk_7_names_the_chunk_and_row(X):
    bad = X.copy()
    bad[75, 1] = np.nan
    with pytest.raises(
        ChunkError, match=r"chunk 7 \(rows 70-79\) holds NaN in column 1 .*first at row 75"
    ) as info:
        fit_stream(chunks(bad, 10), K)
    assert (info.value.index, info.value.start, info.value.stop) == (7, 70, 80)
    assert not np.isnan(X).any()  # the caller's data untouched


def test_data_that_change_after_the_scan_name_the_chunk(X, reference):
    calls = []

    def make_chunks():
        calls.append(1)
        for i, start in enumerate(range(0, N, 100)):
            part = X[start : start + 100].copy()
            if len(calls) > 1 and i == 7:  # NaN from the second pass on
                part[3, 0] = np.nan
            yield part

    with pytest.raises(ChunkError, match=r"chunk 7 \(rows 700-799\) holds NaN in column 0"):
        fit_stream(make_chunks, K, reference[0], chunk_rows=BLOCK)


def test_empty_source():
    def nothing():
        return iter(())

    with pytest.raises(ChunkError, match="is empty: its first pass gave no rows"):
        fit_stream(nothing, K)
    with pytest.raises(ChunkError, match="is empty"):
        fit_stream(np.empty((0, 3)), K)


def test_vanished_and_truncated_npy(X, reference, tmp_path):
    path = tmp_path / "gone.npy"
    np.save(path, X)
    source = chunks(path, 100)
    os.remove(path)
    with pytest.raises(
        SourceReadError, match=r"could not open .*gone.npy.* chunk 0 \(rows 0-99\) on pass 1"
    ):
        fit_stream(source, K)

    class Vanishing(NpySource):  # the file goes away after the first pass
        def _read(self, rows):
            yield from super()._read(rows)
            os.remove(self.path)

    np.save(path, X)
    with pytest.raises(SourceReadError, match=r"could not open .*gone.npy.* on pass 2"):
        fit_stream(Vanishing(path, 100), K, reference[0])

    cut = tmp_path / "cut.npy"
    np.save(cut, X)
    source = chunks(cut, 100)
    size = os.path.getsize(cut)
    with open(cut, "r+b") as f:
        f.truncate(size - 8 * D * 2)  # the last 2 rows are gone
    with pytest.raises(
        SourceReadError, match=r"ended early: chunk 10 \(rows 1000-1002\) is cut short"
    ):
        fit_stream(source, K)


def test_negative_counts_for_poisson_name_the_chunk():
    counts = np.random.default_rng(0).poisson(3.0, (300, 2)).astype(float)
    counts[123, 1] = -2
    with pytest.raises(
        ChunkError, match=r"chunk 1 \(rows 100-199\).*counts \(non-negative integers\)"
    ):
        fit_stream(chunks(counts, 100), 2, family="poisson")


def test_bad_weights_name_the_chunk(X):
    def make_chunks():
        yield X[:500], np.ones(500)
        yield X[500:], -np.ones(N - 500)

    with pytest.raises(ChunkError, match=r"chunk 1 \(rows 500-1002\) has weight -1 at row 500"):
        fit_stream(make_chunks, K)


def test_ml_fit_takes_streamed_data(X, tmp_path):
    """``ml.fit`` hands a ChunkSource or an .npy path to fit_stream (the same answer),
    and refuses what streaming cannot do, with the fix."""
    start = _start("gaussian", "full", X)
    path = tmp_path / "x.npy"
    np.save(path, X)
    method = ml.EM(init=start, tol=1e-6)
    want = ml.fit(X, K, method)
    for data in (str(path), ml.chunks(X, BLOCK)):
        got = ml.fit(data, K, method)
        assert got.n_iter == want.n_iter and got.data is None
        np.testing.assert_allclose(got.params.means, want.params.means, rtol=RTOL)
    with pytest.raises(TypeError, match="fitted by EM.*pass an array"):
        ml.fit(ml.chunks(X), K, ml.NUTS())
    with pytest.raises(ValueError, match="carry their weights"):
        ml.fit(ml.chunks(X), K, sample_weight=np.ones(N))
