"""Exact EM with missing values: per-iteration time at 20% missing entries against the
complete-data fit on the same data (issue 14's target: ≤ 3×).

    python benchmarks/missing.py             # 20k × 16, K=16 full (a short run, ~1-2 min on 2 cores)
    python benchmarks/missing.py --w2        # W2-sized: 200k × 16, K=16 full (several minutes)
    python benchmarks/missing.py --samples 50000 --missing 0.1 --covariance-type diag

Data: ``gj.generate_gmm_data`` from a fixed mixture (means ~ N(0, 4²), random covariances),
float32; a fraction ``--missing`` of the entries set to NaN at random (MCAR). Per-iteration
time: the fit from the same start (``means_init``/``weights_init``/``precisions_init``,
``tol=0``) run for ``a`` and for ``b`` iterations, ``(t_b − t_a) / (b − a)`` (compilation and
seeding cancel), best of ``--repeats``, the complete and the missing-data fits interleaved in
every repeat (a change of load hits both). The last column: the first call of each fit
(compilation plus ``a`` iterations), complete / missing. The missing-data fit is ``fit_em(...,
missing="marginalize")``; it includes the host-side sort of rows by missing count once per
call (part of ``t_a`` and ``t_b``, so it cancels too). Prints one Markdown table row.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import numpy as np

import gmmjax as gj
from gmmjax._covariance import covariance_kind


def make_data(n, d, k, missing, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=4.0, size=(k, d))
    A = rng.normal(size=(k, d, d)) / np.sqrt(d)
    covariances = A @ A.transpose(0, 2, 1) + 0.5 * np.eye(d)
    X = np.asarray(gj.generate_gmm_data(n, np.full(k, 1.0 / k), means, covariances, key=jax.random.key(seed)))
    X = X.astype(np.float32)
    X_missing = X.copy()
    X_missing[rng.random(X.shape) < missing] = np.nan
    return X, X_missing


def fit_runner(X, k, covariance_type, **keywords):
    """``run(max_iter)``: the fit from one fixed start (the same for every call), blocked on."""
    start = gj.fit_em(jax.random.key(0), X, k, covariance_type=covariance_type, max_iter=0, **keywords)
    p = start.params
    prec_chol = gj.precision_cholesky(p.covariances, covariance_type)
    kind_precisions = np.asarray(covariance_kind(covariance_type).precisions_from_precision_cholesky(prec_chol))

    def run(max_iter):
        result = gj.fit_em(
            jax.random.key(0),
            X,
            k,
            covariance_type=covariance_type,
            max_iter=max_iter,
            tol=0.0,
            weights_init=p.weights,
            means_init=p.means,
            precisions_init=kind_precisions,
            **keywords,
        )
        jax.block_until_ready(result)
        return result

    return run


def per_iteration(runners, iterations, repeats):
    """Seconds per iteration of each runner, ``(t_b − t_a) / (b − a)`` from the best of
    ``repeats`` timings of each, the runners interleaved within every repeat (so that a
    change of machine load hits all of them alike), and the first call's seconds (compilation
    and one run of ``a`` iterations)."""
    a, b = iterations
    first = {}
    for name, run in runners.items():
        t = time.perf_counter()
        run(a)
        first[name] = time.perf_counter() - t
        run(b)
    best = {(name, n): np.inf for name in runners for n in iterations}
    for _ in range(repeats):
        for name, run in runners.items():
            for n in iterations:
                t = time.perf_counter()
                run(n)
                best[name, n] = min(best[name, n], time.perf_counter() - t)
    return {name: (best[name, b] - best[name, a]) / (b - a) for name in runners}, first


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--components", type=int, default=16)
    parser.add_argument("--covariance-type", default="full")
    parser.add_argument("--missing", type=float, default=0.2)
    parser.add_argument("--iterations", type=int, nargs=2, default=(2, 6))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--w2", action="store_true", help="W2-sized data: 200k samples")
    args = parser.parse_args()
    n = 200_000 if args.w2 else args.samples
    X, X_missing = make_data(n, args.features, args.components, args.missing)
    runners = {
        "complete": fit_runner(X, args.components, args.covariance_type),
        "missing": fit_runner(X_missing, args.components, args.covariance_type, missing="marginalize"),
    }
    seconds, first = per_iteration(runners, args.iterations, args.repeats)
    complete, missing = seconds["complete"], seconds["missing"]
    counts = np.isnan(X_missing).sum(axis=1)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}")
    print("| N × D, K, type | missing | max missing/row | complete s/iter | missing s/iter | ratio | first call (s) |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {n} × {args.features}, {args.components}, {args.covariance_type} | {args.missing:.0%} | "
        f"{counts.max()} | {complete:.4f} | {missing:.4f} | {missing / complete:.2f}× | "
        f"{first['complete']:.1f} / {first['missing']:.1f} |"
    )


if __name__ == "__main__":
    main()
