"""Exact out-of-core EM (gmmjax._streaming): streamed fits equal in-memory fit_em; sources; bad input.

Every fit here uses the same shapes (N = 2500 rows, D = 3, K = 3, batches of 768 rows, the
last one padded) so that the compiled programs are shared between tests.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

import gmmjax as gj
from gmmjax._streaming import StreamError, fit_em_streaming, reservoir_sample

N, D, K, BATCH = 2500, 3, 3, 768
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def _data(seed=0):
    rng = np.random.default_rng(seed)
    parts = [
        rng.normal(size=(1000, D)),
        rng.normal(size=(800, D)) * 0.7 + [6.0, 0.0, 0.0],
        rng.normal(size=(700, D)) + [0.0, 6.0, 2.0],
    ]
    X = np.concatenate(parts).astype(np.float32)
    return X[rng.permutation(N)] + np.float32(100.0)  # offset: the statistics are about a shift


@pytest.fixture(scope="module")
def X():
    return _data()


@pytest.fixture(scope="module")
def weights():
    return np.random.default_rng(1).uniform(0.2, 3.0, size=N).astype(np.float32)


def _precisions(covariances, covariance_type):
    c = np.asarray(covariances, np.float64)
    return np.linalg.inv(c) if covariance_type in ("full", "tied") else 1.0 / c


def _start(X, covariance_type):
    """Starting parameters away from the optimum (three data rows as means, unit covariances),
    so that EM runs several iterations."""
    precisions = {
        "full": np.eye(D)[None].repeat(K, 0),
        "tied": np.eye(D),
        "diag": np.ones((K, D)),
        "spherical": np.ones(K),
    }
    return {
        "weights_init": np.full(K, 1.0 / K),
        "means_init": X[[0, 1, 2]].astype(np.float64),
        "precisions_init": precisions[covariance_type] / 4.0,
    }


def _assert_same_fit(streamed, in_memory, rtol=2e-4):
    assert int(streamed.n_iter) == int(in_memory.n_iter)
    assert bool(streamed.converged) == bool(in_memory.converged)
    np.testing.assert_allclose(float(streamed.lower_bound), float(in_memory.lower_bound), rtol=1e-5)
    for name in ("weights", "means", "covariances"):
        got, want = np.asarray(getattr(streamed.params, name)), np.asarray(getattr(in_memory.params, name))
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max(), err_msg=name)
    n = int(in_memory.n_iter)
    np.testing.assert_allclose(
        np.asarray(streamed.lower_bound_history)[:, :n], np.asarray(in_memory.lower_bound_history)[:, :n], rtol=1e-5
    )


# full and diag run the two forms of the E-step (residuals; matrix products about a shift);
# the default suite runs those two (each case compiles fit_em), -m slow the others
@pytest.mark.parametrize(
    "covariance_type", ["full", "diag"] + [pytest.param(c, marks=pytest.mark.slow) for c in ("tied", "spherical")]
)
def test_streamed_fit_is_fit_em_from_the_same_start(X, weights, covariance_type):
    start = _start(X, covariance_type)
    options = gj.FitOptions(covariance_type=covariance_type, tol=1e-5, max_iter=60, **start)
    sample_weight = weights if covariance_type == "full" else None
    want = gj.fit_em(jax.random.key(0), X, K, options, sample_weight=sample_weight)
    assert int(want.n_iter) > 3  # the comparison covers several iterations
    got = fit_em_streaming(jax.random.key(0), X, K, options, sample_weight=sample_weight, batch_size=BATCH)
    _assert_same_fit(got, want)


def _fit(data, **keywords):
    keywords.setdefault("batch_size", BATCH)
    return fit_em_streaming(jax.random.key(0), data, K, tol=1e-4, max_iter=20, **keywords)


@pytest.fixture(scope="module")
def in_memory(X):
    """fit_em with _fit's settings and the default (k-means) initialisation."""
    return gj.fit_em(jax.random.key(0), X, K, tol=1e-4, max_iter=20)


def test_default_initialisation_on_small_data_is_fit_em(X, in_memory):
    """N below the reservoir size: the reservoir is the data, in order, so the whole fit
    (k-means initialisation included) is fit_em's."""
    _assert_same_fit(_fit(X), in_memory)


@pytest.mark.slow
def test_restarts_are_fit_em_restarts(X):
    want = gj.fit_em(jax.random.key(3), X, K, tol=1e-5, n_init=3, init_params="random_from_data")
    got = fit_em_streaming(
        jax.random.key(3), X, K, tol=1e-5, n_init=3, init_params="random_from_data", batch_size=BATCH
    )
    # restart by restart, the same fits (the best one is a tie between restarts that found the
    # same optimum, so which index wins may differ by rounding)
    np.testing.assert_allclose(np.asarray(got.restarts.lower_bound), np.asarray(want.restarts.lower_bound), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(got.restarts.n_iter), np.asarray(want.restarts.n_iter))
    np.testing.assert_allclose(
        np.asarray(got.restarts.params.means), np.asarray(want.restarts.params.means), rtol=1e-4, atol=1e-3
    )
    np.testing.assert_allclose(float(got.lower_bound), float(want.lower_bound), rtol=1e-5)


@pytest.fixture(scope="module")
def files(X, weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    np.save(folder / "all.npy", X)
    np.save(folder / "weights.npy", weights)
    shards = folder / "shards"
    shards.mkdir()
    for i, (a, b) in enumerate([(0, 700), (700, 1500), (1500, 1501), (1501, N)]):
        np.save(shards / f"part{i}.npy", X[a:b])
    return folder


def test_every_source_gives_the_same_fit(X, weights, files):
    want = _fit(X, sample_weight=weights)
    paths = sorted(str(p) for p in (files / "shards").iterdir())

    def batches():  # ragged blocks that do not line up with the fit's batches
        for a, b in [(0, 333), (333, 1400), (1400, 2499), (2499, N)]:
            yield X[a:b], weights[a:b]

    sources = {
        "npy": dict(data=str(files / "all.npy"), sample_weight=weights),
        "npy + weights file": dict(data=files / "all.npy", sample_weight=str(files / "weights.npy")),
        "folder": dict(data=str(files / "shards"), sample_weight=weights),
        "list": dict(data=paths, sample_weight=weights),
        "callable": dict(data=batches),
        "list of (X, w)": dict(data=[(X[:1200], weights[:1200]), (X[1200:], weights[1200:])]),
    }
    for name, source in sources.items():
        got = _fit(**source)
        for field in ("weights", "means", "covariances"):
            np.testing.assert_allclose(
                np.asarray(getattr(got.params, field)),
                np.asarray(getattr(want.params, field)),
                rtol=1e-5,
                atol=1e-5,
                err_msg=f"{name}: {field}",
            )
        assert int(got.n_iter) == int(want.n_iter), name


def test_reservoir_is_uniform_bounded_and_ordered():
    X = np.arange(20000, dtype=np.float32).reshape(-1, 2)  # 10000 rows, row i = (2i, 2i + 1)
    from gmmjax._streaming import ArraySource

    sample, weight, rows = reservoir_sample(ArraySource(X, block_rows=999), 500, [1, 2], np.float32)
    assert rows == 10000 and sample.shape == (500, 2) and weight is None
    index = sample[:, 0] / 2
    assert np.all(np.diff(index) > 0)  # distinct rows, in their order
    # uniform: the mean row index is near the middle (sd of the mean ≈ 2900/√500 ≈ 130)
    assert abs(index.mean() - 5000) < 600
    everything, _, _ = reservoir_sample(ArraySource(X), 20000, [1, 2], np.float32)
    np.testing.assert_array_equal(everything, X)


def test_estimator_fits_a_path(files, in_memory):
    model = gj.GaussianMixtureModel(num_components=K, seed=0, tol=1e-4, num_iters=20)
    model.fit(str(files / "all.npy"))
    np.testing.assert_allclose(model.means_, np.asarray(in_memory.params.means), rtol=1e-5)
    assert model.n_features_in_ == D and model.n_iter_ == int(in_memory.n_iter)


def test_progress_reports_rows_per_second(X, capsys):
    result = _fit(X, verbose=True)
    err = capsys.readouterr().err
    assert f"iteration {int(result.n_iter)}/20" in err and "rows/s" in err and "lower bound" in err


# -- bad input ---------------------------------------------------------------------------------
def test_shards_with_other_features_or_dtype_are_refused(tmp_path, X):
    np.save(tmp_path / "a.npy", X[:100])
    np.save(tmp_path / "b.npy", X[100:200, :2])
    with pytest.raises(StreamError, match=r"b\.npy has 2 features but .*a\.npy has 3"):
        _fit(str(tmp_path))
    np.save(tmp_path / "b.npy", X[100:200].astype(np.float64))
    with pytest.raises(StreamError, match=r"b\.npy holds float64 but .*a\.npy holds float32"):
        _fit(str(tmp_path))
    np.save(tmp_path / "b.npy", X[100:200, 0])
    with pytest.raises(StreamError, match=r"b\.npy holds an array of shape \(100,\)"):
        _fit(str(tmp_path))


def test_truncated_npy_is_refused(tmp_path, X):
    path = tmp_path / "cut.npy"
    np.save(path, X)
    size = os.path.getsize(path)
    with open(path, "r+b") as file:
        file.truncate(size - 100)
    with pytest.raises(StreamError, match=r"cut\.npy is truncated: its header says shape \(2500, 3\)"):
        _fit(str(path))
    path.write_bytes(b"not a numpy file at all")
    with pytest.raises(StreamError, match=r"not a readable \.npy file"):
        _fit(str(path))


def test_empty_and_changing_iterables_are_refused(X):
    with pytest.raises(StreamError, match="yielded no batches"):
        _fit(lambda: iter([]))
    passes = []

    def shrinking():
        passes.append(None)
        return iter([X[:1000], X[1000 : N - 10 * len(passes)]])

    with pytest.raises(StreamError, match=r"pass \d+ of the iterable yielded \d+ rows .* but the first pass yielded"):
        _fit(shrinking, **_start(X, "full"))  # starting values given: no reservoir pass to compile for
    with pytest.raises(ValueError, match="can be read only once: pass a callable"):
        _fit(iter([X]))


def test_nan_in_a_late_batch_is_named(tmp_path, X):
    bad = X.copy()
    bad[2400, 1] = np.nan
    np.save(tmp_path / "a.npy", X[:1500])
    np.save(tmp_path / "b.npy", bad[1500:])
    with pytest.raises(StreamError, match=r"b\.npy rows 0\.\.1000 contains NaN or infinity"):
        _fit(str(tmp_path))
    # with the starting values given there is no reservoir pass: the EM pass finds it
    start = _start(X, "full")
    with pytest.raises(StreamError, match=r"batch 2 \(pass \d\) of the iterable contains NaN"):
        _fit(lambda: iter([X[:1000], X[1000:2000], bad[2000:]]), **start)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="need checkpoint="):
        _fit(_data(), resume=True)
    with pytest.raises(ValueError, match="max_in_flight"):
        _fit(_data(), max_in_flight=0)
    with pytest.raises(StreamError, match="streamed fits read .npy files"):
        _fit("data.csv")


def test_cli_streams_above_the_memory_budget_and_resumes(files, in_memory, tmp_path, capsys):
    from gmmjax._cli import main

    data = str(files / "all.npy")
    common = ["fit", data, "-k", str(K), "--max-iter", "20", "--tol", "1e-4", "--batch-size", str(BATCH)]
    checkpoint = str(tmp_path / "c.npz")
    assert main(common + ["--memory-budget", "10K", "--checkpoint", checkpoint, "-o", str(tmp_path / "m.npz")]) == 0
    out = capsys.readouterr().out
    assert "streamed" in out and f"iterations {int(in_memory.n_iter)}" in out
    model = gj.GaussianMixtureModel.load(str(tmp_path / "m.npz"))
    np.testing.assert_allclose(model.means_, np.asarray(in_memory.params.means), rtol=1e-5)
    assert main(common + ["--stream", "--checkpoint", checkpoint, "--resume"]) == 0  # a finished fit: its result
    assert f"iterations {int(in_memory.n_iter)}" in capsys.readouterr().out
    assert main(common + ["--stream", "--checkpoint", checkpoint, "--resume", "--reg-covar", "0.1"]) == 1
    assert "options.reg_covar: checkpoint 1e-06, this fit 0.1" in capsys.readouterr().err
    assert main(common + ["--stream", "--plot", str(tmp_path / "a.png")]) == 1
    assert "--plot cannot be used with a streamed fit" in capsys.readouterr().err


@pytest.mark.parametrize("max_in_flight", [1, 2])
def test_batches_in_flight_are_bounded(X, monkeypatch, max_in_flight):
    """The host waits for the oldest batch before dispatching one more than max_in_flight."""
    from gmmjax import _streaming

    real, pending, peak = _streaming._accumulate, [], [0]

    class Marker:  # stands for a batch's "done" array; records when the host waits on it
        def __init__(self, done):
            self.done = done
            pending.append(self)

        def block_until_ready(self):
            pending.remove(self)
            self.done.block_until_ready()
            return self

    def accumulate(*args, **kwargs):
        totals, done = real(*args, **kwargs)
        marker = Marker(done)
        peak[0] = max(peak[0], len(pending))
        return totals, marker

    monkeypatch.setattr(_streaming, "_accumulate", accumulate)
    result = _fit(X, max_in_flight=max_in_flight)  # 4 batches per pass
    assert peak[0] == max_in_flight and not pending
    assert int(result.n_iter) >= 1


@pytest.mark.slow  # two fresh processes; writes a 256 MB file
def test_memory_does_not_grow_with_the_rows(tmp_path):
    """Peak RSS streaming 8M rows (256 MB) is within 100 MB of streaming 70k rows, same batches
    (measured: +43 MB for 5M rows, allocator growth; loading the file would add >= 256 MB)."""
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_stream_memory_script.py")
    repo = os.path.dirname(os.path.dirname(script))
    env = {**os.environ, "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")}
    peaks = {}
    rng = np.random.default_rng(0)
    for rows in (70_000, 8_000_000):
        path = tmp_path / f"x{rows}.npy"
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, 8))
        for start in range(0, rows, 1_000_000):
            n = min(1_000_000, rows - start)
            out[start : start + n] = rng.normal(size=(n, 8)) + 5.0 * rng.integers(0, 4, size=(n, 1))
        out.flush()
        del out
        done = subprocess.run([sys.executable, script, str(path)], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        peaks[rows] = float(done.stdout.strip().splitlines()[-1])
    assert peaks[8_000_000] - peaks[70_000] < 100, peaks
