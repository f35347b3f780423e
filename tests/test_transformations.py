"""JAX transformations of the functional core: jit, vmap (restarts and datasets), grad,
tracing/compilation counts and key handling.

Oracles: the eager (un-jitted) functions, loops of single fits, finite differences and
closed-form gradients of an independent float64 SciPy implementation (tight float64 finite
differences of gmmjax itself run in the x64 subprocess, ``_x64_parity_script.py``).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _oracles as O
import gmmjax as gj

COV_TYPES = O.COVARIANCE_TYPES
N, D, K = 150, 2, 3
MAX_ITER = 50


@pytest.fixture(scope="module")
def data():
    X, _, _ = O.make_blobs(n=N, d=D, k=K, seed=3, spread=4.0)
    return X.astype(np.float32)


def _random_params(covariance_type, k=3, d=2, seed=0, dtype=np.float32):
    w, m, c = O.random_mixture(covariance_type, k, d, seed)
    return gj.GMMParams(jnp.asarray(w, dtype), jnp.asarray(m, dtype), jnp.asarray(c, dtype), covariance_type)


# --------------------------------------------------------------------------- jit == eager


# Eager evaluation is slow-ish (op-by-op dispatch); the matrix and the scalar paths run by default.
@pytest.mark.parametrize(
    "covariance_type",
    [
        "full",
        pytest.param("tied", marks=pytest.mark.slow),
        pytest.param("diag", marks=pytest.mark.slow),  # ≈ 13 s; tests/test_vmap_branches.py jits diag fits too
        pytest.param("spherical", marks=pytest.mark.slow),
    ],
)
def test_jit_matches_eager(data, covariance_type):
    params = _random_params(covariance_type, seed=1)
    X = jnp.asarray(data)
    sw = jnp.asarray(np.random.default_rng(2).uniform(0.5, 2.0, N), jnp.float32)

    O.assert_trees_close(jax.jit(gj.log_prob)(params, X), gj.log_prob(params, X), rtol=1e-5, atol=1e-5)
    stats_j, ll_j = jax.jit(gj.e_step)(params, X, sw)
    stats_e, ll_e = gj.e_step(params, X, sw)
    O.assert_trees_close((stats_j, ll_j), (stats_e, ll_e), rtol=1e-5, atol=1e-4)
    O.assert_trees_close(
        jax.jit(gj.m_step)(stats_e, params.means, 1e-6), gj.m_step(stats_e, params.means, 1e-6), rtol=1e-5, atol=1e-5
    )
    new_j, lb_j = jax.jit(gj.em_step)(params, X, sw, 1e-6)
    new_e, lb_e = gj.em_step(params, X, sw, 1e-6)
    O.assert_trees_close((new_j, lb_j), (new_e, lb_e), rtol=1e-5, atol=1e-5)
    # the step moved the parameters (the comparison is about real work)
    assert float(jnp.max(jnp.abs(new_e.means - params.means))) > 1e-2

    key = jax.random.key(7)
    Y_j, lab_j = jax.jit(gj.sample, static_argnums=2)(key, params, 64)
    Y_e, lab_e = gj.sample(key, params, 64)
    np.testing.assert_array_equal(np.asarray(lab_j), np.asarray(lab_e))
    np.testing.assert_allclose(np.asarray(Y_j), np.asarray(Y_e), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- vmap over restarts / datasets


def test_vmapped_restarts_equal_single_fits(data):
    """Restart r of a batched fit equals a single fit with gj.restart_keys(key, n_init)[r]."""
    key = jax.random.key(42)
    batched = gj.fit_em(key, data, K, n_init=4, init_params="random_from_data", max_iter=MAX_ITER)
    keys = gj.restart_keys(key, 4)
    for r in range(4):
        single = gj.fit_em(keys[r], data, K, n_init=1, init_params="random_from_data", max_iter=MAX_ITER)
        restart_r = jax.tree_util.tree_map(lambda leaf: leaf[r], batched.restart_params)  # noqa: B023  tree_map calls it at once
        O.assert_trees_close(restart_r, single.params, rtol=1e-4, atol=1e-4)
        assert int(batched.restart_n_iter[r]) == int(single.n_iter)
        np.testing.assert_allclose(float(batched.restart_lower_bounds[r]), float(single.lower_bound), rtol=1e-5)
        np.testing.assert_allclose(
            np.asarray(batched.lower_bound_history[r]), np.asarray(single.lower_bound_history[0]), rtol=1e-5
        )
    # log_prob vmapped over the restarts' parameters equals a loop
    per_restart = jax.vmap(gj.log_prob, in_axes=(0, None))(batched.restart_params, data)
    for r in range(4):
        restart_r = jax.tree_util.tree_map(lambda leaf: leaf[r], batched.restart_params)  # noqa: B023  tree_map calls it at once
        np.testing.assert_allclose(
            np.asarray(per_restart[r]), np.asarray(gj.log_prob(restart_r, data)), rtol=1e-5, atol=1e-5
        )
    # the best restart is the one reported
    best = int(batched.best_restart)
    O.assert_trees_close(
        batched.params, jax.tree_util.tree_map(lambda leaf: leaf[best], batched.restart_params), rtol=0, atol=0
    )


def test_vmap_fit_em_over_datasets(blobs):
    """jax.vmap of fit_em over a batch of equally shaped datasets and keys equals a loop."""
    Xs = np.stack([blobs(n=N, d=D, k=K, seed=s, spread=4.0)[0] for s in (10, 11, 12)]).astype(np.float32)
    keys = jax.random.split(jax.random.key(5), 3)

    def fit(key, X):
        return gj.fit_em(key, X, K, init_params="random_from_data", max_iter=MAX_ITER)

    batched = jax.vmap(fit)(keys, jnp.asarray(Xs))
    assert batched.params.means.shape == (3, K, D)
    for i in range(3):
        single = fit(keys[i], Xs[i])
        O.assert_trees_close(jax.tree_util.tree_map(lambda leaf: leaf[i], batched), single, rtol=1e-4, atol=1e-4)  # noqa: B023  tree_map calls it at once


def test_user_jit_of_fit_em_matches_direct_call(data):
    """fit_em under the user's own jit (configuration static, tol traced) equals a direct call."""
    jitted = jax.jit(
        gj.fit_em, static_argnums=2, static_argnames=("covariance_type", "max_iter", "n_init", "init_params")
    )
    key = jax.random.key(8)
    kw = dict(n_init=1, init_params="random_from_data", max_iter=MAX_ITER)
    got = jitted(key, jnp.asarray(data), K, tol=jnp.float32(1e-3), **kw)
    want = gj.fit_em(key, data, K, tol=1e-3, **kw)
    O.assert_trees_close(got, want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_grad_float32_vs_float64_oracle(covariance_type):
    """jax.grad of sum(log_prob) w.r.t. means, covariances and X (float32) against central
    differences of the independent float64 SciPy mixture density, and a closed form for X."""
    params = _random_params(covariance_type, seed=3)
    X = np.random.default_rng(4).normal(scale=2.0, size=(5, D))
    w, m, c = (np.asarray(a, np.float64) for a in (params.weights, params.means, params.covariances))

    def total(means, covs, x):
        return jnp.sum(gj.log_prob(params.replace(means=means, covariances=covs), x))

    g_m, g_c, g_x = jax.grad(total, argnums=(0, 1, 2))(params.means, params.covariances, jnp.asarray(X, jnp.float32))

    def oracle(mm, cc, xx):
        if covariance_type in ("full", "tied"):  # gmmjax reads symmetric matrices: (C + Cᵀ)/2
            cc = 0.5 * (cc + np.swapaxes(cc, -1, -2))
        return O.mixture_log_prob(w, mm, cc, covariance_type, xx).sum()

    O.assert_rel_close(g_m, O.central_difference(lambda v: oracle(v, c, X), m, 1e-6), 1e-3, "d/dmeans", floor=1e-1)
    O.assert_rel_close(
        g_c, O.central_difference(lambda v: oracle(m, v, X), c, 1e-6), 1e-3, "d/dcovariances", floor=1e-1
    )
    O.assert_rel_close(g_x, O.central_difference(lambda v: oracle(m, c, v), X, 1e-6), 1e-3, "d/dX", floor=1e-1)
    # closed form: d/dx_n = -sum_k r_nk Sigma_k^-1 (x_n - mu_k)
    r = O.responsibilities(w, m, c, covariance_type, X)
    covs = O.full_covariances(c, covariance_type, K, D)
    closed = -sum(r[:, j : j + 1] * np.linalg.solve(covs[j], (X - m[j]).T).T for j in range(K))
    O.assert_rel_close(g_x, closed, 1e-4, "d/dX closed form", floor=1e-1)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_grad_float64_finite_differences(x64_check, covariance_type):
    """float64 (subprocess): grads w.r.t. means, covariances, X match central differences of
    gmmjax itself to 1e-6, and the closed form for the means to 1e-9."""
    x64_check(f"grad_{covariance_type}")


def test_hessian_of_single_gaussian_is_minus_precision():
    cov = np.array([[2.0, 0.6], [0.6, 0.5]])
    params = gj.GMMParams(jnp.ones(1), jnp.asarray([[1.0, -1.0]]), jnp.asarray(cov[None], jnp.float32))
    x = jnp.asarray([0.3, 0.2])
    hess = jax.jit(jax.hessian(lambda v: gj.log_prob(params, v[None])[0]))(x)
    np.testing.assert_allclose(np.asarray(hess), -np.linalg.inv(cov), rtol=1e-4)


# --------------------------------------------------------------------------- tracing / compilation


def test_fit_em_compiles_once_per_configuration(data):
    # fit_em compiles with one of two sets of XLA settings (gmmjax._compile): count both.
    variants = [gj._em._fit_em_for_size.variant(small) for small in (False, True)]
    assert all(hasattr(fit, "_cache_size") for fit in variants), "this jax has no jitted-function _cache_size()"
    compiled = lambda: sum(fit._cache_size() for fit in variants)  # noqa: E731
    kwargs = dict(covariance_type="diag", max_iter=17, n_init=2)  # a configuration no other test uses
    before = compiled()
    gj.fit_em(jax.random.key(0), data, K, tol=1e-3, **kwargs)
    first = compiled()
    assert first - before <= 1
    other = (data * 1.5 + 2.0).astype(np.float32)
    gj.fit_em(jax.random.key(1), other, K, tol=1e-5, reg_covar=1e-4, **kwargs)
    assert compiled() == first, "fit_em recompiled for new key/tol/reg_covar/data values"
    # weighted fits are one more program (unweighted ones carry no (N,) array of ones) ...
    gj.fit_em(jax.random.key(2), other, K, tol=0.0, sample_weight=np.full(N, 2.0), **kwargs)
    assert compiled() == first + 1
    # ... compiled once for all weight values
    gj.fit_em(jax.random.key(3), data, K, tol=0.0, sample_weight=np.linspace(0.5, 1.5, N), **kwargs)
    assert compiled() == first + 1, "fit_em recompiled for new sample_weight values"
    # a different static configuration is a new entry (so the counter does count)
    gj.fit_em(jax.random.key(0), data, K, tol=1e-3, covariance_type="diag", max_iter=18, n_init=2)
    assert compiled() == first + 2


def test_generate_gmm_data_compiles_once_per_shape():
    sample_jit = gj._sampling._sample_jit
    w, m, c = [0.5, 0.5], [[0.0, 0.0], [5.0, 5.0]], np.stack([np.eye(2)] * 2)
    gj.generate_gmm_data(33, w, m, c, key=jax.random.key(0))
    size = sample_jit._cache_size()
    gj.generate_gmm_data(33, [0.3, 0.7], [[1.0, 0.0], [-5.0, 5.0]], 2 * c, key=jax.random.key(1))
    assert sample_jit._cache_size() == size


def test_user_jitted_wrappers_trace_once():
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def lp(params, X):
        return gj.log_prob(params, X)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, X, reg_covar):
        return gj.em_step(params, X, reg_covar=reg_covar)

    X1 = jnp.asarray(np.random.default_rng(0).normal(size=(40, D)), jnp.float32)
    X2 = X1 * 2.0 + 1.0
    p1, p2 = _random_params("full", seed=1), _random_params("full", seed=2)
    lp(p1, X1)
    lp(p2, X2)
    step(p1, X1, 1e-6)
    step(p2, X2, 1e-3)
    # new parameter values must not retrace; a new covariance type or shape is a new trace,
    # which the counter must catch (showing it is armed)
    with pytest.raises(AssertionError):
        lp(_random_params("diag", seed=1), X1)
    with pytest.raises(AssertionError):
        step(p1, X1[:20], 1e-6)


# --------------------------------------------------------------------------- keys


def test_same_key_same_result_different_keys_different_restarts(data):
    kwargs = dict(n_init=4, init_params="random_from_data", max_iter=MAX_ITER)
    a = gj.fit_em(jax.random.key(42), data, K, **kwargs)
    b = gj.fit_em(jax.random.key(42), data, K, **kwargs)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    c = gj.fit_em(jax.random.key(43), data, K, **kwargs)
    # the starting points (first history entry = log-likelihood of the initial parameters)
    # differ between keys and between the restarts of one fit
    start_a = np.asarray(a.lower_bound_history[:, 0])
    start_c = np.asarray(c.lower_bound_history[:, 0])
    assert len(np.unique(start_a)) == 4
    assert not np.allclose(start_a, start_c)
    assert not np.allclose(np.asarray(a.restart_params.means), np.asarray(c.restart_params.means))
