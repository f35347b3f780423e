"""Exact out-of-core EM: peak resident memory and per-iteration throughput of streamed fits.

For each case a float32 ``.npy`` file is written in chunks (never held in memory), then, each
in its own subprocess (so that peak resident memory, ``ru_maxrss``, is that fit's alone):

- ``stream``: :func:`gmmjax._streaming.fit_em_streaming` on the file, ``max_iter`` passes
  with ``tol=0`` (reservoir initialisation included); per-iteration time from the ends of
  the passes after the first (the first one compiles);
- ``memory``: :func:`gmmjax.fit_em` on ``N / 10`` rows loaded in memory (a size that fits),
  per-iteration time ``(t(max_iter=3) − t(max_iter=1)) / 2``, both warm (compiled first);
  measured before and after the stream (the ratio uses their mean).

Peak RSS is the child's ``VmHWM`` (its own peak since ``execve``; ``ru_maxrss`` would also
count the parent's resident memory at the fork).

Throughput is rows per second per EM iteration; the target is stream ≥ 60% of memory, with
the stream's peak RSS < 1.5 GB for 100M × 8, K = 16 full.

Usage::

    python benchmarks/streaming.py --quick            # small sizes, a minute or two
    python benchmarks/streaming.py                    # 100M × 8 (3.2 GB) and 20M × 32 (2.6 GB)
    python benchmarks/streaming.py --data-dir /tmp    # where the .npy files go (deleted after)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

FULL_CASES = [
    {"name": "100M x 8, K=16 full", "N": 100_000_000, "D": 8, "K": 16},
    {"name": "20M x 32, K=32 full", "N": 20_000_000, "D": 32, "K": 32},
    # the second case's shape at a fifth of the rows (a full-size run takes ~15 min per pass on 2 CPU cores)
    {"name": "4M x 32, K=32 full", "N": 4_000_000, "D": 32, "K": 32},
]
QUICK_CASES = [
    {"name": "2M x 8, K=16 full", "N": 2_000_000, "D": 8, "K": 16},
    {"name": "400k x 32, K=32 full", "N": 400_000, "D": 32, "K": 32},
]


def write_data(path: str, N: int, D: int, K: int, seed: int = 0, chunk: int = 1_000_000) -> None:
    """A K-component mixture, ``(N, D)`` float32, written to ``path`` chunk by chunk."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(-10, 10, size=(K, D))
    factors = rng.normal(size=(K, D, D)) / np.sqrt(D) + np.eye(D)[None]
    weights = rng.dirichlet(np.full(K, 5.0))
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": (N, D)}
    with open(path, "wb") as file:
        np.lib.format.write_array_header_2_0(file, header)
        for start in range(0, N, chunk):
            n = min(chunk, N - start)
            labels = rng.choice(K, size=n, p=weights)
            rows = rng.standard_normal((n, D))
            for k in range(K):  # per component: no (n, D, D) temporary
                members = labels == k
                rows[members] = means[k] + rows[members] @ factors[k]
            file.write(rows.astype(np.float32).tobytes())


def _own_peak_rss_mb() -> float:
    """This process's peak resident memory since its ``execve`` (``VmHWM``), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _record_pass_ends():
    """Wraps the streamed fit's end of pass so that it blocks and appends the time it ended to
    the returned list (per-iteration times without changing the fit); returns ``(list, restore)``."""
    import jax

    from gmmjax import _streaming

    ends: list[float] = []
    finish = _streaming._finish_pass

    def timed_finish(*args, **kwargs):
        states = jax.block_until_ready(finish(*args, **kwargs))
        ends.append(time.perf_counter())
        return states

    _streaming._finish_pass = timed_finish
    return ends, lambda: setattr(_streaming, "_finish_pass", finish)


def _child(spec: dict) -> dict:
    """Runs in the subprocess: one measurement, returns figures (peak RSS included)."""
    import resource

    import jax

    import gmmjax as gj
    from gmmjax import _streaming

    K, max_iter = spec["K"], spec["max_iter"]
    if spec["mode"] == "stream":
        ends, _ = _record_pass_ends()
        start = time.perf_counter()
        result = _streaming.fit_em_streaming(
            jax.random.key(0), spec["path"], K, covariance_type="full", tol=0.0, max_iter=max_iter
        )
        total = time.perf_counter() - start
        per_iteration = float(np.median(np.diff(ends))) if len(ends) > 1 else float("nan")
        rows = spec["N"]
        out = {"total_s": total, "first_pass_end_s": ends[0] - start, "iteration_s": per_iteration}
    else:
        X = np.load(spec["path"], mmap_mode="r")[: spec["rows"]]
        X = jax.device_put(np.ascontiguousarray(X))
        times = {}
        for iters in (1, 3):
            fit = lambda iters=iters: gj.fit_em(
                jax.random.key(0), X, K, covariance_type="full", tol=0.0, max_iter=iters
            )  # noqa: E731
            jax.block_until_ready(fit())  # compile
            start = time.perf_counter()
            result = jax.block_until_ready(fit())
            times[iters] = time.perf_counter() - start
        per_iteration = (times[3] - times[1]) / 2
        rows = spec["rows"]
        out = {"iteration_s": per_iteration, "fit_1_s": times[1], "fit_3_s": times[3]}
    out.update(
        rows=rows,
        rows_per_s=rows / per_iteration,
        peak_rss_mb=_own_peak_rss_mb(),
        # ru_maxrss also counts the parent's resident memory at fork (Linux keeps the larger
        # high-water mark across execve): an upper bound only
        ru_maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        lower_bound=float(result.lower_bound),
        n_iter=int(result.n_iter),
        device=str(jax.devices()[0].platform),
    )
    return out


def interleaved(data_dir: str, N: int = 4_000_000, D: int = 8, K: int = 16, repeats: int = 3) -> list[dict]:
    """In one process, alternately: ``fit_em`` in memory and the streamed fit of the same file
    from the same start (``*_init`` given, no reservoir pass); per-iteration seconds of each
    (in memory ``(t3 − t1) / 2``, streamed the median pass after the first). Alternating in
    one process makes the pair see the same load on a shared machine."""
    import jax

    import gmmjax as gj
    from gmmjax import _streaming

    path = os.path.join(data_dir, f"interleaved_{N}x{D}.npy")
    write_data(path, N, D, K)
    try:
        X = np.load(path)
        start = gj.fit_em(jax.random.key(0), X[:20000], K, max_iter=0).params
        init = dict(
            weights_init=np.asarray(start.weights),
            means_init=np.asarray(start.means),
            precisions_init=np.linalg.inv(np.asarray(start.covariances)),
            tol=0.0,
        )
        X_device = jax.device_put(X)
        fit = lambda iters: jax.block_until_ready(gj.fit_em(jax.random.key(0), X_device, K, max_iter=iters, **init))  # noqa: E731
        fit(1), fit(3)  # compile
        ends, restore = _record_pass_ends()
        rows = []
        for _ in range(repeats):
            times = []
            for iters in (1, 3):
                t = time.perf_counter()
                fit(iters)
                times.append(time.perf_counter() - t)
            ends.clear()
            _streaming.fit_em_streaming(jax.random.key(0), path, K, max_iter=4, **init)
            memory, stream = (times[1] - times[0]) / 2, float(np.median(np.diff(ends)))
            rows.append({"memory_s": memory, "stream_s": stream, "ratio": memory / stream})
            print(f"in memory {memory:.3f} s/it, streamed {stream:.3f} s/it, ratio {memory / stream:.2f}", flush=True)
        restore()
        return rows
    finally:
        os.remove(path)


def _measure(spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True, text=True, timeout=7200
    )
    if done.returncode != 0:
        raise RuntimeError(f"{spec['mode']} run failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_case(case: dict, data_dir: str, max_iter: int, keep: bool) -> dict:
    path = os.path.join(data_dir, f"stream_{case['N']}x{case['D']}.npy")
    size = case["N"] * case["D"] * 4
    free = shutil.disk_usage(data_dir).free
    if free < size * 1.2:
        raise SystemExit(f"{data_dir} has {free / 1e9:.1f} GB free, {size / 1e9:.1f} GB needed")
    start = time.perf_counter()
    write_data(path, case["N"], case["D"], case["K"])
    written = time.perf_counter() - start
    try:
        # in memory before and after the stream: the machine's load drifts over minutes
        memory_spec = {"mode": "memory", "path": path, "rows": case["N"] // 10, "K": case["K"], "max_iter": 3}
        before = _measure(memory_spec)
        stream = _measure({"mode": "stream", "path": path, "N": case["N"], "K": case["K"], "max_iter": max_iter})
        after = _measure(memory_spec)
    finally:
        if not keep:
            os.remove(path)
    return {
        **case,
        "file_gb": size / 1e9,
        "write_s": written,
        "stream": stream,
        "memory": before,
        "memory_after": after,
        "throughput_ratio": stream["rows_per_s"] / (0.5 * (before["rows_per_s"] + after["rows_per_s"])),
        "throughput_ratio_range": [stream["rows_per_s"] / m["rows_per_s"] for m in (before, after)],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (for checking the script)")
    parser.add_argument("--data-dir", default="/work/bench_data" if os.path.isdir("/work") else "/tmp")
    parser.add_argument("--max-iter", type=int, default=3, help="streamed passes (tol=0; default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the generated .npy files")
    parser.add_argument("--case", type=int, action="append", help="run only these cases (0-based)")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument(
        "--interleaved",
        type=int,
        metavar="R",
        help="instead: R alternations of in-memory and streamed fits of 4M x 8, K=16, in one process",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    os.makedirs(args.data_dir, exist_ok=True)
    if args.interleaved:
        interleaved(args.data_dir, repeats=args.interleaved)
        return 0
    cases = QUICK_CASES if args.quick else FULL_CASES
    chosen = [cases[i] for i in args.case] if args.case else cases
    results = []
    for case in chosen:
        result = run_case(case, args.data_dir, args.max_iter, args.keep)
        results.append(result)
        s, m = result["stream"], result["memory"]
        print(
            f"{case['name']}: file {result['file_gb']:.2f} GB; stream {s['rows_per_s'] / 1e6:.2f} M rows/s per "
            f"iteration ({s['iteration_s']:.2f} s/it), peak RSS {s['peak_rss_mb']:.0f} MB, total {s['total_s']:.1f} s; "
            f"in memory ({m['rows']} rows, before / after) {m['rows_per_s'] / 1e6:.2f} / "
            f"{result['memory_after']['rows_per_s'] / 1e6:.2f} M rows/s, peak RSS {m['peak_rss_mb']:.0f} MB; "
            f"ratio {result['throughput_ratio']:.2f} "
            f"({' / '.join(f'{r:.2f}' for r in result['throughput_ratio_range'])})",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
