"""Progress of EM fits (``verbose=True``): a static switch in the jitted loop, a host-side reporter.

Off (the default), the fit loop contains no callback at all: the compiled program is the one
without this module. On, the loop calls back to the host every ``verbose_interval``
iterations and at each restart's last one, carrying ``(restart, n_iter, lower_bound,
converged)``. Under ``vmap`` (restarts, and the groups of restarts that
:func:`gmmjax._loops.compacting_while_loop` runs) the lanes are gathered into **one**
callback per step, not one per lane, and the callback is skipped (a ``lax.cond`` on the
device) when no lane has something to report.

On the host, :class:`ProgressReporter` aggregates the restarts and shows them on stderr: the
phase with its clock while the fit compiles and initialises (no report arrives then), then
iterations with an estimate of the time left measured on the iterations alone; a ``tqdm`` bar
on a terminal when ``tqdm`` is installed (``pip install "gmmjax[progress]"``), plain
newline-terminated lines otherwise (no terminal, e.g. stderr redirected to a file, or no
tqdm). The compiled program does not know the reporter: it calls :func:`_deliver`, which
forwards to the reporter of the fit running now (:func:`reporting`), so one compilation
serves every call.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from gmmjax import _validation as v

DEFAULT_VERBOSE_INTERVAL = 10
# Shown until the first report: a configuration's first fit compiles it (seconds).
STARTING = "compiling and initialising"

# Reporters of the fits running now (innermost last); the compiled callback forwards to the last.
_ACTIVE: list[ProgressReporter] = []
_ACTIVE_LOCK = threading.Lock()


# -- on the device ---------------------------------------------------------------------------
def _deliver(restart, n_iter, lower_bound, converged, report):
    """Host side of the callback: arrays of any (equal) shape, one entry per lane."""
    with _ACTIVE_LOCK:
        reporter = _ACTIVE[-1] if _ACTIVE else None
    if reporter is None:  # a compiled fit run outside reporting(): nobody is listening
        return
    mask = np.ravel(np.asarray(report))
    reporter.update(
        np.ravel(np.asarray(restart))[mask],
        np.ravel(np.asarray(n_iter))[mask],
        np.ravel(np.asarray(lower_bound))[mask],
        np.ravel(np.asarray(converged))[mask],
    )


@jax.custom_batching.custom_vmap
def _send(restart, n_iter, lower_bound, converged, report):
    # Under vmap the rule below hands the whole batch to this function: one host call per step.
    jax.lax.cond(
        jnp.any(report),
        lambda: jax.debug.callback(_deliver, restart, n_iter, lower_bound, converged, report),
        lambda: None,
    )
    return jnp.zeros((), jnp.int32)  # custom_vmap needs an output; the effect keeps the call alive


@_send.def_vmap
def _send_batched(axis_size, in_batched, *args):
    args = [
        arg if batched else jnp.broadcast_to(arg, (axis_size,) + jnp.shape(arg))
        for arg, batched in zip(args, in_batched)
    ]
    _send(*args)  # unbatched call on (axis_size, ...) arrays; nested vmaps add axes here
    return jnp.zeros((), jnp.int32), False


def report_em_step(restart, was_running, n_iter, lower_bound, converged, still_running, interval: int) -> None:
    """Traced, inside the EM loop body: reports this step to the host when it is due.

    Args:
      restart: ``()`` int32 index of the restart.
      was_running: ``()`` bool, whether the loop condition held before this step. Under
        ``vmap`` finished lanes still run the body (its result is discarded); they report nothing.
      n_iter, lower_bound, converged: ``()`` state after the step.
      still_running: ``()`` bool, the loop condition after the step (``False``: last step).
      interval: static; report every ``interval`` iterations and at the last one.
    """
    due = was_running & ((n_iter % interval == 0) | ~still_running)
    _send(restart, n_iter, lower_bound, converged, due)


def reporting_step(step, keep_going, interval: int):
    """A loop body ``step(state, operands) -> state`` that also reports each step
    (:func:`report_em_step`); ``step`` itself when ``interval`` is 0 (static: the loop then has
    no callback at all). ``state`` has ``n_iter``, ``lower_bound`` and ``converged``,
    ``operands.restart`` is the restart's index, ``keep_going(state, operands)`` the loop condition."""
    if not interval:
        return step

    def step_and_report(state, operands):
        new_state = step(state, operands)
        report_em_step(
            operands.restart,
            keep_going(state, operands),
            new_state.n_iter,
            new_state.lower_bound,
            new_state.converged,
            keep_going(new_state, operands),
            interval,
        )
        return new_state

    return step_and_report


# -- on the host -----------------------------------------------------------------------------
def _load_tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


def _is_terminal(file) -> bool:
    """Whether ``file`` shows a redrawn bar: a terminal, or a Jupyter kernel's stderr (tqdm.auto
    draws a widget there). A file or a pipe gets plain lines instead."""
    try:
        if file.isatty():
            return True
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False
    return file is sys.stderr and "ipykernel" in sys.modules


# While compiling (no report yet): a terminal's clock is redrawn every TICK_S seconds; plain
# lines repeat the phase every HEARTBEAT_S seconds.
TICK_S = 0.5
HEARTBEAT_S = 10.0
# tqdm's own rate and ETA would count the compilation as iteration time: ours replace them.
_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


def _seconds(t: float) -> str:
    return f"{t:.1f} s" if t < 600 else f"{t / 60:.1f} min"


class ProgressReporter:
    """Aggregates the restarts of one fit and shows their progress on ``file`` (stderr).

    Progress counts EM iterations over all restarts; a finished restart counts as
    ``max_iter`` (so the bar ends full when every restart has stopped). Shown: the phase
    (``compiling and initialising`` with its clock until the first report), then the furthest
    iteration reached, the best lower bound so far, how many restarts have converged (and
    stopped), the elapsed time and, from the second report on, an upper estimate of the time
    left: the iterations still possible (every running restart up to ``max_iter``) at the rate
    measured since the first report (so compilation never counts as iteration time).

    On a terminal (``file.isatty()``) with ``tqdm`` installed: one redrawn bar. Otherwise
    (a file, a pipe, or no ``tqdm``): plain newline-terminated lines, one per report.

    Args:
      n_init: number of restarts ``R``.
      max_iter: iteration limit.
      file: text stream; ``None``: ``sys.stderr`` at construction.
      clock: seconds, for the elapsed times (tests pass a fake one).
    """

    def __init__(self, n_init: int, max_iter: int, *, file=None, clock=time.perf_counter):
        self.n_init, self.max_iter = n_init, max_iter
        self.file = sys.stderr if file is None else file
        self.n_iter = np.zeros(n_init, np.int64)
        self.lower_bound = np.full(n_init, np.nan)
        self.converged = np.zeros(n_init, bool)
        self.finished = np.zeros(n_init, bool)
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        # (time, work done) at the first report: the end of compiling and initialising
        self._first: tuple[float, int] | None = None
        self._closed = False
        tqdm = _load_tqdm() if _is_terminal(self.file) else None
        self._bar = (
            None
            if tqdm is None
            else tqdm(
                total=n_init * max_iter,
                desc="EM",
                unit="it",
                file=self.file,
                dynamic_ncols=True,
                leave=True,
                bar_format=_BAR_FORMAT,
            )
        )
        if self._bar is not None:
            self._bar.set_postfix_str(f"{STARTING} 0.0 s")
        else:
            self._print(STARTING)
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="gmmjax-progress", daemon=True)
        self._ticker.start()

    def _elapsed(self) -> float:
        return self._clock() - self._start

    def _tick(self) -> None:
        """Until the first report: the phase's clock (redrawn on a terminal, a line now and then otherwise)."""
        period = TICK_S if self._bar is not None else HEARTBEAT_S
        while not self._stop.wait(period):
            with self._lock:
                if self._closed or self._first is not None:
                    return
                if self._bar is not None:
                    self._bar.set_postfix_str(f"{STARTING} {_seconds(self._elapsed())}")  # refreshes
                else:
                    self._print(STARTING)

    def update(self, restart, n_iter, lower_bound, converged) -> None:
        """Takes one callback's reports (1-D arrays, one entry per reporting restart)."""
        with self._lock:
            for r, it, lb, conv in zip(restart.tolist(), n_iter.tolist(), lower_bound.tolist(), converged.tolist()):
                if it < self.n_iter[r]:  # a late, stale report: keep the newest state
                    continue
                self.n_iter[r], self.lower_bound[r], self.converged[r] = it, lb, conv
                self.finished[r] = conv or it >= self.max_iter
            if self._first is None:
                self._first = (self._clock(), self.work_done)
                self._stop.set()
            self._show()

    @property
    def work_done(self) -> int:
        """Iterations run over all restarts, a finished restart counting as ``max_iter``."""
        return int(np.where(self.finished, self.max_iter, self.n_iter).sum())

    def seconds_left(self) -> float | None:
        """At most this long to go (``None`` until two reports have measured the iteration rate)."""
        if self._first is None:
            return None
        t0, work0 = self._first
        seconds, work = self._clock() - t0, self.work_done - work0
        if seconds <= 0 or work <= 0:
            return None
        return (self.n_init * self.max_iter - self.work_done) * seconds / work

    def summary(self) -> str:
        best = np.nanmax(self.lower_bound) if not np.all(np.isnan(self.lower_bound)) else np.nan
        return (
            f"iteration {int(self.n_iter.max())}/{self.max_iter}, lower bound {best:.6g}, "
            f"restarts converged {int(self.converged.sum())}/{self.n_init} "
            f"(stopped {int(self.finished.sum())})"
        )

    def _status(self) -> str:
        left = self.seconds_left()
        if left is None or self.finished.all():
            return self.summary()
        return f"{self.summary()}, up to {_seconds(left)} left"

    def _show(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(self._status(), refresh=False)
            self._bar.update(self.work_done - self._bar.n)  # redraws at most every tqdm.mininterval
        else:
            self._print(self._status())

    def _print(self, message: str) -> None:
        print(f"EM: {message}, {_seconds(self._elapsed())}", file=self.file, flush=True)

    def phases(self) -> str:
        """``compiling and initialising 12.3 s, iterations 1.7 s`` (what the time went to)."""
        total = self._elapsed()
        if self._first is None:
            return f"{STARTING} {_seconds(total)}"
        starting = self._first[0] - self._start
        return f"{STARTING} {_seconds(starting)}, iterations {_seconds(total - starting)}"

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._bar is not None:
                self._bar.set_postfix_str(f"{self.summary()}; {self.phases()}", refresh=False)
                self._bar.close()
            else:
                self._print(f"done ({self.phases()})")


def check_verbose(verbose, verbose_interval, *inputs) -> int:
    """Validates ``verbose`` / ``verbose_interval``; returns the static report interval (0: off).

    Progress is reported by a concrete :func:`gmmjax.fit_em` call; under the caller's own
    ``jit``/``vmap`` (traced inputs) there is no call to report to.
    """
    if not isinstance(verbose, (bool, int, np.integer)) or verbose < 0:
        raise ValueError(f"verbose must be a bool or a non-negative int, got {verbose!r}.")
    interval = v.check_int("verbose_interval", verbose_interval, 1)
    if not verbose:
        return 0
    if any(v.is_traced(x) for x in inputs):
        raise ValueError(
            "verbose=True reports the progress of a direct fit_em call; it cannot be used under "
            "jit/vmap of fit_em (traced inputs): call fit_em directly or set verbose=False."
        )
    return interval


@contextlib.contextmanager
def reporting(n_init: int, max_iter: int):
    """Shows the progress of the fit run inside the ``with`` block; waits for its callbacks.

    The block must leave its result computed (e.g. ``jax.block_until_ready``) so that every
    callback has arrived before the reporter closes.
    """
    reporter = ProgressReporter(n_init, max_iter)
    with _ACTIVE_LOCK:
        _ACTIVE.append(reporter)
    try:
        yield reporter
        jax.effects_barrier()
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE.remove(reporter)
        reporter.close()


# -- streamed fits (gmmjax._streaming) ---------------------------------------------------------
class StreamingProgressReporter(ProgressReporter):
    """:class:`ProgressReporter` for a streamed fit, whose iterations are passes over the data
    read on the host: reports come from the host loop (no device callback), one per pass and,
    as plain lines, one at most every ``HEARTBEAT_S`` seconds inside a pass. Adds the rows
    read per second, and estimates the time left from that rate and the rows still to read
    (every running restart up to ``max_iter`` passes)."""

    def __init__(self, n_init: int, max_iter: int, **kwargs):
        super().__init__(n_init, max_iter, **kwargs)
        self.rows = 0  # rows read over all passes
        self.rows_per_pass: int | None = None
        self._rows_in_pass = 0
        self._rows_start: float | None = None
        self._last_line = self._clock()

    def rows_per_second(self) -> float | None:
        if self._rows_start is None:
            return None
        seconds = self._clock() - self._rows_start
        return self.rows / seconds if seconds > 0 and self.rows else None

    def add_rows(self, rows: int) -> None:
        """Called after each batch with its number of real rows."""
        with self._lock:
            if self._rows_start is None:
                self._rows_start = self._clock()
                self._first = (self._rows_start, 0)  # reading has begun: the clock phase ends
                self._stop.set()
            self.rows += rows
            self._rows_in_pass += rows
            if self._bar is None and self._clock() - self._last_line >= HEARTBEAT_S:
                self._print(f"{self._status()}, {self._rows_in_pass} rows into the pass")
                self._last_line = self._clock()

    def pass_done(self, states) -> None:
        """Called after each pass's M-step with the restarts' stacked ``FitState``."""
        if self.rows_per_pass is None:
            self.rows_per_pass = self._rows_in_pass
        self._rows_in_pass = 0
        self.update(
            np.arange(self.n_init),
            np.asarray(states.n_iter),
            np.asarray(states.lower_bound),
            np.asarray(states.converged),
        )
        self._last_line = self._clock()

    def seconds_left(self) -> float | None:
        rate = self.rows_per_second()
        if rate is None or self.rows_per_pass is None:
            return None
        passes_left = int(np.max(np.where(self.finished, 0, self.max_iter - self.n_iter), initial=0))
        return max(0.0, passes_left * self.rows_per_pass - self._rows_in_pass) / rate

    def summary(self) -> str:
        rate = self.rows_per_second()
        return super().summary() + ("" if rate is None else f", {rate:.3g} rows/s")


def streaming_reporter(n_init: int, max_iter: int) -> StreamingProgressReporter:
    """A reporter for a streamed fit (the caller closes it)."""
    return StreamingProgressReporter(n_init, max_iter)
