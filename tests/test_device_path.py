"""Data that stay where they are (issue 11): JAX-array input, device-side checks,
row chunks by backend and the matrix-product precision.

The device path (JAX arrays, large NumPy data) is checked against the host path
(small NumPy data) on the same data: same fit to rounding, same errors.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mixlab as ml
from mixlab._jaxutil import device_copy
from mixlab.em import data as em_data
from mixlab.em import driver


def _device(X, dtype=np.float64):
    with jax.enable_x64(True):
        return jnp.asarray(X, dtype)


def _assert_same_fit(a, b, rtol):
    assert a.n_iter == b.n_iter
    assert a.log_likelihood == pytest.approx(b.log_likelihood, rel=rtol)
    for name in ("weights", *a.params.family.param_names()):
        np.testing.assert_allclose(
            getattr(a.params, name), getattr(b.params, name), rtol=rtol, atol=rtol, err_msg=name
        )


def _count_data(family, seed=0):
    rng = np.random.default_rng(seed)
    if family == "poisson":
        return np.r_[rng.poisson(2.0, (150, 3)), rng.poisson(9.0, (150, 3))].astype(float)
    return np.r_[rng.random((150, 4)) < 0.2, rng.random((150, 4)) < 0.8].astype(float)


CASES = [  # one covariance layout each: the layouts share the data path
    ("gaussian", "full"),
    ("student_t", "diag"),
    ("poisson", None),
    ("bernoulli", None),
]


@pytest.mark.parametrize(("family", "covariance"), CASES)
def test_jax_array_input_gives_the_numpy_fit(faithful, family, covariance):
    X = faithful if family in ("gaussian", "student_t") else _count_data(family)
    rng = np.random.default_rng(1)
    w = rng.integers(0, 4, len(X)).astype(float)  # zero weights too: those rows drop out
    method = ml.EM(n_init=2, max_iter=60, criterion="change")
    kw = dict(family=family, covariance=covariance, key=3)
    host = ml.fit(X, 2, method, sample_weight=w, **kw)
    device = ml.fit(_device(X), 2, method, sample_weight=w, **kw)
    # The device pass centres on a mean summed in another order: rounding only.
    _assert_same_fit(device, host, 1e-9)
    assert isinstance(device.params.weights, np.ndarray)  # results come back as NumPy
    np.testing.assert_array_equal(np.asarray(device.data), X)


def test_large_numpy_data_take_the_device_path_with_the_same_result(faithful, monkeypatch):
    noisy = np.tile(faithful, (4, 1)) + np.random.default_rng(0).normal(0, 0.01, (4 * 272, 2))
    X = _aligned(noisy, 0)  # aligned: what jax.device_put would alias
    X_before = X.copy()
    method = ml.EM(max_iter=40, criterion="change")
    host = ml.fit(X, 3, method, key=0)
    calls = []
    stats = em_data._device_stats
    monkeypatch.setattr(em_data, "DEVICE_VALUES", X.size)  # X is "large" now
    monkeypatch.setattr(em_data, "_device_stats", lambda *a, **k: calls.append(1) or stats(*a, **k))
    device = ml.fit(X, 3, method, key=0)
    assert calls  # the values were checked on the device
    _assert_same_fit(device, host, 1e-9)
    np.testing.assert_array_equal(X, X_before)
    X[0, 0] = 1e6  # the result holds its own copy of the data
    assert np.asarray(device.data)[0, 0] == X_before[0, 0]


def test_float32_jax_input_stays_float32(faithful):
    r = ml.fit(jnp.asarray(faithful, jnp.float32), 2, key=0)
    assert r.params.means.dtype == np.float32
    r64 = ml.fit(faithful, 2, key=0)
    np.testing.assert_allclose(r.params.means, r64.params.means, rtol=1e-4)


@pytest.mark.parametrize(
    ("family", "bad", "message"),
    [
        ("gaussian", np.nan, r"X contains NaN in column 1 \(1 row\(s\), first at row 5\)"),
        ("gaussian", np.inf, r"X contains infinite values in column 1"),
        ("poisson", 2.5, r"counts \(non-negative integers\).*column 1 has 2.5 at row 5"),
        ("poisson", -1.0, r"counts \(non-negative integers\).*column 1 has -1 at row 5"),
        ("bernoulli", 2.0, r"binary values \(0 or 1\).*column 1 has 2 at row 5"),
    ],
)
def test_device_checks_give_the_host_errors(family, bad, message):
    X = _count_data("bernoulli")[:, :2].copy()
    X[5, 1] = bad
    for data in (X, _device(X)):
        with pytest.raises(ValueError, match=message):
            ml.fit(data, 2, family=family)


def test_device_input_of_the_wrong_shape_or_type_is_refused():
    with pytest.raises(ValueError, match="has 3 dimensions"):
        ml.fit(jnp.zeros((4, 2, 2)), 2)
    with pytest.raises(ValueError, match="is empty"):
        ml.fit(jnp.zeros((0, 2)), 2)
    with pytest.raises(ValueError, match="has 1 sample"):
        ml.fit(jnp.zeros((1, 2)), 2)
    with pytest.raises(TypeError, match="must be numeric"):
        ml.fit(jnp.zeros((4, 2), jnp.complex64), 2)


def test_squares_that_overflow_are_refused_on_the_device():
    X = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32) * 1e17
    with pytest.raises(ValueError, match="squares overflow float32; rescale the data"):
        ml.fit(jnp.asarray(X), 2)


# ---------------------------------------------------------------------- layout
def test_chunk_layout_by_backend():
    row_bytes = 16 * 32 * 8  # K * D float64 values per row
    n = 1_000_000
    cpu = em_data.chunk_layout(n, row_bytes, None, "cpu")
    assert cpu[1] * row_bytes <= em_data.CHUNK_BYTES and cpu[0] * cpu[1] >= n
    # An accelerator takes every row in one pass when memory allows ...
    assert em_data.chunk_layout(n, row_bytes, None, "gpu", free_memory=80 * 2**30) == (1, n)
    assert em_data.chunk_layout(n, row_bytes, None, "gpu", free_memory=None) == (1, n)
    # ... and chunks so that the intermediates take a quarter of the free memory at most.
    n_chunks, chunk = em_data.chunk_layout(n, row_bytes, None, "tpu", free_memory=2**30)
    assert (
        n_chunks == -(-n // (2**28 // row_bytes)) == 16
        and chunk * row_bytes <= 2**30 / 4
        and n_chunks * chunk - n < n_chunks
    )
    # An explicit chunk_size wins everywhere.
    assert em_data.chunk_layout(n, row_bytes, 1000, "gpu", free_memory=80 * 2**30) == (1000, 1000)


def test_the_accelerator_layout_gives_the_chunked_numbers(monkeypatch):
    """One pass over all rows (the GPU/TPU layout) against the CPU's cache-sized chunks,
    on CPU: the same fit to rounding."""
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(0, 1, (6000, 3)), rng.normal(3, 0.5, (6000, 3))]
    method = ml.EM(max_iter=30, tol=0.0)
    chunked = ml.fit(X, 4, ml.EM(max_iter=30, tol=0.0, chunk_size=1000), key=0)
    monkeypatch.setattr(driver, "platform_of", lambda X: "gpu")
    monkeypatch.setattr(driver, "free_device_memory", lambda X: None)
    layouts = []
    chunk_layout = driver.chunk_layout
    monkeypatch.setattr(
        driver, "chunk_layout", lambda *a: layouts.append(chunk_layout(*a)) or layouts[-1]
    )
    one_pass = ml.fit(X, 4, method, key=0)
    assert layouts == [(1, len(X))]
    _assert_same_fit(one_pass, chunked, 1e-10)


# ------------------------------------------------------------------- precision
def _dot_precisions(compiled) -> set[str]:
    return set(re.findall(r"operand_precision=\{(\w+),", compiled.as_text()))


def test_matmul_precision_is_compiled_into_the_program(faithful):
    X = faithful.astype(np.float32)
    found = {}
    for precision in ("highest", "high"):
        driver._PROGRAMS.clear()
        r = ml.fit(X, 2, ml.EM(matmul_precision=precision, max_iter=5), key=0)
        (program,) = driver._PROGRAMS._programs.values()
        found[precision] = (_dot_precisions(program), r.log_likelihood)
        assert r.settings["matmul_precision"] == precision
    assert found["highest"][0] == {"highest"} and found["high"][0] == {"high"}
    # On a CPU every precision is full float32: the same fit.
    assert found["high"][1] == found["highest"][1]
    with pytest.raises(ValueError, match="matmul_precision must be one of"):
        ml.EM(matmul_precision="tf32")


def _aligned(values: np.ndarray, offset: int) -> np.ndarray:
    """A copy of ``values`` starting ``offset`` bytes past a 64-byte boundary."""
    raw = np.empty(values.nbytes + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset
    out = raw[start : start + values.nbytes].view(values.dtype).reshape(values.shape)
    out[...] = values
    return out


@pytest.mark.parametrize("offset", [0, 8])
def test_data_sent_to_the_device_never_alias_the_callers_memory(faithful, offset):
    # jax.device_put(may_alias=False) returns the caller's own memory for 64-byte
    # aligned arrays on CPU (jax 0.10); mixlab's transfer must copy whatever the alignment.
    X = _aligned(np.tile(faithful, (4, 1)), offset)
    assert X.ctypes.data % 64 == offset
    before = X.copy()
    with jax.enable_x64(True):
        copied = device_copy(X)
    X[0, 0] = 1e6
    np.testing.assert_array_equal(np.asarray(copied), before)
