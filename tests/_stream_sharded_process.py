"""One process of a multi-process streamed fit on 127.0.0.1 (started by ``tests/test_streaming_sharded.py``).

Usage: ``python tests/_stream_sharded_process.py PROCESS_ID NUM_PROCESSES PORT MODE DIR``

Each process streams its OWN data: process 0 the file ``DIR/shard-0.npy``, the others an
iterable over the rows of ``DIR/shard-<id>.npy`` (ragged: the test writes shards of different
lengths). It joins ``jax.distributed`` (CPU collectives over gloo, bounded timeouts) and runs
:func:`fit_em_streaming` with a mesh over every process's device. ``MODE``:

- ``fit``: writes the fitted parameters to ``DIR/out.<PROCESS_ID>.npz``;
- ``slow``: the same fit with a checkpoint every iteration to ``DIR/c.npz`` and a pause per
  batch (the test kills the processes mid-fit); ``resume``: continues it and writes the result;
- ``mismatch``: process 1 streams one feature fewer, ``dtype``: float64 rows (every process
  must fail, naming it).
"""

from __future__ import annotations

import time

import numpy as np
from _children import join_cluster_from_argv

PROCESS_ID, NUM_PROCESSES, MODE, DIR = join_cluster_from_argv()

import jax  # noqa: E402

from gmmjax._streaming import fit_em_streaming  # noqa: E402

SETTINGS = dict(tol=1e-4, n_init=2, batch_size=256, max_iter=12)


def source():
    path = f"{DIR}/shard-{PROCESS_ID}.npy"
    if PROCESS_ID == 0:
        return path
    X = np.load(path)
    if MODE == "mismatch":
        X = X[:, :2]
    if MODE == "dtype":
        X = X.astype(np.float64)
    pause = 0.05 if MODE == "slow" else 0.0

    def batches():  # batches of another size than the fit's
        for start in range(0, X.shape[0], 100):
            time.sleep(pause)
            yield X[start : start + 100]

    return batches


def main():
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    keywords = dict(SETTINGS)
    if MODE in ("slow", "resume"):
        keywords.update(checkpoint=f"{DIR}/c.npz", checkpoint_every=1, resume=MODE == "resume", tol=0.0)
    print("FITTING", flush=True)
    result = fit_em_streaming(jax.random.key(1), source(), 4, mesh=mesh, **keywords)
    np.savez(
        f"{DIR}/out.{PROCESS_ID}.npz",
        weights=np.asarray(result.restarts.params.weights),  # every restart's (the best may tie)
        means=np.asarray(result.restarts.params.means),
        covariances=np.asarray(result.restarts.params.covariances),
        n_iter=np.asarray(result.restarts.n_iter),
        lower_bound_history=np.asarray(result.restarts.lower_bound_history),
    )
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
