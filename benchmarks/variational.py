"""Variational Bayesian mixtures: gmmjax.fit_variational against scikit-learn's BayesianGaussianMixture.

    python benchmarks/variational.py            # short default: 20k × 16, K = 16 full (about a minute on 2 quiet cores)
    python benchmarks/variational.py --w2       # W2's shape (benchmarks/run.py WORKLOADS: 200k × 16, K = 16)
    python benchmarks/variational.py --w2 --out benchmarks/VARIATIONAL.md   # also writes the table

Two figures (float64 for scikit-learn, which runs only in float64; float32 for gmmjax, its
default — the same as benchmarks/run.py):

- **per iteration**: ``(t(max_iter=12) − t(max_iter=2)) / 10`` of one fit with ``tol=0`` (so
  both run exactly that many iterations) from ``init_params="random_from_data"`` (cheap to
  initialise), the mean of ``--repeats`` runs; gmmjax's compilation is excluded (a warm-up
  call of the same shapes first), and so is scikit-learn's one-off cost of its first fit in a
  process (a small warm-up fit first).
- **16 restarts**: one ``fit_variational(n_init=16)`` call against ``n_init=16`` in scikit-learn,
  ``--restart-iters`` (5) iterations each (``tol=0``), end to end (initialisation included,
  compilation excluded).

Under load, NumPy's multi-threaded BLAS in scikit-learn slows down by an order of magnitude
(threads wait for cores that other processes hold): ``--sklearn-threads 1`` gives a steadier
figure there; on a quiet machine leave it unset.

The table records the machine and says whether it was quiet: figures measured while other
work runs are marked so.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import jax  # noqa: E402

import gmmjax as gj  # noqa: E402

sys.path.insert(0, str(HERE))
from run import WORKLOADS, make_data  # noqa: E402

ITERS = (2, 12)


def _sklearn(X, max_iter, n_init=1):
    from sklearn.mixture import BayesianGaussianMixture

    model = BayesianGaussianMixture(
        n_components=K, covariance_type=COV, max_iter=max_iter, tol=0.0, n_init=n_init,
        init_params="random_from_data", random_state=0,
    )  # fmt: skip
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X)
    return time.perf_counter() - start


def _gmmjax(X, max_iter, n_init=1):
    def run():
        result = gj.fit_variational(
            jax.random.key(0), X, K, covariance_type=COV, max_iter=max_iter, tol=0.0, n_init=n_init,
            init_params="random_from_data",
        )  # fmt: skip
        return jax.block_until_ready(result.lower_bound)

    run()  # compile
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def per_iteration(fit, X, repeats):
    low, high = ITERS
    times = [(fit(X, high) - fit(X, low)) / (high - low) for _ in range(repeats)]
    return float(np.mean(times))


def main(argv=None):
    global K, COV
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--w2", action="store_true", help="W2's shape (200k × 16, K = 16 full)")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write a Markdown table here")
    parser.add_argument("--note", default="measured under load (other helpers running)")
    parser.add_argument(
        "--sklearn-threads", type=int, default=None, help="limit NumPy's BLAS threads (threadpoolctl); default: as is"
    )
    parser.add_argument("--restart-iters", type=int, default=5, help="iterations of each of the 16 restarts")
    args = parser.parse_args(argv)
    w2 = WORKLOADS["W2"]
    K, COV = w2["k"], w2["cov"]
    n = args.samples or (w2["n"] if args.w2 else 20_000)
    X64 = make_data(n, w2["d"], K)
    X32 = X64.astype(np.float32)
    if args.sklearn_threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.sklearn_threads, user_api="blas")
    rows = []
    _sklearn(X64[:2000], 2)  # warm-up: the first fit in a process pays a one-off cost (seconds under load)
    sk_iter = per_iteration(_sklearn, X64, args.repeats)
    gj_iter = per_iteration(_gmmjax, X32, args.repeats)
    rows.append(("per iteration", sk_iter, gj_iter))
    print(f"per iteration: sklearn {sk_iter * 1e3:.1f} ms, gmmjax {gj_iter * 1e3:.1f} ms, {sk_iter / gj_iter:.1f}x")
    sk_r = _sklearn(X64, args.restart_iters, n_init=16)
    gj_r = _gmmjax(X32, args.restart_iters, n_init=16)
    rows.append((f"16 restarts × {args.restart_iters} iterations", sk_r, gj_r))
    print(f"16 restarts: sklearn {sk_r:.2f} s, gmmjax {gj_r:.2f} s, {sk_r / gj_r:.1f}x")
    if args.out:
        lines = [
            "# Variational fit: gmmjax.fit_variational vs scikit-learn BayesianGaussianMixture",
            "",
            f"Data: {n} × {w2['d']}, K = {K}, {COV} covariances (benchmarks/run.py's W2 generator);",
            "scikit-learn in float64, gmmjax in float32. Command: `python benchmarks/variational.py "
            + " ".join(sys.argv[1:])
            + "`"
            + (f" (scikit-learn's BLAS limited to {args.sklearn_threads} thread(s))." if args.sklearn_threads else "."),
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, JAX {jax.__version__} on "
            f"{jax.devices()[0].platform}. **{args.note}.**",
            "",
            "| figure | scikit-learn | gmmjax | speed-up |",
            "|---|---|---|---|",
        ]
        for name, sk, gjt in rows:
            lines.append(f"| {name} | {sk:.3g} s | {gjt:.3g} s | {sk / gjt:.1f}× |")
        args.out.write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}")


K, COV = 16, "full"

if __name__ == "__main__":
    main()
