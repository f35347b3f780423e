"""The unconstrained parametrisation: round trip, positive definiteness, finite gradients,
the log-density straight from unconstrained numbers, and jit / vmap / grad.

Oracles: scipy's densities and NumPy linear algebra (``_oracles.py``), the closed-form
gradient in the means, and a float64 subprocess (``_x64_gradient_script.py``: round trip
to 1e-13 and gradients against central finite differences).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _oracles as O
import gmmjax as gj
from gmmjax._unconstrained import component_terms_from_unconstrained, log_diagonal_bound

COV_TYPES = O.COVARIANCE_TYPES
K, D = 3, 4
RAW_SHAPES = {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}


_X_SMALL = np.random.default_rng(0).normal(scale=2.0, size=(40, D)).astype(np.float32)


@pytest.fixture(scope="module")
def X():
    return _X_SMALL


# One jitted function per covariance type shared by the tests: one compilation each, instead
# of one per operation of an eager evaluation (the oracles are NumPy and scipy).
@jax.jit
def _evaluate(params, u, X):
    """Round trip of ``params``; ``from_unconstrained(u)`` and the two ways to its density."""
    u_of_params = gj.to_unconstrained(params)
    params_back = gj.from_unconstrained(u_of_params)
    round_trip = (u_of_params, params_back, gj.to_unconstrained(params_back))
    params_of_u = gj.from_unconstrained(u)
    return round_trip, (gj.unconstrained_log_prob(u, X), gj.log_prob(params_of_u, X), params_of_u)


def _round_trip(params):
    return _evaluate(params, _random_unconstrained(params.covariance_type), _X_SMALL)[0]


def _densities(u, X):
    params = _params(u.covariance_type)
    return _evaluate(params, u, X)[1]


def _params(covariance_type, seed=0):
    w, m, c = O.random_mixture(covariance_type, K, D, seed)
    return gj.GMMParams(*(jnp.asarray(a, jnp.float32) for a in (w, m, c)), covariance_type=covariance_type)


def _random_unconstrained(covariance_type, seed=0, diagonal_spread=0.5, off_spread=0.5):
    """Random unconstrained numbers: log-diagonal ``diagonal_spread · N(0, 1)``; the strictly
    upper entries of row ``d`` are ``off_spread · N(0, 1)`` times that row's diagonal (so ``P``
    is ``diag(p) (I + off_spread · N)``, conditioned like ``diag(p)``); junk in the ignored
    strictly lower triangle."""
    rng = np.random.default_rng(seed)
    shape = RAW_SHAPES[covariance_type]
    raw = diagonal_spread * rng.normal(size=shape)
    if covariance_type in ("full", "tied"):
        i = np.arange(D)
        diagonal = np.exp(np.clip(raw[..., i, i], -20, 20))
        raw = np.where(np.eye(D, dtype=bool), raw, off_spread * rng.normal(size=shape) * diagonal[..., :, None])
    return gj.UnconstrainedParams(
        jnp.asarray(rng.normal(size=K), jnp.float32),
        jnp.asarray(rng.normal(size=(K, D)), jnp.float32),
        jnp.asarray(raw, jnp.float32),
        covariance_type,
    )


def _assert_positive_definite(covariances, covariance_type):
    cov = np.asarray(covariances, np.float64)
    assert np.all(np.isfinite(cov))
    if covariance_type in ("full", "tied"):
        np.testing.assert_array_equal(cov, np.swapaxes(cov, -1, -2))
        np.linalg.cholesky(cov)  # raises LinAlgError unless positive definite
    else:
        assert np.all(cov > 0)


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_round_trip_float32(covariance_type):
    p = _params(covariance_type)
    u, q, v = _round_trip(p)
    assert u.covariance_type == covariance_type and u.raw_precision_cholesky.shape == RAW_SHAPES[covariance_type]
    assert q.covariance_type == covariance_type
    for name in ("weights", "means", "covariances"):
        assert getattr(q, name).dtype == jnp.float32
        O.assert_rel_close(getattr(q, name), getattr(p, name), 1e-5, name)
    for name in ("logits", "means", "raw_precision_cholesky"):
        O.assert_rel_close(getattr(v, name), getattr(u, name), 3e-5, name)


def test_stored_numbers_are_sklearn_precision_cholesky_with_log_diagonal():
    p = _params("full")
    raw = np.asarray(_round_trip(p)[0].raw_precision_cholesky)
    expected = O.precision_cholesky(p.covariances, "full")
    i = np.arange(D)
    np.testing.assert_allclose(np.exp(raw[:, i, i]), expected[:, i, i], rtol=1e-5)
    np.testing.assert_allclose(np.triu(raw, 1), np.triu(expected, 1), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(np.tril(raw, -1), 0.0)


def test_zero_weight_gets_a_finite_logit():
    p = _params("diag").replace(weights=jnp.array([0.0, 0.25, 0.75], jnp.float32))
    u, q, _ = _round_trip(p)
    assert np.all(np.isfinite(np.asarray(u.logits)))
    np.testing.assert_allclose(q.weights, p.weights, rtol=1e-6, atol=1e-30)
    assert float(q.weights[0]) == 0.0


def test_zero_weight_component_stays_empty_far_from_the_others():
    """20σ from the only weighted component a zero-weight one at that point must not count:
    log_prob is that of the weighted component alone (a logit of log(tiny) = -87 let it win)."""
    p = gj.GMMParams(jnp.array([0.0, 1.0]), jnp.array([[20.0], [0.0]]), jnp.ones((2, 1, 1)), "full")
    X = jnp.array([[20.0], [0.5]])
    expected = -0.5 * np.log(2 * np.pi) - 0.5 * np.array([20.0, 0.5]) ** 2  # N(x | 0, 1)
    np.testing.assert_allclose(gj.unconstrained_log_prob(gj.to_unconstrained(p), X), expected, rtol=1e-6)
    np.testing.assert_allclose(gj.log_prob(p, X), expected, rtol=1e-6)


# --------------------------------------------------------------------------- validity


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_every_unconstrained_point_is_a_valid_mixture(X, covariance_type):
    for seed, diagonal_spread, off_spread in [(1, 1.0, 1.0), (2, 5.0, 0.2), (3, 1e3, 0.5)]:
        p = _densities(_random_unconstrained(covariance_type, seed, diagonal_spread, off_spread), X)[2]
        _assert_positive_definite(p.covariances, covariance_type)
        assert np.all(np.asarray(p.weights) >= 0) and abs(float(jnp.sum(p.weights)) - 1) < 1e-6


def test_diagonal_beyond_the_bound_is_clipped_to_representable_variances(X):
    bound = log_diagonal_bound(jnp.float32)
    assert bound == pytest.approx(-math.log(np.finfo(np.float32).tiny) / 4)
    u = _random_unconstrained("diag").replace(
        raw_precision_cholesky=jnp.array([[1e4, -1e4, 0.0, 1.0]] * K, jnp.float32)
    )
    variances = np.asarray(_densities(u, X)[2].covariances)
    tiny = float(np.finfo(np.float32).tiny)
    np.testing.assert_allclose(variances[:, :2], [[math.sqrt(tiny), 1 / math.sqrt(tiny)]] * K, rtol=1e-5)
    np.testing.assert_allclose(variances[:, 2:], [[1.0, math.exp(-2.0)]] * K, rtol=1e-6)


def test_covariance_cholesky_factor_is_the_inverse_transpose_of_the_precision_factor(X):
    u = _random_unconstrained("full", seed=4)
    cov = np.asarray(_densities(u, X)[2].covariances, np.float64)
    prec_chol = np.asarray(jax.jit(lambda u: component_terms_from_unconstrained(u).prec_chol)(u), np.float64)
    np.testing.assert_allclose(
        np.linalg.cholesky(cov), np.swapaxes(np.linalg.inv(prec_chol), -1, -2), rtol=1e-4, atol=1e-5
    )


@jax.jit
def _gradients(params, u, X):
    """Gradients of the mean log-density: in ``u`` and ``X`` directly, in ``u`` through
    ``log_prob(from_unconstrained(u))``, and in ``params`` through ``to_unconstrained``."""

    def mean_log_density(u, X):
        return jnp.mean(gj.unconstrained_log_prob(u, X))

    value, (grad_u, grad_x) = jax.value_and_grad(mean_log_density, argnums=(0, 1))(u, X)
    grad_u_via_params = jax.grad(lambda u: jnp.mean(gj.log_prob(gj.from_unconstrained(u), X)))(u)
    grad_params = jax.grad(lambda p: mean_log_density(gj.to_unconstrained(p), X))(params)
    return value, grad_u, grad_x, grad_u_via_params, grad_params, gj.from_unconstrained(u)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_gradients_are_finite_at_extreme_valid_points(covariance_type):
    """Weights near zero, variances 1e-6 … 1e6, strong correlation, data 1e4 σ away."""
    scales = np.array([1e-3, 1.0, 1e3, 1.0])
    if covariance_type == "full":
        corr = np.full((D, D), 0.999) + 0.001 * np.eye(D)
        cov = np.stack([np.outer(scales, scales) * corr, np.eye(D), 1e-6 * np.eye(D)])
    else:
        cov = np.stack([scales**2, np.ones(D), np.full(D, 1e-6)])
    p = gj.GMMParams(
        jnp.asarray([1e-30, 0.5, 0.5], jnp.float32),
        jnp.zeros((K, D), jnp.float32),
        jnp.asarray(cov, jnp.float32),
        covariance_type,
    )
    extreme = [[0.0, 0.0, 0.0, 0.0], [1e4, -1e4, 1e4, 1.0], [1e-3, 2.0, -3e3, 0.5]]
    X = np.concatenate([np.asarray(extreme, np.float32), _X_SMALL[3:]])  # the shape the other tests use

    *results, back = _gradients(p, _round_trip(p)[0], X)
    for leaf in jax.tree_util.tree_leaves(results):
        assert np.all(np.isfinite(np.asarray(leaf)))
    _assert_positive_definite(back.covariances, covariance_type)


# --------------------------------------------------------------------------- the density


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_log_density_from_unconstrained_numbers_equals_log_prob(X, covariance_type):
    u = _random_unconstrained(covariance_type, seed=5)
    direct, via_params, params = _densities(u, X)
    assert direct.shape == (X.shape[0],) and direct.dtype == jnp.float32
    np.testing.assert_allclose(direct, via_params, rtol=2e-6, atol=2e-6)
    oracle = O.mixture_log_prob(params.weights, params.means, params.covariances, covariance_type, X)
    np.testing.assert_allclose(direct, oracle, rtol=1e-5, atol=1e-5)
    if covariance_type == "full":  # chunked evaluation gives the same rows
        chunked = jax.jit(gj.unconstrained_log_prob, static_argnames="chunk_size")(u, X, chunk_size=16)
        np.testing.assert_allclose(chunked, direct, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- transformations


def test_unconstrained_params_is_a_pytree_with_static_covariance_type():
    u = _random_unconstrained("tied")
    leaves, treedef = jax.tree_util.tree_flatten(u)
    assert len(leaves) == 3
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert rebuilt.covariance_type == "tied"
    assert u.num_components == K and u.num_features == D
    with pytest.raises(ValueError, match="covariance_type must be one of"):
        gj.UnconstrainedParams(u.logits, u.means, u.raw_precision_cholesky, "banana")


def test_vmap_over_a_batch_of_mixtures_equals_a_loop(X):
    params = [_params("full", seed=s) for s in range(3)]
    us = [_random_unconstrained("full", seed=s) for s in range(3)]
    stack = lambda trees: jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)
    batched = jax.vmap(_evaluate, in_axes=(0, 0, None))(stack(params), stack(us), X)
    for i in range(3):
        single = _evaluate(params[i], us[i], X)
        for a, b in zip(jax.tree_util.tree_leaves(batched), jax.tree_util.tree_leaves(single)):
            np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6)


def test_grad_matches_the_closed_form_and_the_route_through_from_unconstrained(X):
    """d Σ log p / dμ_k = Σ_n r_nk Σ_k⁻¹ (x_n − μ_k) (scipy responsibilities, NumPy solve), and
    the gradient through ``log_prob(from_unconstrained(u))`` is the same as the direct one."""
    u = _random_unconstrained("full", seed=7)
    _, grad, _, grad_via_params, _, p = _gradients(_params("full"), u, X)
    assert isinstance(grad, gj.UnconstrainedParams) and grad.covariance_type == "full"
    for a, b in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(grad_via_params)):
        O.assert_rel_close(a, b, 1e-4, "two routes")
    w, m, c = (np.asarray(a, np.float64) for a in (p.weights, p.means, p.covariances))
    r = O.responsibilities(w, m, c, "full", X)
    closed = np.stack([np.linalg.solve(c[k], ((X - m[k]) * r[:, k : k + 1]).sum(0)) for k in range(K)])
    O.assert_rel_close(grad.means * X.shape[0], closed, 1e-4, "d/dmeans")


# --------------------------------------------------------------------------- float64 (subprocess; last, so it
# has run in the background meanwhile)


@pytest.mark.parametrize("check", [f"{kind}_{ct}" for kind in ("round_trip", "fd_log_prob") for ct in COV_TYPES])
def test_float64_round_trip_and_finite_difference_gradients(check, x64_check):
    x64_check(check)
