"""Regressions: ``kmeans``/``kmeans_plusplus`` accept ``sample_weight=None`` (as every other
function does), and :class:`~gmmjax._density.ComponentTerms` passes through ``jit``.

Oracles: the same calls with explicit unit weights; the terms' own densities computed
outside ``jit`` and float64 NumPy densities (``_oracles``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _oracles as O
import gmmjax as gj
from gmmjax._density import component_terms, log_joint_from_residuals, residuals_about


@pytest.fixture(scope="module")
def X():
    return jnp.asarray(O.make_blobs(n=50, d=2, k=3, seed=1)[0], jnp.float32)


@pytest.mark.parametrize("fn", [gj.kmeans, gj.kmeans_plusplus])
def test_kmeans_without_sample_weight_equals_unit_weights(X, fn):
    key = jax.random.key(2)
    centers = fn(key, X, 3)
    np.testing.assert_array_equal(np.asarray(centers), np.asarray(fn(key, X, 3, jnp.ones(X.shape[0]))))
    np.testing.assert_array_equal(np.asarray(fn(key, X, 3, sample_weight=None)), np.asarray(centers))
    assert centers.shape == (3, 2)
    jitted = jax.jit(lambda key, X: fn(key, X, 3))(key, X)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(centers), rtol=1e-6)


@pytest.mark.parametrize("covariance_type", O.COVARIANCE_TYPES)
def test_component_terms_pass_through_jit(X, covariance_type):
    w, m, c = O.initial_parameters(np.asarray(X, np.float64), 3, covariance_type, seed=3)
    params = gj.GMMParams(
        jnp.asarray(w, jnp.float32), jnp.asarray(m, jnp.float32), jnp.asarray(c, jnp.float32), covariance_type
    )
    terms = jax.jit(component_terms)(params)  # a return value ...
    assert terms.covariance_type == covariance_type  # ... whose type is static, not a leaf
    assert len(jax.tree_util.tree_leaves(terms)) == 3
    log_joint = jax.jit(lambda t, X: log_joint_from_residuals(t, residuals_about(X, t.means)))(terms, X)  # an argument
    np.testing.assert_allclose(
        np.asarray(log_joint).T, O.component_log_joint(w, m, c, covariance_type, np.asarray(X)), rtol=1e-5, atol=1e-5
    )
    eager = component_terms(params)
    O.assert_trees_close(terms, eager, rtol=1e-6)


def _draw_by_value_oracle(score, uniform, primary, secondary):
    """NumPy oracle: sort rows by (primary, secondary), invert the cumulative score, return the
    first row (in input order) holding the drawn pair of keys and a positive score."""
    order = np.lexsort((secondary, primary))
    cumulative = np.cumsum(score[order].astype(np.float64))
    position = min(int(np.sum(cumulative <= uniform * cumulative[-1])), len(order) - 1)
    positive = np.nonzero(score[order] > 0)[0]
    position = min(position, positive[-1])
    pair = (primary[order][position], secondary[order][position])
    return int(np.nonzero((primary == pair[0]) & (secondary == pair[1]) & (score > 0))[0][0])


def test_draw_index_by_value_matches_sorted_inverse_cdf_and_ignores_row_order():
    from gmmjax._init import _draw_index_by_value, _value_keys

    rng = np.random.default_rng(0)
    draw = jax.jit(lambda score, uniform, X: _draw_index_by_value(score, uniform, _value_keys(X)))
    n = 24  # one shape, one compile; the zero scores vary which rows can be drawn
    for case in range(60):
        X = rng.integers(-3, 4, size=(n, 3)).astype(np.float32)  # small integers: many tied rows
        score = (rng.integers(0, 4, size=n) * (rng.random(n) < rng.random())).astype(np.float32)
        score[rng.integers(n)] = 1.0  # not all zero
        uniform = np.float32([0.0, rng.random(), np.nextafter(np.float32(1), np.float32(0))][case % 3])
        primary, secondary = (np.asarray(k) for k in _value_keys(jnp.asarray(X)))
        index = int(draw(score, uniform, X))
        # the cumulative sums are exact small integers here, so the oracle's float64 is the same sum
        assert index == _draw_by_value_oracle(score, uniform, primary, secondary)
        # the drawn row's values do not depend on the rows' order
        perm = rng.permutation(n)
        index_perm = int(draw(score[perm], uniform, X[perm]))
        np.testing.assert_array_equal(X[perm][index_perm], X[index])


def test_draw_index_by_value_counts_integer_weight_as_copies():
    from gmmjax._init import _draw_index_by_value, _value_keys

    X = np.array([[0.0, 1.0], [2.0, -1.0], [5.0, 5.0]], np.float32)
    weights = np.array([1.0, 3.0, 2.0], np.float32)
    repeated = np.repeat(X, weights.astype(int), axis=0)
    draw = jax.jit(lambda score, uniform, X: _draw_index_by_value(score, uniform, _value_keys(X)))
    for uniform in np.linspace(0, 0.999, 25, dtype=np.float32):
        weighted = int(draw(weights, uniform, X))
        copies = int(draw(np.ones(len(repeated), np.float32), uniform, repeated))
        np.testing.assert_array_equal(X[weighted], repeated[copies])
