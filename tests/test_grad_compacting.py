"""Gradients through fits whose loops run the compacting rule of :mod:`gmmjax._loops`
(``vmap`` with at least ``MIN_BATCH`` lanes: ``n_init >= 8``, or ``vmap`` over 8 datasets).

Oracle: the gradients of the same fits done one at a time (``n_init=1``, no ``vmap``: a
plain ``lax.while_loop``), independent of the compacting loop. Restart ``r`` of a batched
fit is the single fit with ``restart_keys(key, n_init)[r]`` (see :func:`gmmjax.restart_keys`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _oracles as O
import gmmjax as gj
from gmmjax import _loops

N, D, K, LANES = 40, 2, 2, 8
FIT = dict(init_params="kmeans", max_iter=30, tol=1e-4)


def _loss(X, sample_weight, reg_covar, key, n_init=1):
    result = gj.fit_em(key, X, K, sample_weight=sample_weight, reg_covar=reg_covar, n_init=n_init, **FIT)
    p = result.params
    value = jnp.sum(p.means * jnp.arange(1.0, 1.0 + K * D).reshape(K, D)) + jnp.sum(p.covariances) + result.lower_bound
    return value, result.best_restart


_grad = jax.jit(jax.grad(_loss, argnums=(0, 1, 2), has_aux=True), static_argnames="n_init")


@pytest.fixture(scope="module")
def problem():
    Xs = np.stack([O.make_blobs(n=N, d=D, k=3, seed=seed, spread=4.0)[0] for seed in range(LANES)])
    weights = np.random.default_rng(0).uniform(0.5, 1.5, size=(LANES, N))
    return jnp.asarray(Xs, jnp.float32), jnp.asarray(weights, jnp.float32), jnp.float32(1e-3)


def _assert_grads_close(got, want):
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3 * max(1.0, np.abs(b).max()))


def test_gradient_through_eight_restarts_equals_the_best_single_fit(problem):
    assert LANES >= _loops.MIN_BATCH  # the compacting rule runs
    Xs, weights, reg_covar = problem
    key = jax.random.key(5)
    grads, best = _grad(Xs[0], weights[0], reg_covar, key, n_init=LANES)
    single, _ = _grad(Xs[0], weights[0], reg_covar, gj.restart_keys(key, LANES)[int(best)])
    assert np.abs(np.asarray(single[0])).max() > 0  # not a trivially zero gradient
    _assert_grads_close(grads, single)


@pytest.mark.slow
def test_gradient_through_vmapped_fits_of_eight_datasets_equals_fits_one_by_one(problem):
    Xs, weights, reg_covar = problem
    keys = jax.random.split(jax.random.key(8), LANES)
    batched, _ = jax.jit(jax.vmap(lambda X, w, key: _grad(X, w, reg_covar, key)))(Xs, weights, keys)
    for i in range(LANES):
        single, _ = _grad(Xs[i], weights[i], reg_covar, keys[i])
        _assert_grads_close(jax.tree_util.tree_map(lambda leaf: leaf[i], batched), single)  # noqa: B023  tree_map calls it at once
