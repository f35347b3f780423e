"""Command line: ``gmmjax demo`` (also ``python -m gmmjax demo``)."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

# The original example's mixture.
DEMO_WEIGHTS = np.array([0.6, 0.4])
DEMO_MEANS = np.array([[0, 0], [3, 3]])
DEMO_COVARIANCES = np.array([[[1, 0.5], [0.5, 1]], [[1, 0.5], [0.5, 1]]])


def _match_components(true_means, fitted_means):
    """Order of the fitted components that best matches the true ones (fewest squared errors)."""
    from itertools import permutations

    k = len(true_means)
    if k > 8:  # greedy beyond a handful of components
        order, free = [], list(range(k))
        for m in true_means:
            j = min(free, key=lambda i: np.sum((fitted_means[i] - m) ** 2))
            order.append(j)
            free.remove(j)
        return order
    return list(min(permutations(range(k)), key=lambda p: np.sum((fitted_means[list(p)] - true_means) ** 2)))


def run_demo(num_samples: int = 600, seed: int = 0, out=None) -> int:
    import jax

    import gmmjax as gj

    start = time.perf_counter()
    data = gj.generate_gmm_data(num_samples=num_samples, weights=DEMO_WEIGHTS, means=DEMO_MEANS,
                                covariances=DEMO_COVARIANCES, key=jax.random.key(seed))
    model = gj.GaussianMixtureModel(num_components=2, num_iters=100, seed=seed)
    model.fit(data)
    elapsed = time.perf_counter() - start
    order = _match_components(DEMO_MEANS, np.asarray(model.means))
    # Resolved at call time, not import time, so a redirected sys.stdout (e.g. pytest's capsys) is honoured.
    out = sys.stdout if out is None else out
    p = lambda *a: print(*a, file=out)  # noqa: E731
    with np.printoptions(precision=3, suppress=True):  # local: no global side effect
        p(f"gmmjax demo: {num_samples} samples from the original 2-component example (jax {jax.__version__}, "
          f"{jax.devices()[0].platform})")
        for k, j in enumerate(order):
            p(f"component {k}:")
            p(f"  weight      true {DEMO_WEIGHTS[k]:.3f}   estimated {model.weights[j]:.3f}")
            p(f"  mean        true {DEMO_MEANS[k].astype(float)}   estimated {model.means[j]}")
            p("  covariance  true " + np.array2string(DEMO_COVARIANCES[k].astype(float)).replace("\n", "\n" + " " * 18))
            p("              est. " + np.array2string(model.covariances[j]).replace("\n", "\n" + " " * 18))
        p(f"mean log-likelihood {model.lower_bound_:.4f}   iterations {model.n_iter_}   converged {model.converged_}")
        p(f"time (data + fit, including compilation) {elapsed:.2f} s")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gmmjax", description="Gaussian mixture models in JAX.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="fit the original 2-component example and print the result",
                               description="Fit the original 2-component example and print true vs "
                                           "estimated parameters, log-likelihood, iterations and time.")
    demo.add_argument("-n", "--num-samples", type=int, default=600, help="number of samples (default 600)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.num_samples < 2:
            parser.error("--num-samples must be at least 2")
        return run_demo(args.num_samples, args.seed)
    parser.print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
