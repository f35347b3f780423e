"""Model selection over K = 1..10 as one compiled program, against loops of separate fits.

    python benchmarks/selection.py                 # writes benchmarks/SELECTION.md
    python benchmarks/selection.py --quick         # tiny sizes, prints only

For each dataset (N × D, drawn from a mixture of 5 well-separated components) and each set
of covariance types, three ways to fit K = 1..K_max with the same settings (k-means
initialisation, one restart, tol 1e-3, at most 100 iterations) and score them by BIC:

- ``select``: ``gj.select_num_components`` (all K vmapped in one program, the types in it);
- ``fit_em loop``: one ``gj.fit_em`` call per (type, K) plus ``gj.bic``;
- ``sklearn loop``: one ``GaussianMixture(...).fit`` per (type, K) plus ``.bic``.

*cold* is the first call in the process (compilation included for the JAX rows), *warm* the
median of ``--repeats`` further calls (compiled programs reused). *EM iterations*: the sum
over fits of the iterations each ran; for ``select``, the iterations its vmapped batch pays
for (per covariance type, the number of K values times the slowest fit's iterations).
Everything runs in this one process, on whatever else the machine is doing (the 1-minute
load average is recorded with each row): the figures are indications, not a controlled
benchmark (``benchmarks/run.py`` is).
"""

from __future__ import annotations

import argparse
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

from run import make_data  # noqa: E402  (the benchmark suite's data: well-separated blobs)

DATASETS = [(10_000, 2), (10_000, 8)]
TYPE_SETS = [("full",), ("full", "tied", "diag", "spherical")]
K_MAX, TRUE_K = 10, 5
MAX_ITER, TOL = 100, 1e-3


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _cold_and_warm(fn, repeats):
    cold, out = _timed(fn)
    warm = statistics.median(_timed(fn)[0] for _ in range(repeats))
    return cold, warm, out


def gmmjax_select(key, X, types, k_max):
    import jax

    import gmmjax as gj

    def run():
        result = gj.select_num_components(key, X, k_max, covariance_types=types, max_iter=MAX_ITER, tol=TOL)
        jax.block_until_ready(result.bic)
        n_iter = np.asarray(result.n_iter)
        # every lane carries all k_max components, masked or not
        return np.asarray(result.bic), int(n_iter.sum()), int(n_iter.sum()) * k_max

    return run


def gmmjax_loop(key, X, types, k_max):
    import jax

    import gmmjax as gj

    bic = jax.jit(gj.bic)

    def run():
        table, iterations, component_iterations = np.empty((len(types), k_max)), 0, 0
        for t, covariance_type in enumerate(types):
            for k in range(1, k_max + 1):
                fit = gj.fit_em(key, X, k, covariance_type=covariance_type, max_iter=MAX_ITER, tol=TOL)
                table[t, k - 1] = float(bic(fit.params, X))
                iterations += int(fit.n_iter)
                component_iterations += int(fit.n_iter) * k
        return table, iterations, component_iterations

    return run


def sklearn_loop(X, types, k_max):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    def run():
        table, iterations, component_iterations = np.empty((len(types), k_max)), 0, 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for t, covariance_type in enumerate(types):
                for k in range(1, k_max + 1):
                    gm = GaussianMixture(
                        k, covariance_type=covariance_type, max_iter=MAX_ITER, tol=TOL, random_state=0
                    ).fit(X)
                    table[t, k - 1] = gm.bic(X)
                    iterations += gm.n_iter_
                    component_iterations += gm.n_iter_ * k
        return table, iterations, component_iterations

    return run


READING = """\
Reading the figures. *Cold* is what one call costs in a fresh process: `select` compiles one
program for all K (and types) where a loop of `fit_em` compiles one per (type, K); its
compilation is most of its cold time on this data size. *Warm* (programs already compiled),
on this 2-core CPU, a loop of compiled fits can beat the batch. A lane that has converged
is not stepped again (the compacting loop of `gmmjax/_loops.py` advances the running lanes
two at a time), so the batch runs the same EM iterations as the loop; but every lane
carries all `K_max` components (masked ones included: the *component-iterations* column,
Σ iterations × components computed, is about twice the loop's for K = 1..10), and under
`vmap` the diagonal/spherical E-step's `lax.switch` evaluates all its branches. On an
accelerator the lanes run side by side, which is where one program is meant to pay off (not
measured here). *Best by BIC* above the true 5 components means the single K = 5 fit ended
in a local optimum (two components sharing a cluster), so a larger K scored better: with
one restart this happens for a fraction of keys with any k-means++ seeding (scikit-learn's
loop shows it too); restarts (`n_init` > 1) make it rare."""


def _best(table, types):
    t, j = np.unravel_index(np.nanargmin(table), table.shape)
    return f"{types[t]} K={j + 1}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes; print, do not write")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "SELECTION.md"))
    args = parser.parse_args(argv)

    import jax
    import jaxlib
    import sklearn

    datasets = [(500, d) for _, d in DATASETS] if args.quick else DATASETS
    k_max = 4 if args.quick else K_MAX
    repeats = 1 if args.quick else args.repeats
    key = jax.random.key(0)
    rows = []
    for n, d in datasets:
        X64 = make_data(n, d, TRUE_K)
        X = jax.numpy.asarray(X64, jax.numpy.float32)
        for types in TYPE_SETS:
            label = "all 4 types" if len(types) == 4 else "/".join(types)
            for method, fn in (
                ("select (one program)", gmmjax_select(key, X, types, k_max)),
                ("fit_em loop", gmmjax_loop(key, X, types, k_max)),
                ("sklearn loop", sklearn_loop(X64.astype(np.float32), types, k_max)),
            ):
                load = os.getloadavg()[0]
                cold, warm, (table, iterations, component_iterations) = _cold_and_warm(fn, repeats)
                rows.append(
                    dict(
                        data=f"{n:,}×{d}",
                        types=label,
                        method=method,
                        cold=cold,
                        warm=warm,
                        best=_best(table, types),
                        iterations=iterations,
                        component_iterations=component_iterations,
                        load=load,
                    )
                )
                print(rows[-1], flush=True)

    lines = [
        "# Model selection: one compiled program against loops of fits",
        "",
        f"Generated by `python benchmarks/selection.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; jax {jax.__version__}, "
        f"jaxlib {jaxlib.__version__}, scikit-learn {sklearn.__version__}.",
        "",
        f"K = 1..{k_max}, k-means initialisation, one restart, tol {TOL}, at most {MAX_ITER} iterations, "
        f"float32; data from {TRUE_K} well-separated components. *cold*: first call (JAX: compilation "
        f"included); *warm*: median of {repeats} further calls. `load`: the 1-minute load average before "
        "the row (this process counts ≈1 of the machine's 2 cores).",
        "",
        "| data | covariance types | method | cold s | warm s | EM iterations | component-iterations | "
        "best by BIC | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['data']} | {r['types']} | {r['method']} | {r['cold']:.2f} | {r['warm']:.3f} | "
            f"{r['iterations']} | {r['component_iterations']} | {r['best']} | {r['load']:.1f} |"
        )
    lines += ["", READING]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
