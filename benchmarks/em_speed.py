"""EM speed: mixlab against scikit-learn (and gmmx where installed), one run, same work.

Every case fits the same float64 data from the same starting parameters for
the same number of iterations (``tol=0``), so the final log-likelihoods must
agree (to 1e-8 relative), which proves the work was equal.  Times are the
best of ``--repeat`` runs; mixlab's compile time is reported apart.

scikit-learn is timed on its EM iterations only: a subclass skips its own
initialisation pass and starts from the given parameters, as mixlab does.
gmmx (float32 only) gets the same start; its iteration count and finiteness
are checked and printed.

GFLOP/s counts 4 * N * K * D^2 flops per iteration (the two matrix products of
the full-covariance E- and M-steps) and is set against this machine's float64
matrix-product rate measured in the same run.

Run: ``python benchmarks/em_speed.py`` (``--quick`` for small sizes).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time
import warnings

import jax
import numpy as np

import mixlab as ml

CASES = [  # (N, K, D, iterations)
    (100_000, 8, 2, 50),
    (100_000, 16, 16, 20),
    (65_536, 16, 32, 20),
    (1_000_000, 16, 32, 5),
]
QUICK = [(20_000, 8, 2, 20), (20_000, 16, 16, 10), (16_384, 16, 32, 5)]


def make_data(n: int, k: int, d: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 4.0, (k, d))
    labels = rng.integers(0, k, n)
    X = centers[labels] + rng.normal(0.0, 1.0, (n, d)) * rng.uniform(0.5, 1.5, (k, 1, d))[labels, 0]
    # Start: means perturbed from the truth, unit covariances, equal weights.
    start = {
        "weights": np.full(k, 1.0 / k),
        "means": centers + rng.normal(0.0, 0.5, (k, d)),
        "covariances": np.tile(np.eye(d), (k, 1, 1)),
    }
    return X, start


def matmul_rate(size: int = 2048) -> tuple[float, float]:
    """float64 GFLOP/s of a square matrix product: NumPy and JAX (best of 3)."""
    a = np.random.default_rng(0).normal(size=(size, size))
    best_np = min(_timed(lambda: a @ a) for _ in range(3))
    with jax.enable_x64(True):
        aj = jax.numpy.asarray(a)
        f = jax.jit(lambda x: x @ x)
        f(aj).block_until_ready()
        best_jax = min(_timed(lambda: f(aj).block_until_ready()) for _ in range(3))
    flops = 2.0 * size**3
    return flops / best_np / 1e9, flops / best_jax / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_sklearn(X, start, iters):
    from sklearn.mixture import GaussianMixture

    class StartFromGiven(GaussianMixture):
        def _initialize_parameters(self, X, random_state, xp=None):
            self._initialize(X, None)

    prec = np.linalg.inv(start["covariances"])
    gm = StartFromGiven(
        len(start["weights"]),
        covariance_type="full",
        tol=0.0,
        max_iter=iters,
        weights_init=start["weights"],
        means_init=start["means"],
        precisions_init=prec,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seconds = _timed(lambda: gm.fit(X))
    return seconds, float(gm.score(X) * len(X))


def run_mixlab(X, start, iters):
    method = ml.EM(init=start, tol=0.0, max_iter=iters)
    result = ml.fit(X, len(start["weights"]), method=method)
    return result.elapsed, result.compile_time, result.log_likelihood, result.n_iter


def run_gmmx(X, start, iters):
    try:
        from gmmx import EMFitter, GaussianMixtureModelJax
    except ImportError:
        return None
    import jax.numpy as jnp

    gmm = GaussianMixtureModelJax.from_squeezed(
        means=jnp.asarray(start["means"], jnp.float32),
        covariances=jnp.asarray(start["covariances"], jnp.float32),
        weights=jnp.asarray(start["weights"], jnp.float32),
    )
    fitter = EMFitter(tol=0.0, max_iter=iters)
    x32 = jnp.asarray(X, jnp.float32)
    res = fitter.fit(x32, gmm)  # compile
    seconds = _timed(lambda: jax.block_until_ready(fitter.fit(x32, gmm)))
    res = fitter.fit(x32, gmm)
    ll = float(res.log_likelihood) * len(X)
    return seconds, int(res.n_iter), bool(np.isfinite(ll)), ll


MEMORY_CASE = (1_000_000, 16, 32, 3)


def peak_rss_gib() -> float:
    """This process's peak resident memory in GiB.

    Linux's VmHWM belongs to the process image and starts afresh at exec;
    ``ru_maxrss`` does not (it is kept across exec, so a probe forked from a
    large parent would report the parent's size).  ``ru_maxrss`` is the
    fallback elsewhere (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def memory_probe() -> None:
    """Fit the largest case with mixlab alone and print this process's peak RSS."""
    n, k, d, iters = MEMORY_CASE
    X, start = make_data(n, k, d)
    data_gib = X.nbytes / 2**30
    run_mixlab(X, start, iters)
    peak = peak_rss_gib()
    print(f"{peak:.3f} {data_gib:.3f}")


def measure_memory() -> str:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-probe"], capture_output=True, text=True, check=True
    )
    peak, data = (float(v) for v in out.stdout.split()[-2:])
    n, k, d, _ = MEMORY_CASE
    return (
        f"peak resident memory, mixlab alone at N={n:,} K={k} D={d} float64: {peak:.2f} GiB "
        f"(the data itself: {data:.2f} GiB; target < 3 GiB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probe")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case, best kept")
    parser.add_argument(
        "--cases", type=str, default=None, help="comma-separated case indices to run (default: all)"
    )
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe()
        return
    cases = QUICK if args.quick else CASES
    if args.cases:
        cases = [cases[int(i)] for i in args.cases.split(",")]

    np_rate, jax_rate = matmul_rate()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} on {jax.default_backend()}"
    )
    print(f"float64 matmul 2048^3: numpy {np_rate:.1f} GFLOP/s, jax {jax_rate:.1f} GFLOP/s\n")
    header = (
        f"{'N':>9} {'K':>3} {'D':>3} {'it':>3} | {'sklearn s':>9} {'mixlab s':>9} "
        f"{'compile s':>9} {'speedup':>7} | {'GFLOP/s':>7} {'% peak':>6} | "
        f"{'ll sklearn':>16} {'ll mixlab':>16} {'rel diff':>8}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for n, k, d, iters in cases:
        X, start = make_data(n, k, d)
        sk_repeat = max(1, args.repeat if n < 500_000 else 1)
        sk = [run_sklearn(X, start, iters) for _ in range(sk_repeat)]
        sk_s, sk_ll = min(sk)[0], sk[0][1]
        ml_runs = [run_mixlab(X, start, iters) for _ in range(args.repeat)]
        ml_s = min(r[0] for r in ml_runs)
        compile_s = ml_runs[0][1]
        ml_ll, n_iter = ml_runs[0][2], ml_runs[0][3]
        assert n_iter == iters, (n_iter, iters)
        # score() after the final M-step equals mixlab's final log-likelihood
        rel = abs(ml_ll - sk_ll) / abs(sk_ll)
        gflops = 4.0 * n * k * d * d * iters / ml_s / 1e9
        print(
            f"{n:>9} {k:>3} {d:>3} {iters:>3} | {sk_s:>9.3f} {ml_s:>9.3f} {compile_s:>9.2f} "
            f"{sk_s / ml_s:>6.1f}x | {gflops:>7.1f} {100 * gflops / jax_rate:>5.0f}% | "
            f"{sk_ll:>16.8f} {ml_ll:>16.8f} {rel:>8.1e}"
        )
        rows.append((n, k, d, iters, sk_s, ml_s))
        gm = run_gmmx(X, start, iters)
        if gm is not None:
            g_s, g_iter, g_finite, g_ll = gm
            print(
                f"{'':>22} gmmx float32: {g_s:.3f} s ({sk_s / g_s:.1f}x sklearn), "
                f"n_iter={g_iter} (asked {iters}), finite={g_finite}, ll={g_ll:.3f}"
            )
    if not args.no_memory:
        print("\n" + measure_memory())


if __name__ == "__main__":
    main()
