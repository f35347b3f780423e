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
    result = gj.fit_em(key, X, K, sample_weight=sample_weight, reg_covar=reg_covar, n_init=n_init,
                       chunk_size=chunk_size, differentiation=mode, **FIT)
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
def single_grads(problem):
    """jit(grad) of one fit per dataset and mode: ``{mode: [(grads, result) per dataset]}``."""
    Xs, weights, reg_covar, keys = problem
    return {mode: [_grad(Xs[i], weights[i], reg_covar, keys[i], mode=mode) for i in range(2)] for mode in MODES}


def _assert_grads_close(got, want, rtol=2e-4, name=""):
    for g, w, what in zip(got, want, ("X", "sample_weight", "reg_covar")):
        w = np.asarray(w)
        np.testing.assert_allclose(np.asarray(g), w, rtol=rtol, atol=rtol * np.max(np.abs(w)),
                                   err_msg=f"{name} d/d{what}")


def test_differentiation_mode_is_validated():
    with pytest.raises(ValueError, match="differentiation must be one of"):
        gj.fit_em(jax.random.key(0), np.zeros((10, 2)), 2, differentiation="backprop")


# Unrolled mode is JAX's own autodiff of the loop: its vmapped case is compiled only with -m slow.
@pytest.mark.parametrize("mode", ["implicit", pytest.param("unrolled", marks=pytest.mark.slow)])
def test_vmap_over_datasets_equals_single_fits_with_chunked_backward(problem, single_grads, mode):
    """vmap of grad over datasets (chunked E-step passes, 60 = 3·16 + 12 rows) equals
    grad of each fit alone (one chunk)."""
    batched = _vmapped_grads(*problem, mode=mode)
    for i in range(2):
        single, result = single_grads[mode][i]
        assert bool(result.converged)
        assert all(np.all(np.isfinite(np.asarray(g))) for g in single)
        assert float(jnp.max(jnp.abs(single[0]))) > 1e-2  # a real dependence on the data
        _assert_grads_close([leaf[i] for leaf in batched], single, name=f"{mode}, dataset {i}")


@pytest.fixture(scope="module")
def restart_grads(problem):
    Xs, weights, reg_covar, keys = problem
    return {mode: _grad(Xs[0], weights[0], reg_covar, keys[0], mode=mode, n_init=3) for mode in MODES}


def test_unrolled_forward_equals_the_while_loop(restart_grads):
    """Unrolled mode runs the same iterations as the while loop and freezes each restart once
    it has converged: every field of the result agrees, restarts that stopped at different
    iterations included."""
    implicit, unrolled = restart_grads["implicit"][1], restart_grads["unrolled"][1]
    assert len(set(np.asarray(implicit.restart_n_iter).tolist())) > 1, "restarts should stop at different steps"
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(implicit), jax.tree_util.tree_leaves(unrolled)):
        a, b, name = np.asarray(a), np.asarray(b), jax.tree_util.keystr(path)
        if a.dtype.kind in "biu":
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


def test_gradient_with_restarts_is_that_of_the_best_restart(problem, restart_grads, single_grads):
    """vmap over restarts: the best restart is a constant choice, so the gradient of a fit
    with restarts is that of the single fit with the best restart's key."""
    Xs, weights, reg_covar, keys = problem
    for mode in MODES:
        grads, result = restart_grads[mode]
        lower_bounds = np.asarray(result.restart_lower_bounds)
        assert np.ptp(lower_bounds) > 1e-3, "the restarts should reach different optima"
        best = int(result.best_restart)
        best_key = jax.random.split(keys[0], 3)[best]
        single, single_result = _grad(Xs[0], weights[0], reg_covar, best_key, mode=mode)
        np.testing.assert_allclose(float(single_result.lower_bound), lower_bounds[best], rtol=1e-6)
        _assert_grads_close(grads, single, rtol=1e-5, name=mode)


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
            result = gj.fit_em(jax.random.key(0), X, K, max_iter=max_iter, differentiation=mode, **{
                k: v for k, v in FIT.items() if k != "max_iter"})
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

    def means_of(reg, X):  # tol=0: the number of iterations cannot change with reg_covar
        return gj.fit_em(keys[0], X, K, reg_covar=reg, differentiation="unrolled",
                         **{**FIT, "tol": 0.0}).params.means

    forward = jax.jit(jax.jacfwd(means_of))(reg, Xs[0])
    reverse = jax.jit(jax.jacrev(means_of))(reg, Xs[0])
    np.testing.assert_allclose(np.asarray(forward), np.asarray(reverse), rtol=1e-4, atol=1e-6)
    assert float(jnp.max(jnp.abs(forward))) > 1e-3
    grad_reg = jax.jit(jax.grad(lambda r, X: jnp.sum(means_of(r, X))))
    second = jax.jit(jax.grad(grad_reg))(reg, Xs[0])
    h = 1e-3
    fd = (grad_reg(reg + h, Xs[0]) - grad_reg(reg - h, Xs[0])) / (2 * h)
    np.testing.assert_allclose(float(second), float(fd), rtol=1e-2)


@pytest.mark.parametrize("name", [
    "grad_fit_full", "grad_fit_tied", "grad_fit_diag", "grad_fit_spherical",
    "grad_fit_heldout_wrt_transform_full", "grad_fit_unrolled_stops_like_the_while_loop",
])
def test_float64_gradients_match_central_differences(x64_check, name):
    """float64 (subprocess, ``_x64_grad_checks.py``): gradients through the fit in both modes
    against central differences of the fit to 1e-5 relative — w.r.t. the data, sample
    weights, reg_covar (every covariance type) and an affine feature map (held-out
    log-likelihood); unrolled mode also for a fit stopped early by tol."""
    x64_check(name)
