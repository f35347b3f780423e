"""Shared pytest configuration for the gmmjax test suite.

* registers the ``slow`` marker (deselect with ``-m "not slow"``);
* runs the float64 checks (``_x64_parity_script.py``) in a background subprocess, started
  at collection when a selected test needs them (fixtures ``x64_results`` / ``x64_check``);
* makes the helper modules in this directory (``_oracles``) importable whatever pytest's
  import mode;
* provides small, deterministic datasets as fixtures.

float64 (``jax_enable_x64``) is deliberately NOT enabled here: it is global state, so the
float64 checks run in a subprocess (see ``_x64_parity_script.py``).
"""

from __future__ import annotations

import gc
import os
import sys

import numpy as np
import pytest

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

import jax  # noqa: E402

from _oracles import make_blobs  # noqa: E402

# Implicit rank promotion (e.g. (K, N) - (N,)) hides broadcasting bugs: the library must
# spell out every broadcast, so the tests run with it turned into an error.
jax.config.update("jax_numpy_rank_promotion", "raise")

# Run as a subprocess by the x64_results fixture; never import it here (it would switch this
# process to float64), e.g. through --doctest-modules.
collect_ignore = [
    "_x64_parity_script.py",
    "_missing_x64_script.py",
    "_sharding_checks.py",
    "_sharding_process.py",
    "_stream_sharded_checks.py",
    "_stream_sharded_process.py",
    "_stream_sharded_resume.py",
]  # scripts run with arguments


_SHARED_DIR = "GMMJAX_TEST_SHARED_DIR"
_OWNS_SHARED_DIR = pytest.StashKey[bool]()


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: heavier test (several seconds or more); deselect with -m 'not slow'")
    # A command run in-process (gmmjax._cli.main) would turn JAX's persistent compilation
    # cache on for the rest of the session (it is process-global), and every later test would
    # write its programs to the user's cache. Tests of the cache unset this themselves
    # (test_cli.py, test_cache.py in a subprocess).
    os.environ["GMMJAX_NO_CACHE"] = "1"
    if _xdist_worker() is None and _SHARED_DIR not in os.environ:
        # A folder for what the xdist workers share (they inherit the environment); removed in
        # pytest_unconfigure by the process that made it.
        import tempfile

        os.environ[_SHARED_DIR] = tempfile.mkdtemp(prefix="gmmjax-tests-")
        config.stash[_OWNS_SHARED_DIR] = True


def pytest_unconfigure(config):
    if config.stash.get(_OWNS_SHARED_DIR, False):
        import shutil

        shutil.rmtree(os.environ.pop(_SHARED_DIR), ignore_errors=True)


def _memory_maps() -> int | None:
    try:
        with open("/proc/self/maps", "rb") as maps:
            return sum(1 for _ in maps)
    except OSError:  # not Linux
        return None


def _map_limit() -> int:
    try:
        with open("/proc/sys/vm/max_map_count") as limit:
            return int(limit.read())
    except (OSError, ValueError):
        return 65530


@pytest.fixture(scope="module", autouse=True)
def _bounded_compiled_programs():
    """Frees JAX's compiled programs after a module once they hold a third of the process's
    memory-map limit. Every compiled CPU program keeps a few memory maps; the suite compiles
    tens of thousands of programs, and past Linux's ``vm.max_map_count`` (65530 by default)
    XLA's next compilation segfaults (what ended two CI runs, 80% through the suite). Programs
    shared between the tests of a module stay compiled."""
    yield
    maps = _memory_maps()
    if maps is not None and maps > _map_limit() // 3:
        jax.clear_caches()
        gc.collect()  # the executables go with their last references


@pytest.fixture
def rng():
    """A fresh, seeded NumPy generator per test."""
    return np.random.default_rng(12345)


@pytest.fixture
def blobs():
    """Factory for small Gaussian-blob datasets: ``blobs(n=..., d=..., k=..., seed=..., ...)``.

    Returns ``(X, labels, centers)`` as float64 NumPy arrays (cast in the test as needed).
    """
    return make_blobs


@pytest.fixture
def small_data():
    """A fixed small 2-D, 3-cluster float32 dataset ``(300, 2)`` with mild overlap."""
    X, _, _ = make_blobs(n=300, d=2, k=3, seed=0, spread=4.0)
    return X.astype(np.float32)


_REPO_ROOT = os.path.dirname(_TESTS_DIR)
_X64_SCRIPT = os.path.join(_TESTS_DIR, "_x64_parity_script.py")


_X64_PROCESS = None
_X64_RESULTS = None  # (returncode, {check: "ok" | traceback}, stderr) once collected


def _xdist_worker() -> str | None:
    """This process's pytest-xdist worker name (``gw0``, ``gw1``, ...), or None without xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER")


def _runs_x64_checks() -> bool:
    # Under pytest-xdist every worker collects every test: only the first one runs the float64
    # checks, for the whole run, and shares their results through a file (the others wait for it).
    return _xdist_worker() in (None, "gw0")


def _shared_x64_path() -> str:
    return os.path.join(os.environ[_SHARED_DIR], "x64_results.json")


def _start_x64_subprocess():
    """Starts the float64 checks in the background (once); returns the Popen handle."""
    global _X64_PROCESS
    if _X64_PROCESS is None:
        import subprocess
        import tempfile

        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, env.get("PYTHONPATH")) if p)
        # Files, not pipes: a full pipe would block the child while nobody reads it.
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        _X64_PROCESS = subprocess.Popen([sys.executable, _X64_SCRIPT], stdout=out, stderr=err, env=env, cwd=_REPO_ROOT)
        _X64_PROCESS.output_files = (out, err)
    return _X64_PROCESS


def _collect_x64_results():
    """Waits for the float64 subprocess and parses its results (once); under xdist, writes them
    where the other workers read them. Returns ``(returncode, results | None, message)``."""
    global _X64_RESULTS
    if _X64_RESULTS is None:
        import json

        proc = _start_x64_subprocess()
        proc.wait(timeout=600)
        stdout, stderr = ((f.seek(0), f.read())[1] for f in proc.output_files)
        lines = [ln for ln in stdout.splitlines() if ln.startswith("X64_RESULTS ")]
        if lines:
            _X64_RESULTS = (proc.returncode, json.loads(lines[-1][len("X64_RESULTS ") :]), stderr)
        else:
            message = (
                f"float64 subprocess produced no results (exit {proc.returncode}).\n"
                f"stdout:\n{stdout[-4000:]}\nstderr:\n{stderr[-4000:]}"
            )
            _X64_RESULTS = (proc.returncode, None, message)
        if _xdist_worker() is not None:
            path = _shared_x64_path()
            with open(path + ".part", "w") as shared:
                json.dump(_X64_RESULTS, shared)
            os.replace(path + ".part", path)  # atomic: a reader never sees half a file
    return _X64_RESULTS


def _wait_for_shared_x64_results(timeout: float = 900.0):
    import json
    import time

    path = _shared_x64_path()
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            pytest.fail(f"worker gw0 did not share the float64 results ({path}) within {timeout:.0f} s")
        time.sleep(0.5)
    with open(path) as shared:
        return tuple(json.load(shared))


@pytest.hookimpl(trylast=True)  # after -k/-m deselection
def pytest_collection_modifyitems(session, config, items):
    # The float64 subprocess takes ~15 s, mostly single-threaded XLA compilation: start it as
    # soon as we know a selected test needs it, so it overlaps with the tests that run first.
    if _runs_x64_checks() and any("x64_results" in getattr(item, "fixturenames", ()) for item in items):
        _start_x64_subprocess()


def pytest_sessionfinish(session, exitstatus):
    if _X64_PROCESS is not None:
        if _xdist_worker() is not None and _X64_RESULTS is None and exitstatus != pytest.ExitCode.INTERRUPTED:
            _collect_x64_results()  # another worker may be waiting for them
        if _X64_PROCESS.poll() is None:
            _X64_PROCESS.kill()
            _X64_PROCESS.wait()
        for f in _X64_PROCESS.output_files:
            f.close()


@pytest.fixture(scope="session")
def x64_results():
    """Results of ``_x64_parity_script.py``, run once per test run in a float64 subprocess.

    Returns ``(returncode, {check_name: "ok" | traceback}, stderr)``.
    """
    if _runs_x64_checks():
        returncode, results, message = _collect_x64_results()
    else:
        returncode, results, message = _wait_for_shared_x64_results()
    if results is None:
        pytest.fail(message)
    return returncode, results, message


@pytest.fixture
def x64_check(x64_results):
    """``x64_check(name)`` fails the calling test with the subprocess traceback unless check ``name`` passed."""

    def assert_ok(name):
        _, results, _ = x64_results
        assert name in results, f"float64 check {name!r} did not run; ran: {sorted(results)}"
        assert results[name] == "ok", f"float64 check {name!r} failed in the subprocess:\n{results[name]}"

    return assert_ok
