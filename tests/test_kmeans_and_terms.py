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
