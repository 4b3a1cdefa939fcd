"""What a new Python process pays: imports and compiled programs from earlier processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

FIT = """
import json, sys
import mixlab as ml
X = ml.datasets.load("faithful")
r = ml.fit(X, 2, key=0)
print(json.dumps({"source": r.diagnostics["compile_cache"], "ll": r.log_likelihood,
                  "means": r.params.means.tolist(), "n_iter": r.n_iter}))
"""


def _python(code: str, **env: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_import_loads_no_heavy_optional_modules():
    code = (
        "import sys, mixlab; print(sorted(m for m in ('pandas', 'scipy', 'numpyro', 'arviz', "
        "'matplotlib', 'sklearn', 'xarray') if m in sys.modules))"
    )
    assert _python(code) == "[]"


def test_a_second_process_loads_the_compiled_program_and_gets_the_same_fit(tmp_path):
    cache = tmp_path / "cache"
    first = json.loads(_python(FIT, MIXLAB_CACHE_DIR=str(cache)))
    assert first["source"] == "compiled"
    assert any(cache.iterdir())
    second = json.loads(_python(FIT, MIXLAB_CACHE_DIR=str(cache)))
    assert second["source"] == "disk"
    # The loaded program is the same program: bit for bit the same fit.
    assert second["ll"] == first["ll"]
    assert second["means"] == first["means"]
    assert second["n_iter"] == first["n_iter"]


def test_the_cache_can_be_switched_off_and_a_users_jax_cache_is_kept(tmp_path):
    off = json.loads(_python(FIT, MIXLAB_CACHE_DIR="off"))
    assert off["source"] == "compiled"
    # A cache directory configured in JAX wins over mixlab's: programs land there.
    mine, theirs = tmp_path / "mixlab", tmp_path / "theirs"
    code = f"import jax; jax.config.update('jax_compilation_cache_dir', {str(theirs)!r})\n" + FIT
    json.loads(_python(code, MIXLAB_CACHE_DIR=str(mine)))
    assert not mine.exists()
    assert any(theirs.iterdir())
    again = json.loads(_python(code, MIXLAB_CACHE_DIR=str(mine)))
    assert again["source"] == "disk"


STORED = """
import json, sys
import numpy as np
import mixlab as ml
from mixlab import _jaxutil
r = ml.fit(ml.datasets.load("faithful"), 2, key=0)
preloaded = "scipy.linalg" not in sys.modules
import scipy.linalg
a = np.array([[4.0, 2.0], [2.0, 3.0]])
print(json.dumps({"source": r.diagnostics["compile_cache"], "ll": r.log_likelihood,
                  "means": r.params.means.tolist(), "n_iter": r.n_iter,
                  "stored": _jaxutil._persistent["program_hits"], "preloaded": preloaded,
                  "scipy_ok": bool(np.allclose(scipy.linalg.cholesky(a, lower=True),
                                               np.linalg.cholesky(a)))}))
"""


def test_a_second_process_runs_the_stored_program_without_tracing(tmp_path):
    # The program store (mixlab/_programs.py) answers before JAX traces anything: the
    # second process's fit comes from it, not from JAX's program-keyed cache.
    cache = tmp_path / "cache"
    first = json.loads(_python(STORED, MIXLAB_CACHE_DIR=str(cache)))
    assert first["stored"] == 0 and first["source"] == "compiled"
    assert len(list((cache / "mixlab-programs").iterdir())) == 1
    second = json.loads(_python(STORED, MIXLAB_CACHE_DIR=str(cache)))
    assert second["stored"] == 1 and second["source"] == "disk"
    assert (second["ll"], second["means"], second["n_iter"]) == (
        first["ll"],
        first["means"],
        first["n_iter"],
    )
    # Loading it set LAPACK up without running SciPy's linalg package (tracing imports
    # it); SciPy works as ever afterwards.
    assert second["preloaded"] and not first["preloaded"]
    assert second["scipy_ok"] and first["scipy_ok"]


def test_a_stored_one_device_program_runs_on_its_device_when_there_are_several(tmp_path):
    # Loaded naively, an executable is spread over every device of the backend and its
    # collectives wait forever for the others (XLA aborts after 40 s).
    env = {
        "MIXLAB_CACHE_DIR": str(tmp_path),
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    first = json.loads(_python(STORED, **env))
    second = json.loads(_python(STORED, **env))
    assert (first["stored"], second["stored"]) == (0, 1)
    assert (second["ll"], second["means"]) == (first["ll"], first["means"])
