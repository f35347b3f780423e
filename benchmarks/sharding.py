"""Data-parallel EM: forced CPU devices and processes against one device (issue 12 targets).

    python benchmarks/sharding.py [--samples N] [--features D] [--components K] [--iters T]

For 1, 4 and 8 forced CPU devices (each in its own subprocess, ``XLA_FLAGS``) it compiles the
fit, reads the compiled program (all-reduces in the EM loop and their bytes), runs ``T``
iterations (``tol=0``) and compares the result with the one-device fit of the same process.
Then 2 processes on 127.0.0.1 (gloo) against 1 process: per-iteration time of the fit and the
latency of one all-reduce of the packed statistics. Prints one JSON line per measurement.
On a shared 2-core machine, forced devices share those cores: the times show the overhead
and the structure, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def packed_numbers(K: int, D: int, covariance_type: str) -> int:
    """Numbers all-reduced per EM iteration: counts, first moments, second moments (upper
    triangles for full/tied), the log-likelihood and the total weight."""
    second = D * (D + 1) // 2 if covariance_type in ("full", "tied") else D
    return K * (1 + D + second) + 2


def device_run(args) -> None:
    """In a subprocess with forced devices: compile and run the sharded and one-device fits."""
    import jax
    import numpy as np

    import gmmjax as gj
    from gmmjax import _sharding
    from gmmjax._driver import check_fit_inputs, traced_leaves
    from gmmjax._em import _fit_em, fit_em_restarts
    from gmmjax._options import fit_options

    N, D, K, T = args.samples, args.features, args.components, args.iters
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=4.0, size=(K, D))
    X = (rng.normal(size=(N, D)) + centers[rng.integers(0, K, N)]).astype(np.float32)
    options = fit_options(None, covariance_type="full", max_iter=T, tol=0.0)
    key = jax.random.key(0)
    record = dict(devices=jax.device_count(), N=N, D=D, K=K, iters=T)

    inputs = check_fit_inputs(key, X, K, options)
    one_args = (inputs.key, inputs.X, None, traced_leaves(inputs.options, inputs.X.dtype))
    start = time.perf_counter()
    one = _fit_em.lower(*one_args, num_components=K).compile()
    record["compile_1_device_s"] = time.perf_counter() - start
    start = time.perf_counter()
    reference = jax.block_until_ready(one(*one_args))
    record["run_1_device_s"] = time.perf_counter() - start

    if jax.device_count() > 1:
        mesh = jax.make_mesh((jax.device_count(),), ("data",))
        skey, sinputs, leaves = _sharding.prepare(key, X, K, options, None, mesh, None)
        program, sargs = _sharding.program_and_arguments(
            fit_em_restarts, skey, sinputs, leaves, differentiation="implicit", num_components=K
        )
        start = time.perf_counter()
        compiled = program.lower(*sargs).compile()
        record["compile_sharded_s"] = time.perf_counter() - start
        record["compile_ratio"] = record["compile_sharded_s"] / record["compile_1_device_s"]
        hlo = compiled.as_text()
        record["all_reduces_in_program"] = hlo.count(" all-reduce(")
        record["all_gathers_in_program"] = hlo.count(" all-gather(")
        record["allreduce_numbers_per_iter"] = packed_numbers(K, D, "full")
        record["allreduce_bytes_per_iter"] = 4 * packed_numbers(K, D, "full")
        start = time.perf_counter()
        result = jax.block_until_ready(compiled(*sargs))
        record["run_sharded_s"] = time.perf_counter() - start
        errors = [
            float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))
            for a, b in zip(jax.tree_util.tree_leaves(result.params), jax.tree_util.tree_leaves(reference.params))
        ]
        record["max_relative_error_vs_1_device"] = max(errors)
        record["same_n_iter"] = bool(int(result.n_iter) == int(reference.n_iter))
    del gj
    print(json.dumps(record), flush=True)


def process_run(args) -> None:
    """One of ``args.processes`` processes: per-iteration fit time and one all-reduce's latency."""
    import jax

    if args.processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            f"127.0.0.1:{args.port}",
            args.processes,
            args.rank,
            initialization_timeout=120,
            heartbeat_timeout_seconds=30,
        )
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import PartitionSpec

    import gmmjax as gj

    N, D, K, T = args.samples, args.features, args.components, args.iters
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=4.0, size=(K, D))
    X = (rng.normal(size=(N, D)) + centers[rng.integers(0, K, N)]).astype(np.float32)
    bounds = np.linspace(0, N, args.processes + 1).astype(int)
    local = X[bounds[args.rank] : bounds[args.rank + 1]]
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    rows = gj.shard_rows(local, mesh, process_local=True)

    def timed(max_iter):
        start = time.perf_counter()
        result = gj.fit_em(jax.random.key(0), rows.X, K, sample_weight=rows.sample_weight, max_iter=max_iter, tol=0.0)
        jax.block_until_ready(result)
        return time.perf_counter() - start

    timed(T), timed(2 * T)  # compile both
    per_iter = (timed(2 * T) - timed(T)) / T  # initialisation cancels
    size = packed_numbers(K, D, "full")
    reps = 200

    @jax.jit
    def all_reduces(x):
        def body(x):
            return jax.lax.fori_loop(0, reps, lambda i, y: jax.lax.psum(y, "data") * 0.5, x)

        return jax.shard_map(body, mesh=mesh, in_specs=PartitionSpec(), out_specs=PartitionSpec(), check_vma=False)(x)

    x = jnp.ones(size, jnp.float32)
    jax.block_until_ready(all_reduces(x))
    start = time.perf_counter()
    jax.block_until_ready(all_reduces(x))
    latency = (time.perf_counter() - start) / reps
    if args.rank == 0:
        record = dict(processes=args.processes, N=N, D=D, K=K, per_iteration_s=per_iter, allreduce_latency_s=latency)
        record["allreduce_bytes"] = 4 * size
        print(json.dumps(record), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--components", type=int, default=16)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--role", choices=("main", "devices", "process"), default="main")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.role == "devices":
        return device_run(args)
    if args.role == "process":
        return process_run(args)
    sizes = ["--samples", str(args.samples), "--features", str(args.features), "--components", str(args.components)]
    sizes += ["--iters", str(args.iters)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for devices in (4, 8):
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        subprocess.run([sys.executable, __file__, "--role", "devices", *sizes], env=env, check=True, timeout=3600)
    env.pop("XLA_FLAGS")
    for processes in (1, 2):
        port = free_port()
        command = [sys.executable, __file__, "--role", "process", *sizes, "--processes", str(processes)]
        children = [
            subprocess.Popen([*command, "--rank", str(rank), "--port", str(port)], env=env) for rank in range(processes)
        ]
        try:
            for child in children:
                child.wait(timeout=3600)
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()


if __name__ == "__main__":
    main()
