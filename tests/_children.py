"""Child processes for tests: this checkout's gmmjax, ports on 127.0.0.1, none left running.

Imported by the test modules (the parent side) and by the scripts they start (the child side:
:func:`forced_devices_from_argv` and :func:`join_cluster_from_argv`). Importing it does not
import JAX, so a script can set ``XLA_FLAGS`` through it before JAX starts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


# -- parent side -----------------------------------------------------------------------------
def child_env(**changes: str | None) -> dict[str, str]:
    """The environment of a child: imports this checkout's gmmjax, output unbuffered, one CPU
    device (no ``XLA_FLAGS`` from the parent) and no persistent compilation cache;
    ``changes``: more variables (``None`` removes one)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", GMMJAX_NO_CACHE="1")
    env.pop("XLA_FLAGS", None)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(script: Path, mode: str, target: Path, num_processes: int = 2) -> list[subprocess.Popen]:
    """``num_processes`` copies of ``script`` joined on a free port of 127.0.0.1; each gets
    ``PROCESS_ID NUM_PROCESSES PORT MODE TARGET`` (read by :func:`join_cluster_from_argv`)."""
    port = free_port()
    return [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), str(num_processes), str(port), mode, str(target)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
            cwd=ROOT,
        )
        for rank in range(num_processes)
    ]


def run_cli_cluster(*arguments: str, num_processes: int = 2, timeout: float = 300) -> list[tuple[int, str, str]]:
    """``gmmjax ARGUMENTS... --distributed`` in ``num_processes`` processes joined on 127.0.0.1
    through the ``GMMJAX_*`` variables.

    Returns:
      ``(returncode, stdout, stderr)`` of each process, by process id.
    """
    port, processes = free_port(), []
    try:
        for rank in range(num_processes):
            env = child_env(
                GMMJAX_COORDINATOR=f"127.0.0.1:{port}",
                GMMJAX_NUM_PROCESSES=str(num_processes),
                GMMJAX_PROCESS_ID=str(rank),
            )
            command = [sys.executable, "-m", "gmmjax", *arguments, "--distributed"]
            processes.append(
                subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
            )
        outputs = [process.communicate(timeout=timeout) for process in processes]
    finally:
        kill_all(processes)
    return [(process.returncode, out, err) for process, (out, err) in zip(processes, outputs)]


def kill_all(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def kill_once_checkpointed(
    processes: list[subprocess.Popen], checkpoint: Path, *, mid_pass: bool, seconds: float
) -> None:
    """SIGKILLs every process of a fit once its checkpoint holds iteration 2 or later (and, with
    ``mid_pass``, a position inside a pass); fails if one ends first or nothing comes in
    ``seconds``."""
    from gmmjax._checkpoint import load_checkpoint

    try:
        deadline, meta = time.monotonic() + seconds, None
        while time.monotonic() < deadline and all(p.poll() is None for p in processes):
            if checkpoint.exists():
                try:
                    meta = load_checkpoint(checkpoint)[1]
                except (ValueError, OSError):  # never torn (atomic); a rename may race the open
                    meta = None
                if meta is not None and meta["iteration"] >= 2 and (not mid_pass or meta["batch"] > 0):
                    break
            time.sleep(0.05)
        for process in processes:
            assert process.poll() is None, f"the fit ended before it was killed: {process.communicate()[1][-2000:]!r}"
        assert meta is not None, f"no checkpoint mid-fit in {seconds:.0f} s"
    finally:
        kill_all(processes)


# -- child side ------------------------------------------------------------------------------
def forced_devices_from_argv() -> tuple[int, str, bool]:
    """For a check script run as ``script.py DEVICES MODE [--x64]``: forces ``DEVICES`` CPU
    devices and, with ``--x64``, float64. Call it before anything imports JAX.

    Returns:
      ``(devices, mode, x64)``.
    """
    devices, mode, x64 = int(sys.argv[1]), sys.argv[2], "--x64" in sys.argv
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    import jax

    if x64:
        jax.config.update("jax_enable_x64", True)
    return devices, mode, x64


def join_cluster_from_argv() -> tuple[int, int, str, str]:
    """For a script started by :func:`start_cluster`: joins ``jax.distributed`` on 127.0.0.1
    (CPU collectives over gloo; bounded start-up, heartbeat and shutdown timeouts).

    Returns:
      ``(process_id, num_processes, mode, target)``.
    """
    process_id, num_processes, port = (int(a) for a in sys.argv[1:4])
    mode, target = sys.argv[4], sys.argv[5]
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=60,
        heartbeat_timeout_seconds=HEARTBEAT_S,
        shutdown_timeout_seconds=10,
    )
    return process_id, num_processes, mode, target


HEARTBEAT_S = 10  # how soon a process notices that another one died
