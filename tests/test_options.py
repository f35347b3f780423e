"""FitOptions: one options object for every fit, checked in one place, leaves reusing the program."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _oracles as O
import gmmjax as gj
from _oracles import make_blobs
from gmmjax import _em

X, _, _ = make_blobs(n=150, d=2, k=2, seed=3)
X = X.astype(np.float32)
KEY = jax.random.key(0)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("covariance_type", "banana", "covariance_type must be one of"),
        ("max_iter", -1, r"max_iter \(num_iters\) must be an integer >= 0"),
        ("max_iter", 2.5, r"max_iter \(num_iters\) must be an integer"),
        ("n_init", 0, "n_init must be an integer >= 1"),
        ("init_params", "best", "init_params must be one of"),
        ("chunk_size", 0, "chunk_size must be an integer >= 1"),
        ("restart_batch_size", True, "restart_batch_size must be an integer"),
    ],
)
def test_static_fields_are_checked_when_built(field, value, message):
    with pytest.raises(ValueError, match=message):
        gj.FitOptions(**{field: value})
    with pytest.raises(ValueError, match=message):  # the keyword form goes through the same check
        gj.fit_em(KEY, X, 2, **{field: value})


def test_leaves_are_checked_at_the_fit_boundary():
    for name in ("tol", "reg_covar"):
        options = gj.FitOptions(**{name: -1.0})  # a leaf: may be a tracer, so checked with the data
        with pytest.raises(ValueError, match=f"{name} must be a non-negative"):
            gj.fit_em(KEY, X, 2, options)
    with pytest.raises(ValueError, match="means_init must have shape"):
        gj.fit_em(KEY, X, 2, means_init=np.zeros((3, 2)))
    with pytest.raises(TypeError, match="unexpected keyword argument.*'n_inits'"):
        gj.fit_em(KEY, X, 2, n_inits=3)
    with pytest.raises(ValueError, match="num_iters=5 and max_iter=6 disagree"):
        gj.fit_em(KEY, X, 2, num_iters=5, max_iter=6)
    with pytest.raises(TypeError, match="options must be a gmmjax.FitOptions"):
        gj.fit_em(KEY, X, 2, {"n_init": 2})


def test_keyword_form_equals_the_options_object():
    options = gj.FitOptions(covariance_type="diag", n_init=2, max_iter=30, tol=1e-4)
    by_object = gj.fit_em(KEY, X, 2, options)
    by_keywords = gj.fit_em(KEY, X, 2, covariance_type="diag", n_init=2, num_iters=30, tol=1e-4)
    overridden = gj.fit_em(KEY, X, 2, options.replace(n_init=1), n_init=2)  # keywords replace fields
    for other in (by_keywords, overridden):
        O.assert_trees_close(by_object, other)


def test_new_leaf_values_reuse_the_compiled_fit():
    variants = [_em._fit_em_for_size.variant(small) for small in (False, True)]
    compiled = lambda: sum(fit._cache_size() for fit in variants)  # noqa: E731
    options = gj.FitOptions(covariance_type="spherical", max_iter=23)  # a configuration no other test uses
    gj.fit_em(KEY, X, 2, options)
    first = compiled()
    gj.fit_em(KEY, X, 2, options.replace(tol=1e-6, reg_covar=1e-3))
    assert compiled() == first
    gj.fit_em(KEY, X, 2, options.replace(max_iter=24))  # static: a new program (so the counter counts)
    assert compiled() == first + 1


def test_vmap_over_a_leaf_equals_separate_fits():
    reg = jnp.asarray([1e-6, 0.5], jnp.float32)
    batched = jax.vmap(lambda r: gj.fit_em(KEY, X, 2, reg_covar=r).params)(reg)
    for i, r in enumerate([1e-6, 0.5]):
        single = gj.fit_em(KEY, X, 2, reg_covar=r).params
        np.testing.assert_allclose(
            np.asarray(batched.covariances[i]), np.asarray(single.covariances), rtol=2e-5, atol=1e-6
        )


def test_max_iter_zero_returns_the_initialisation():
    weights, means = np.array([0.3, 0.7]), np.array([[0.0, 1.0], [2.0, -1.0]])
    precisions = np.stack([np.eye(2) * 2.0, np.eye(2) * 0.5])
    result = gj.fit_em(KEY, X, 2, max_iter=0, weights_init=weights, means_init=means, precisions_init=precisions)
    assert int(result.n_iter) == 0 and not bool(result.converged)
    assert result.lower_bound_history.shape == (1, 0) and float(result.lower_bound) == -np.inf
    np.testing.assert_allclose(np.asarray(result.params.weights), weights, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(result.params.means), means, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(result.params.covariances), np.linalg.inv(precisions), rtol=1e-5)


def test_lower_bound_init_continues_the_convergence_test():
    """A warm start one iteration long converges when its start was converged (scikit-learn's
    warm_start semantics), and cannot without the previous lower bound."""
    done = gj.fit_em(KEY, X, 2, tol=1e-3)
    assert bool(done.converged)
    p = done.params
    warm = dict(
        weights_init=p.weights,
        means_init=p.means,
        max_iter=1,
        precisions_init=np.linalg.inv(np.asarray(p.covariances, np.float64)),
    )
    assert not bool(gj.fit_em(KEY, X, 2, **warm).converged)
    assert bool(gj.fit_em(KEY, X, 2, lower_bound_init=float(done.lower_bound), **warm).converged)


def test_the_gradient_fit_and_model_selection_take_the_same_options():
    options = gj.FitOptions(covariance_type="diag", n_init=2, reg_covar=1e-4)
    em = gj.fit_em(KEY, X, 2, options, max_iter=0)
    gradient = gj.fit_gradient(KEY, X, 2, options, num_steps=1)
    # the same initialisation for the same key and options (gradient: the history's first entry)
    np.testing.assert_allclose(
        np.asarray(gradient.restarts.lower_bound_history[:, 0]),
        np.asarray(gj.fit_em(KEY, X, 2, options, max_iter=1).restart_lower_bounds),
        rtol=1e-5,
    )
    assert em.restart_params.means.shape == (2, 2, 2)
    with pytest.raises(ValueError, match="fit_gradient runs num_steps"):
        gj.fit_gradient(KEY, X, 2, max_iter=5)
    selection = gj.select_num_components(KEY, X, 2, options.replace(covariance_type="full"), covariance_types="diag")
    np.testing.assert_allclose(
        np.asarray(selection.fit_for("diag", 2).params.means),
        np.asarray(gj.fit_em(KEY, X, 2, options).params.means),
        rtol=1e-4,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="model selection fits several"):
        gj.select_num_components(KEY, X, 2, means_init=np.zeros((2, 2)))


def test_more_restarts_include_the_single_fit_and_keep_the_first_ones():
    """Restart 0 is the fit with the key itself and restart r does not depend on n_init, so
    n_init=5 is never worse than n_init=1 (scikit-learn's test_multiple_init)."""
    single = gj.fit_em(KEY, X, 2, init_params="random_from_data", max_iter=20)
    three = gj.fit_em(KEY, X, 2, n_init=3, init_params="random_from_data", max_iter=20)
    five = gj.fit_em(KEY, X, 2, n_init=5, init_params="random_from_data", max_iter=20)
    np.testing.assert_allclose(float(five.restart_lower_bounds[0]), float(single.lower_bound), rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(five.restart_lower_bounds[:3]), np.asarray(three.restart_lower_bounds), rtol=1e-6
    )
    assert float(five.lower_bound) >= float(single.lower_bound)
