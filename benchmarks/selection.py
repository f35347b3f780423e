"""Model selection as one compiled program against a loop of compiled ``fit_em`` calls.

    python benchmarks/selection.py                 # full mode (< 10 min): writes benchmarks/SELECTION.md
    python benchmarks/selection.py --quick         # small sizes, prints only
    python benchmarks/selection.py --groups 1 2    # also compare numbers of batches of K

For each dataset (N × D, drawn from a mixture of 5 well-separated components), each set of
covariance types (``full``; all four) and each ``K_max`` (8, 16), two ways to fit
``K = 1..K_max`` with the same settings (k-means initialisation, one restart, tol 1e-3, at
most 100 iterations) and score them by BIC:

- ``select``: ``gj.select_num_components`` (one compiled program; its default batches of K,
  or each ``--groups`` value);
- ``loop``: one ``gj.fit_em`` call per (type, K) plus ``gj.bic`` (jitted).

*cold* is the first call (compilation included): for ``select`` the first call of its
program; for the loop the sum over (type, K) of each fit's first call (each its own program,
so the loop for ``K = 1..8`` is the first 8 of the ``1..16`` fits). *warm*: the median of
``--repeats`` further calls. Wall-clock and process CPU seconds are both recorded: on a
machine shared with other jobs the CPU seconds are the steadier measure (``load``: the
1-minute load average when the row's last measurement ended). The BIC tables of both ways
are compared (they must agree: same fits).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from run import cpu_description, make_data  # noqa: E402  (the benchmark suite's data: well-separated blobs)

DATASETS = [(10_000, 2), (100_000, 8)]
QUICK_DATASETS = [(1_000, 2)]
TYPE_SETS = [("full",), ("full", "tied", "diag", "spherical")]
K_MAXES, QUICK_K_MAXES = (8, 16), (2, 4)
TRUE_K, MAX_ITER, TOL = 5, 100, 1e-3


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _warm(fn, repeats):
    runs = [_timed(fn)[:2] for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; print, do not write")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--groups", type=int, nargs="*", default=[], help="num_groups values to compare")
    parser.add_argument("--data", nargs="*", default=None, help="datasets as NxD, e.g. 10000x2 (default: all)")
    parser.add_argument("--full-only", action="store_true", help="only covariance_types='full'")
    parser.add_argument("--out", default=str(HERE / "SELECTION.md"))
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import jaxlib

    import gmmjax as gj
    from gmmjax._model_selection import default_num_groups, size_groups

    datasets = QUICK_DATASETS if args.quick else DATASETS
    if args.data:
        datasets = [tuple(int(v) for v in item.lower().split("x")) for item in args.data]
    k_maxes = QUICK_K_MAXES if args.quick else K_MAXES
    repeats = 1 if args.quick else args.repeats
    key = jax.random.key(0)
    jax.block_until_ready(jax.jit(lambda x: x + 1)(1.0))  # JAX's own first-compile costs, outside the rows
    bic = jax.jit(gj.bic)
    versions = f"jax {jax.__version__}, jaxlib {jaxlib.__version__}"
    rows: list = []
    text = ""
    for n, d in datasets:
        X = jnp.asarray(make_data(n, d, TRUE_K), jnp.float32)
        for types in TYPE_SETS[:1] if args.full_only else TYPE_SETS:
            label = "all 4 types" if len(types) == 4 else "/".join(types)

            def fit_one(covariance_type, k, X=X):
                fit = gj.fit_em(key, X, k, covariance_type=covariance_type, max_iter=MAX_ITER, tol=TOL)
                return float(bic(fit.params, X)), int(fit.n_iter)

            # The loop's cold cost: each (type, K)'s first call, once for the largest K_max.
            first, table = {}, {}
            for covariance_type in types:
                for k in range(1, max(k_maxes) + 1):
                    wall, cpu, (value, _) = _timed(lambda: fit_one(covariance_type, k))  # noqa: B023
                    first[covariance_type, k], table[covariance_type, k] = (wall, cpu), value
            for k_max in k_maxes:

                def loop(k_max=k_max, types=types, fit_one=fit_one):
                    return [fit_one(t, k) for t in types for k in range(1, k_max + 1)]

                loop_cold = tuple(sum(first[t, k][i] for t in types for k in range(1, k_max + 1)) for i in (0, 1))
                loop_warm = _warm(loop, repeats)
                loop_table = np.array([[table[t, k] for k in range(1, k_max + 1)] for t in types])
                candidates = tuple(range(1, k_max + 1))
                default = default_num_groups(candidates, n, d, 1)
                for groups in [None] + [g for g in args.groups if g != default]:

                    def select(groups=groups, types=types, k_max=k_max, X=X):
                        options = dict(covariance_types=types, max_iter=MAX_ITER, tol=TOL, num_groups=groups)
                        return np.asarray(gj.select_num_components(key, X, k_max, **options).bic)

                    wall, cpu, select_table = _timed(select)
                    select_warm = _warm(select, repeats)
                    batches = size_groups(candidates, default if groups is None else groups)
                    rows.append(
                        dict(
                            data=f"{n:,}×{d}",
                            types=label,
                            k=f"1..{k_max}",
                            batches=" + ".join(f"{size}×K{largest}" for size, largest in batches),
                            select_cold=(wall, cpu),
                            loop_cold=loop_cold,
                            select_warm=select_warm,
                            loop_warm=loop_warm,
                            same=bool(np.allclose(select_table, loop_table, rtol=1e-4)),
                            load=os.getloadavg()[0],
                        )
                    )
                    print(rows[-1], flush=True)
                    text = write_table(rows, args, repeats, versions)
    print(text)


def write_table(rows, args, repeats, versions):
    """The Markdown table of ``rows`` (printed; written to ``args.out`` in full mode, after every row)."""

    def ratio(r, name, i):
        return r[f"loop_{name}"][i] / r[f"select_{name}"][i]

    lines = [
        "# Model selection: one compiled program against a loop of compiled fits",
        "",
        f"Generated by `python benchmarks/selection.py{' --quick' if args.quick else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. CPU: {cpu_description()}; {versions}.",
        "",
        f"K = 1..K_max, k-means initialisation, one restart, tol {TOL}, at most {MAX_ITER} iterations, float32; "
        f"data from {TRUE_K} well-separated components. *cold*: first call, compilation included (the loop: the "
        f"sum of each fit's first call); *warm*: median of {repeats} further calls. **loop/select**: how many "
        "times faster one program is (target: warm ≥ 1.5, cold ≥ 5). *batches*: the vmapped batches of K per "
        "covariance type (lanes × components each lane carries). `load`: the 1-minute load average (this "
        "process counts ≈ 1).",
        "",
        "| data | types | K | batches | select cold s (CPU) | loop cold s (CPU) | **cold loop/select** (CPU) | "
        "select warm s (CPU) | loop warm s (CPU) | **warm loop/select** (CPU) | same BIC | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    pair = lambda values, digits: f"{values[0]:.{digits}f} ({values[1]:.{digits}f})"  # noqa: E731
    for r in rows:
        cold = (ratio(r, "cold", 0), ratio(r, "cold", 1))
        warm = (ratio(r, "warm", 0), ratio(r, "warm", 1))
        cells = [r["data"], r["types"], r["k"], r["batches"], pair(r["select_cold"], 2), pair(r["loop_cold"], 2)]
        cells += [f"**{pair(cold, 1)}**", pair(r["select_warm"], 3), pair(r["loop_warm"], 3), f"**{pair(warm, 2)}**"]
        cells += ["yes" if r["same"] else "NO", f"{r['load']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if not args.quick:
        notes = Path(args.out).read_text().split("\n## ", 1) if Path(args.out).exists() else []
        reading = ("\n## " + notes[1]) if len(notes) == 2 else ""  # keep the hand-written reading below the table
        Path(args.out).write_text(text + reading)
    return text


if __name__ == "__main__":
    main()
