"""Progress reporting (``verbose``): what the host receives, what the user sees, and that
with ``verbose`` off the compiled fit has no callback at all.

All fits here use the demo's data (600 × 2), K=2, k-means++ seeding and tol=1e-4 (restarts
then take 4 to 80 iterations), so the verbose programs compile once per ``n_init``; the
command line's ``--verbose`` test uses the same configuration.
"""

from __future__ import annotations

import io
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _oracles as O
import gmmjax as gj
from gmmjax import _em, _progress
from gmmjax._cli import DEMO_COVARIANCES, DEMO_MEANS, DEMO_WEIGHTS

FIT = dict(init_params="k-means++", tol=1e-4)
INTERVAL = 3


@pytest.fixture(scope="module")
def X():
    return np.asarray(gj.generate_gmm_data(600, DEMO_WEIGHTS, DEMO_MEANS, DEMO_COVARIANCES, key=jax.random.key(0)))


@pytest.fixture
def received(monkeypatch):
    """Records every ``ProgressReporter.update`` call (the arrays one host callback delivers)."""
    calls = []
    original = _progress.ProgressReporter.update

    def record(self, restart, n_iter, lower_bound, converged):
        calls.append((restart.copy(), n_iter.copy(), lower_bound.copy(), converged.copy()))
        original(self, restart, n_iter, lower_bound, converged)

    monkeypatch.setattr(_progress.ProgressReporter, "update", record)
    return calls


def check_reports(calls, result, interval):
    """Per restart: iteration counts strictly increase, are multiples of ``interval`` except the
    last, and the last report is the restart's final state in ``result`` (bit for bit)."""
    n_init = result.restart_n_iter.shape[0]
    per_restart = {r: [] for r in range(n_init)}
    for restart, n_iter, lower_bound, converged in calls:
        assert restart.shape == n_iter.shape == lower_bound.shape == converged.shape and restart.ndim == 1
        for r, it, lb, conv in zip(restart, n_iter, lower_bound, converged):
            per_restart[int(r)].append((int(it), lb, bool(conv)))
    for r, reports in per_restart.items():
        assert reports, f"restart {r} never reported"
        iters = [it for it, _, _ in reports]
        assert all(a < b for a, b in zip(iters, iters[1:])), (r, iters)
        assert all(it % interval == 0 for it in iters[:-1]), (r, iters)
        final_iter, final_lb, final_converged = reports[-1]
        assert final_iter == int(result.restart_n_iter[r])
        assert final_lb == np.asarray(result.restart_lower_bounds)[r]  # exactly the loop's value
        assert final_converged == bool(result.restart_converged[r])
        # Every report before the last is of a restart still running.
        assert not any(conv for _, _, conv in reports[:-1])
        # Reports carry the lower bound at that iteration (the loop's history).
        history = np.asarray(result.lower_bound_history)[r]
        np.testing.assert_array_equal([lb for _, lb, _ in reports], history[np.array(iters) - 1])
    return per_restart


def test_single_restart_reports_and_tqdm_bar_on_stderr(X, received, capsys, monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(_progress, "_is_terminal", lambda file: True)  # capsys's stderr is no terminal
    model = gj.GaussianMixtureModel(num_components=2, seed=0, verbose=True, verbose_interval=INTERVAL, **FIT).fit(X)
    result = model.fit_result_
    assert int(result.n_iter) > INTERVAL  # several reports, not just the last one
    check_reports(received, result, INTERVAL)
    assert all(r.shape == (1,) for r, *_ in received)
    out, err = capsys.readouterr()
    assert out == ""
    assert "EM:" in err and "%|" in err  # a tqdm bar
    assert f"iteration {model.n_iter_}/100" in err and "restarts converged 1/1" in err
    assert f"lower bound {model.lower_bound_:.6g}" in err


def test_twenty_restarts_batched_callbacks_and_compaction(X, received, capsys):
    result = gj.fit_em(jax.random.key(1), X, 2, n_init=20, verbose=True, verbose_interval=INTERVAL, **FIT)
    n_iter = np.asarray(result.restart_n_iter)
    # The configuration spreads the restarts out, so compacting_while_loop regroups lanes.
    assert n_iter.min() <= 6 < n_iter.max() and len(set(n_iter.tolist())) > 3, n_iter
    check_reports(received, result, INTERVAL)
    # One host call per step carries several lanes (not one call per restart).
    assert max(len(r) for r, *_ in received) > 1
    assert len(received) < sum(len(r) for r, *_ in received)
    err = capsys.readouterr().err
    assert f"restarts converged {int(np.sum(result.restart_converged))}/20 (stopped 20)" in err


def test_plain_lines_without_tqdm(X, monkeypatch, capsys):
    monkeypatch.setattr(_progress, "_load_tqdm", lambda: None)  # as if tqdm were not installed
    monkeypatch.setattr(_progress, "_is_terminal", lambda file: True)
    monkeypatch.setattr(_progress, "HEARTBEAT_S", 1e6)  # no "still compiling" line, however slow the machine
    result = gj.fit_em(jax.random.key(0), X, 2, verbose=True, verbose_interval=INTERVAL, **FIT)
    lines = capsys.readouterr().err.splitlines()
    n_iter = int(result.n_iter)
    # One line before the start, one per report (every INTERVAL iterations and the last), one at the end.
    assert len(lines) == 1 + (n_iter - 1) // INTERVAL + 1 + 1, lines
    assert all(line.startswith("EM: ") and line.endswith(" s") for line in lines)
    assert _progress.STARTING in lines[0] and "done" in lines[-1]
    assert f"iteration {n_iter}/100, lower bound {float(result.lower_bound):.6g}" in lines[-2]
    assert "%|" not in "".join(lines)


def _lower(n_init, report_every):
    X = jnp.zeros((600, 2), jnp.float32)
    options = gj.FitOptions(
        covariance_type="full",
        max_iter=100,
        n_init=n_init,
        init_params="k-means++",
        chunk_size=600,
        restart_batch_size=n_init,
        tol=jnp.float32(1e-4),
        reg_covar=jnp.float32(1e-6),
    )
    return _em._fit_em.lower(jax.random.key(0), X, None, options, num_components=2, report_every=report_every).as_text()


@pytest.mark.parametrize("n_init", [1, 20])
def test_verbose_off_has_no_callback(n_init):
    # Off: no host callback anywhere in the program (and the loop is the one without this
    # feature: the StableHLO text of _fit_em with report_every=0 was checked byte-identical to
    # the code before it); on: the callback is there, so this test can fail.
    assert "callback" not in _lower(n_init, 0)
    assert "callback" in _lower(n_init, INTERVAL)


def test_verbose_validation(X):
    with pytest.raises(ValueError, match="verbose_interval must be an integer >= 1"):
        gj.fit_em(jax.random.key(0), X, 2, verbose=True, verbose_interval=0)
    with pytest.raises(ValueError, match="verbose must be a bool or a non-negative int"):
        gj.fit_em(jax.random.key(0), X, 2, verbose="yes")
    with pytest.raises(ValueError, match="cannot be used under jit/vmap"):
        jax.jit(lambda data: gj.fit_em(jax.random.key(0), data, 2, verbose=True).lower_bound)(X)


def test_reporter_ignores_stale_reports_and_counts_work():
    import io

    reporter = _progress.ProgressReporter(2, 10, file=io.StringIO())
    reporter.update(np.array([0, 1]), np.array([5, 3]), np.array([-2.0, -3.0]), np.array([False, False]))
    reporter.update(np.array([0]), np.array([4]), np.array([-9.0]), np.array([False]))  # late: ignored
    assert reporter.n_iter.tolist() == [5, 3] and reporter.lower_bound[0] == -2.0
    reporter.update(np.array([1]), np.array([6]), np.array([-1.0]), np.array([True]))
    assert reporter.work_done == 5 + 10  # a stopped restart counts as max_iter
    assert "restarts converged 1/2 (stopped 1)" in reporter.summary() and "lower bound -1" in reporter.summary()
    reporter.close()


@pytest.mark.slow
def test_restart_batches_report_every_restart(X, received):
    # restart_batch_size < n_init: batches run one after another (lax.map), each vmapped.
    result = gj.fit_em(
        jax.random.key(1), X, 2, n_init=20, restart_batch_size=5, verbose=True, verbose_interval=INTERVAL, **FIT
    )
    check_reports(received, result, INTERVAL)


@pytest.mark.slow
@pytest.mark.parametrize("n_init", [1, 20])
def test_progress_does_not_change_the_fit(X, n_init):
    loud = gj.fit_em(jax.random.key(1), X, 2, n_init=n_init, verbose=True, verbose_interval=INTERVAL, **FIT)
    quiet = gj.fit_em(jax.random.key(1), X, 2, n_init=n_init, **FIT)
    O.assert_trees_close(loud, quiet)


# -- what the user sees: phases, time left, terminals and files (fake streams and clocks) ----------
class FakeStream(io.StringIO):
    def __init__(self, terminal: bool):
        super().__init__()
        self.terminal = terminal

    def isatty(self):
        return self.terminal


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _report(reporter, clock, at, n_iter, converged=False):
    clock.now = 100.0 + at
    reporter.update(np.array([0]), np.array([n_iter]), np.array([-1.5]), np.array([converged]))


def test_file_gets_plain_lines_with_phases_and_an_honest_time_left(monkeypatch):
    """stderr redirected to a file: one newline-terminated line per report (no bar redrawn with
    carriage returns, even with tqdm installed); the 30 s of compiling are shown as such and the
    time left is measured on the iterations after the first report."""
    monkeypatch.setattr(_progress, "HEARTBEAT_S", 1e6)
    stream, clock = FakeStream(terminal=False), FakeClock()
    reporter = _progress.ProgressReporter(1, 100, file=stream, clock=clock)
    _report(reporter, clock, at=30.0, n_iter=10)  # compiling took 30 s, then 10 iterations
    _report(reporter, clock, at=31.0, n_iter=20)  # 10 iterations per second since the first report
    _report(reporter, clock, at=31.5, n_iter=25, converged=True)
    reporter.close()
    text = stream.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == 5 and all(line.startswith("EM: ") for line in lines), lines
    assert lines[0] == f"EM: {_progress.STARTING}, 0.0 s"
    assert "left" not in lines[1]  # one report cannot measure a rate
    assert lines[2].endswith(
        "iteration 20/100, lower bound -1.5, restarts converged 0/1 (stopped 0), up to 8.0 s left, 31.0 s"
    )  # 80 iterations at most, at 10 per second
    assert "left" not in lines[3]  # finished
    assert lines[4] == f"EM: done ({_progress.STARTING} 30.0 s, iterations 1.5 s), 31.5 s"


def test_file_gets_a_line_now_and_then_while_compiling(monkeypatch):
    monkeypatch.setattr(_progress, "HEARTBEAT_S", 0.02)
    stream = FakeStream(terminal=False)
    reporter = _progress.ProgressReporter(1, 100, file=stream)
    time.sleep(0.3)
    reporter.update(np.array([0]), np.array([10]), np.array([-1.5]), np.array([False]))
    time.sleep(0.1)  # no more phase lines after the first report
    reporter.close()
    lines = stream.getvalue().splitlines()
    starting = [line for line in lines if _progress.STARTING in line and "done" not in line]
    assert len(starting) >= 3 and lines[: len(starting)] == starting, lines  # all before the first report
    assert re.fullmatch(
        rf"EM: {_progress.STARTING}, 0\.[1-9]\d* s|EM: {_progress.STARTING}, [1-9][\d.]* s", starting[-1]
    ), starting[-1]


def test_terminal_bar_shows_the_compiling_clock_and_no_tqdm_eta(monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(_progress, "TICK_S", 0.02)
    stream = FakeStream(terminal=True)
    reporter = _progress.ProgressReporter(1, 100, file=stream)
    time.sleep(0.3)
    during = stream.getvalue()
    assert re.search(rf"{_progress.STARTING} 0\.[1-9] s", during), during  # the clock ran while compiling
    for n_iter in (10, 20):
        time.sleep(0.15)  # tqdm redraws at most every 0.1 s
        reporter.update(np.array([0]), np.array([n_iter]), np.array([-1.5]), np.array([False]))
    reporter.close()
    text = stream.getvalue()
    assert "%|" in text and "\r" in text  # a redrawn bar
    assert "it/s" not in text and "<" not in text  # tqdm's rate and ETA (which count compilation) are gone
    assert "left" in text and f"{_progress.STARTING} 0." in text.rsplit("\r", 1)[-1]  # the phases at the end
