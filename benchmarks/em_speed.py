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

``--device auto`` (or ``cpu``, ``gpu``, ``tpu``) prints the device table
instead: milliseconds per iteration over a ``--iters``-iteration fit from the
same start, second call (compile excluded), for mixlab in float64 and float32
(wall: from the NumPy data to the returned result; engine: the compiled EM
loop alone), gmmx in float32, a pure-JAX floor of two matrix products per
iteration (the E-step's quadratic forms and the M-step's scatter matrices,
``4 N K D^2`` flops), and scikit-learn on the host CPU; the final
log-likelihoods show the work was equal.
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


DEVICE_CASES = [(100_000, 8, 2), (100_000, 16, 16), (1_000_000, 16, 32), (4_000_000, 16, 32)]


def run_mixlab_timed(X, start, iters, **em_options):
    """(wall s, engine s, log-likelihood) of the second of two identical fits."""
    method = ml.EM(init=start, tol=0.0, max_iter=iters, **em_options)
    ml.fit(X, len(start["weights"]), method=method)  # compile
    t = time.perf_counter()
    result = ml.fit(X, len(start["weights"]), method=method)
    wall = time.perf_counter() - t
    assert result.n_iter == iters, (result.n_iter, iters)
    return wall, result.elapsed, result.log_likelihood


def two_matmul_floor(X, start, iters, dtype) -> float:
    """Seconds of ``iters`` iterations of the two matrix products EM cannot avoid."""
    import jax.numpy as jnp

    n, d = X.shape
    k = len(start["weights"])

    def body(_, a):
        y = (x @ a).reshape(n, k, d)  # N x D times D x KD: every x' P_k
        r = jax.nn.softmax(-0.5 * jnp.sum(y * y, axis=-1), axis=1)
        s = (r[:, :, None] * x[:, None, :]).reshape(n, k * d).T @ x  # KD x N times N x D
        return a + 1e-12 * s.reshape(k, d, d).transpose(1, 0, 2).reshape(d, k * d)

    with jax.enable_x64(dtype == np.float64):
        x = jnp.asarray(X, dtype)
        a0 = jnp.tile(jnp.eye(d, dtype=dtype), (1, k))
        run = jax.jit(lambda a: jax.lax.fori_loop(0, iters, body, a))
        jax.block_until_ready(run(a0))
        return min(_timed(lambda: jax.block_until_ready(run(a0))) for _ in range(2))


def device_table(args) -> None:
    backend = jax.default_backend() if args.device == "auto" else args.device
    device = jax.devices(backend)[0]
    iters = args.iters or (20 if backend != "cpu" else 3)
    cases = (
        DEVICE_CASES if not args.cases else [DEVICE_CASES[int(i)] for i in args.cases.split(",")]
    )
    print(
        f"device: {device.device_kind} ({backend}), jax {jax.__version__}; host "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"ms per iteration over {iters} iterations, second call"
    )
    header = (
        f"{'N':>9} {'K':>3} {'D':>3} | {'f64 wall':>9} {'(engine)':>9} {'f32 wall':>9} "
        f"{'(engine)':>9} {'wall/eng':>8} | {'gmmx f32':>9} {'f32/gmmx':>8} | "
        f"{'floor f32':>9} {'floor f64':>9} | {'sklearn':>9} | {'ll f64':>15} {'f32 rel':>8}"
    )
    print(header)
    print("-" * len(header))
    per = 1e3 / iters
    with jax.default_device(device):
        for n, k, d in cases:
            X, start = make_data(n, k, d)
            X32 = X.astype(np.float32)
            w64, e64, ll64 = run_mixlab_timed(X, start, iters)
            precision = {}  # the default is left out: older mixlab versions run this table too
            if args.matmul_precision != "highest":
                precision["matmul_precision"] = args.matmul_precision
            w32, e32, ll32 = run_mixlab_timed(X32, start, iters, **precision)
            gm = run_gmmx(X, start, iters)
            g_s = gm[0] if gm is not None else float("nan")
            f32 = two_matmul_floor(X, start, iters, np.float32)
            f64 = two_matmul_floor(X, start, iters, np.float64)
            sk = float("nan")
            if n * k * d * d <= args.sklearn_max_work:
                sk_iters = max(1, min(iters, 3))
                sk = run_sklearn(X, start, sk_iters)[0] / sk_iters * iters
            print(
                f"{n:>9} {k:>3} {d:>3} | {w64 * per:>9.2f} {e64 * per:>9.2f} {w32 * per:>9.2f} "
                f"{e32 * per:>9.2f} {w32 / e32:>8.2f} | {g_s * per:>9.2f} {g_s / w32:>7.2f}x | "
                f"{f32 * per:>9.2f} {f64 * per:>9.2f} | {sk * per:>9.1f} | "
                f"{ll64:>15.6f} {abs(ll32 - ll64) / abs(ll64):>8.1e}",
                flush=True,
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
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "gpu", "tpu"),
        default=None,
        help="print the per-iteration device table (mixlab f64/f32, gmmx, floor, sklearn)",
    )
    parser.add_argument("--iters", type=int, default=None, help="iterations (device table)")
    parser.add_argument(
        "--matmul-precision",
        default="highest",
        choices=("highest", "high", "default"),
        help="mixlab float32 matmul precision (device table)",
    )
    parser.add_argument(
        "--sklearn-max-work",
        type=float,
        default=2e10,
        help="skip scikit-learn above this N*K*D^2 (device table)",
    )
    args = parser.parse_args()
    if args.device:
        device_table(args)
        return
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
