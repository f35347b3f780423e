"""Many processes (``jax.distributed`` on 127.0.0.1, CPU collectives over gloo).

Each test starts its own processes (``tests/_sharding_process.py``) with bounded timeouts and
kills every one of them in ``finally``. The oracle of a two-process fit is the one-process fit
of all the rows in this process.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from _children import TESTS, kill_all, run_cli_cluster, start_cluster

import gmmjax as gj

WORKER = TESTS / "_sharding_process.py"
CENTERS = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 6.0, 0.0], [0.0, 0.0, 6.0]])


def start(mode: str, out: Path, num_processes: int = 2) -> list[subprocess.Popen]:
    return start_cluster(WORKER, mode, out, num_processes)


def all_rows(num_samples: int) -> np.ndarray:  # as the worker generates them
    rng = np.random.default_rng(0)
    return (rng.normal(size=(num_samples, 3)) + CENTERS[rng.integers(0, 4, num_samples)]).astype(np.float32)


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    processes = start("fit", tmp_path / "fit")
    try:
        for process in processes:
            _, err = process.communicate(timeout=300)
            assert process.returncode == 0, err[-3000:]
    finally:
        kill_all(processes)
    reference = gj.fit_em(jax.random.key(1), all_rows(1002), 4, tol=1e-4, n_init=2)
    for rank in range(2):
        fitted = np.load(tmp_path / f"fit.{rank}.npz")
        np.testing.assert_allclose(fitted["means"], reference.params.means, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fitted["covariances"], reference.params.covariances, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fitted["weights"], reference.params.weights, rtol=1e-5)
        np.testing.assert_array_equal(fitted["n_iter"], reference.restarts.n_iter)


@pytest.mark.slow
def test_a_process_dying_mid_fit_fails_the_others_in_bounded_time(tmp_path):
    processes = start("long", tmp_path / "long")
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # wait until process 1 is inside the fit
            line = processes[1].stdout.readline()
            if "FITTING" in line or not line:
                break
        assert "FITTING" in line, processes[1].stderr.read()[-3000:]
        time.sleep(3)  # compiled and iterating
        processes[1].kill()
        killed = time.monotonic()
        _, err = processes[0].communicate(timeout=120)  # a hang fails here (TimeoutExpired)
        elapsed = time.monotonic() - killed
    finally:
        kill_all(processes)
    assert processes[0].returncode != 0
    assert elapsed < 60, elapsed  # heartbeat timeout 10 s in the worker
    assert "another task died" in err or "stopped sending heartbeats" in err, err[-3000:]


@pytest.mark.slow
def test_processes_with_different_feature_counts_are_refused(tmp_path):
    processes = start("mismatch", tmp_path / "mismatch")
    try:
        errors = [process.communicate(timeout=300)[1] for process in processes]
    finally:
        kill_all(processes)
    assert all(process.returncode != 0 for process in processes)
    assert "different numbers of features (process 0: 3, process 1: 2)" in errors[0], errors[0][-3000:]


@pytest.mark.slow
def test_cli_fit_distributed_reads_each_process_shard_file(tmp_path):
    X = all_rows(1002)
    np.save(tmp_path / "shard-0.npy", X[:600])
    np.save(tmp_path / "shard-1.npy", X[600:])
    shards, out = str(tmp_path / "shard-{process}.npy"), str(tmp_path / "model.npz")
    outputs = run_cli_cluster("fit", shards, "-k", "4", "--tol", "1e-4", "--seed", "1", "-o", out)
    for code, _, err in outputs:
        assert code == 0, err[-3000:]
    assert "gmmjax fit --distributed" in outputs[0][1] and "2 processes" in outputs[0][1]
    assert "gmmjax fit" not in outputs[1][1]  # only process 0 prints
    model = gj.GaussianMixtureModel.load(tmp_path / "model.npz")
    reference = gj.GaussianMixtureModel(4, tol=1e-4, seed=1).fit(X)
    np.testing.assert_allclose(model.means_, reference.means_, rtol=1e-5, atol=1e-5)
