"""What a new Python process pays: ``import mixlab`` and the first fit, cold and warm.

Each measurement is a fresh Python process fitting Old Faithful (``ml.fit(X, 2)``,
the defaults) with a cache directory of this run's own:

* ``cold``: an empty cache: the program is traced, lowered and compiled;
* ``JAX cache``: mixlab's program store switched off (``MIXLAB_PROGRAM_STORE=off``),
  so the program comes from JAX's persistent compilation cache, which needs it
  traced and lowered first (what mixlab did before the store);
* ``program store``: the program comes from mixlab's store, without tracing.

Beside them, scikit-learn in a fresh process (``import sklearn.mixture`` and
``GaussianMixture(2).fit(X)``), the peer a user would otherwise reach for.
Every process reports its own clock: import, then ``fit`` from call to return.
The table shows the median and the best of ``--repeat`` processes, and the
log-likelihoods prove every mixlab process fitted the same model (identical to
the last bit: a loaded program is the compiled program).

Targets (issue 11): a warm ``fit`` under 0.5 s; ``import mixlab`` under 1 s.

Run: ``python benchmarks/startup.py [--repeat 7]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

MIXLAB = """
import json, time
t0 = time.perf_counter()
import mixlab as ml
t1 = time.perf_counter()
X = ml.datasets.load("faithful")
t2 = time.perf_counter()
r = ml.fit(X, 2)
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "fit": t3 - t2, "ll": r.log_likelihood,
                  "source": r.diagnostics["compile_cache"]}))
"""

SKLEARN = """
import json, time
import numpy as np
import mixlab as ml
X = np.asarray(ml.datasets.load("faithful"))
t0 = time.perf_counter()
from sklearn.mixture import GaussianMixture
t1 = time.perf_counter()
gm = GaussianMixture(2, random_state=0).fit(X)
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "fit": t2 - t1, "ll": float(gm.score(X) * len(X)),
                  "source": "-"}))
"""


def run(code: str, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="processes per row")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        cold = []
        for i in range(args.repeat):
            fresh = os.path.join(cache, f"cold{i}")
            cold.append(run(MIXLAB, MIXLAB_CACHE_DIR=fresh))
        rows.append(("mixlab, cold (compiles)", cold))
        warm = os.path.join(cache, "warm")
        # Fill JAX's cache (the store off: the program under its usual name), then the store.
        run(MIXLAB, MIXLAB_CACHE_DIR=warm, MIXLAB_PROGRAM_STORE="off")
        first = run(MIXLAB, MIXLAB_CACHE_DIR=warm)
        jax_only = [
            run(MIXLAB, MIXLAB_CACHE_DIR=warm, MIXLAB_PROGRAM_STORE="off")
            for _ in range(args.repeat)
        ]
        rows.append(("mixlab, JAX cache (traces, lowers, loads)", jax_only))
        stored = [run(MIXLAB, MIXLAB_CACHE_DIR=warm) for _ in range(args.repeat)]
        rows.append(("mixlab, program store (loads)", stored))
    try:
        rows.append(("scikit-learn GaussianMixture", [run(SKLEARN) for _ in range(args.repeat)]))
    except subprocess.CalledProcessError:
        print("(scikit-learn not installed: its row is left out)")

    print(f"fresh Python processes, Old Faithful, K=2, {args.repeat} per row; seconds\n")
    print(
        "| process | import median | import best | fit median | fit best | compiled program from "
        "| log-likelihood |"
    )
    print("|---|---:|---:|---:|---:|---|---:|")
    for name, runs in rows:
        imports = [r["import"] for r in runs]
        fits = [r["fit"] for r in runs]
        sources = ",".join(sorted({r["source"] for r in runs}))
        lls = {r["ll"] for r in runs}
        ll = f"{runs[0]['ll']:.10f}" + ("" if len(lls) == 1 else " (differs!)")
        print(
            f"| {name} | {statistics.median(imports):.3f} | {min(imports):.3f} | "
            f"{statistics.median(fits):.3f} | {min(fits):.3f} | {sources} | {ll} |"
        )
    store = statistics.median(r["fit"] for r in stored)
    via_jax = statistics.median(r["fit"] for r in jax_only)
    compiling = statistics.median(r["fit"] for r in cold)
    print(
        f"\nprogram store against JAX's cache: {via_jax / store:.1f}x faster fit; "
        f"against compiling: {compiling / store:.1f}x"
    )
    same = {r["ll"] for r in cold + jax_only + stored} == {first["ll"]}
    print(f"every mixlab process gave the same log-likelihood to the last bit: {same}")
    target = "met" if store < 0.5 else "MISSED"
    print(f"target: warm fit under 0.5 s: {target} ({store:.3f} s)")
    imp = statistics.median(r["import"] for r in stored)
    print(f"target: import mixlab under 1 s: {'met' if imp < 1 else 'MISSED'} ({imp:.3f} s)")


if __name__ == "__main__":
    main()
