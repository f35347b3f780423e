"""Gradients through ``fit_em`` in both ``differentiation`` modes: implicit (the EM fixed
point) and unrolled (``lax.scan`` over the iterations).

Oracles: central finite differences of the fit itself in float64 (``_x64_grad_checks.py``,
run in the float64 subprocess), the plain while-loop fit (forward values), single fits
with the best restart's key (restarts), loops over datasets (``vmap``), and JAX's own
shape-level accounting of the residuals a reverse pass saves (memory).

Every program here is compiled once and shared between tests (compilation dominates).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _oracles as O
import gmmjax as gj
from gmmjax import _em

MODES = _em.DIFFERENTIATION_MODES
N, D, K = 60, 1, 2
FIT = dict(init_params="random_from_data", max_iter=40, tol=1e-4)
CHUNK = 16  # 60 rows: three full chunks and a clamped last one


def _loss(X, sample_weight, reg_covar, key, *, mode, n_init=1, chunk_size=None):
    """A differentiable function of a fit: its means, covariances and lower bound."""
    result = gj.fit_em(
        key,
        X,
        K,
        sample_weight=sample_weight,
        reg_covar=reg_covar,
        n_init=n_init,
        chunk_size=chunk_size,
        differentiation=mode,
        **FIT,
    )
    p = result.params
    value = jnp.sum(p.means * jnp.arange(1.0, 1.0 + K * D).reshape(K, D)) + jnp.sum(p.covariances) + result.lower_bound
    return value, jax.lax.stop_gradient(result)


_grad = jax.jit(jax.grad(_loss, argnums=(0, 1, 2), has_aux=True), static_argnames=("mode", "n_init", "chunk_size"))


@functools.partial(jax.jit, static_argnames="mode")
def _vmapped_grads(Xs, weights, reg_covar, keys, mode):
    """vmapped over datasets (and their weights and keys), chunked backward passes."""
    return jax.vmap(lambda X, w, key: _grad(X, w, reg_covar, key, mode=mode, chunk_size=CHUNK)[0])(Xs, weights, keys)


@pytest.fixture(scope="module")
def problem():
    """Two datasets of three clusters fitted with two components (restarts find different
    optima), positive unequal sample weights, one key per dataset."""
    Xs = np.stack([O.make_blobs(n=N, d=D, k=3, seed=seed, spread=4.0)[0] for seed in (9, 2)]).astype(np.float32)
    weights = np.random.default_rng(0).uniform(0.5, 1.5, size=(2, N)).astype(np.float32)
    keys = jax.random.split(jax.random.key(3), 2)
    return jnp.asarray(Xs), jnp.asarray(weights), jnp.float32(1e-3), keys


@pytest.fixture(scope="module")
def grads(problem):
    """``grads(mode, dataset, n_init=1)``: jit(grad) of one fit of a dataset with its key,
    ``(gradients, result)``, computed once (only the configurations a selected test needs
    are compiled)."""
    Xs, weights, reg_covar, keys = problem
    cache = {}

    def get(mode, dataset, n_init=1):
        if (mode, dataset, n_init) not in cache:
            cache[mode, dataset, n_init] = _grad(
                Xs[dataset], weights[dataset], reg_covar, keys[dataset], mode=mode, n_init=n_init
            )
        return cache[mode, dataset, n_init]

    return get


# Unrolled mode is JAX's own autodiff of the loop; its gradients are checked against finite
# differences in float64 by default (below) and under jit/vmap here only with -m slow.
BOTH_MODES = ["implicit", pytest.param("unrolled", marks=pytest.mark.slow)]


def _assert_grads_close(got, want, rtol=2e-4, name=""):
    for g, w, what in zip(got, want, ("X", "sample_weight", "reg_covar")):
        w = np.asarray(w)
        np.testing.assert_allclose(
            np.asarray(g), w, rtol=rtol, atol=rtol * np.max(np.abs(w)), err_msg=f"{name} d/d{what}"
        )


def test_differentiation_mode_is_validated():
    with pytest.raises(ValueError, match="differentiation must be one of"):
        gj.fit_em(jax.random.key(0), np.zeros((10, 2)), 2, differentiation="backprop")


@pytest.mark.parametrize("mode", BOTH_MODES)
def test_vmap_over_datasets_equals_single_fits_with_chunked_backward(problem, grads, mode):
    """vmap of grad over datasets (chunked E-step passes, 60 = 3·16 + 12 rows) equals
    grad of each fit alone (one chunk)."""
    batched = _vmapped_grads(*problem, mode=mode)
    for i in range(2):
        single, result = grads(mode, i)
        assert bool(result.converged)
        assert all(np.all(np.isfinite(np.asarray(g))) for g in single)
        assert float(jnp.max(jnp.abs(single[0]))) > 1e-2  # a real dependence on the data
        _assert_grads_close([leaf[i] for leaf in batched], single, name=f"{mode}, dataset {i}")


@pytest.mark.parametrize("mode", BOTH_MODES)
def test_gradient_with_restarts_is_that_of_the_best_restart(problem, grads, mode):
    """vmap over restarts: the best restart is a constant choice, so the gradient of a fit
    with restarts is that of the single fit with the best restart's key."""
    Xs, weights, reg_covar, keys = problem
    restart_grads, result = grads(mode, 0, n_init=3)
    lower_bounds = np.asarray(result.restart_lower_bounds)
    assert np.ptp(lower_bounds) > 1e-3, "the restarts should reach different optima"
    best = int(result.best_restart)
    best_key = gj.restart_keys(keys[0], 3)[best]
    single, single_result = _grad(Xs[0], weights[0], reg_covar, best_key, mode=mode)
    np.testing.assert_allclose(float(single_result.lower_bound), lower_bounds[best], rtol=1e-6)
    _assert_grads_close(restart_grads, single, rtol=1e-5, name=mode)


def test_unrolled_forward_equals_the_while_loop(problem, grads):
    """Unrolled mode runs the same iterations as the while loop and freezes each restart once
    it has converged: every field of the result agrees (restarts vmapped, stopping at
    different iterations)."""
    Xs, weights, reg_covar, keys = problem
    implicit = grads("implicit", 0, n_init=3)[1]
    unrolled = gj.fit_em(
        keys[0], Xs[0], K, sample_weight=weights[0], reg_covar=reg_covar, n_init=3, differentiation="unrolled", **FIT
    )
    assert len(set(np.asarray(implicit.restart_n_iter).tolist())) > 1, "restarts should stop at different steps"
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(implicit), jax.tree_util.tree_leaves(unrolled)):
        a, b, name = np.asarray(a), np.asarray(b), jax.tree_util.keystr(path)
        if a.dtype.kind in "biu":
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


def _residual_bytes(mode, max_iter):
    """Bytes of the residuals a reverse pass through the fit saves (shapes only, nothing runs)."""
    X = jnp.zeros((N, D), jnp.float32)

    def loss(X):
        result = gj.fit_em(jax.random.key(0), X, K, max_iter=max_iter, differentiation=mode)
        return jnp.sum(result.params.means) + result.lower_bound

    residuals = jax.eval_shape(lambda X: jax.vjp(loss, X)[1], X)
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(residuals))


def test_implicit_mode_saves_the_same_residuals_for_any_number_of_iterations():
    """Implicit mode saves the fixed point and the data whatever max_iter is; unrolled mode
    saves every step's parameters (which shows that the count sees per-step residuals)."""
    params_bytes = (K + K * D + K * D * D) * 4
    implicit = [_residual_bytes("implicit", t) for t in (10, 200)]
    unrolled = [_residual_bytes("unrolled", t) for t in (10, 200)]
    assert implicit[0] == implicit[1], implicit
    assert implicit[0] < 2 * N * D * 4, implicit  # about the data and one set of parameters
    assert unrolled[1] - unrolled[0] >= 190 * params_bytes, unrolled


@pytest.mark.slow
def test_compiled_gradient_temporaries_do_not_grow_with_iterations_in_implicit_mode():
    """XLA's accounting of the compiled gradient program: implicit mode's temporaries are the
    same for 10 and 200 iterations, unrolled mode's grow with them."""

    def temp_bytes(mode, max_iter):
        def loss(X):
            result = gj.fit_em(
                jax.random.key(0),
                X,
                K,
                max_iter=max_iter,
                differentiation=mode,
                **{k: v for k, v in FIT.items() if k != "max_iter"},
            )
            return jnp.sum(result.params.means) + result.lower_bound

        compiled = jax.jit(jax.grad(loss)).lower(jnp.zeros((N, D), jnp.float32)).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    implicit = [temp_bytes("implicit", t) for t in (10, 200)]
    unrolled = [temp_bytes("unrolled", t) for t in (10, 200)]
    assert implicit[1] <= implicit[0] + 190 * 4 * 2, implicit  # at most the (max_iter,) history
    assert unrolled[1] - unrolled[0] >= 190 * (K + K * D + K * D * D) * 4, unrolled


@pytest.mark.slow
def test_unrolled_mode_supports_forward_mode_and_second_derivatives(problem):
    """jacfwd equals jacrev through the unrolled fit, and a Hessian-vector product is finite
    and matches central differences of the gradient."""
    Xs, _, _, keys = problem
    reg = jnp.float32(0.05)
    # A given start: the initialisation is a constant for gmmjax's derivatives, but a
    # computed one depends on reg_covar, which central differences would see.
    start = gj.fit_em(keys[0], Xs[0], K, init_params=FIT["init_params"], max_iter=1).params
    given_start = dict(
        weights_init=start.weights, means_init=start.means, precisions_init=jnp.linalg.inv(start.covariances)
    )

    def means_of(reg, X):  # tol=0: the number of iterations cannot change with reg_covar
        return gj.fit_em(
            keys[0], X, K, reg_covar=reg, differentiation="unrolled", max_iter=FIT["max_iter"], tol=0.0, **given_start
        ).params.means

    forward = jax.jit(jax.jacfwd(means_of))(reg, Xs[0])
    reverse = jax.jit(jax.jacrev(means_of))(reg, Xs[0])
    np.testing.assert_allclose(np.asarray(forward), np.asarray(reverse), rtol=1e-4, atol=1e-6)
    assert float(jnp.max(jnp.abs(forward))) > 1e-3
    grad_reg = jax.jit(jax.grad(lambda r, X: jnp.sum(means_of(r, X))))
    second = jax.jit(jax.grad(grad_reg))(reg, Xs[0])
    h = 1e-3
    fd = (grad_reg(reg + h, Xs[0]) - grad_reg(reg - h, Xs[0])) / (2 * h)
    np.testing.assert_allclose(float(second), float(fd), rtol=1e-2)


@pytest.mark.parametrize(
    "name",
    [
        "grad_fit_full",
        "grad_fit_diag",
        "grad_fit_heldout_wrt_transform_full",
        "grad_fit_unrolled_stops_like_the_while_loop",
    ],
)
def test_float64_gradients_match_central_differences(x64_check, name):
    """float64 (subprocess, ``_x64_grad_checks.py``): gradients through the fit against
    central differences of the fit to 1e-5 relative — w.r.t. the data, sample weights and
    reg_covar (both modes, full; implicit, diag), an affine feature map (held-out
    log-likelihood), and a fit stopped early by tol (unrolled)."""
    x64_check(name)


@pytest.mark.slow
def test_float64_gradients_of_more_covariance_types_match_central_differences():
    """As above for tied and spherical covariances (implicit mode), in a float64 subprocess."""
    import json
    import os
    import subprocess
    import sys

    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            p for p in (os.path.dirname(tests_dir), tests_dir, os.environ.get("PYTHONPATH")) if p
        ),
    )
    done = subprocess.run(
        [sys.executable, os.path.join(tests_dir, "_x64_grad_checks.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("X64_RESULTS ")]
    assert lines, done.stderr[-4000:]
    results = json.loads(lines[-1][len("X64_RESULTS ") :])
    assert set(results) == {"grad_fit_tied", "grad_fit_spherical"}, results
    for name, outcome in results.items():
        assert outcome == "ok", f"{name}:\n{outcome}"
