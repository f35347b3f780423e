"""gmmjax benchmarks against scikit-learn (and gmmx when installed).

    python benchmarks/run.py            # full run: writes benchmarks/RESULTS.md and results.png
    python benchmarks/run.py --quick    # smoke run on tiny sizes (the test command runs it)
    python benchmarks/run.py --only W1,W3 --out /tmp/bench

Every measurement runs in its own worker process (``--worker``), one library per process,
so that peak resident memory is per fit and nothing is shared (``--quick``, the smoke run of
tiny sizes, calls the workers in one process instead). All libraries start from
the same initial parameters (drawn with NumPy from the data, identical in every process) and
run a fixed number of EM iterations (``tol`` below zero or zero, so no early stop). Times:

- *per iteration*: ``(t(fit with b iterations) − t(fit with a iterations)) / (b − a)``,
  both warm (compiled programs reused), the median of ``--repeats`` rounds;
- *compile*: the first call minus the same call warm (JAX libraries only);
- *init*: a fit with the library's default initialisation (k-means) and one iteration,
  minus one iteration;
- *peak memory*: the worker's peak resident set size (``ru_maxrss``) minus its resident
  size after building the data and before the first fit.

FLOPs per EM iteration: full/tied ``4·N·K·D² + 6·N·K·D`` (two products of ``2·N·K·D²``:
whitening and scatter); diag ``8·N·K·D``. Achieved GFLOP/s are compared with the machine's
measured matrix-multiply peak (NumPy/OpenBLAS and XLA, 2048³). The other load on the
machine (1-minute load average, and the CPU time used by other processes during the
measurement from /proc/stat) is recorded with every worker, because on a 2-core machine a
second process halves everything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name: (N, D, K, covariance_type, description)
WORKLOADS = {
    "W1": dict(n=100_000, d=2, k=4, cov="full", what="memory-bound, D=2"),
    "W2": dict(n=200_000, d=16, k=16, cov="full", what="medium"),
    "W3": dict(n=1_000_000, d=32, k=32, cov="full", what="large, GEMM-bound"),
    "W4": dict(n=1_000_000, d=64, k=32, cov="diag", what="large diagonal"),
    "W5": dict(n=50_000, d=8, k=8, cov="full", what="16 restarts × 10 iterations, total fit time"),
    "W6": dict(n=500, d=2, k=3, cov="full", what="1000 independent datasets"),
    "W7": dict(n=600, d=2, k=2, cov="full", what="the original example, end to end"),
    "W8": dict(n=200_000, d=128, k=1024, cov="diag", what="many components (a quantizer), GEMM-bound"),
    "W9": dict(n=200_000, d=8, k=1024, cov="diag", what="many components in few dimensions, exp-bound"),
    # R1/R2 (W8/W9 before 2026-12-03): batched restarts must never be slower than one by one.
    "R1": dict(n=50_000, d=8, k=8, cov="diag", what="4 restarts × 10 iterations: one batched fit vs 4 single fits"),
    "R2": dict(
        n=50_000, d=8, k=8, cov="spherical", what="4 restarts × 10 iterations: one batched fit vs 4 single fits"
    ),
    "M1": dict(n=10_000_000, d=16, k=16, cov="full", what="memory: chunked fit of 640 MB of float32"),
}
QUICK = {
    "W1": 4000,
    "W2": 4000,
    "W3": 4000,
    "W4": 4000,
    "W5": 2000,
    "W6": 200,
    "W7": 600,
    "W8": 4000,
    "W9": 4000,
    "R1": 2000,
    "R2": 2000,
    "M1": 20_000,
}
W6_DATASETS, W6_DATASETS_QUICK = 1000, 20
W5_RESTARTS, W5_ITERS = 16, 10
TYPE_RESTARTS, TYPE_ITERS = 4, 10
# (a, b): per-iteration time = (t(b iterations) − t(a iterations)) / (b − a); the spans are
# long enough that the difference is far above the noise of a call.
ITERATIONS = {"W1": (2, 42), "W2": (2, 12), "W3": (2, 6), "W4": (2, 8), "W8": (1, 3), "W9": (1, 3)}
# Per-iteration workloads (a worker per library and dtype).
FIT_WORKLOADS = ("W1", "W2", "W3", "W4", "W8", "W9")
# Of those, the many-component (quantizer) rows, K = 1024: float32 only, initialisation not
# timed (scikit-learn's k-means at K = 1024 would dominate the run), and the report compares
# their pair rate with the machine's exp throughput (one exp per sample-component pair).
MANY_COMPONENTS = ("W8", "W9")


# ----------------------------------------------------------------------------- shared data


def make_data(n: int, d: int, k: int, seed: int = 0):
    """Float64 NumPy data from a well-separated mixture (identical in every process)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(k, d))
    labels = rng.integers(k, size=n)
    scales = rng.uniform(0.5, 1.5, size=(k, 1))
    return centers[labels] + scales[labels] * rng.normal(size=(n, d))


def initial_parameters(X, k: int, cov: str, seed: int = 1):
    """The same starting point for every library: K distinct data rows as means, equal
    weights, and the data's (diagonal of the) covariance for every component, as precisions."""
    import numpy as np

    rng = np.random.default_rng(seed)
    means = X[rng.choice(X.shape[0], size=k, replace=False)]
    weights = np.full(k, 1.0 / k)
    if cov == "full":
        precisions = np.broadcast_to(
            np.linalg.inv(np.cov(X.T).reshape(X.shape[1], X.shape[1])), (k, X.shape[1], X.shape[1])
        ).copy()
    else:
        precisions = np.broadcast_to(1.0 / X.var(axis=0), (k, X.shape[1])).copy()
    return weights, means, precisions


def flops_per_iteration(n, d, k, cov) -> float:
    return 4.0 * n * k * d * d + 6.0 * n * k * d if cov in ("full", "tied") else 8.0 * n * k * d


# ----------------------------------------------------------------------------- worker side


def _cpu_times():
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    values = [int(x) for x in parts]
    return sum(values), values[3] + values[4]  # total, idle + iowait


class LoadMeter:
    """CPU time used on the machine by *other* processes while a measurement runs."""

    def __enter__(self):
        self.load_before = os.getloadavg()[0]
        self.total0, self.idle0 = _cpu_times()
        self.self0 = os.times()
        return self

    def __exit__(self, *exc):
        total1, idle1 = _cpu_times()
        self_times = os.times()
        hz = os.sysconf("SC_CLK_TCK")
        busy = (total1 - self.total0) - (idle1 - self.idle0)
        own = (
            sum(
                getattr(self_times, f) - getattr(self.self0, f)
                for f in ("user", "system", "children_user", "children_system")
            )
            * hz
        )
        span = max(total1 - self.total0, 1)
        self.other_cpu_fraction = max(0.0, (busy - own) / span)
        self.load_after = os.getloadavg()[0]


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    """Resident memory now, after handing freed heap memory back to the system (glibc
    ``malloc_trim``: otherwise memory freed while building the data would be reused
    unseen by the fit); also resets the peak (Linux ``clear_refs``), so that
    :func:`_peak_rss_mb` reports the peak from here on, not that of building the data."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_mb("VmRSS")


def _peak_rss_mb() -> float:
    """Peak resident memory since the last :func:`_rss_mb` (``VmHWM``)."""
    return _status_mb("VmHWM")


def _timed(fn, repeats: int):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def _per_iteration(fit, a: int, b: int, repeats: int):
    """Warm per-iteration time from fits of ``a`` and ``b`` iterations (medians)."""
    ta = _timed(lambda: fit(a), repeats)
    tb = _timed(lambda: fit(b), repeats)
    return max(tb - ta, 1e-9) / (b - a), ta


def _compiled_per_iteration(fit, a: int, b: int, repeats: int):
    """For a JAX fit: (warm per-iteration time, compile time = first call − warm call)."""
    start = time.perf_counter()
    fit(a)
    first = time.perf_counter() - start
    fit(b)
    per_iter, t_a = _per_iteration(fit, a, b, repeats)
    return per_iter, max(first - t_a, 0.0)


def worker_peak(args):
    """Matrix-multiply peak (GFLOP/s) and copy bandwidth of this machine."""
    import numpy as np

    n = 512 if args.quick else 2048
    out = {}
    for name, dtype in (("float32", np.float32), ("float64", np.float64)):
        a = np.random.default_rng(0).random((n, n)).astype(dtype)
        b = a.copy()
        seconds = min(_timed(lambda: a @ b, 3) for _ in range(2))  # noqa: B023  _timed() calls it at once, in this iteration
        out[f"numpy_{name}"] = 2 * n**3 / seconds / 1e9
        if not args.quick:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(1):
                seconds = _timed(lambda: a @ b, 3)  # noqa: B023  _timed() calls it at once, in this iteration
            out[f"numpy_{name}_1thread"] = 2 * n**3 / seconds / 1e9
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    device = jax.devices()[0]
    out["cpu"] = cpu_description()
    out["jax_device"] = f"{device.platform} ({device.device_kind}, {jax.device_count()} device(s))"
    matmul = jax.jit(lambda x, y: x @ y)
    for name, dtype in (("float32", jnp.float32), ("float64", jnp.float64)):
        a = jnp.asarray(np.random.default_rng(0).random((n, n)), dtype)
        matmul(a, a).block_until_ready()
        seconds = _timed(lambda: matmul(a, a).block_until_ready(), 5)  # noqa: B023  _timed() calls it at once, in this iteration
        out[f"xla_{name}"] = 2 * n**3 / seconds / 1e9
    # Elementwise limit of the many-component E-step: one exp (and a sum) per element.
    exp_sum = jax.jit(lambda x: jnp.sum(jnp.exp(x), axis=0))
    values = jnp.asarray(np.random.default_rng(0).normal(size=(256 if args.quick else 1024, 8192)), jnp.float32)
    exp_sum(values).block_until_ready()
    seconds = _timed(lambda: exp_sum(values).block_until_ready(), 5)
    out["exp_float32_Gps"] = values.size / seconds / 1e9
    big = np.ones((8 if args.quick else 64) * 2**20 // 8 * 4)  # 32 or 256 MB float64
    dst = np.empty_like(big)
    seconds = _timed(lambda: np.copyto(dst, big), 5)
    out["copy_GBps"] = 2 * big.nbytes / seconds / 1e9  # read + write
    return out


def _gmmjax_fit_fn(X, k, cov, init, *, n_init=1, init_params="kmeans", use_init=True):
    import jax

    import gmmjax as gj

    weights, means, precisions = init

    def fit(iters):
        kwargs = dict(weights_init=weights, means_init=means, precisions_init=precisions) if use_init else {}
        result = gj.fit_em(
            jax.random.key(0),
            X,
            k,
            covariance_type=cov,
            max_iter=iters,
            tol=0.0,
            n_init=n_init,
            init_params=init_params,
            **kwargs,
        )
        return jax.block_until_ready(result)

    return fit


def worker_fit(args):
    """One library on one workload: per-iteration, compile, init time, memory, log-likelihood."""
    import numpy as np

    spec = WORKLOADS[args.workload]
    n, d, k, cov = args.n, spec["d"], spec["k"], spec["cov"]
    if args.quick:  # tiny data cannot support 32 components in 32 dimensions
        d, k = min(d, 8), min(k, 4)
    lib, dtype_name = args.library, args.dtype
    dtype = np.float32 if dtype_name == "float32" else np.float64
    X64 = make_data(n, d, k)
    init64 = initial_parameters(X64, k, cov)
    X = X64.astype(dtype)
    init = tuple(a.astype(dtype) for a in init64)
    del X64
    a, b = (1, 3) if args.quick else ITERATIONS.get(args.workload, (2, 6))
    out = {"library": lib, "dtype": dtype_name, "workload": args.workload, "n": n, "d": d, "k": k, "cov": cov}

    if lib == "gmmjax":
        import jax

        if dtype_name == "float64":
            jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        Xj = jnp.asarray(X)
        del X
        baseline = _rss_mb()
        fit = _gmmjax_fit_fn(Xj, k, cov, init)
        with LoadMeter() as load:
            per_iter, out["compile_s"] = _compiled_per_iteration(fit, a, b, args.repeats)
            if args.workload not in MANY_COMPONENTS:
                default_init = _gmmjax_fit_fn(Xj, k, cov, init, use_init=False)
                default_init(1)
                out["init_s"] = max(_timed(lambda: default_init(1), args.repeats) - per_iter, 0.0)
        result = fit(b)
        out["mean_log_likelihood"] = float(result.lower_bound)
    elif lib == "sklearn":
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import GaussianMixture
        from threadpoolctl import threadpool_limits

        warnings.simplefilter("ignore", ConvergenceWarning)
        weights, means, precisions = init
        baseline = _rss_mb()
        limits = threadpool_limits(args.threads) if args.threads else None

        def fit(iters, **kw):
            kwargs = dict(weights_init=weights, means_init=means, precisions_init=precisions)
            kwargs.update(kw)
            model = GaussianMixture(k, covariance_type=cov, max_iter=iters, tol=0.0, **kwargs)
            return model.fit(X)

        with LoadMeter() as load:
            per_iter, _ = _per_iteration(fit, a, b, args.repeats)
            if args.workload not in MANY_COMPONENTS:
                kmeans_fit = lambda: GaussianMixture(k, covariance_type=cov, max_iter=1, tol=0.0, random_state=0).fit(X)
                out["init_s"] = max(_timed(kmeans_fit, args.repeats) - per_iter, 0.0)
        out["threads"] = args.threads or "default"
        out["mean_log_likelihood"] = float(fit(b).lower_bound_)
        if limits is not None:
            limits.unregister()
    elif lib == "gmmx":
        import jax

        if dtype_name == "float64":
            jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        from gmmx import EMFitter, GaussianMixtureModelJax

        weights, means, precisions = init
        covariances = np.linalg.inv(precisions) if cov == "full" else 1.0 / precisions
        Xj = jnp.asarray(X)
        baseline = _rss_mb()

        def fit(iters):
            gmm = GaussianMixtureModelJax.from_squeezed(
                means=means, covariances=covariances, weights=weights, covariance_type=cov
            )
            return jax.block_until_ready(EMFitter(max_iter=iters, tol=-1.0).fit(x=Xj, gmm=gmm))

        with LoadMeter() as load:
            per_iter, out["compile_s"] = _compiled_per_iteration(fit, a, b, args.repeats)
        out["mean_log_likelihood"] = float(fit(b).log_likelihood)
    else:
        raise SystemExit(f"unknown library {lib}")
    out.update(
        per_iter_s=per_iter,
        peak_mb=_peak_rss_mb() - baseline,
        baseline_mb=baseline,
        data_mb=n * d * np.dtype(dtype).itemsize / 2**20,
        load_before=load.load_before,
        load_after=load.load_after,
        other_cpu=load.other_cpu_fraction,
    )
    return out


def worker_restarts(args):
    """W5: 16 restarts × 10 iterations, total time of one fit (warm) including initialisation."""
    import numpy as np

    spec = WORKLOADS["W5"]
    n, d, k = args.n, spec["d"], spec["k"]
    X = make_data(n, d, k).astype(np.float32)
    lib = args.library
    out = {"library": lib, "workload": "W5", "n": n}
    baseline = _rss_mb()
    with LoadMeter() as load:
        if lib == "gmmjax":
            import jax
            import jax.numpy as jnp

            import gmmjax as gj

            Xj = jnp.asarray(X)
            batch = args.restart_batch or None

            def fit():
                return jax.block_until_ready(
                    gj.fit_em(
                        jax.random.key(0),
                        Xj,
                        k,
                        n_init=W5_RESTARTS,
                        max_iter=W5_ITERS,
                        tol=0.0,
                        restart_batch_size=batch,
                    )
                )

            start = time.perf_counter()
            fit()
            out["first_s"] = time.perf_counter() - start
            out["total_s"] = _timed(fit, args.repeats)
            out["restart_batch_size"] = batch or W5_RESTARTS
        elif lib == "sklearn":
            import warnings

            from sklearn.mixture import GaussianMixture
            from threadpoolctl import threadpool_limits

            warnings.simplefilter("ignore")
            with threadpool_limits(args.threads):
                fit = lambda: GaussianMixture(k, n_init=W5_RESTARTS, max_iter=W5_ITERS, tol=0.0, random_state=0).fit(X)
                out["total_s"] = _timed(fit, args.repeats)
            out["threads"] = args.threads or "default"
        elif lib == "gmmx":
            import jax
            import jax.numpy as jnp
            from gmmx import EMFitter, GaussianMixtureModelJax

            Xj = jnp.asarray(X)
            inits = [initial_parameters(X.astype(np.float64), k, "full", seed=s) for s in range(W5_RESTARTS)]
            fitter = EMFitter(max_iter=W5_ITERS, tol=-1.0)

            def fit():
                for weights, means, precisions in inits:  # a loop of compiled fits (same shapes)
                    gmm = GaussianMixtureModelJax.from_squeezed(
                        means=means.astype(np.float32),
                        covariances=np.linalg.inv(precisions).astype(np.float32),
                        weights=weights.astype(np.float32),
                    )
                    jax.block_until_ready(fitter.fit(x=Xj, gmm=gmm))

            start = time.perf_counter()
            fit()
            out["first_s"] = time.perf_counter() - start
            out["total_s"] = _timed(fit, args.repeats)
            out["note"] = "initialised from random data rows (gmmx has no own restarts)"
    out.update(
        peak_mb=_peak_rss_mb() - baseline,
        load_before=load.load_before,
        load_after=load.load_after,
        other_cpu=load.other_cpu_fraction,
    )
    return out


def worker_restart_types(args):
    """R1/R2: diag/spherical restarts: ``fit_em(n_init=4)`` (one vmapped call) against the same
    four fits one by one (restart ``r`` is ``fit_em(restart_keys(key, 4)[r])``), both warm, in this process."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import gmmjax as gj

    spec = WORKLOADS[args.workload]
    n, d, k, cov = args.n, spec["d"], spec["k"], spec["cov"]
    Xj = jnp.asarray(make_data(n, d, k).astype(np.float32))
    key = jax.random.key(0)
    keys = gj.restart_keys(key, TYPE_RESTARTS)
    options = dict(covariance_type=cov, max_iter=TYPE_ITERS, tol=0.0)
    out = {"library": "gmmjax", "workload": args.workload, "n": n, "cov": cov, "restarts": TYPE_RESTARTS}
    with LoadMeter() as load:
        batched = lambda: jax.block_until_ready(gj.fit_em(key, Xj, k, n_init=TYPE_RESTARTS, **options))
        singles = lambda: [jax.block_until_ready(gj.fit_em(r, Xj, k, **options)) for r in keys]
        together, one_by_one = batched(), singles()  # compiles both
        # the same fits: the comparison is of the same work
        for r, single in enumerate(one_by_one):
            np.testing.assert_allclose(
                np.asarray(together.restart_lower_bounds[r]), np.asarray(single.lower_bound), rtol=1e-4
            )
        # Interleaved (batched, one by one, batched, ...): a change of the machine's load
        # during the run hits both alike; medians and bests of the same rounds.
        times = {"batched": [], "singles": []}
        for _ in range(args.repeats):
            for name, fn in (("batched", batched), ("singles", singles)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        for name, values in times.items():
            out[f"{name}_s"] = float(np.median(values))
            out[f"{name}_best_s"] = min(values)
    out["singles_over_batched"] = out["singles_s"] / out["batched_s"]
    out["best_singles_over_batched"] = out["singles_best_s"] / out["batched_best_s"]
    out.update(load_before=load.load_before, load_after=load.load_after, other_cpu=load.other_cpu_fraction)
    return out


def worker_datasets(args):
    """W6: many independent small fits: one vmapped gmmjax call vs a loop of fits."""
    import numpy as np

    spec = WORKLOADS["W6"]
    n, d, k = args.n, spec["d"], spec["k"]
    count = W6_DATASETS_QUICK if args.quick else W6_DATASETS
    data = np.stack([make_data(n, d, k, seed=s) for s in range(count)]).astype(np.float32)
    lib = args.library
    out = {"library": lib, "workload": "W6", "n": n, "datasets": count}
    with LoadMeter() as load:
        if lib == "gmmjax":
            import jax
            import jax.numpy as jnp

            import gmmjax as gj

            batch = jnp.asarray(data)
            keys = jax.random.split(jax.random.key(0), count)
            # vmap of fit_em itself (as the README shows): gmmjax's own jit compiles it, with
            # its settings for small problems (gmmjax/_compile.py); a caller's jax.jit around it
            # would compile with XLA's defaults (≈0.5 s more on this workload's first call).
            fit_all = jax.vmap(lambda key, X: gj.fit_em(key, X, k).params)
            start = time.perf_counter()
            jax.block_until_ready(fit_all(keys, batch))
            out["first_s"] = time.perf_counter() - start
            out["total_s"] = _timed(lambda: jax.block_until_ready(fit_all(keys, batch)), args.repeats)
        elif lib == "sklearn":
            import warnings

            from sklearn.mixture import GaussianMixture

            warnings.simplefilter("ignore")
            fit_all = lambda: [GaussianMixture(k, random_state=0).fit(X) for X in data]
            out["total_s"] = _timed(fit_all, 1)
            out["first_s"] = out["total_s"]
    out.update(load_before=load.load_before, load_after=load.load_after, other_cpu=load.other_cpu_fraction)
    return out


W7_SCRIPT = """
import time, json
start = time.perf_counter()
import numpy as np
{imports}
weights = np.array([0.6, 0.4]); means = np.array([[0.0, 0.0], [3.0, 3.0]])
covariances = np.array([[[1.0, 0.5], [0.5, 1.0]], [[1.0, -0.3], [-0.3, 1.0]]])
data = {generate}
t_import = time.perf_counter() - start
times = []
for _ in range({repeats}):
    s = time.perf_counter()
    model = {fit}
    times.append(time.perf_counter() - s)
print(json.dumps(dict(import_and_data_s=t_import, first_fit_s=times[0],
                      later_fit_s=sorted(times[1:])[len(times[1:]) // 2])))
"""


def worker_example(args):
    """W7: the original example (600 samples, 2 components, 100 iterations) in a fresh process."""
    if args.library == "gmmjax":
        code = W7_SCRIPT.format(
            imports="import gmmjax as gj",
            generate="np.asarray(gj.generate_gmm_data(600, weights, means, covariances))",
            fit="gj.GaussianMixtureModel(num_components=2, num_iters=100).fit(data)",
            repeats=args.repeats + 1,
        )
    else:
        code = W7_SCRIPT.format(
            imports="from sklearn.mixture import GaussianMixture\nimport gmmjax as gj",
            generate="np.asarray(gj.generate_gmm_data(600, weights, means, covariances))",
            fit="GaussianMixture(2, max_iter=100, random_state=0).fit(data)",
            repeats=args.repeats + 1,
        )
    with LoadMeter() as load:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update(library=args.library, workload="W7", load_before=load.load_before, other_cpu=load.other_cpu_fraction)
    return out


def worker_memory(args):
    """M1: a chunked gmmjax fit of N×16 float32 data (K=16, full); data made on the device."""
    import jax

    import gmmjax as gj

    spec = WORKLOADS["M1"]
    n, d, k = args.n, spec["d"], spec["k"]

    @jax.jit
    def make(key):  # one compiled program writing the data (its temporaries are freed before the fit)
        centers = 4.0 * jax.random.normal(key, (k, d))
        labels = jax.random.randint(jax.random.fold_in(key, 1), (n,), 0, k)
        return centers[labels] + jax.random.normal(jax.random.fold_in(key, 2), (n, d))

    X = jax.block_until_ready(make(jax.random.key(0)))
    baseline = _rss_mb()
    with LoadMeter() as load:
        start = time.perf_counter()
        result = jax.block_until_ready(gj.fit_em(jax.random.key(1), X, k, max_iter=3, tol=0.0))
        seconds = time.perf_counter() - start
    return dict(
        library="gmmjax",
        workload="M1",
        n=n,
        data_mb=X.nbytes / 2**20,
        baseline_mb=baseline,
        peak_mb=_peak_rss_mb() - baseline,
        seconds_3_iterations_with_compile=seconds,
        mean_log_likelihood=float(result.lower_bound),
        load_before=load.load_before,
        other_cpu=load.other_cpu_fraction,
    )


WORKERS = {
    "peak": worker_peak,
    "fit": worker_fit,
    "restarts": worker_restarts,
    "datasets": worker_datasets,
    "example": worker_example,
    "memory": worker_memory,
    "restart_types": worker_restart_types,
}


# ----------------------------------------------------------------------------- orchestration


def _gmmx_available() -> bool:
    try:
        import gmmx  # noqa: F401
    except ImportError:
        return False
    return True


# The hidden worker options and their defaults (see main's parser).
_WORKER_DEFAULTS = dict(workload=None, n=None, library=None, dtype="float32", threads=0, restart_batch=0)


def _run_in_process(kind: str, args, repeats: int, options: dict):
    """A worker called in this process (--quick: a smoke run of tiny sizes, where per-process
    memory figures do not matter and a fresh interpreter per measurement would be most of
    the time)."""
    worker_args = argparse.Namespace(
        **{**vars(args), **_WORKER_DEFAULTS, **options, "worker": kind, "repeats": repeats}
    )
    try:
        return WORKERS[kind](worker_args)
    except Exception as exc:  # noqa: BLE001 - reported like a failed worker process
        import traceback

        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}", **options}


def run_worker(kind: str, args, repeats: int | None = None, **options):
    repeats = args.repeats if repeats is None else repeats
    if args.quick and kind != "peak":  # (the peak worker switches JAX to float64: its own process)
        result = _run_in_process(kind, args, repeats, options)
        print(f"  {kind} {options}: {'error' if 'error' in result else 'ok'}", flush=True)
        return result
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--repeats", str(repeats)]
    if args.quick:
        cmd.append("--quick")
    for name, value in options.items():
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    env = dict(os.environ)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"  worker failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}", file=sys.stderr)
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed", **options}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"  {kind} {options}: "
        + ", ".join(
            f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
            for key, value in result.items()
            if key not in ("library", "workload")
        ),
        flush=True,
    )
    return result


def plan(args):
    """(workload, kind, options) for every measurement of the run."""
    selected = args.only.split(",") if args.only else list(WORKLOADS)
    gmmx = _gmmx_available() and not args.no_gmmx
    jobs = []
    for name in selected:
        n = QUICK[name] if args.quick else int(WORKLOADS[name]["n"] * args.scale)
        if name in FIT_WORKLOADS:
            jobs.append((name, "fit", dict(workload=name, n=n, library="gmmjax", dtype="float32")))
            jobs.append((name, "fit", dict(workload=name, n=n, library="sklearn", dtype="float32")))
            if not args.quick and name not in MANY_COMPONENTS:
                jobs.append((name, "fit", dict(workload=name, n=n, library="sklearn", dtype="float32", threads=1)))
                jobs.append((name, "fit", dict(workload=name, n=n, library="gmmjax", dtype="float64")))
                jobs.append((name, "fit", dict(workload=name, n=n, library="sklearn", dtype="float64")))
            if gmmx:
                jobs.append((name, "fit", dict(workload=name, n=n, library="gmmx", dtype="float32")))
        elif name == "W5":
            jobs.append((name, "restarts", dict(n=n, library="gmmjax")))
            if not args.quick:
                jobs.append((name, "restarts", dict(n=n, library="gmmjax", restart_batch=1)))
            jobs.append((name, "restarts", dict(n=n, library="sklearn")))
            if not args.quick:
                jobs.append((name, "restarts", dict(n=n, library="sklearn", threads=1)))
            if gmmx:
                jobs.append((name, "restarts", dict(n=n, library="gmmx")))
        elif name in ("R1", "R2"):
            jobs.append((name, "restart_types", dict(workload=name, n=n)))
        elif name == "W6":
            jobs.append((name, "datasets", dict(n=n, library="gmmjax")))
            jobs.append((name, "datasets", dict(n=n, library="sklearn")))
        elif name == "W7":
            jobs.append((name, "example", dict(library="gmmjax")))
            jobs.append((name, "example", dict(library="sklearn")))
        elif name == "M1":
            jobs.append((name, "memory", dict(n=n)))
    return jobs


def _fmt(value, digits=3):
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _label(r):
    label = f"{r['library']} {r.get('dtype', 'float32')}"
    if r.get("threads") not in (None, "default"):
        label += f" ({r['threads']} BLAS thread)"
    return label


def write_report(args, peak, results, out_dir: Path, generated: str | None = None):
    lines = ["# gmmjax benchmark results", ""]
    lines.append(
        f"Generated by `python benchmarks/run.py{' --quick' if args.quick else ''}"
        f"{' --scale ' + str(args.scale) if args.scale != 1 else ''}` on "
        f"{generated or time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Machine: "
        f"{peak['cpu'] if peak and 'cpu' in peak else cpu_description()}"
        f"{'; JAX runs on ' + peak['jax_device'] if peak and 'jax_device' in peak else ''}"
        f"; Python {platform.python_version()}; versions: {_versions()}."
    )
    lines.append(
        "Every row is one worker process; ratios are against scikit-learn float32 (default BLAS "
        "threads) measured in the same run. `other load` is the 1-minute load average before the "
        "measurement / the fraction of the machine's CPU time used by other processes during it."
    )
    lines.append("")
    if peak and "error" not in peak:
        lines += [
            "## The limit: matrix multiply 2048³ (GFLOP/s) and copy bandwidth",
            "",
            "| kernel | float32 | float64 |",
            "|---|---|---|",
            f"| NumPy/OpenBLAS, default threads | {_fmt(peak['numpy_float32'])} | {_fmt(peak['numpy_float64'])} |",
        ]
        if "numpy_float32_1thread" in peak:
            lines.append(
                f"| NumPy/OpenBLAS, 1 thread | {_fmt(peak['numpy_float32_1thread'])} | "
                f"{_fmt(peak['numpy_float64_1thread'])} |"
            )
        lines += [
            f"| XLA `jnp.dot` | {_fmt(peak['xla_float32'])} | {_fmt(peak['xla_float64'])} |",
            "",
            f"Copy bandwidth (NumPy `copyto`, read + write): {_fmt(peak['copy_GBps'])} GB/s."
            + (
                f" XLA `sum(exp(x))` float32: {_fmt(peak['exp_float32_Gps'])} G elements/s."
                if "exp_float32_Gps" in peak
                else ""
            ),
            "",
        ]

    fits = [r for r in results if r.get("kind") == "fit" and "error" not in r]
    for name in FIT_WORKLOADS:
        rows = [r for r in fits if r["workload"] == name]
        if not rows:
            continue
        spec = WORKLOADS[name]
        r0 = rows[0]
        flops = flops_per_iteration(r0["n"], r0["d"], r0["k"], r0["cov"])
        ref = next(
            (
                r
                for r in rows
                if r["library"] == "sklearn" and r["dtype"] == "float32" and r.get("threads") in (None, "default")
            ),
            None,
        )
        lines += [
            f"## {name}: N={r0['n']:,} D={r0['d']} K={r0['k']} {r0['cov']} ({spec['what']})",
            "",
            f"{flops / 1e9:.3g} GFLOP per iteration.",
            "",
            "| library | s/iter | GFLOP/s | % OpenBLAS peak | % XLA peak | speed-up vs sklearn f32 | "
            "init s | compile s | peak MB (data MB) | mean log-lik | other load |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            gflops = flops / r["per_iter_s"] / 1e9
            blas = peak.get(f"numpy_{r['dtype']}") if peak else None
            xla = peak.get(f"xla_{r['dtype']}") if peak else None
            speedup = ref["per_iter_s"] / r["per_iter_s"] if ref else None
            lines.append(
                f"| {_label(r)} | {_fmt(r['per_iter_s'])} | {_fmt(gflops)} | "
                f"{_fmt(100 * gflops / blas if blas else None, 2)} | {_fmt(100 * gflops / xla if xla else None, 2)} | "
                f"{_fmt(speedup)}× | {_fmt(r.get('init_s'))} | {_fmt(r.get('compile_s'))} | "
                f"{_fmt(r['peak_mb'], 4)} ({_fmt(r['data_mb'], 4)}) | {_fmt(r.get('mean_log_likelihood'), 7)} | "
                f"{r['load_before']:.2f} / {100 * r['other_cpu']:.0f}% |"
            )
        if name == "W1" and peak:
            gj_row = next((r for r in rows if r["library"] == "gmmjax" and r["dtype"] == "float32"), None)
            if gj_row:
                bandwidth = r0["n"] * r0["d"] * 4 / gj_row["per_iter_s"] / 1e9
                lines += [
                    "",
                    f"gmmjax float32 reads the data once per iteration: {bandwidth:.3g} GB/s of "
                    f"{_fmt(peak['copy_GBps'])} GB/s copy bandwidth.",
                ]
        if name in MANY_COMPONENTS and peak and "exp_float32_Gps" in peak:
            gj_row = next((r for r in rows if r["library"] == "gmmjax" and r["dtype"] == "float32"), None)
            if gj_row:
                pairs = r0["n"] * r0["k"] / gj_row["per_iter_s"] / 1e9
                lines += [
                    "",
                    f"gmmjax float32: {pairs:.3g} G (sample, component) pairs per second per iteration "
                    f"(one exp each) = {100 * pairs / peak['exp_float32_Gps']:.0f}% of XLA's `sum(exp(x))` "
                    f"throughput ({_fmt(peak['exp_float32_Gps'])} G elements/s). Initialisation not timed "
                    "(scikit-learn's k-means with K = 1024 would dominate the run).",
                ]
        lines.append("")

    for name, title in (("W5", "total seconds for one fit (warm)"), ("W6", "total seconds for all fits")):
        rows = [r for r in results if r.get("workload") == name and "error" not in r]
        if not rows:
            continue
        ref = next((r for r in rows if r["library"] == "sklearn" and r.get("threads") in (None, "default")), None)
        spec = WORKLOADS[name]
        detail = (
            f"{W5_RESTARTS} restarts × {W5_ITERS} iterations, N={rows[0]['n']:,} D={spec['d']} K={spec['k']}"
            if name == "W5"
            else f"{rows[0].get('datasets')} datasets of N={rows[0]['n']} D={spec['d']} K={spec['k']}, "
            "default tol and max_iter, k-means init"
        )
        lines += [
            f"## {name}: {detail}",
            "",
            f"| library | {title} | first call (with compile) | speed-up vs sklearn | "
            "speed-up incl. compile | other load |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            label = r["library"]
            if r.get("restart_batch_size"):
                label += f" (restart_batch_size={r['restart_batch_size']})"
            if r.get("threads") not in (None, "default"):
                label += f" ({r['threads']} BLAS thread)"
            if r.get("note"):
                label += f" — {r['note']}"
            speed = ref["total_s"] / r["total_s"] if ref else None
            speed_first = ref["total_s"] / r["first_s"] if ref and r.get("first_s") else None
            lines.append(
                f"| {label} | {_fmt(r['total_s'])} | {_fmt(r.get('first_s'))} | {_fmt(speed)}× | "
                f"{_fmt(speed_first)}× | {r['load_before']:.2f} / {100 * r['other_cpu']:.0f}% |"
            )
        lines.append("")

    for name in ("R1", "R2"):
        rows = [r for r in results if r.get("workload") == name and "error" not in r]
        if not rows:
            continue
        spec = WORKLOADS[name]
        lines += [
            f"## {name}: {spec['cov']} restarts, {TYPE_RESTARTS} × {TYPE_ITERS} iterations, N={rows[0]['n']:,} "
            f"D={spec['d']} K={spec['k']}: fit_em(n_init={TYPE_RESTARTS}) vs the same fits one by one",
            "",
            "| library | batched s | one by one s | one by one / batched (≥ 1: batching pays) | the same, best of each "
            "| other load |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['library']} | {_fmt(r['batched_s'])} | {_fmt(r['singles_s'])} | "
                f"{_fmt(r['singles_over_batched'])}× | {_fmt(r.get('best_singles_over_batched'))}× | "
                f"{r['load_before']:.2f} / {100 * r['other_cpu']:.0f}% |"
            )
        lines.append("")

    rows = [r for r in results if r.get("workload") == "W7" and "error" not in r]
    if rows:
        lines += [
            "## W7: the original example (600 samples, 2 components) in a fresh process",
            "",
            "| library | import + data s | first fit s (compile included) | later fits s |",
            "|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['library']} | {_fmt(r['import_and_data_s'])} | {_fmt(r['first_fit_s'])} | "
                f"{_fmt(r['later_fit_s'])} |"
            )
        lines.append("")
    rows = [r for r in results if r.get("workload") == "M1" and "error" not in r]
    if rows:
        r = rows[0]
        lines += [
            f"## M1: bounded memory — gmmjax fit_em, N={r['n']:,} D=16 K=16 full float32, 3 iterations",
            "",
            f"Data {r['data_mb']:.0f} MB; peak resident memory beyond the process with its data: "
            f"{r['peak_mb']:.0f} MB (compilation included); "
            f"{r['seconds_3_iterations_with_compile']:.3g} s including compilation and k-means init.",
            "",
        ]
    failed = [r for r in results if "error" in r]
    if failed:
        lines += ["## Failed workers", ""] + [f"- {r}" for r in failed] + [""]
    notes = HERE / "NOTES.md"
    if notes.exists() and not args.quick:
        lines += [notes.read_text()]
    (out_dir / "RESULTS.md").write_text("\n".join(lines) + "\n")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_description() -> str:
    """The CPU's model, cores, the SIMD flags that decide XLA's and OpenBLAS's kernels (XLA's
    matrix multiply is 2–3× apart between AVX2-only and AVX-512 machines) and its L2 size: the
    machine a table is for. Shared by every benchmark script's report."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    try:
        l2 = Path("/sys/devices/system/cpu/cpu0/cache/index2/size").read_text().strip()
    except OSError:
        l2 = "?"
    return f"{_cpu_name()}, {os.cpu_count()} CPUs, flags {' '.join(simd) or 'none of avx2/avx512'}, L2 {l2} per core"


def _versions() -> str:
    from importlib import metadata

    parts = []
    for dist in ("jax", "jaxlib", "numpy", "scikit-learn", "gmmx"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(parts)


def write_plot(results, out_dir: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return False
    labels, values, colors = [], [], []
    palette = {"gmmjax": "tab:blue", "gmmx": "tab:orange", "sklearn": "tab:gray"}
    for name in (*FIT_WORKLOADS, "W5", "W6"):
        rows = [r for r in results if r.get("workload") == name and "error" not in r]
        ref = next(
            (
                r
                for r in rows
                if r["library"] == "sklearn"
                and r.get("dtype", "float32") == "float32"
                and r.get("threads") in (None, "default")
            ),
            None,
        )
        if ref is None:
            continue
        key = "per_iter_s" if "per_iter_s" in ref else "total_s"
        for r in rows:
            if r is ref:
                continue
            labels.append(
                f"{name} {_label(r)}" + (f" rb={r['restart_batch_size']}" if r.get("restart_batch_size") else "")
            )
            values.append(ref[key] / r[key])
            colors.append(palette.get(r["library"], "tab:green"))
    if not values:
        return False
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(values) + 1.5))
    ax.barh(range(len(values)), values, color=colors)
    ax.set_yticks(range(len(values)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("speed-up over scikit-learn float32 (same run, higher is better)")
    ax.set_title("EM time per iteration (W1–W4, W8, W9) or per fit (W5, W6)")
    fig.tight_layout()
    fig.savefig(out_dir / "results.png", dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few libraries (smoke test)")
    parser.add_argument("--only", help="comma-separated workloads (default: all)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every N by this")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per measurement")
    parser.add_argument("--out", type=Path, default=HERE, help="directory for RESULTS.md, results.png, results.json")
    parser.add_argument("--no-gmmx", action="store_true", help="skip gmmx even when installed")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--library", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--restart-batch", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--update", action="store_true", help="replace only the selected workloads' rows in an existing results.json"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite RESULTS.md and results.png from results.json (e.g. after editing NOTES.md)",
    )
    args = parser.parse_args(argv)

    if args.report_only:
        saved = json.loads((args.out / "results.json").read_text())
        args.quick, args.scale = saved.get("quick", False), saved.get("scale", 1.0)
        write_report(args, saved["peak"], saved["results"], args.out, saved.get("generated"))
        write_plot(saved["results"], args.out)
        return 0
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.repeats = min(args.repeats, 1)
    print("machine peak", flush=True)
    peak = run_worker("peak", args)
    results = []
    for name, kind, options in plan(args):
        # the 1M-row workloads are timed once per iteration count (scikit-learn float64 takes
        # ~20 s per iteration there); the others take the median of --repeats
        repeats = 1 if options.get("n", 0) >= 1_000_000 else None
        result = run_worker(kind, args, repeats=repeats, **options)
        result.setdefault("workload", name)
        result["kind"] = kind
        results.append(result)
    if args.update and (args.out / "results.json").exists():
        previous = json.loads((args.out / "results.json").read_text())
        rerun = {r["workload"] for r in results}
        results = [r for r in previous["results"] if r.get("workload") not in rerun] + results
        results.sort(key=lambda r: list(WORKLOADS).index(r["workload"]) if r.get("workload") in WORKLOADS else 99)
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "peak": peak,
                "results": results,
                "quick": args.quick,
                "scale": args.scale,
                "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            },
            indent=1,
        )
    )
    write_report(args, peak, results, args.out)
    write_plot(results, args.out)
    print(f"wrote {args.out / 'RESULTS.md'}")
    return 1 if any("error" in r for r in results) or "error" in peak else 0


if __name__ == "__main__":
    sys.exit(main())
