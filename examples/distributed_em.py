"""EM over two processes on one machine, each holding half of the rows.

Run: ``python examples/distributed_em.py`` (launches 2 processes on this CPU).

Each process starts JAX's distributed runtime (``jax.distributed.initialize``),
holds its own half of the rows (here: of a simulated three-cluster data set),
builds the global array with ``ml.distributed.global_rows`` and calls the same
``ml.fit``; the EM program's sums are added across the processes by XLA's
collectives (gloo on CPUs), and both processes print the same fit, which is
the fit of all rows in one process (checked at the end).

Elsewhere the worker part is all there is:

* **SLURM**: ``srun --ntasks=4 python examples/distributed_em.py --worker``;
  ``jax.distributed.initialize()`` reads the coordinator, the process count and
  the process id from SLURM's environment.
* **Several GPU hosts** (one process per host, or per GPU): run the worker on
  every host with ``--coordinator host0:1234 --num-processes N --process-id i``
  (or the ``JAX_COORDINATOR_ADDRESS``-style environment of your launcher); GPU
  collectives need no ``gloo`` setting.

Two processes on a 2-core machine give no speed-up: the point is that the
result is the one-process result while each process holds only its own rows.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys

import numpy as np

N_PER_CLUSTER = 1000


def _data(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.vstack([rng.normal(m, 1.0, size=(N_PER_CLUSTER, 3)) for m in (0.0, 4.0, 8.0)])


def worker(args: argparse.Namespace) -> dict:
    """One process: initialise, take this process's rows, fit, return the result."""
    import jax

    # CPU collectives (gloo); GPUs and TPUs use their own.  Set before initialize, which
    # must come before anything touches a device.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.coordinator is None:
        jax.distributed.initialize()  # SLURM, TPU pods and other launchers: from the environment
    else:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    import mixlab as ml

    X = _data(args.seed)
    rows = np.array_split(np.arange(len(X)), jax.process_count())[jax.process_index()]
    G = ml.distributed.global_rows(X[rows])  # this process's rows only
    result = ml.fit(G, 3, ml.EM(n_init=args.n_init), key=args.seed)
    return {
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "devices": len(jax.devices()),
        "log_likelihood": result.log_likelihood,
        "n_iter": result.n_iter,
        "weights": result.params.weights.tolist(),
        "means": result.params.means.tolist(),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(n_processes: int, seed: int, n_init: int) -> list[dict]:
    """Start ``n_processes`` workers of this script on this machine; their results."""
    coordinator = f"localhost:{_free_port()}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                "--coordinator",
                coordinator,
                "--num-processes",
                str(n_processes),
                "--process-id",
                str(i),
                "--seed",
                str(seed),
                "--n-init",
                str(n_init),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
        )
        for i in range(n_processes)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"a worker failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help="run as one process of the job")
    parser.add_argument("--coordinator", help="host:port of process 0 (default: from SLURM etc.)")
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-init", type=int, default=2)
    args = parser.parse_args(argv)
    if args.worker:
        out = worker(args)
        print(json.dumps(out))
        return out
    import mixlab as ml

    results = launch(args.num_processes, args.seed, args.n_init)
    single = ml.fit(_data(args.seed), 3, ml.EM(n_init=args.n_init), key=args.seed)
    for r in results:
        print(
            f"process {r['process']} of {r['processes']} ({r['devices']} devices in all): "
            f"log-likelihood {r['log_likelihood']:.6f}, {r['n_iter']} iterations, means "
            f"{np.round(r['means'], 3).tolist()}"
        )
    gap = max(abs(r["log_likelihood"] - single.log_likelihood) for r in results)
    print(
        f"one process, all rows: log-likelihood {single.log_likelihood:.6f}, "
        f"{single.n_iter} iterations; largest difference {gap:.2e}"
    )
    return {"processes": results, "single": single}


if __name__ == "__main__":
    main()
