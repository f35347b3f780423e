"""A sharded fit with checkpoints, run (and killed) in a subprocess by ``tests/test_streaming_sharded.py``.

Usage: ``python tests/_stream_sharded_resume.py DEVICES KIND DATA.npy CHECKPOINT.npz OUT.npz MODE``

``KIND``: ``stream`` (:func:`fit_em_streaming` with ``mesh=``, mid-pass checkpoints) or
``memory`` (:func:`gmmjax.fit_em` with ``mesh=`` and ``checkpoint=``). ``MODE``: ``slow``
(pauses, so that the parent can kill it mid-fit with SIGKILL), ``resume`` (continues from the
checkpoint) or ``plain`` (uninterrupted, the oracle). Writes the result to ``OUT.npz``.
"""

from __future__ import annotations

import os
import sys
import time

DEVICES, KIND, DATA, CHECKPOINT, OUT, MODE = int(sys.argv[1]), *sys.argv[2:7]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from _stream_fit_script import batches_of  # noqa: E402

import gmmjax as gj  # noqa: E402
from gmmjax import _checkpoint  # noqa: E402
from gmmjax._streaming import fit_em_streaming  # noqa: E402

STREAM = dict(tol=0.0, max_iter=8, batch_size=768, n_init=2, checkpoint_seconds=0.0)
MEMORY = dict(tol=0.0, max_iter=40, n_init=2, checkpoint_every=3)


def main():
    X = np.load(DATA)
    mesh = jax.make_mesh((DEVICES,), ("data",))
    resume = MODE == "resume"
    if KIND == "stream":
        pause = 0.1 if MODE == "slow" else 0.0
        result = fit_em_streaming(
            jax.random.key(0), batches_of(X, pause), 3, mesh=mesh, checkpoint=CHECKPOINT, resume=resume, **STREAM
        )
    else:
        if MODE == "slow":  # slow down each checkpoint write, so that the parent can kill mid-fit
            save = _checkpoint.save_checkpoint

            def slow_save(*args, **kwargs):
                save(*args, **kwargs)
                time.sleep(0.5)

            import gmmjax._sharding  # noqa: F401

            _checkpoint.save_checkpoint = slow_save
        result = gj.fit_em(jax.random.key(0), X, 3, mesh=mesh, checkpoint=CHECKPOINT, resume=resume, **MEMORY)
    np.savez(
        OUT,
        weights=np.asarray(result.restarts.params.weights),  # every restart's (the best may tie)
        means=np.asarray(result.restarts.params.means),
        covariances=np.asarray(result.restarts.params.covariances),
        n_iter=np.asarray(result.restarts.n_iter),
        lower_bound_history=np.asarray(result.restarts.lower_bound_history),
    )


if __name__ == "__main__":
    main()
