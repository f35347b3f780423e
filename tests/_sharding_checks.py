"""Sharded fits against the one-device fit, run in a subprocess with forced CPU devices.

Usage: ``python tests/_sharding_checks.py DEVICES quick|types|all|tail|frontdoors [--x64]`` (sets ``XLA_FLAGS`` itself
before importing JAX). Each check compares a sharded :func:`gmmjax.fit_em` with the one-device
fit of the same data and key (the oracle) and prints ``OK <name>``; a failure raises.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys

from _children import forced_devices_from_argv

DEVICES, MODE, X64 = forced_devices_from_argv()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

import gmmjax as gj  # noqa: E402
from gmmjax import _sharding  # noqa: E402
from gmmjax._em import fit_em_restarts  # noqa: E402
from gmmjax._options import fit_options  # noqa: E402

RTOL = 1e-10 if X64 else 1e-5
DTYPE = np.float64 if X64 else np.float32
TOL = 1e-9 if X64 else 1e-4  # convergence: well above float32 rounding of the lower bound
# Derivatives sum over rows in another order on each device, and the adjoint iteration stops
# at eps^(3/4) of its norm: float32 gradients agree to a few 1e-5.
GRAD_RTOL = 1e-9 if X64 else 2e-4
CENTERS = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 6.0, 0.0], [0.0, 0.0, 6.0]])
K = 4


def data(num_samples: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(num_samples, 3)) + CENTERS[rng.integers(0, K, num_samples)]
    return X.astype(DTYPE)


def assert_close_tree(sharded, reference, name):
    for a, b in zip(jax.tree_util.tree_leaves(sharded), jax.tree_util.tree_leaves(reference)):
        a, b = np.asarray(a), np.asarray(b)
        if np.issubdtype(b.dtype, np.floating):
            error = np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), np.finfo(b.dtype).tiny)
            assert error <= RTOL, f"{name}: relative error {error:.3g} > {RTOL} ({b.shape})"
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)


def assert_same_fit(sharded, reference, name):
    """Every restart equal to rounding; the same iteration counts, convergence and best restart."""
    print("  n_iter", np.asarray(sharded.restarts.n_iter), np.asarray(reference.restarts.n_iter), flush=True)
    # A restart whose last change of the lower bound lies within rounding of tol may stop one
    # iteration apart (the summation order differs): only such borderline restarts are exempt.
    history = np.asarray(reference.restarts.lower_bound_history)
    n_iter = np.asarray(reference.restarts.n_iter)
    keep = []
    for r in range(n_iter.shape[0]):
        steps = history[r, : n_iter[r]]
        last_change = abs(steps[-1] - steps[-2]) if steps.size >= 2 else np.inf
        borderline = abs(last_change - TOL) <= 10 * np.finfo(DTYPE).eps * abs(steps[-1]) + 1e-3 * TOL
        if borderline and int(np.asarray(sharded.restarts.n_iter)[r]) != int(n_iter[r]):
            print(f"  restart {r}: borderline convergence (last change {last_change:.3g} vs tol {TOL})")
            continue
        keep.append(r)
    pick = lambda tree: jax.tree_util.tree_map(lambda leaf: np.asarray(leaf)[np.array(keep, int)], tree)  # noqa: E731
    assert keep, f"{name}: every restart borderline"
    assert_close_tree(pick(sharded.restarts.params), pick(reference.restarts.params), name)
    assert_close_tree(pick(sharded.restarts.lower_bound), pick(reference.restarts.lower_bound), name)
    np.testing.assert_array_equal(pick(sharded.restarts.n_iter), pick(reference.restarts.n_iter), err_msg=name)
    np.testing.assert_array_equal(pick(sharded.restarts.converged), pick(reference.restarts.converged), err_msg=name)
    bounds = np.sort(np.asarray(reference.restarts.lower_bound))
    if bounds.size < 2 or bounds[-1] - bounds[-2] > 10 * RTOL * abs(bounds[-1]):
        assert int(sharded.best_restart) == int(reference.best_restart), name
    # (restarts tied to rounding, e.g. the same optimum: either is the best)
    assert_close_tree(sharded.lower_bound, reference.lower_bound, name)
    print("OK", name, flush=True)


def compare(name, X, mesh, *, sample_weight=None, presharded=False, data_axis=None, **options):
    key = jax.random.key(1)
    reference = gj.fit_em(key, X, K, sample_weight=sample_weight, tol=TOL, **options)
    if presharded:
        axis = data_axis or mesh.axis_names[0]
        X_in = jax.device_put(X, NamedSharding(mesh, PartitionSpec(axis)))
        w_in = (
            None if sample_weight is None else jax.device_put(sample_weight, NamedSharding(mesh, PartitionSpec(axis)))
        )
        sharded = gj.fit_em(key, X_in, K, sample_weight=w_in, tol=TOL, **options)
    else:
        sharded = gj.fit_em(key, X, K, sample_weight=sample_weight, mesh=mesh, data_axis=data_axis, tol=TOL, **options)
    assert_same_fit(sharded, reference, name)


def computations(hlo: str) -> dict:
    """HLO text → {computation name: its lines}."""
    out, name = {}, None
    for line in hlo.splitlines():
        match = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if match:
            name = match.group(1)
            out[name] = []
        elif name is not None:
            out[name].append(line)
    return out


def collectives_within(comps: dict, root: str, op: str) -> list:
    """Instructions ``op`` in computation ``root`` and every computation it calls."""
    seen, stack, found = set(), [root], []
    while stack:
        name = stack.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        for line in comps[name]:
            if f" {op}(" in line:
                found.append(line)
            stack.extend(
                re.findall(r"(?:body|condition|calls|to_apply|true_computation|false_computation)=%?([\w.\-]+)", line)
            )
            for group in re.findall(r"branch_computations=\{([^}]*)\}", line):
                stack.extend(part.strip().lstrip("%") for part in group.split(","))
    return found


def check_compiled_program(X, mesh, covariance_type):
    """The EM loop body holds exactly one all-reduce, of the packed statistics; no all-gather of
    data anywhere; and the compiled program's result equals the one-device fit."""
    options = fit_options(None, covariance_type=covariance_type, n_init=2, tol=TOL)
    key, inputs, leaves = _sharding.prepare(jax.random.key(1), X, K, options, None, mesh, None)
    program, args = _sharding.program_and_arguments(
        fit_em_restarts, key, inputs, leaves, differentiation="implicit", num_components=K
    )
    compiled = program.lower(*args).compile()
    hlo = compiled.as_text()
    if os.environ.get("GMMJAX_DUMP_HLO"):
        open(os.environ["GMMJAX_DUMP_HLO"], "w").write(hlo)
    D = X.shape[1]
    second = D * (D + 1) // 2 if covariance_type in ("full", "tied") else D
    packed = K * (1 + D + second) + 2  # + the log-likelihood and the total weight
    comps = computations(hlo)
    bodies = set(re.findall(r"while\(.*?body=%?([\w.\-]+)", hlo))
    # One all-reduce for all restarts of a batch: f32[R, packed] (f32[packed] for one restart).
    stats_shape = re.compile(rf"\[(?:\d+,)?{packed}\]")
    em_bodies = [
        b for b in bodies if any(stats_shape.search(line) for line in collectives_within(comps, b, "all-reduce"))
    ]
    assert em_bodies, f"no while loop all-reduces the packed statistics f[{packed}]"
    # The innermost such loop is the EM loop (an outer one, e.g. over restart batches, contains it).
    counts = sorted(len(collectives_within(comps, b, "all-reduce")) for b in em_bodies)
    assert counts[0] == 1, f"EM loop body has {counts[0]} all-reduces, expected 1"
    local_rows = inputs.local_rows
    for line in hlo.splitlines():
        if " all-gather(" in line or " all-to-all(" in line or " collective-permute(" in line:
            dims = [int(d) for d in re.findall(r"\[(\d+)", line.split("=")[1])[:1]]
            assert not dims or dims[0] < local_rows, f"a data-sized collective: {line[:160]}"
    result = compiled(*args)
    reference = gj.fit_em(jax.random.key(1), X, K, covariance_type=covariance_type, n_init=2, tol=TOL)
    assert_same_fit(
        result, reference, f"compiled program {covariance_type} (1 all-reduce of {packed} numbers per iteration)"
    )


def check_front_doors(X, mesh):
    """select_num_components, fit_gradient and the estimator on sharded rows = one device."""
    key = jax.random.key(2)
    reference = gj.select_num_components(key, X, 4, covariance_types=("full", "diag"), tol=TOL)
    # Sharded in two batches of K (1..2, 3..4): the grouping changes nothing either.
    sharded = gj.select_num_components(key, X, 4, covariance_types=("full", "diag"), tol=TOL, mesh=mesh, num_groups=2)
    for name in ("bic", "aic", "icl", "mean_log_likelihood"):
        assert_close_tree(getattr(sharded, name), getattr(reference, name), f"select_num_components {name}")
    np.testing.assert_array_equal(sharded.n_iter, reference.n_iter)
    assert int(sharded.best_num_components) == int(reference.best_num_components)
    print("OK select_num_components", flush=True)
    reference = gj.fit_gradient(key, X, K, num_steps=30, n_init=2)
    sharded = gj.fit_gradient(key, X, K, num_steps=30, n_init=2, mesh=mesh)
    assert_close_tree(sharded.restarts.params, reference.restarts.params, "fit_gradient")
    assert_close_tree(sharded.restarts.lower_bound_history, reference.restarts.lower_bound_history, "fit_gradient")
    print("OK fit_gradient (full batch)", flush=True)
    model = gj.GaussianMixtureModel(K, tol=TOL, mesh=mesh).fit(X)
    alone = gj.GaussianMixtureModel(K, tol=TOL).fit(X)
    assert_close_tree(
        (model.weights_, model.means_, model.covariances_),
        (alone.weights_, alone.means_, alone.covariances_),
        "estimator",
    )
    assert model.n_iter_ == alone.n_iter_
    print("OK estimator mesh=", flush=True)


def check_gradients(X, weights, mesh, differentiation: str, covariance_type: str = "full"):
    """Derivatives through a sharded fit (rows, sample weights, reg_covar) equal the one-device
    fit's, for a loss of the fitted parameters and of the lower bound."""

    def loss(X, weight, reg_covar, on_mesh):
        result = gj.fit_em(
            jax.random.key(3),
            X,
            K,
            mesh=on_mesh,
            sample_weight=weight,
            reg_covar=reg_covar,
            covariance_type=covariance_type,
            tol=TOL,
            max_iter=30 if differentiation == "unrolled" else 100,
            differentiation=differentiation,
        )
        spread = jnp.sum(jnp.log(result.params.covariances.reshape(K, -1) ** 2 + 1.0))
        return jnp.sum(result.params.means**2) + spread + result.params.weights[0] + 3.0 * result.lower_bound

    arguments = (jnp.asarray(X), jnp.asarray(weights), jnp.asarray(1e-3, DTYPE))
    reference = jax.grad(loss, argnums=(0, 1, 2))(*arguments, None)
    explicit = any(kind == jax.sharding.AxisType.Explicit for kind in mesh.axis_types)
    with jax.set_mesh(mesh) if explicit else contextlib.nullcontext():  # JAX's rule for grad on Explicit axes
        sharded = jax.grad(loss, argnums=(0, 1, 2))(*arguments, mesh)
    assert float(np.abs(np.asarray(reference[0])).max()) > 1e-3, "the loss does not depend on X"
    for name, a, b in zip(("X", "sample_weight", "reg_covar"), sharded, reference):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        error = np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel())
        assert error <= GRAD_RTOL, f"d loss / d {name} ({differentiation}): relative error {error:.3g} > {GRAD_RTOL}"
    kind = "explicit" if explicit else "auto"
    print(f"OK gradients {differentiation} {covariance_type} {kind} mesh (X, sample_weight, reg_covar)", flush=True)


def main():
    explicit = jax.make_mesh((DEVICES,), ("data",))
    auto = Mesh(np.array(jax.devices()), ("data",))
    X_odd = data(1002)  # not divisible by 4 or 8: padded with weight-zero rows
    X_even = data(1000 if DEVICES == 4 else 1008, seed=1)
    weights = np.random.default_rng(2).uniform(0.2, 2.0, X_even.shape[0]).astype(DTYPE)
    if MODE == "quick":
        check_compiled_program(X_odd, explicit, "full")
        return
    if MODE == "gradients":
        odd_weights = np.random.default_rng(4).uniform(0.2, 2.0, X_odd.shape[0]).astype(DTYPE)
        check_gradients(X_odd, odd_weights, explicit, "implicit")
        if "--all" in sys.argv:
            check_gradients(X_odd, odd_weights, auto, "implicit", "diag")
            check_gradients(X_odd, odd_weights, explicit, "unrolled")
        return
    if MODE == "frontdoors":
        check_front_doors(X_odd, explicit)
        return
    if MODE == "tail":
        check_tail(data(20000, seed=3), explicit, X_odd)
        return
    if MODE == "types":  # every covariance type, k-means start, padded rows
        for covariance_type in ("full", "tied", "diag", "spherical"):
            compare(f"{covariance_type} kmeans explicit mesh, padded", X_odd, explicit, covariance_type=covariance_type)
        return
    for covariance_type in ("full", "tied", "diag", "spherical"):
        for init in ("kmeans", "k-means++", "random", "random_from_data"):
            # Random responsibilities start some restarts far off: their long, slow runs amplify
            # rounding (the summation order differs between devices). Restart 0 converges fast.
            compare(
                f"{covariance_type} {init} explicit mesh, padded",
                X_odd,
                explicit,
                covariance_type=covariance_type,
                init_params=init,
                n_init=1 if init == "random" else 2,
            )
        compare(
            f"{covariance_type} auto mesh, pre-sharded, weighted",
            X_even,
            auto,
            presharded=True,
            sample_weight=weights,
            covariance_type=covariance_type,
            n_init=2,
        )
    compare("row_order_invariant=False", X_odd, explicit, row_order_invariant=False, n_init=2)
    compare("n_init=8 (compacting loop)", X_odd, explicit, n_init=8)
    compare("chunked", X_odd, explicit, chunk_size=64, n_init=2)
    large = data(20000, seed=3)  # above the seeding sample size: a drawn, replicated sample
    compare("seeding sample, unweighted, padded", large[:19998], explicit, n_init=2)
    check_tail(large, explicit, X_odd)


def check_tail(large, mesh, X_odd):
    # Weighted rows beyond the seeding-sample size: the sample is drawn by inverting cumulative
    # sums, which the shards compute in another order than one device; in float32 their rounding
    # moves some draws, so the start (not the kind of fit) differs: an equally good fit.
    heavier = np.ones(large.shape[0], DTYPE) + (large[:, 0] > 3)
    key = jax.random.key(1)
    reference = gj.fit_em(key, large, K, sample_weight=heavier, tol=TOL, n_init=2)
    sharded = gj.fit_em(key, large, K, sample_weight=heavier, tol=TOL, n_init=2, mesh=mesh)
    gap = abs(float(sharded.lower_bound) - float(reference.lower_bound)) / abs(float(reference.lower_bound))
    assert gap < 1e-3, gap
    print(f"OK seeding sample, weighted: lower bounds within {gap:.1e} (draws not bit-equal)", flush=True)
    check_compiled_program(X_odd, mesh, "diag")


if __name__ == "__main__":
    main()
