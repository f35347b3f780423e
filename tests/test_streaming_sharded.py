"""Streaming combined with sharding and with many hosts; checkpoints of sharded fits.

- One process, many devices (forced CPU devices, in a subprocess: ``_stream_sharded_checks.py``):
  :func:`fit_em_streaming` with ``mesh=`` equals the one-device streamed fit and the in-memory
  :func:`gmmjax.fit_em`; its per-batch program has no collective and its per-pass program is
  one all-reduce of the packed statistics.
- Many processes (``jax.distributed`` on 127.0.0.1, ``_stream_sharded_process.py``): each
  streams its own data (a file, an iterable; ragged), every process gets the one-process fit of
  the concatenated data; mismatched feature counts fail on every process.
- Checkpoints: sharded streamed fits and sharded in-memory fits, killed with SIGKILL in a
  subprocess (``_stream_sharded_resume.py``) and resumed, equal the uninterrupted fit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from _children import ROOT, TESTS, child_env, kill_all, kill_once_checkpointed, run_cli_cluster, start_cluster

import gmmjax as gj
from gmmjax._checkpoint import CheckpointMismatchError, load_checkpoint
from gmmjax._streaming import fit_em_streaming

N, D, K = 2501, 3, 3


def _data(seed=0, n=N):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 6.0, 2.0]])
    return (rng.normal(size=(n, D)) + centers[rng.integers(0, K, n)] + 100.0).astype(np.float32)


def _checks(devices: int, mode: str, *flags, timeout: float = 900) -> str:
    command = [sys.executable, str(TESTS / "_stream_sharded_checks.py"), str(devices), mode, *flags]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=child_env(), cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _assert_same(got, want, rtol=1e-5):
    for name in ("weights", "means", "covariances"):
        a, b = np.asarray(got[name], np.float64), np.asarray(want[name], np.float64)
        assert np.linalg.norm(a - b) <= rtol * np.linalg.norm(b), name
    np.testing.assert_array_equal(got["n_iter"], want["n_iter"])


def _as_dict(result):  # every restart's parameters: two restarts may tie for the best
    return {
        "weights": result.restarts.params.weights,
        "means": result.restarts.params.means,
        "covariances": result.restarts.params.covariances,
        "n_iter": np.asarray(result.restarts.n_iter),
    }


# -- one process, many devices --------------------------------------------------------------------
def test_four_devices_equal_one_device_stream_and_fit_em_with_one_all_reduce_per_pass():
    out = _checks(4, "quick")
    assert "OK full" in out
    assert "OK one all-reduce per pass (31 numbers, 124 bytes)" in out  # K(1 + D + D(D+1)/2) + 1


@pytest.mark.slow
def test_every_covariance_type_weights_init_and_auto_mesh_on_four_devices():
    out = _checks(4, "all")
    assert out.count("OK ") == 7, out


@pytest.mark.slow
def test_float64_to_1e_10_on_four_devices():
    out = _checks(4, "all", "--x64")
    assert out.count("OK ") == 7, out


def test_a_one_device_mesh_stream_interrupted_mid_pass_resumes_to_the_uninterrupted_fit(tmp_path):
    # test_checkpoint.py's data and settings: the one-device programs are compiled already
    from _stream_fit_script import SETTINGS, batches_of
    from test_streaming import _data as streaming_data

    X = streaming_data()
    settings = dict(SETTINGS, mesh=jax.make_mesh((1,), ("data",)))
    whole = fit_em_streaming(jax.random.key(0), batches_of(X, 0.0), K, checkpoint=str(tmp_path / "a.npz"), **settings)
    batches, reads = batches_of(X, 0.0), []

    def interrupted():  # 1: the first batch, 2: the reservoir, 3...: the EM passes
        reads.append(None)
        for i, batch in enumerate(batches()):
            if len(reads) == 5 and i == 3:
                raise KeyboardInterrupt
            yield batch

    path = str(tmp_path / "b.npz")
    with pytest.raises(KeyboardInterrupt):
        fit_em_streaming(jax.random.key(0), interrupted, K, checkpoint=path, **settings)
    arrays, meta = load_checkpoint(path)
    assert meta["iteration"] == 2 and meta["batch"] > 0 and "packed_totals" in arrays  # mid-pass
    resumed = fit_em_streaming(jax.random.key(0), batches, K, checkpoint=path, resume=True, **settings)
    _assert_same(_as_dict(resumed), _as_dict(whole), rtol=1e-6)
    with pytest.raises(CheckpointMismatchError, match=r"devices: checkpoint 1, this fit None"):
        fit_em_streaming(jax.random.key(0), batches, K, checkpoint=path, resume=True, **{**settings, "mesh": None})


def test_sharded_fit_em_checkpoints_and_resumes_to_the_uninterrupted_fit(tmp_path, monkeypatch):
    X = _data()
    settings = dict(tol=1e-5, n_init=2, checkpoint_every=2)
    whole = gj.fit_em(jax.random.key(0), X, K, checkpoint=str(tmp_path / "a.npz"), **settings)
    from gmmjax import _checkpoint

    save, calls = _checkpoint.save_checkpoint, []

    def failing_save(*args, **kwargs):  # the second checkpoint is the last one written
        save(*args, **kwargs)
        calls.append(None)
        if len(calls) == 1:
            raise KeyboardInterrupt

    path = str(tmp_path / "b.npz")
    monkeypatch.setattr(_checkpoint, "save_checkpoint", failing_save)
    with pytest.raises(KeyboardInterrupt):
        gj.fit_em(jax.random.key(0), X, K, checkpoint=path, **settings)
    monkeypatch.setattr(_checkpoint, "save_checkpoint", save)
    assert load_checkpoint(path)[1]["iteration"] == 2
    resumed = gj.fit_em(jax.random.key(0), X, K, checkpoint=path, resume=True, **settings)
    _assert_same(_as_dict(resumed), _as_dict(whole), rtol=1e-6)
    with pytest.raises(CheckpointMismatchError, match=r"options\.tol"):
        gj.fit_em(jax.random.key(0), X, K, checkpoint=path, resume=True, **{**settings, "tol": 1e-3})
    with pytest.raises(ValueError, match="need checkpoint="):
        gj.fit_em(jax.random.key(0), X, K, resume=True)


@pytest.mark.slow
def test_checkpointed_fit_em_equals_fit_em(tmp_path):
    X = _data()
    whole = gj.fit_em(jax.random.key(0), X, K, checkpoint=str(tmp_path / "a.npz"), tol=1e-5, n_init=2)
    _assert_same(_as_dict(whole), _as_dict(gj.fit_em(jax.random.key(0), X, K, tol=1e-5, n_init=2)))


def test_streaming_boundary_messages():
    with pytest.raises(ValueError, match="data_axis names an axis of mesh="):
        fit_em_streaming(jax.random.key(0), _data(n=50), K, data_axis="data")
    mesh = jax.make_mesh((1,), ("data",))
    with pytest.raises(ValueError, match="is not an axis of the mesh"):
        fit_em_streaming(jax.random.key(0), _data(n=50), K, mesh=mesh, data_axis="rows")


# -- killed with SIGKILL, resumed (2 forced devices) -----------------------------------------------
def _run_resume_script(kind: str, tmp_path: Path, mode: str, checkpoint: Path, out: Path):
    command = [sys.executable, str(TESTS / "_stream_sharded_resume.py"), "2", kind]
    return command + [str(tmp_path / "X.npy"), str(checkpoint), str(out), mode]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["stream", "memory"])
def test_sigkilled_sharded_fit_resumes_to_the_uninterrupted_result(kind, tmp_path):
    np.save(tmp_path / "X.npy", _data())
    checkpoint = tmp_path / "c.npz"
    plain = subprocess.run(
        _run_resume_script(kind, tmp_path, "plain", tmp_path / "plain.npz", tmp_path / "plain-out.npz"),
        capture_output=True,
        text=True,
        timeout=600,
        env=child_env(),
        cwd=ROOT,
    )
    assert plain.returncode == 0, plain.stderr[-3000:]
    child = subprocess.Popen(
        _run_resume_script(kind, tmp_path, "slow", checkpoint, tmp_path / "never.npz"),
        env=child_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    kill_once_checkpointed([child], checkpoint, mid_pass=kind == "stream", seconds=300)
    killed_at = load_checkpoint(checkpoint)[1]
    with np.load(tmp_path / "plain-out.npz") as whole:
        whole = dict(whole)
    assert 2 <= killed_at["iteration"] < int(np.max(whole["n_iter"]))
    done = subprocess.run(
        _run_resume_script(kind, tmp_path, "resume", checkpoint, tmp_path / "out.npz"),
        capture_output=True,
        text=True,
        timeout=600,
        env=child_env(),
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(tmp_path / "out.npz") as got:
        _assert_same(dict(got), whole, rtol=1e-6)
        np.testing.assert_allclose(got["lower_bound_history"], whole["lower_bound_history"], rtol=1e-6)


# -- many processes (jax.distributed on 127.0.0.1) ------------------------------------------------
CENTERS4 = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 6.0, 0.0], [0.0, 0.0, 6.0]])


def _rows4(n=1002):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(n, 3)) + CENTERS4[rng.integers(0, 4, n)]).astype(np.float32)


def _start(mode: str, folder: Path) -> list[subprocess.Popen]:
    return start_cluster(TESTS / "_stream_sharded_process.py", mode, folder)


def _write_shards(folder: Path) -> np.ndarray:
    X = _rows4()
    np.save(folder / "shard-0.npy", X[:620])  # ragged: 620 and 382 rows
    np.save(folder / "shard-1.npy", X[620:])
    return X


@pytest.mark.slow
def test_two_processes_each_streaming_its_own_data_equal_one_process(tmp_path):
    X = _write_shards(tmp_path)
    processes = _start("fit", tmp_path)
    try:
        errors = [process.communicate(timeout=300)[1] for process in processes]
    finally:
        kill_all(processes)
    for process, err in zip(processes, errors):
        assert process.returncode == 0, err[-3000:]
    reference = _as_dict(_reference_fit(X))
    for rank in range(2):
        with np.load(tmp_path / f"out.{rank}.npz") as got:
            _assert_same(dict(got), reference)


def _reference_fit(X, **settings):
    SETTINGS = dict(tol=1e-4, n_init=2, batch_size=256, max_iter=12)  # as _stream_sharded_process.py
    return fit_em_streaming(jax.random.key(1), X, 4, **{**SETTINGS, **settings})


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, message",
    [
        ("mismatch", "different numbers of features (process 0: 3, process 1: 2)"),
        ("dtype", "different dtypes (process 0: float32, process 1: float64)"),
    ],
)
def test_two_processes_with_different_feature_counts_or_dtypes_both_fail_with_the_message(tmp_path, mode, message):
    _write_shards(tmp_path)
    processes = _start(mode, tmp_path)
    try:
        errors = [process.communicate(timeout=120)[1] for process in processes]  # bounded: never a hang
    finally:
        kill_all(processes)
    for process, err in zip(processes, errors):
        assert process.returncode != 0
        assert message in err, err[-3000:]


@pytest.mark.slow
def test_two_processes_killed_mid_fit_resume_to_the_uninterrupted_result(tmp_path):
    X = _write_shards(tmp_path)
    checkpoint = tmp_path / "c.npz"
    kill_once_checkpointed(_start("slow", tmp_path), checkpoint, mid_pass=False, seconds=300)
    assert 2 <= load_checkpoint(checkpoint)[1]["iteration"] < 12
    processes = _start("resume", tmp_path)
    try:
        errors = [process.communicate(timeout=300)[1] for process in processes]
    finally:
        kill_all(processes)
    for process, err in zip(processes, errors):
        assert process.returncode == 0, err[-3000:]
    reference = _as_dict(_reference_fit(X, tol=0.0))
    for rank in range(2):
        with np.load(tmp_path / f"out.{rank}.npz") as got:
            _assert_same(dict(got), reference)


@pytest.mark.slow
def test_cli_fit_distributed_stream_each_process_streams_its_shard_file(tmp_path):
    X = _write_shards(tmp_path)
    shards, out = str(tmp_path / "shard-{process}.npy"), str(tmp_path / "m.npz")
    outputs = run_cli_cluster("fit", shards, "-k", "4", "--tol", "1e-4", "--seed", "1", "--stream", "-o", out)
    for code, _, err in outputs:
        assert code == 0, err[-3000:]
    assert "streamed, 2 processes" in outputs[0][1]
    model = gj.GaussianMixtureModel.load(tmp_path / "m.npz")
    reference = gj.GaussianMixtureModel(4, tol=1e-4, seed=1)._fit_stream(X, None)
    np.testing.assert_allclose(model.means_, reference.means_, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.covariances_, reference.covariances_, rtol=1e-5, atol=1e-5)
