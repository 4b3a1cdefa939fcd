"""EM over several processes (several hosts, or several GPUs with one process each).

JAX runs one program on every process (SPMD): after
``jax.distributed.initialize(...)`` each process sees every device of the job
(``jax.devices()``) and holds some of them (``jax.local_devices()``).  A mixture
is fitted across processes by giving :func:`mixlab.fit` a *global* array whose
rows are spread over all devices; every process calls ``fit`` with it, the EM
program's sums are added across processes by XLA's collectives, and every
process gets the same result.  :func:`global_rows` builds that array from the
rows each process holds::

    import jax, mixlab as ml
    jax.distributed.initialize()           # under SLURM or on a TPU pod: no arguments
    X = ml.distributed.global_rows(my_rows) # this process's rows, every process the same count
    result = ml.fit(X, 8, ml.EM(n_init=4), key=0)   # the same call in every process

On CPUs the collectives need ``jax.config.update("jax_cpu_collectives_implementation",
"gloo")`` before ``initialize`` (``examples/distributed_em.py`` runs two processes
on one machine this way).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from mixlab.em.data import ROWS


def global_rows(local_rows: Any) -> jax.Array:
    """One array of every process's rows, spread over all devices of the job.

    Call it in every process, each with its own rows (the same number in every
    process, a multiple of its number of local devices); rows are ordered by
    process.  The array has the rows sharded over a one-axis mesh of
    ``jax.devices()`` (axis ``"rows"``), which :func:`mixlab.fit` fits where it
    lies.  float64 rows stay float64.

    Raises
    ------
    ValueError
        Rows that are not 1-D or 2-D, or row counts that differ between
        processes or do not divide among the local devices (pad or trim the
        rows; a zero-weight row is not an option here, as weights are per
        process too).
    """
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    local = np.asarray(local_rows)
    if local.ndim == 1:
        local = local[:, None]
    if local.ndim != 2 or local.dtype.kind not in "fiu":
        raise ValueError(
            f"local_rows must be a numeric 1-D or 2-D array, got {local.dtype} {local.shape}"
        )
    if local.dtype.kind != "f":
        local = local.astype(np.float64)
    n_local, n_features = local.shape
    counts = np.asarray(multihost_utils.process_allgather(np.array([n_local, n_features])))
    counts = counts.reshape(-1, 2)
    if len(set(counts[:, 1].tolist())) != 1:
        raise ValueError(
            f"processes hold rows of different widths {counts[:, 1].tolist()}; every process "
            "must hold the same features"
        )
    if len(set(counts[:, 0].tolist())) != 1:
        raise ValueError(
            f"processes hold different numbers of rows {counts[:, 0].tolist()}; give every "
            "process the same number (pad or trim the rows)"
        )
    n_devices = len(jax.local_devices())
    if n_local % n_devices:
        raise ValueError(
            f"this process holds {n_local} rows, which its {n_devices} local devices do not "
            "share evenly; give every process a multiple of its local device count"
        )
    mesh = Mesh(np.array(jax.devices()), (ROWS,))
    shape = (n_local * jax.process_count(), n_features)
    with jax.enable_x64(local.dtype == np.float64):
        return jax.make_array_from_process_local_data(NamedSharding(mesh, P(ROWS)), local, shape)


__all__ = ["global_rows"]
