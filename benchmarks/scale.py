"""Streaming EM at scale: rows per second and peak memory, streaming against in memory.

Writes float32 ``.npy`` files of N rows (D=8 features drawn from K=8 Gaussian
clusters), chunk by chunk so the generator never holds the data, then fits
each one with ``K=8`` full-covariance components from the same explicit start
for ``--iters`` iterations (``tol=0``):

* *streaming*: :func:`mixlab.stream.fit_stream` on the file's path (read again
  on every pass, one block at a time);
* *in memory*: ``ml.fit`` on ``np.load(path)``, only where the data fit in
  memory comfortably (``--in-memory-max`` rows, default 1e7).

Each fit runs in a fresh subprocess, so its peak resident memory
(``ru_maxrss``) is its own; the two modes alternate ``--repeat`` times (the
machine's load then weighs on both alike) and the best rate of each counts.
Rows per second count ``N * n_iter`` over the EM run (``FitResult.elapsed``:
the iterations and the final log-likelihood pass; the scan, the start and
compilation are reported apart), the same work for both.  The final
log-likelihoods are printed to show the work was equal.

Targets: streaming peak memory under 1 GiB whatever N, and streaming at least
70% of the in-memory rate where the data fit.

Run: ``python benchmarks/scale.py`` (``--sizes 1e6`` for a quick look).  The
files go to ``--dir`` (default a fresh temporary directory) and are deleted
afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

K, D = 8, 8
GEN_CHUNK = 1_000_000


def centres() -> np.ndarray:
    return np.random.default_rng(0).normal(0.0, 5.0, (K, D))


def write_npy(path: str, n_rows: int, seed: int = 1) -> None:
    """Write ``n_rows`` float32 rows to ``path`` chunk by chunk."""
    mu = centres()
    scales = np.random.default_rng(seed).uniform(0.5, 1.5, (K, D))
    with open(path, "wb") as f:
        header = {
            "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
            "fortran_order": False,
            "shape": (n_rows, D),
        }
        np.lib.format.write_array_header_1_0(f, header)
        for i, start in enumerate(range(0, n_rows, GEN_CHUNK)):
            n = min(GEN_CHUNK, n_rows - start)
            rng = np.random.default_rng([seed, i])
            labels = rng.integers(0, K, n)
            block = mu[labels] + rng.standard_normal((n, D)) * scales[labels]
            block.astype(np.float32).tofile(f)


def start_params() -> dict:
    mu = centres()
    return {
        "weights": np.full(K, 1.0 / K),
        "means": mu + np.random.default_rng(2).normal(0.0, 0.5, (K, D)),
        "covariances": np.stack([np.eye(D)] * K),
    }


def worker(mode: str, path: str, iters: int) -> dict:
    """One fit in this (fresh) process; prints a JSON line."""
    import mixlab as ml
    from mixlab.stream import fit_stream

    method = ml.EM(init=start_params(), tol=0.0, max_iter=iters, on_collapse="ignore")
    wall = time.perf_counter()
    if mode == "stream":
        result = fit_stream(path, K, method, order=None, progress=False)
        info = result.diagnostics["stream"]
        extra = {
            "scan_s": info["scan_seconds"],
            "passes": info["passes"],
            "block_rows": info["block_rows"],
        }
    else:
        X = np.load(path)
        result = ml.fit(X, K, method, order=None)
        extra = {}
    wall = time.perf_counter() - wall
    n_rows = result.n_samples
    out = {
        "mode": mode,
        "n": n_rows,
        "n_iter": result.n_iter,
        "elapsed_s": result.elapsed,
        "compile_s": result.compile_time,
        "wall_s": wall,
        "rows_per_s": n_rows * result.n_iter / result.elapsed,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "log_likelihood": result.log_likelihood,
        **extra,
    }
    print(json.dumps(out), flush=True)
    return out


DEVICES_SCRIPT = """
import json, sys, time
import numpy as np
import jax
import mixlab as ml
sys.path.insert(0, {here!r})
from scale import K, D, centres, start_params
n = {n}
rng = np.random.default_rng(3)
labels = rng.integers(0, K, n)
X = (centres()[labels] + rng.standard_normal((n, D))).astype(np.float32)
out = {{"devices": len(jax.devices())}}
for name, devices in (("one", None), ("all", "all")):
    method = ml.EM(init=start_params(), tol=0.0, max_iter={iters}, devices=devices)
    ml.fit(X, K, method, order=None)  # compile
    best = None
    for _ in range(2):
        r = ml.fit(X, K, method, order=None)
        best = r if best is None or r.elapsed < best.elapsed else best
    out[name] = {{"rows_per_s": n * best.n_iter / best.elapsed, "ll": best.log_likelihood,
                  "means": best.params.means.tolist()}}
print(json.dumps(out))
"""


def devices_study(n_rows: int, n_devices: int, iters: int) -> dict:
    """The same in-memory fit on one device and spread over ``n_devices`` forced CPU
    devices (XLA's host platform split), in a fresh process: rows/s and the difference."""
    code = DEVICES_SCRIPT.format(
        here=os.path.dirname(os.path.abspath(__file__)), n=n_rows, iters=iters
    )
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n_devices}"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"devices study failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def best_of(runs: list[dict]) -> dict:
    """The fastest run, with the highest peak memory of all of them."""
    best = dict(max(runs, key=lambda r: r["rows_per_s"]))
    best["peak_mib"] = max(r["peak_mib"] for r in runs)
    return best


def run_worker(mode: str, path: str, iters: int) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        mode,
        "--path",
        path,
        "--iters",
        str(iters),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e7, 1e8])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument(
        "--repeat", type=int, default=2, help="fits per mode, alternating; the best rate counts"
    )
    parser.add_argument("--dir", default=None, help="where the .npy files go")
    parser.add_argument("--in-memory-max", type=float, default=1e7)
    parser.add_argument("--keep", action="store_true", help="keep the .npy files")
    parser.add_argument(
        "--devices",
        type=int,
        default=4,
        help="also fit 1e6 rows on 1 and on this many forced CPU devices (0: skip)",
    )
    parser.add_argument("--worker", choices=["stream", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.path, args.iters)
        return

    own_dir = args.dir is None
    directory = tempfile.mkdtemp(prefix="mixlab-scale-") if own_dir else args.dir
    os.makedirs(directory, exist_ok=True)
    rows = []
    try:
        for size in args.sizes:
            n = int(size)
            path = os.path.join(directory, f"scale_{n}.npy")
            t = time.perf_counter()
            write_npy(path, n)
            print(
                f"wrote {path} ({os.path.getsize(path) / 2**30:.2f} GiB) in "
                f"{time.perf_counter() - t:.1f} s",
                flush=True,
            )
            runs: dict[str, list[dict]] = {"stream": [], "memory": []}
            for _ in range(args.repeat):  # alternating, so both see the same machine load
                for mode in ("stream", "memory"):
                    if mode == "memory" and n > args.in_memory_max:
                        continue
                    runs[mode].append(run_worker(mode, path, args.iters))
                    print(json.dumps(runs[mode][-1]), flush=True)
            stream = best_of(runs["stream"])
            memory = best_of(runs["memory"]) if runs["memory"] else None
            rows.append((n, stream, memory))
            if not args.keep:
                os.remove(path)
    finally:
        if not args.keep:
            if own_dir:
                shutil.rmtree(directory, ignore_errors=True)
    print()
    print(
        f"K={K}, D={D}, full covariances, float32, {args.iters} EM iterations (tol=0), "
        "rows/s = N * n_iter / EM seconds"
    )
    head = (
        f"{'N':>7} {'stream rows/s':>13} {'memory rows/s':>13} {'ratio':>5} "
        f"{'stream peak MiB':>15} {'memory peak MiB':>15} {'stream wall s':>13} "
        f"{'(scan s)':>8} {'memory wall s':>13} {'loglik rel diff':>15}"
    )
    print(head)
    print("-" * len(head))
    for n, s, m in rows:
        ratio = f"{s['rows_per_s'] / m['rows_per_s']:.2f}" if m else "-"
        mem_rate = f"{m['rows_per_s']:.3g}" if m else "(no fit)"
        mem_peak = f"{m['peak_mib']:.0f}" if m else "-"
        mem_wall = f"{m['wall_s']:.1f}" if m else "-"
        diff = (
            f"{abs(s['log_likelihood'] - m['log_likelihood']) / abs(m['log_likelihood']):.1e}"
            if m
            else "-"
        )
        print(
            f"{n:>7.0e} {s['rows_per_s']:>13.3g} {mem_rate:>13} {ratio:>5} "
            f"{s['peak_mib']:>15.0f} {mem_peak:>15} {s['wall_s']:>13.1f} "
            f"{s['scan_s']:>8.1f} {mem_wall:>13} {diff:>15}"
        )

    if args.devices:
        d = devices_study(1_000_000, args.devices, args.iters)
        gap = float(np.max(np.abs(np.subtract(d["all"]["means"], d["one"]["means"]))))
        ratio = d["all"]["rows_per_s"] / d["one"]["rows_per_s"]
        print()
        print(
            f"1e6 rows in memory, float32, {args.iters} iterations: one device "
            f"{d['one']['rows_per_s']:.3g} rows/s, {d['devices']} forced CPU devices "
            f"{d['all']['rows_per_s']:.3g} rows/s (ratio {ratio:.2f}); "
            f"largest mean difference {gap:.2e}, log-likelihoods {d['one']['ll']:.8g} / "
            f"{d['all']['ll']:.8g}.  The forced devices share this machine's cores: a "
            "correctness check, not a speed-up."
        )


if __name__ == "__main__":
    main()
