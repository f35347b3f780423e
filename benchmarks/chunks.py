"""Chunk sizes of the E-step: one warm, jitted ``gj.em_step`` per chunk size, per shape.

    python benchmarks/chunks.py                  # the W-shapes (reduced N), prints a Markdown table
    python benchmarks/chunks.py --only W2,W9 --repeats 7
    python benchmarks/chunks.py --quick          # tiny sizes: checks that the script runs

For the shapes of ``benchmarks/run.py`` (W1, W2, W3, W4, W8, W9; W2's shape with all four
covariance types; N reduced where a full-size step would take seconds), float32, the same
data and starting point as run.py. For each ``chunk_size=`` (those whose pass runs 256, 512, ... rows, up to N;
the automatic choice before 2026-12-04, ``before``, and today's, ``auto``) one compiled
``em_step``; the timings are interleaved
(every round times every chunk size once, in turn) in one process and the best of
``--repeats`` rounds is reported (``a (r×)``: before / this). ``rows`` is the number of rows per chunk of the pass that
runs: the expanded form widens ``chunk_size`` by ``max(1, K·D // (F + D + K))`` (see
``gmmjax._stats.e_step``); full/tied with D ≤ 4 run the residual form in ``chunk_size`` rows.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from run import WORKLOADS, cpu_description, initial_parameters, make_data  # noqa: E402

# name -> (run.py workload, covariance type, N used here)
SHAPES = {
    "W1": ("W1", "full", 100_000),
    "W2 full": ("W2", "full", 50_000),
    "W2 tied": ("W2", "tied", 50_000),
    "W2 diag": ("W2", "diag", 50_000),
    "W2 spherical": ("W2", "spherical", 50_000),
    "W3": ("W3", "full", 50_000),
    "W4": ("W4", "diag", 100_000),
    "W8": ("W8", "diag", 10_000),
    "W9": ("W9", "diag", 20_000),
    "small K": (None, "spherical", 50_000),  # 50k × 8, K = 8: the shape of the 2026-12-04 finding
}


def params_for(X, k: int, cov: str):
    """run.py's starting point as float32 ``GMMParams``."""
    import gmmjax as gj

    weights, means, precisions = initial_parameters(X, k, "full" if cov in ("full", "tied") else "diag")
    if cov == "full":
        covariances = np.linalg.inv(precisions)
    elif cov == "tied":
        covariances = np.linalg.inv(precisions[0])
    elif cov == "diag":
        covariances = 1.0 / precisions
    else:
        covariances = np.full(k, float(np.mean(1.0 / precisions[0])))
    return gj.GMMParams(
        np.asarray(weights, np.float32),
        np.asarray(means, np.float32),
        np.asarray(covariances, np.float32),
        covariance_type=cov,
    )


def _widening(n: int, k: int, d: int, cov: str) -> int:
    """How many times ``chunk_size`` the expanded pass (no exact slots) widens its chunk, as
    ``gmmjax._stats.e_step`` does; 0 for the residual form (full/tied with D ≤ 4)."""
    if cov in ("full", "tied") and d <= 4:
        return 0
    second = d * (d + 1) // 2 if cov in ("full", "tied") else d
    return max(1, k * d // (second + d + k))


def pass_rows(chunk_size: int, n: int, k: int, d: int, cov: str) -> int:
    """Rows per chunk of the pass that runs (widened, then balanced as ``sum_over_chunks`` does)."""
    from gmmjax import _chunks

    widening = _widening(n, k, d, cov)
    return _chunks.balanced_chunk(min(n, chunk_size * max(1, widening)), n)


def before_rule(n: int, k: int, d: int, itemsize: int = 4) -> int:
    """The automatic chunk size before 2026-12-04 (one 8 MiB ``(K, chunk, D)`` temporary, at
    least 8 rows), for comparison with today's :func:`gmmjax.auto_chunk_size`."""
    return min(n, max(8, (8 * 2**20 // (k * d * itemsize)) // 8 * 8))


def measure(name: str, repeats: int, quick: bool):
    import jax
    import jax.numpy as jnp

    import gmmjax as gj

    workload, cov, n = SHAPES[name]
    d, k = (8, 8) if workload is None else (WORKLOADS[workload]["d"], WORKLOADS[workload]["k"])
    if quick:
        n, k = min(n, 2048), min(k, 16)
    X = jnp.asarray(make_data(n, d, k).astype(np.float32))
    params = params_for(np.asarray(X, np.float64), k, cov)
    # chunk_size values whose pass runs 256, 512, ... rows (up to N), then the candidates.
    widening = max(1, _widening(n, k, d, cov))
    sweep = sorted({max(1, rows // widening) for rows in [2**p for p in range(8, 40) if 2**p < n] + [n]})
    labels = {f"{size}": size for size in sweep}
    labels["before"] = before_rule(n, k, d)
    labels["auto"] = gj.auto_chunk_size(n, k, d, jnp.float32)
    steps = {}
    for size in sorted(set(labels.values())):
        step = jax.jit(lambda p, X, size=size: gj.em_step(p, X, chunk_size=size))
        jax.block_until_ready(step(params, X))  # compile + warm
        steps[size] = step
    # Calls per timing so that one timing is ≥ ~20 ms (steadier best-of on a loaded machine).
    t0 = time.perf_counter()
    jax.block_until_ready(steps[labels["before"]](params, X))
    calls = max(1, int(0.02 / max(time.perf_counter() - t0, 1e-6)))
    best = {size: float("inf") for size in steps}
    for _ in range(repeats):
        for size in steps:
            t0 = time.perf_counter()
            for _ in range(calls):
                out = steps[size](params, X)
            jax.block_until_ready(out)
            best[size] = min(best[size], (time.perf_counter() - t0) / calls)
    rows = {size: pass_rows(size, n, k, d, cov) for size in steps}
    return dict(name=name, n=n, d=d, k=k, cov=cov, labels=labels, best=best, rows=rows, sweep=sweep)


def _cell(r, size, ratio=True) -> str:
    """``chunk_size→rows: ms`` of one timed size of result ``r`` (and before / this)."""
    best, rows = r["best"], r["rows"]
    text = f"{size}→{rows[size]}: {best[size] * 1e3:.2f}"
    return text + (f" ({best[r['labels']['before']] / best[size]:.2f}×)" if ratio else "")


def table(results) -> str:
    """Markdown: per shape, the automatic size before and now and the best of the sweep (each
    as ``chunk_size→rows: ms``, ratio to before), then the whole sweep."""
    head = ["before", "auto"]
    lines = [
        "| shape (N × D, K, type) | " + " | ".join(head) + " | best of sweep | sweep: chunk_size→rows: ms |",
        "|" + "---|" * (len(head) + 3),
    ]
    for r in results:
        labels = r["labels"]

        top = min(r["sweep"], key=r["best"].get)
        cells = [_cell(r, labels["before"], ratio=False), _cell(r, labels["auto"]), _cell(r, top)]
        sweep = ", ".join(_cell(r, size, ratio=False) for size in r["sweep"])
        lines.append(
            f"| {r['name']} ({r['n']} × {r['d']}, K={r['k']}, {r['cov']}) | " + " | ".join(cells) + f" | {sweep} |"
        )
    return "\n".join(lines)


def measure_fit(name: str, repeats: int, quick: bool):
    """One whole ``fit_em`` (k-means initialisation + ``max_iter=20`` EM iterations, ``tol=0``),
    warm, with the chunk size before and the automatic one now: ``(before s, auto s)``."""
    import jax

    import gmmjax as gj

    workload, cov, n = SHAPES[name]
    d, k = (8, 8) if workload is None else (WORKLOADS[workload]["d"], WORKLOADS[workload]["k"])
    if quick:
        n, k = min(n, 2048), min(k, 16)
    X = make_data(n, d, k).astype(np.float32)
    sizes = {"before": before_rule(n, k, d), "auto": None}

    def fit(size):
        result = gj.fit_em(jax.random.key(0), X, k, covariance_type=cov, max_iter=20, tol=0.0, chunk_size=size)
        return jax.block_until_ready(result.params.means)

    for size in sizes.values():
        fit(size)
    best = dict.fromkeys(sizes, float("inf"))
    for _ in range(repeats):
        for label, size in sizes.items():
            t0 = time.perf_counter()
            fit(size)
            best[label] = min(best[label], time.perf_counter() - t0)
    return best["before"], best["auto"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SHAPES), help="comma-separated names of SHAPES")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds; the best is reported")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--fit", action="store_true", help="whole fit_em calls, before against auto")
    args = parser.parse_args(argv)
    if args.fit:
        print("| shape | fit_em before s | auto s | before / auto |\n|---|---|---|---|")
        for name in args.only.split(","):
            before, auto = measure_fit(name.strip(), args.repeats, args.quick)
            print(f"| {name.strip()} | {before:.4f} | {auto:.4f} | {before / auto:.2f}× |", flush=True)
        print(f"\nMachine: {cpu_description()}; float32, best of {args.repeats}.")
        return
    results = []
    for name in args.only.split(","):
        results.append(measure(name.strip(), args.repeats, args.quick))
        print(table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"Machine: {cpu_description()}; 1-minute load at the end {load:.1f}; float32, best of {args.repeats}.\n")
    print(table(results))


if __name__ == "__main__":
    main()
