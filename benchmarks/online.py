"""Online (stepwise) EM against batch EM: the held-out gap after 1 and 3 passes.

    python benchmarks/online.py             # 10M samples (batches of 10k): writes benchmarks/ONLINE_RUN.md
    python benchmarks/online.py --quick     # 200k samples, prints only (a smoke run, ~1 min)
    python benchmarks/online.py --sweep --samples 2000000 --passes 1 --out FILE  # the sweep behind the defaults

Data: ``gj.generate_gmm_data`` from a fixed mixture (D=8, K=16 full; means ~ N(0, 4²),
random covariances), drawn batch by batch on the fly from ``fold_in(key, batch index)``,
so a pass is the same 10M samples every time and no 10M array is built for the online runs.
A held-out set of 200k samples from the same mixture scores every model (mean log-density).

Starts, both computed on the first batch with ``gj.fit_em(..., max_iter=0)``: *poor*
(``init_params="random_from_data"``) and *default* (``"kmeans"``, the estimator's default).

- **batch EM** (the reference): ``gj.fit_em`` in memory on the first ``--reference-samples``
  training samples (default 1M: all 10M take ~25 s an iteration on a 2-core CPU) from the
  same start (``weights_init``/``means_init``/``precisions_init``), ``tol=1e-6`` (mean
  log-likelihood), at most 300 iterations; ``--reference-only`` prints these and stops;
- **online EM**: ``gj.online_em_init`` / ``gj.online_em_update`` (jitted) with the defaults,
  one update per batch; the gap after 1, 2 and 3 passes, for the averaged estimate (the
  default) and for the plain iterate;
- **warm_start mini-batching**: ``GaussianMixtureModel(warm_start=True, max_iter=1)`` from
  the same start, ``fit`` on each batch in turn (the recipe with scikit-learn's API).

Gap = ``(ll_batch − ll) / |ll_batch|`` on the held-out set (negative: better than batch EM).
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
import jax.numpy as jnp  # noqa: E402

import gmmjax as gj  # noqa: E402

D, K, COV = 8, 16, "full"
BATCH = 10_000
HELD_OUT = 200_000


def true_mixture(seed: int = 0):
    """The data's mixture: NumPy arrays (weights, means, covariances)."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(K, 5.0))
    means = rng.normal(scale=4.0, size=(K, D))
    factors = rng.normal(scale=0.15, size=(K, D, D)) + np.eye(D)[None]
    covariances = factors @ np.swapaxes(factors, -1, -2) * rng.uniform(0.3, 1.0, size=(K, 1, 1))
    return weights.astype(np.float32), means.astype(np.float32), covariances.astype(np.float32)


class Stream:
    """The training data as batches drawn on the fly: batch ``i`` is the same on every pass."""

    def __init__(self, mixture, num_samples: int, key):
        self.mixture, self.key = mixture, key
        self.num_batches = num_samples // BATCH

    def batch(self, index: int):
        return gj.generate_gmm_data(BATCH, *self.mixture, key=jax.random.fold_in(self.key, index))

    def first(self, num_samples: int):
        """The first ``num_samples`` training samples as one array (for batch EM)."""
        return jnp.concatenate([self.batch(i) for i in range(min(num_samples // BATCH, self.num_batches))])


def held_out_ll(params, X_test) -> float:
    return float(jnp.mean(gj.log_prob(params, X_test)))


def starting_params(first_batch, init_params: str):
    return gj.fit_em(jax.random.key(1), first_batch, K, covariance_type=COV, init_params=init_params, max_iter=0).params


def precisions(params):
    return np.linalg.inv(np.asarray(params.covariances, np.float64)).astype(np.float32)


def batch_em(start, stream, X_test, num_samples):
    X = stream.first(num_samples)
    t = time.perf_counter()
    result = gj.fit_em(
        jax.random.key(2),
        X,
        K,
        covariance_type=COV,
        max_iter=300,
        tol=1e-6,
        weights_init=np.asarray(start.weights),
        means_init=np.asarray(start.means),
        precisions_init=precisions(start),
    )
    ll = held_out_ll(result.params, X_test)
    elapsed = time.perf_counter() - t
    del X
    return ll, int(result.n_iter), bool(result.converged), elapsed


_update = jax.jit(gj.online_em_update)


def online_em(start, stream, X_test, passes: int, **init):
    """Held-out ll of (averaged estimate, plain iterate) after each pass, and seconds per pass."""
    state = gj.online_em_init(start, **init)
    lls, seconds = [], []
    for _ in range(passes):
        t = time.perf_counter()
        for i in range(stream.num_batches):
            state, params = _update(state, stream.batch(i))
        jax.block_until_ready(params)
        seconds.append(time.perf_counter() - t)
        lls.append((held_out_ll(params, X_test), held_out_ll(state.params, X_test)))
    return lls, seconds


def warm_start_minibatch(start, stream, X_test, passes: int):
    model = gj.GaussianMixtureModel(
        K,
        covariance_type=COV,
        max_iter=1,
        warm_start=True,
        weights_init=np.asarray(start.weights),
        means_init=np.asarray(start.means),
        precisions_init=precisions(start),
    )
    lls = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(passes):
            for i in range(stream.num_batches):
                model.fit(np.asarray(stream.batch(i)))
            lls.append(held_out_ll(model.params, X_test))
    return lls


def sweep(stream, X_test, starts, passes: int):
    """Held-out ll after each pass for a grid of (alpha, t0, average_start): every setting a
    lane of one vmapped batch of online fits (the state's schedule is made of leaves)."""
    alphas = [0.51, 0.6, 0.7, 0.8, 1.0]
    t0s = [0.0, 10.0]
    average_starts = [10, 100]
    grid = [(a, t0, s) for a in alphas for t0 in t0s for s in average_starts]
    update = jax.jit(jax.vmap(gj.online_em_update, in_axes=(0, None)))
    rows = {}
    for name, start in starts.items():
        states = [gj.online_em_init(start, alpha=a, t0=t0, average_start=s) for a, t0, s in grid]
        state = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *states)
        for _ in range(passes):
            for i in range(stream.num_batches):
                state, params = update(state, stream.batch(i))
            for lane, setting in enumerate(grid):
                pick = lambda tree, lane=lane: jax.tree_util.tree_map(lambda leaf: leaf[lane], tree)  # noqa: E731
                rows.setdefault((name,) + setting, []).append(
                    (held_out_ll(pick(params), X_test), held_out_ll(pick(state.params), X_test))
                )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200k samples, print only")
    parser.add_argument("--samples", type=int, default=None, help="training samples (default 10M; quick 200k)")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument(
        "--reference-samples", type=int, default=None, help="batch EM's training samples (default min(N, 1M))"
    )
    parser.add_argument("--sweep", action="store_true", help="the step-size sweep (vmapped over settings)")
    parser.add_argument("--no-warm-start", action="store_true", help="skip the warm_start mini-batching rows")
    parser.add_argument("--reference-only", action="store_true", help="batch EM's figures alone, then stop")
    parser.add_argument("--out", type=Path, default=None, help="Markdown report (default benchmarks/ONLINE.md)")
    args = parser.parse_args(argv)
    num_samples = args.samples or (200_000 if args.quick else 10_000_000)
    reference_samples = min(num_samples, args.reference_samples or 1_000_000)
    mixture = true_mixture()
    stream = Stream(mixture, num_samples, jax.random.key(10))
    X_test = gj.generate_gmm_data(HELD_OUT // (10 if args.quick else 1), *mixture, key=jax.random.key(11))
    first = stream.batch(0)
    starts = {"poor (random_from_data)": starting_params(first, "random_from_data")}
    starts["default (kmeans)"] = starting_params(first, "kmeans")
    truth = held_out_ll(gj.GMMParams(*map(jnp.asarray, mixture), covariance_type=COV), X_test)
    lines = [
        f"Training samples: {num_samples:,} in batches of {BATCH:,} (D={D}, K={K}, {COV}); held-out "
        f"{X_test.shape[0]:,}; true mixture's held-out mean log-likelihood {truth:.5f}.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}, "
        f"{jax.devices()[0].platform}; load {os.getloadavg()[0]:.2f}.",
        "",
    ]
    references = {}
    for name, start in starts.items():
        ll, n_iter, converged, seconds = batch_em(start, stream, X_test, reference_samples)
        references[name] = ll
        lines.append(
            f"- batch EM on the first {reference_samples:,} samples from the {name} start: held-out {ll:.5f} "
            f"({n_iter} iterations, "
            f"converged={converged}, {seconds:.0f} s)"
        )
        print(lines[-1], flush=True)
    lines.append("")
    if args.reference_only:
        print("\n".join(lines))
        return

    def gap(name, ll):
        return (references[name] - ll) / abs(references[name])

    if args.sweep:
        rows = sweep(stream, X_test, starts, args.passes)
        lines += [
            "Sweep (gap after each pass; `avg`: Polyak-averaged estimate, `iter`: plain iterate):",
            "",
            "| start | alpha | t0 | average_start | "
            + " | ".join(f"pass {p + 1} avg / iter" for p in range(args.passes)),
            "|---|---|---|---|" + "---|" * args.passes,
        ]
        for (name, a, t0, s), lls in rows.items():
            cells = " | ".join(f"{gap(name, avg):.1e} / {gap(name, it):.1e}" for avg, it in lls)
            lines.append(f"| {name} | {a} | {t0:g} | {s} | {cells} |")
        print("\n".join(lines[-len(rows) - 4 :]), flush=True)
        lines.append("")
    else:
        header = " | ".join(f"pass {p + 1}" for p in range(args.passes))
        lines += [
            f"| start | method | {header} | held-out ll, last pass | s/pass |",
            "|---|---|" + "---|" * args.passes + "---|---|",
        ]
        for name, start in starts.items():
            lls, seconds = online_em(start, stream, X_test, args.passes)
            avg = " | ".join(f"{gap(name, ll[0]):.1e}" for ll in lls)
            it = " | ".join(f"{gap(name, ll[1]):.1e}" for ll in lls)
            per_pass = f"{np.median(seconds):.1f}"
            final_avg, final_it = f"{lls[-1][0]:.5f}", f"{lls[-1][1]:.5f}"
            lines.append(f"| {name} | online EM (defaults: averaged estimate) | {avg} | {final_avg} | {per_pass} |")
            lines.append(f"| {name} | online EM (plain iterate, same run) | {it} | {final_it} | {per_pass} |")
            print("\n".join(lines[-2:]), flush=True)
            if not args.no_warm_start:
                t = time.perf_counter()
                wlls = warm_start_minibatch(start, stream, X_test, args.passes)
                per_pass = f"{(time.perf_counter() - t) / args.passes:.1f}"
                cells = " | ".join(f"{gap(name, ll):.1e}" for ll in wlls)
                method = "estimator warm_start=True, max_iter=1, fit per batch"
                lines.append(f"| {name} | {method} | {cells} | {wlls[-1]:.5f} | {per_pass} |")
                print(lines[-1], flush=True)
        lines.append("")
    report = "\n".join(lines)
    print(report)
    if not args.quick:
        out = args.out or HERE / "ONLINE_RUN.md"
        out.write_text(report + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
