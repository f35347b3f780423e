"""Run by test_checkpoint.py in a subprocess: a streamed fit with checkpoints, killed and resumed.

Usage: python _stream_fit_script.py DATA.npy CHECKPOINT.npz OUT.npz MODE
MODE: ``slow`` (sleeps between batches, so that the parent can kill it mid-fit) or ``resume``.
"""

from __future__ import annotations

import sys
import time

import jax
import numpy as np

from gmmjax._streaming import fit_em_streaming

SETTINGS = dict(tol=0.0, max_iter=8, batch_size=768, checkpoint_seconds=0.0)


def batches_of(X, pause: float):
    def batches():
        for start in range(0, X.shape[0], 500):
            time.sleep(pause)
            yield X[start : start + 500]

    return batches


def fit(X, checkpoint, pause=0.0, resume=False):
    return fit_em_streaming(
        jax.random.key(0), batches_of(X, pause), 3, checkpoint=checkpoint, resume=resume, **SETTINGS
    )


if __name__ == "__main__":
    data, checkpoint, out, mode = sys.argv[1:5]
    X = np.load(data)
    result = fit(X, checkpoint, pause=0.1 if mode == "slow" else 0.0, resume=mode == "resume")
    np.savez(
        out,
        weights=np.asarray(result.params.weights),
        means=np.asarray(result.params.means),
        covariances=np.asarray(result.params.covariances),
        n_iter=np.asarray(result.n_iter),
        lower_bound_history=np.asarray(result.lower_bound_history),
    )
