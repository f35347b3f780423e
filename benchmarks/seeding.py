"""k-means++ seeding: plain against greedy (scikit-learn's), quality and cost.

    python benchmarks/seeding.py                  # writes benchmarks/SEEDING.md and seeding.json
    python benchmarks/seeding.py --quick          # 8 keys, K = 5 and 8, prints only
    python benchmarks/seeding.py --only cost      # one part: quality, cost (or report: from seeding.json)

*Quality*: on the selection benchmark's data (``benchmarks/selection.py``: 10,000 × 2 and
10,000 × 8 from 5 well-separated components, float32), for K = 5..10 and 40 keys, one
full-covariance fit per key (one restart, tol 1e-3, at most 100 iterations) by each of

- gmmjax ``init_params="kmeans"`` and ``"k-means++"``, with plain seeding
  (``n_local_trials=1``) and greedy seeding (``n_local_trials=None``: 2 + int(log K)
  candidates per center, the default);
- scikit-learn ``GaussianMixture(init_params="kmeans")`` and ``("k-means++")`` (both seed
  with scikit-learn's greedy k-means++), ``random_state`` = the key.

Every final model is scored by one float64 NumPy log-likelihood on the float64 data; the best
optimum of a (data, K) is the largest mean log-likelihood over all keys and all methods, and
a fit *reaches* it when it is within ``--tol`` (per sample) of it.

*Cost*: the seeding alone (``kmeans_plusplus`` on the rows seeding runs on: all of them up to
``max(2**14, 64·K)``), the whole initialisation (``fit_em(max_iter=0)``: seeding on the
seeding sample, Lloyd's steps, one M-step) and a whole ``fit_em`` (default settings), plain
against greedy, warm (compiled), median of ``--repeats`` calls, at benchmarks/run.py's
workload shapes with N reduced.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from run import WORKLOADS, make_data  # noqa: E402  (the benchmark suite's data: well-separated blobs)
from selection import DATASETS, MAX_ITER, TOL, TRUE_K  # noqa: E402

KS = tuple(range(TRUE_K, 11))
NUM_KEYS = 40
# Per-sample log-likelihood gaps to the best: REACH_TOL is above the spread of fits of the same
# optimum stopped by tol 1e-3 (≈ 0.003), COARSE_TOL below the cost of two clusters under one
# component (≈ 0.17 on 10,000 × 8, K = 5).
REACH_TOL, COARSE_TOL = 0.01, 0.05
# init_params="kmeans" (the default of both): k-means++ seeding then Lloyd's steps. (Their
# "k-means++" starts differ beyond the seeding: scikit-learn gives each component only its seed
# point as responsibility, gmmjax assigns every point to its nearest seed; not compared here.)
GMMJAX_METHODS = {"gmmjax plain": ("kmeans", 1), "gmmjax greedy": ("kmeans", None)}  # (init_params, n_local_trials)
SKLEARN_METHODS = {"sklearn": "kmeans"}
# (name, N, D, K, covariance type): benchmarks/run.py's shapes, N reduced
COST_SHAPES = [
    ("W1", 20_000, WORKLOADS["W1"]["d"], WORKLOADS["W1"]["k"], WORKLOADS["W1"]["cov"]),
    ("W2", 20_000, WORKLOADS["W2"]["d"], WORKLOADS["W2"]["k"], WORKLOADS["W2"]["cov"]),
    ("W3", 20_000, WORKLOADS["W3"]["d"], WORKLOADS["W3"]["k"], WORKLOADS["W3"]["cov"]),
    ("W4", 20_000, WORKLOADS["W4"]["d"], WORKLOADS["W4"]["k"], WORKLOADS["W4"]["cov"]),
    ("W5", 20_000, WORKLOADS["W5"]["d"], WORKLOADS["W5"]["k"], WORKLOADS["W5"]["cov"]),
    ("many K", 20_000, 8, 256, "diag"),
]


def mean_log_likelihood(weights, means, covariances, X) -> float:
    """Mean log-likelihood of a full-covariance mixture, in float64 (the common judge)."""
    weights, means, covariances = (np.asarray(a, np.float64) for a in (weights, means, covariances))
    log_prob = np.empty((X.shape[0], weights.shape[0]))
    for k in range(weights.shape[0]):
        chol = np.linalg.cholesky(covariances[k])
        z = np.linalg.solve(chol, (X - means[k]).T)
        log_det = 2 * np.sum(np.log(np.diag(chol)))
        log_prob[:, k] = -0.5 * (np.sum(z * z, axis=0) + log_det + X.shape[1] * np.log(2 * np.pi))
    log_prob += np.log(np.maximum(weights, 1e-300))
    top = log_prob.max(axis=1, keepdims=True)
    return float(np.mean(top[:, 0] + np.log(np.exp(log_prob - top).sum(axis=1))))


def gmmjax_fits(X32, k, init_params, n_local_trials, num_keys):
    """Mean log-likelihoods of ``num_keys`` one-restart fits (keys 0..num_keys-1), vmapped."""
    import jax
    import jax.numpy as jnp

    import gmmjax as gj

    keys = jax.vmap(jax.random.key)(jnp.arange(num_keys))
    fit = jax.vmap(
        lambda key: (
            gj.fit_em(
                key, X32, k, init_params=init_params, n_local_trials=n_local_trials, max_iter=MAX_ITER, tol=TOL
            ).params
        )
    )
    params = jax.block_until_ready(fit(keys))
    return [
        (np.asarray(params.weights[s]), np.asarray(params.means[s]), np.asarray(params.covariances[s]))
        for s in range(num_keys)
    ]


def sklearn_fits(X32, k, init_params, num_keys):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for s in range(num_keys):
            gm = GaussianMixture(
                k, covariance_type="full", init_params=init_params, max_iter=MAX_ITER, tol=TOL, random_state=s
            ).fit(X32)
            out.append((gm.weights_, gm.means_, gm.covariances_))
    return out


def quality(args):
    rows = []
    for n, d in args.data:
        X64 = make_data(n, d, TRUE_K)
        X32 = X64.astype(np.float32)
        for k in args.ks:
            lls = {}
            for label, (init_params, trials) in GMMJAX_METHODS.items():
                fits = gmmjax_fits(X32, k, init_params, trials, args.keys)
                lls[label] = [mean_log_likelihood(*f, X64) for f in fits]
            for label, init_params in SKLEARN_METHODS.items():
                fits = sklearn_fits(X32, k, init_params, args.keys)
                lls[label] = [mean_log_likelihood(*f, X64) for f in fits]
            best = max(max(v) for v in lls.values())
            for label, values in lls.items():
                gaps = best - np.asarray(values)
                rows.append(
                    dict(
                        n=n,
                        d=d,
                        k=k,
                        method=label,
                        reached=int(np.sum(gaps <= args.tol)),
                        keys=len(values),
                        median_gap=float(np.median(gaps)),
                        worst_gap=float(np.max(gaps)),
                        mean_log_likelihood=[float(v) for v in values],
                    )
                )
                print(f"{n}x{d} K={k:2d} {label:14s} {rows[-1]['reached']:2d}/{len(values)}", flush=True)
            if args.save:
                args.save(rows)
    return rows


def _median_time(fn, repeats):
    import jax

    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cost_of(label, trials, key, X, k, cov, rows_seeded, repeats, batched=False):
    """Warm seconds of the seeding alone, the initialisation and the whole fit, for one variant
    (``batched``: ``key`` and ``X`` carry a leading axis of independent fits, vmapped)."""
    import jax
    import jax.numpy as jnp

    import gmmjax as gj

    each = jax.vmap if batched else (lambda fn: fn)
    seed = jax.jit(each(lambda key, X: gj.kmeans_plusplus(key, X, k, n_local_trials=trials, by_value=True)))
    init = each(lambda key, X: gj.fit_em(key, X, k, covariance_type=cov, n_local_trials=trials, max_iter=0).params)
    fit = each(lambda key, X: gj.fit_em(key, X, k, covariance_type=cov, n_local_trials=trials))
    X_seed = X[..., :rows_seeded, :]
    return {
        f"seeding_{label}_s": _median_time(lambda: seed(key, X_seed), repeats),
        f"init_{label}_s": _median_time(lambda: init(key, X), repeats),
        f"fit_{label}_s": _median_time(lambda: fit(key, X).params, repeats),
        f"fit_{label}_iter": int(jnp.sum(fit(key, X).n_iter)),
    }


def cost(args):
    import jax
    import jax.numpy as jnp

    from gmmjax._init import default_local_trials, seeding_sample_size

    rows = []
    key = jax.random.key(0)
    for name, n, d, k, cov in args.shapes:
        X = jnp.asarray(make_data(n, d, min(k, 32)), jnp.float32)
        rows_seeded = min(n, seeding_sample_size(k))
        row = dict(shape=name, n=n, d=d, k=k, cov=cov, seeded_rows=rows_seeded, trials=default_local_trials(k))
        for label, trials in (("plain", 1), ("greedy", None)):
            row.update(_cost_of(label, trials, key, X, k, cov, rows_seeded, args.repeats))
        row["load"] = os.getloadavg()[0]
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.datasets:
        rows.append(_cost_of_many_fits(args.datasets, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _cost_of_many_fits(count, repeats):
    """W6's shape: ``count`` independent 500 × 2 datasets, K = 3, one vmapped call."""
    import jax
    import jax.numpy as jnp

    from gmmjax._init import default_local_trials

    spec = WORKLOADS["W6"]
    n, d, k = spec["n"], spec["d"], spec["k"]
    batch = jnp.asarray(np.stack([make_data(n, d, k, seed=s) for s in range(count)]), jnp.float32)
    keys = jax.random.split(jax.random.key(0), count)
    row = dict(
        shape=f"W6 ({count} fits)", n=n, d=d, k=k, cov=spec["cov"], seeded_rows=n, trials=default_local_trials(k)
    )
    for label, trials in (("plain", 1), ("greedy", None)):
        row.update(_cost_of(label, trials, keys, batch, k, spec["cov"], n, repeats, batched=True))
    row["load"] = os.getloadavg()[0]
    return row


def write_report(args, quality_rows, cost_rows, path: Path):
    import jax
    import sklearn

    lines = [
        "# k-means++ seeding: plain against greedy",
        "",
        f"Generated by `python benchmarks/seeding.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs; jax {jax.__version__}, "
        f"scikit-learn {sklearn.__version__}. The machine was shared (the 1-minute load average is in "
        "each cost row): times are indications.",
        "",
    ]
    if quality_rows:
        methods = list(GMMJAX_METHODS) + list(SKLEARN_METHODS)
        lines += [
            "## Quality: keys that reach the best optimum",
            "",
            f"Data of `benchmarks/selection.py` (5 well-separated components, float32), full covariance, "
            f"one restart, tol {TOL}, at most {MAX_ITER} iterations, keys 0..{args.keys - 1}. A fit reaches "
            f"the best optimum when its float64 mean log-likelihood is within {args.tol} of the best over "
            "all keys and methods for that (data, K). *plain*: `n_local_trials=1` (gmmjax before); "
            "*greedy*: `n_local_trials=None`, 2 + int(log K) candidates per center (gmmjax's default now; "
            'scikit-learn\'s `GaussianMixture(init_params="kmeans")` seeds so).',
            "",
            f"Each cell: keys within {args.tol} / within {COARSE_TOL} of the best (the second counts the fits "
            "that did not leave a cluster to a shared component: such an optimum costs ≈ 0.17 per sample on "
            "10,000×8 at K = 5), then the mean gap to the best.",
            "",
            "| data | K | " + " | ".join(methods) + " |",
            "|---|---|" + "---|" * len(methods),
        ]
        totals: dict = {}
        for n, d, k in sorted({(r["n"], r["d"], r["k"]) for r in quality_rows}):
            picked = {r["method"]: r for r in quality_rows if (r["n"], r["d"], r["k"]) == (n, d, k)}
            if not all(m in picked for m in methods):
                continue
            best = max(max(picked[m]["mean_log_likelihood"]) for m in methods)
            cells = []
            for m in methods:
                gaps = best - np.asarray(picked[m]["mean_log_likelihood"])
                fine, coarse = int(np.sum(gaps <= args.tol)), int(np.sum(gaps <= COARSE_TOL))
                cells.append(f"{fine} / {coarse} of {gaps.size}, {np.mean(gaps):.3f}")
                total = totals.setdefault((n, d, m), [0, 0, 0])
                total[0], total[1], total[2] = total[0] + fine, total[1] + coarse, total[2] + gaps.size
            lines.append(f"| {n:,}×{d} | {k} | " + " | ".join(cells) + " |")
        for n, d in sorted({(n, d) for n, d, _ in totals}):
            cells = [f"**{totals[n, d, m][0]} / {totals[n, d, m][1]} of {totals[n, d, m][2]}**" for m in methods]
            lines.append(f"| {n:,}×{d} | all | " + " | ".join(cells) + " |")
        lines.append("")
    if cost_rows:
        lines += [
            "## Cost: plain against greedy seeding (warm, median seconds)",
            "",
            "*seeding*: `kmeans_plusplus` on the rows it runs on in a fit (all rows up to max(2¹⁴, 64·K)); "
            "*init*: `fit_em(max_iter=0)` (seeding, Lloyd's steps, one M-step); *fit*: `fit_em` with the "
            'default settings (init_params="kmeans", tol 1e-3, ≤ 100 iterations; *iter*: iterations run). '
            "*share*: the greedy initialisation's part of the greedy fit.",
            "",
            "| shape | N×D, K, type | trials | seeding plain | seeding greedy | ratio | init plain | init greedy "
            "| fit plain (iter) | fit greedy (iter) | share | load |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in cost_rows:
            lines.append(
                f"| {r['shape']} | {r['n']:,}×{r['d']}, {r['k']}, {r['cov']} | {r['trials']} "
                f"| {r['seeding_plain_s']:.4f} | {r['seeding_greedy_s']:.4f} "
                f"| {r['seeding_greedy_s'] / r['seeding_plain_s']:.2f}× "
                f"| {r['init_plain_s']:.4f} | {r['init_greedy_s']:.4f} "
                f"| {r['fit_plain_s']:.3f} ({r['fit_plain_iter']}) | {r['fit_greedy_s']:.3f} ({r['fit_greedy_iter']}) "
                f"| {100 * r['init_greedy_s'] / r['fit_greedy_s']:.0f}% | {r['load']:.1f} |"
            )
        lines.append("")
    path.write_text("\n".join(lines + [READING]))


READING = """\
## Reading the figures

- *What greedy buys.* A one-restart fit from a seeding that put two centers in one cluster
  (and none in another) usually stays there: two true clusters under one component, ≈ 0.17
  nats per sample below the best on 10,000 × 8 at K = 5. Drawing several candidates per center
  and keeping the one that lowers the potential most makes such seedings rarer; the counts
  *within 0.05* measure exactly that. Above the true K the best optimum splits a cluster in
  one of many nearly equal ways: counts *within 0.01* there say more about which split EM
  found than about the seeding.
- *The same algorithm as scikit-learn's.* `tests/test_greedy_seeding.py` hands gmmjax's
  uniforms to scikit-learn's own `_kmeans_plusplus` (through a stand-in random state) and
  checks that both choose the same centers, weighted and unweighted, and for data at 1e4 from
  the origin in float32 (the candidates' distances are products about the first center).
- *Cost.* Each center after the first draws `2 + int(log K)` candidates: one more draw per
  candidate (with `row_order_invariant=True`, the default, each draw bisects over the rows'
  value keys: 64 masked sums per candidate), one `(T, D) × (D, N)` product for their
  distances, and the kept center's exact distances. Seeding runs on at most
  `max(2**14, 64·K)` rows, and Lloyd's steps (`init_params="kmeans"`) follow it.
- *The cost rows of the recorded run are not reliable*: they were timed while other jobs held
  the 2-core machine at a load of 5–8 (see `load`), so single medians of 3 calls jump by 10×
  between neighbours (e.g. `init` above `fit`). What they do show: the seeding alone costs
  ≈ 2–10× plain (more with more candidates: K = 256 draws 7), seconds only at K in the
  hundreds. The W6 row (batches of tiny fits, where seeding is a visible share) was not
  finished. Rerun `python benchmarks/seeding.py --only cost` on a quiet machine.
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 keys, K = 5 and 8, small cost shapes; prints only")
    parser.add_argument(
        "--only", choices=("quality", "cost", "report"), default=None, help="report: rewrite SEEDING.md"
    )
    parser.add_argument("--keys", type=int, default=None)
    parser.add_argument("--ks", type=lambda text: tuple(int(k) for k in text.split(",")), default=None)
    parser.add_argument("--dims", type=lambda text: tuple(int(d) for d in text.split(",")), default=None)
    parser.add_argument("--tol", type=float, default=REACH_TOL)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--datasets", type=int, default=None, help="W6 row: vmapped fits (default 1000; 0: none)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    args.keys = args.keys or (8 if args.quick else NUM_KEYS)
    args.ks = args.ks or ((5, 8) if args.quick else KS)
    args.shapes = [(s[0], 4000) + s[2:] for s in COST_SHAPES[:2]] if args.quick else COST_SHAPES
    if args.datasets is None:
        args.datasets = 20 if args.quick else 1000
    quality_rows = cost_rows = []
    args.data = [ds for ds in DATASETS if args.dims is None or ds[1] in args.dims]
    args.save = None if args.quick else (lambda rows: _save(args, rows, []))
    if args.only in (None, "quality"):
        quality_rows = quality(args)
    if args.only in (None, "cost"):
        cost_rows = cost(args)
    if not args.quick:
        _save(args, quality_rows, cost_rows)


def _save(args, quality_rows, cost_rows):
    """seeding.json and SEEDING.md; rows of a part (or a (data, K) of quality) not run keep their
    earlier figures."""
    saved = args.out / "seeding.json"
    out = json.loads(saved.read_text()) if saved.exists() else {"quality": [], "cost": []}
    new = {(r["n"], r["d"], r["k"], r["method"]) for r in quality_rows}
    out["quality"] = [r for r in out["quality"] if (r["n"], r["d"], r["k"], r["method"]) not in new] + quality_rows
    out["quality"].sort(key=lambda r: (r["n"], r["d"], r["k"]))
    if cost_rows:
        out["cost"] = cost_rows
    saved.write_text(json.dumps(out, indent=1))
    write_report(args, out["quality"], out["cost"], args.out / "SEEDING.md")


if __name__ == "__main__":
    main()
