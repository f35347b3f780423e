"""One process of a multi-process fit on 127.0.0.1 (started by ``tests/test_distributed.py``).

Usage: ``python tests/_sharding_process.py PROCESS_ID NUM_PROCESSES PORT MODE OUT``

Every process generates the same data and keeps its own rows (ragged: process 0 holds more),
joins ``jax.distributed`` (CPU collectives over gloo, bounded timeouts), builds the global
array with :func:`gmmjax.shard_rows` (``process_local=True``) and fits. ``MODE``:

- ``fit``: writes the fitted parameters to ``OUT.<PROCESS_ID>.npz``;
- ``long``: a fit that does not converge for minutes (``tol=0``); prints ``FITTING`` first,
  so that the test can kill a process mid-fit;
- ``mismatch``: process 1 holds one feature fewer (the boundary must say so).
"""

from __future__ import annotations

import numpy as np
from _children import join_cluster_from_argv

PROCESS_ID, NUM_PROCESSES, MODE, OUT = join_cluster_from_argv()

import jax  # noqa: E402

import gmmjax as gj  # noqa: E402


def all_rows(num_samples: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 6.0, 0.0], [0.0, 0.0, 6.0]])
    return (rng.normal(size=(num_samples, 3)) + centers[rng.integers(0, 4, num_samples)]).astype(np.float32)


def my_rows(X: np.ndarray) -> np.ndarray:
    bounds = np.linspace(0, X.shape[0], NUM_PROCESSES + 1).astype(int)
    bounds[1:-1] += 7  # ragged: the first processes hold a few more rows
    return X[bounds[PROCESS_ID] : bounds[PROCESS_ID + 1]]


def main():
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    if MODE == "long":
        local = my_rows(all_rows(20000))
    else:
        local = my_rows(all_rows(1002))
    if MODE == "mismatch" and PROCESS_ID == 1:
        local = local[:, :2]
    rows = gj.shard_rows(local, mesh, process_local=True)
    if MODE == "long":
        print("FITTING", flush=True)
        gj.fit_em(jax.random.key(1), rows.X, 4, sample_weight=rows.sample_weight, tol=0.0, max_iter=10**7)
        return
    result = gj.fit_em(jax.random.key(1), rows.X, 4, sample_weight=rows.sample_weight, tol=1e-4, n_init=2)
    np.savez(
        f"{OUT}.{PROCESS_ID}.npz",
        weights=np.asarray(result.params.weights),
        means=np.asarray(result.params.means),
        covariances=np.asarray(result.params.covariances),
        n_iter=np.asarray(result.restarts.n_iter),
        lower_bound=np.asarray(result.restarts.lower_bound),
    )
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
