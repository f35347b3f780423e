"""Checkpoints of streamed fits (gmmjax._checkpoint): atomic, no pickle, refused when they do
not match; a fit killed (SIGKILL) mid-pass and resumed gives the uninterrupted result."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from _children import TESTS, child_env, kill_once_checkpointed
from _stream_fit_script import SETTINGS, batches_of, fit
from test_streaming import _data

from gmmjax import _checkpoint
from gmmjax._checkpoint import CheckpointMismatchError, load_checkpoint, save_checkpoint
from gmmjax._streaming import fit_em_streaming

FIELDS = ("weights", "means", "covariances")


@pytest.fixture(scope="module")
def X():
    return _data()


@pytest.fixture(scope="module")
def uninterrupted(X, tmp_path_factory):
    """The fit of _stream_fit_script.py, run in one go (its checkpoint kept for inspection)."""
    path = tmp_path_factory.mktemp("ckpt") / "whole.npz"
    return fit(X, str(path)), path


def _assert_equal_fits(got, want):
    for name in FIELDS:
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), rtol=1e-6, atol=1e-6, err_msg=name)
    assert int(got["n_iter"]) == int(want["n_iter"])
    np.testing.assert_allclose(
        np.asarray(got["lower_bound_history"]), np.asarray(want["lower_bound_history"]), rtol=1e-6
    )


def _as_dict(result):
    return {
        **{name: getattr(result.params, name) for name in FIELDS},
        "n_iter": result.n_iter,
        "lower_bound_history": result.lower_bound_history,
    }


def test_checkpoint_holds_the_state_without_pickle(uninterrupted):
    result, path = uninterrupted
    with np.load(path, allow_pickle=False) as data:  # no object arrays anywhere
        names = set(data.files)
    assert {"weights", "means", "covariances", "counts", "first_moments", "second_moments", "key_data"} <= names
    arrays, meta = load_checkpoint(path)
    assert meta["iteration"] == int(result.n_iter) == SETTINGS["max_iter"]
    assert meta["batch"] == 0 and meta["rows"] == 0  # the last one is written at the end of a pass
    np.testing.assert_array_equal(arrays["means"][0], np.asarray(result.params.means))
    np.testing.assert_array_equal(arrays["key_data"], np.asarray(jax.random.key_data(jax.random.key(0))))
    assert [p for p in os.listdir(path.parent) if p.endswith(".tmp")] == []


def test_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"a": np.arange(3)}, {"fingerprint": "x"})

    def broken(file, **arrays):
        file.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(_checkpoint.np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"a": np.arange(5)}, {"fingerprint": "y"})
    arrays, meta = load_checkpoint(path)  # the previous checkpoint, whole
    np.testing.assert_array_equal(arrays["a"], np.arange(3))
    assert os.listdir(tmp_path) == ["c.npz"]


def test_interrupted_mid_pass_and_resumed_equals_uninterrupted(X, uninterrupted, tmp_path):
    path = str(tmp_path / "c.npz")
    batches, reads = batches_of(X, 0.0), []

    def interrupted():  # stops in the middle of the 4th EM pass
        reads.append(None)  # 1: the first batch (for its width), 2: the reservoir, 3...: EM passes
        for i, batch in enumerate(batches()):
            if len(reads) == 6 and i == 3:
                raise KeyboardInterrupt
            yield batch

    with pytest.raises(KeyboardInterrupt):
        fit_em_streaming(jax.random.key(0), interrupted, 3, checkpoint=path, **SETTINGS)
    meta = load_checkpoint(path)[1]
    assert meta["iteration"] == 3 and meta["batch"] > 0  # mid-pass: partial statistics saved
    resumed = fit(X, path, resume=True)
    _assert_equal_fits(_as_dict(resumed), _as_dict(uninterrupted[0]))


def test_another_configuration_is_refused(X, uninterrupted):
    _, path = uninterrupted
    with pytest.raises(
        CheckpointMismatchError, match=r"another configuration .*options\.tol: checkpoint 0\.0, this fit 0\.001"
    ):
        fit_em_streaming(
            jax.random.key(0), batches_of(X, 0.0), 3, checkpoint=path, resume=True, **{**SETTINGS, "tol": 1e-3}
        )
    with pytest.raises(CheckpointMismatchError, match=r"key: checkpoint"):
        fit_em_streaming(jax.random.key(1), batches_of(X, 0.0), 3, checkpoint=path, resume=True, **SETTINGS)
    with pytest.raises(CheckpointMismatchError, match=r"data\.head: checkpoint"):
        fit_em_streaming(jax.random.key(0), batches_of(X + 1, 0.0), 3, checkpoint=path, resume=True, **SETTINGS)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        fit_em_streaming(jax.random.key(0), X, 3, checkpoint=str(path) + ".missing", resume=True)


@pytest.mark.slow  # two fresh processes compiling: ~35 s on a busy 2-core machine
def test_killed_subprocess_resumes_to_the_uninterrupted_result(X, uninterrupted, tmp_path):
    data, checkpoint = tmp_path / "X.npy", tmp_path / "c.npz"
    np.save(data, X)
    script = str(TESTS / "_stream_fit_script.py")
    command = [sys.executable, script, str(data), str(checkpoint), str(tmp_path / "out.npz")]
    child = subprocess.Popen(command + ["slow"], env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kill_once_checkpointed([child], checkpoint, mid_pass=True, seconds=120)
    killed_at = load_checkpoint(checkpoint)[1]
    assert 2 <= killed_at["iteration"] < SETTINGS["max_iter"]
    done = subprocess.run(command + ["resume"], env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(tmp_path / "out.npz") as got:
        _assert_equal_fits(dict(got), _as_dict(uninterrupted[0]))
    assert json.loads(json.dumps(killed_at))  # the metadata is plain JSON
