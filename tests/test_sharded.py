"""EM with rows spread over several devices equals EM on one device.

The machine has one CPU device unless XLA is told otherwise, so the fits run in
a subprocess with ``--xla_force_host_platform_device_count=4``: four CPU devices,
XLA's real collectives (all-reduce of the sums), no speed-up on two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = r"""
import json, sys, warnings
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import mixlab as ml

assert len(jax.devices()) == 4
rng = np.random.default_rng(0)
# 3 clusters, a row count that 4 devices do not divide, frequency weights with zeros
X = np.vstack([rng.normal(m, 1.0, size=(667, 3)) for m in (0.0, 4.0, 8.0)])
w = rng.integers(0, 3, size=len(X)).astype(float)
counts = rng.poisson(np.repeat([[1.0, 3.0], [6.0, 1.0]], 1001, axis=0))
binary = (rng.random((2001, 5)) < np.where(np.arange(2001)[:, None] < 900, 0.2, 0.7)).astype(float)
# two far-away duplicated points: a component there collapses and is restarted
collapse = np.vstack([X[:400], [[40.0, 40.0, 40.0]] * 2])

def run(data, k, devices, **kw):
    em = kw.pop("em", {})
    r = ml.fit(data, k, ml.EM(devices=devices, **em), key=0, **kw)
    return {
        "params": {n: np.asarray(v).tolist() for n, v in
                   {"weights": r.params.weights, **r.params.components}.items()},
        "ll": r.log_likelihood, "n_iter": r.n_iter, "trace": r.trace.tolist(),
        "restarts": r.restarts.log_likelihood.tolist(),
        "best": int(r.restarts.best),
        "reinit": r.diagnostics["reinitialisations"],
    }

cases = {}
families = sys.argv[1] == "families"
fixed = dict(tol=0.0, max_iter=12, n_init=2, chunk_size=500)
# full and tied: the sums of every Gaussian layout go through the same all-reduce
for cov in ("full", "tied"):
    cases[cov] = (X, 3, dict(covariance=cov, sample_weight=w, em=fixed))
# Student-t starts by trimmed k-means ("auto"): its draws are those of one device too
cases["student_t"] = (X, 3, dict(family="student_t", covariance="diag", em=dict(fixed, max_iter=6)))
cases["collapse"] = (collapse, 4, dict(em=dict(n_init=1, max_iter=50)))
if families:  # the other families' sums take the same all-reduce: a benchmark
    cases = {
        "poisson": (counts, 2, dict(family="poisson", em=fixed)),
        "bernoulli": (binary, 2, dict(family="bernoulli", em=dict(fixed, init="random"))),
    }
out = {}
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # ConvergenceWarning of the fixed-iteration runs
    for name, (data, k, kw) in cases.items():
        out[name] = [run(data, k, None, **dict(kw)), run(data, k, "all", **dict(kw))]
    if families:
        print(json.dumps(out))
        sys.exit(0)
    # a JAX array sharded over two of the devices is fitted where it lies
    mesh = Mesh(np.array(jax.devices()[:2]), ("rows",))
    with jax.enable_x64():
        Xs = jax.device_put(X[:2000], NamedSharding(mesh, P("rows")))
        one = jax.device_put(X[:2000], jax.devices()[0])
    out["sharded_input"] = [run(one, 3, None), run(Xs, 3, None)]
    # the same rows and devices given as a list: the programs above, nothing to compile
    out["devices_listed"] = [run(X[:2000], 3, None), run(X[:2000], 3, jax.devices()[:2])]
print(json.dumps(out))
"""


def _run_script(which: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, which],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fits():
    return _run_script("core")


@pytest.fixture(scope="module")
def family_fits():
    return _run_script("families")


CASES = [
    "full",
    "tied",
    "student_t",
    "collapse",
    "sharded_input",
    "devices_listed",
]


@pytest.mark.parametrize("case", CASES)
def test_sharded_fit_equals_the_one_device_fit(fits, case):
    """Parameters to 1e-12 of each array's largest value (the sums are added in another
    order), the same iterations, restarts and collapse restarts."""
    _assert_same_fit(*fits[case], case)


@pytest.mark.benchmark
@pytest.mark.parametrize("case", ["poisson", "bernoulli"])
def test_sharded_poisson_and_bernoulli_equal_the_one_device_fit(family_fits, case):
    _assert_same_fit(*family_fits[case], case)


def _assert_same_fit(one, many, case):
    assert many["n_iter"] == one["n_iter"]
    assert many["reinit"] == one["reinit"]
    for name, want in one["params"].items():
        want, got = np.asarray(want), np.asarray(many["params"][name])
        assert np.max(np.abs(got - want)) <= 1e-12 * np.max(np.abs(want)), name
    # Through a collapse (a covariance near singular before its restart) rounding
    # differences grow to ~1e-10 of the log-likelihood; elsewhere they stay at 1e-12.
    rtol = 1e-9 if case == "collapse" else 1e-12
    np.testing.assert_allclose(many["restarts"], one["restarts"], rtol=rtol)
    if many["best"] == one["best"]:
        np.testing.assert_allclose(many["trace"], one["trace"], rtol=rtol)
    else:  # two restarts tie at the same optimum: rounding picks either, by another path
        tie = np.asarray(one["restarts"])[[one["best"], many["best"]]]
        assert tie[0] == pytest.approx(tie[1], rel=1e-12)
    assert many["ll"] == pytest.approx(one["ll"], rel=rtol)


def test_the_collapse_case_restarts_a_component(fits):
    one, _ = fits["collapse"]
    assert one["reinit"], "the far duplicated points should make a component collapse"


def test_devices_setting_is_checked():
    import jax

    import mixlab as ml
    from mixlab.em.data import row_mesh

    with pytest.raises(ValueError, match="devices is empty"):
        ml.EM(devices=[])
    with pytest.raises(TypeError, match="'all' or a list of jax devices"):
        ml.EM(devices="gpu")
    with pytest.raises(TypeError, match="must be jax devices"):
        ml.EM(devices=[0, 1])
    d = jax.devices()[0]
    with pytest.raises(ValueError, match="more than once"):
        ml.EM(devices=[d, d])
    assert ml.EM(devices=[d]).settings()["devices"] == [f"{d.platform}:{d.id}"]
    # one device: no mesh, the ordinary program
    assert row_mesh(np.zeros((4, 2)), "all" if len(jax.devices()) == 1 else [d]) is None


def test_global_rows_in_one_process_is_the_data():
    import mixlab as ml

    X = np.arange(12.0).reshape(6, 2)
    G = ml.distributed.global_rows(X)
    assert G.dtype == np.float64 and G.shape == (6, 2)
    np.testing.assert_array_equal(np.asarray(G), X)
    with pytest.raises(ValueError, match="numeric 1-D or 2-D"):
        ml.distributed.global_rows(np.zeros((2, 2, 2)))


SECOND = r"""
import json
import numpy as np
import mixlab as ml
X = np.random.default_rng(0).normal(size=(400, 2)) + np.repeat([[0.0], [5.0]], 200, axis=0)
r = ml.fit(X, 2, ml.EM(devices="all", max_iter=5, tol=0.0), key=0)
print(json.dumps({"ll": r.log_likelihood, "means": r.params.means.tolist(),
                  "source": r.diagnostics["compile_cache"]}))
"""


def test_a_second_process_with_a_cache_compiles_the_sharded_program_again(tmp_path):
    # Loaded from JAX's persistent cache, programs over several CPU devices can hang in
    # their collectives (jax 0.10.2: XLA aborts after 40 s; seen when the sharded test's
    # script ran twice with a cache): mixlab keeps such programs out of every cache, so
    # a second process compiles again, and gets the same fit.
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "MIXLAB_CACHE_DIR": str(tmp_path),
    }
    outs = []
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-c", SECOND], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert [o.pop("source") for o in outs] == ["compiled", "compiled"]
    assert outs[0] == outs[1]
