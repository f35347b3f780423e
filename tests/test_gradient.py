"""``fit_gradient``: the optax fit of the unconstrained parametrisation.

Oracles: EM from the same initialisation (``fit_em`` with the same key), scipy densities
(``_oracles.py``), single fits for vmapped restarts and datasets, central finite differences
of the fit in float64 (``_x64_gradient_script.py``). Compilation dominates the time, so the
tests share a handful of configurations (the README's data, ``K = 2``, ``STEPS`` steps).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _oracles as O
import gmmjax as gj
from gmmjax import GaussianMixtureModel

TRUE_WEIGHTS = np.array([0.6, 0.4])
TRUE_MEANS = np.array([[0.0, 0.0], [3.0, 3.0]])
TRUE_COVS = np.array([[[1, 0.5], [0.5, 1]], [[1, 0.5], [0.5, 1]]], dtype=float)
STEPS = 200
FAST_ADAM = optax.adam(0.1)  # one object: the optimizer is static configuration of the compiled fit


@pytest.fixture(scope="module")
def X():
    """The original example's data (as in the README and the estimator tests)."""
    return np.asarray(gj.generate_gmm_data(600, TRUE_WEIGHTS, TRUE_MEANS, TRUE_COVS))


@pytest.fixture(scope="module")
def fitted(X):
    """``(gradient fit, EM fit)`` from the same key, hence the same k-means initialisation."""
    key = jax.random.key(0)
    # EM with the estimator's defaults (num_iters=100, tol=1e-3): the compiled fit is shared
    # with the estimator tests.
    return gj.fit_gradient(key, X, 2, num_steps=STEPS), gj.fit_em(key, X, 2, max_iter=100)


def _conditional_variances(covariances):
    """``1 / P_dd²``: variance of each feature given the previous ones, per component."""
    prec_chol = O.precision_cholesky(covariances, "full")
    return 1.0 / np.diagonal(prec_chol, axis1=-2, axis2=-1) ** 2


def _assert_valid(params):
    w, m, c = (np.asarray(a, np.float64) for a in (params.weights, params.means, params.covariances))
    assert np.all(np.isfinite(m)) and np.all(np.isfinite(c))
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-5
    np.linalg.cholesky(c)  # positive definite


# --------------------------------------------------------------------------- the fit


def test_reaches_em_log_likelihood_from_the_same_start(X, fitted):
    grad_fit, em_fit = fitted
    history = np.asarray(grad_fit.lower_bound_history)
    assert history.shape == (1, STEPS) and np.all(np.isfinite(history))
    # the same initialisation: the first recorded log-likelihoods are those of the same parameters
    assert history[0, 0] == pytest.approx(float(em_fit.lower_bound_history[0, 0]), rel=1e-6)
    # reduced target (benchmarks/gradient.py measures the full one): within 1% of EM
    assert float(grad_fit.lower_bound) >= float(em_fit.lower_bound) - 0.01 * abs(float(em_fit.lower_bound))
    np.testing.assert_allclose(grad_fit.params.means, em_fit.params.means, atol=0.05)
    np.testing.assert_allclose(grad_fit.params.covariances, em_fit.params.covariances, atol=0.05)
    # the reported value is the mean log-likelihood (scipy) of the parameters before the last step
    final = O.mixture_log_prob(grad_fit.params.weights, grad_fit.params.means, grad_fit.params.covariances, "full", X)
    assert float(grad_fit.lower_bound) == pytest.approx(float(np.mean(final)), abs=1e-4)
    assert int(grad_fit.n_iter) == STEPS and not bool(grad_fit.converged)
    assert grad_fit.params.means.dtype == jnp.float32
    _assert_valid(grad_fit.params)


def test_lbfgs_gets_the_loss_for_its_line_search_and_reaches_em(X, fitted):
    """optax.lbfgs needs value/grad/value_fn beside the gradient; from EM's start it reaches
    EM's fixed point (same log-likelihood and means)."""
    _, em_fit = fitted
    fit = gj.fit_gradient(jax.random.key(0), X, 2, optimizer=optax.lbfgs(), num_steps=30)
    assert np.all(np.isfinite(np.asarray(fit.lower_bound_history)))
    assert float(fit.lower_bound) == pytest.approx(float(em_fit.lower_bound), abs=2e-4)
    np.testing.assert_allclose(fit.params.means, em_fit.params.means, atol=0.02)
    _assert_valid(fit.params)


def test_variance_floor_is_reg_covar(X):
    """A ``reg_covar`` above the data's variances binds: every conditional variance stays at it."""
    result = gj.fit_gradient(jax.random.key(0), X, 2, num_steps=STEPS, reg_covar=4.0)
    conditional = _conditional_variances(result.params.covariances)
    assert np.all(conditional >= 4.0 * (1 - 1e-5)), conditional
    assert np.any(conditional < 4.0 * (1 + 1e-3)), conditional  # the floor is reached…
    assert bool(np.all(result.collapsed_components))  # …and reported
    _assert_valid(result.params)


def _user_start(X):
    w0, m0, c0 = O.initial_parameters(X, 2, "full", seed=1)
    return (w0, m0, c0), dict(weights_init=w0, means_init=m0, precisions_init=O.precisions_from_covariances(c0, "full"))


def test_minibatches_are_keyed_and_reach_em(X, fitted):
    _, em_fit = fitted
    _, start = _user_start(X)  # (a given start compiles faster than k-means)
    first = gj.fit_gradient(jax.random.key(0), X, 2, num_steps=STEPS, batch_size=64, **start)
    again = gj.fit_gradient(jax.random.key(0), X, 2, num_steps=STEPS, batch_size=64, **start)
    other = gj.fit_gradient(jax.random.key(1), X, 2, num_steps=STEPS, batch_size=64, **start)
    np.testing.assert_array_equal(first.lower_bound_history, again.lower_bound_history)
    assert not np.allclose(first.lower_bound_history, other.lower_bound_history)
    history = np.asarray(first.lower_bound_history[0])
    assert np.all(np.isfinite(history)) and np.std(history[STEPS // 2 :]) > 1e-3  # noisy batch estimates
    # the reported value is the full-data mean log-likelihood of the final parameters
    final = O.mixture_log_prob(first.params.weights, first.params.means, first.params.covariances, "full", X)
    assert float(first.lower_bound) == pytest.approx(float(np.mean(final)), abs=1e-4)
    # it reaches EM's maximum (EM from k-means; both find the same one on these data)
    assert float(first.lower_bound) >= float(em_fit.lower_bound) - 0.01 * abs(float(em_fit.lower_bound))


def test_jit_and_vmap_over_datasets_and_restarts_equal_single_fits(X):
    """Restart ``r`` of a fit is the single fit with ``restart_keys(key, n_init)[r]`` (restarts are
    vmapped inside; here they differ by their minibatches), and a jitted vmap over datasets
    equals fitting each dataset alone (the single fits are the minibatch test's)."""
    _, start = _user_start(X)
    datasets = np.stack([X, X[::-1]])
    keys = jax.random.split(jax.random.key(5), 2)
    fit = jax.jit(
        jax.vmap(lambda key, data: gj.fit_gradient(key, data, 2, num_steps=STEPS, n_init=2, batch_size=64, **start))
    )
    batched = fit(keys, datasets)
    assert batched.restart_lower_bounds.shape == (2, 2) and batched.lower_bound_history.shape == (2, 2, STEPS)
    for i in range(2):
        for r, restart_key in enumerate(gj.restart_keys(keys[i], 2)):
            single = gj.fit_gradient(restart_key, datasets[i], 2, num_steps=STEPS, batch_size=64, **start)
            np.testing.assert_allclose(batched.restart_params.means[i, r], single.params.means, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(batched.lower_bound_history[i, r], single.lower_bound_history[0], rtol=1e-4)
        assert not np.allclose(batched.lower_bound_history[i, 0], batched.lower_bound_history[i, 1])
        best = int(np.argmax(np.asarray(batched.restart_lower_bounds[i])))
        assert int(batched.best_restart[i]) == best
        np.testing.assert_array_equal(batched.params.means[i], batched.restart_params.means[i, best])


def test_weighted_objective_user_start_and_tol(X):
    """With ``*_init`` the first value is the weighted mean log-density of that start (scipy);
    with ``tol`` the fit stops once consecutive values differ by less than it."""
    (w0, m0, c0), start = _user_start(X)
    weights = np.random.default_rng(2).uniform(0.0, 3.0, size=X.shape[0])
    result = gj.fit_gradient(jax.random.key(0), X, 2, num_steps=STEPS, sample_weight=weights, tol=1e-3, **start)
    history = np.asarray(result.lower_bound_history[0])
    expected = np.sum(weights * O.mixture_log_prob(w0, m0, c0, "full", X)) / np.sum(weights)
    assert history[0] == pytest.approx(expected, rel=1e-5)
    n_iter = int(result.n_iter)
    assert bool(result.converged) and 1 < n_iter < STEPS
    assert abs(history[n_iter - 1] - history[n_iter - 2]) < 1e-3
    assert np.all(np.abs(np.diff(history[: n_iter - 1])) >= 1e-3)
    assert np.all(np.isnan(history[n_iter:]))
    assert float(result.lower_bound) == history[n_iter - 1]
    assert history[n_iter - 1] > history[0]


def test_high_dimension_large_learning_rate_stays_finite():
    """D = 64, Adam at lr 0.1, float32 (reduced: the slow test and the benchmark run 10,000 steps)."""
    X, _, _ = O.make_blobs(n=256, d=64, k=2, seed=0, spread=20.0)
    X = X.astype(np.float32)
    # a poor start (two data points, the data's covariance) compiles faster than k-means
    start = dict(
        weights_init=np.array([0.5, 0.5]), means_init=X[:2], precisions_init=np.stack([np.linalg.inv(np.cov(X.T))] * 2)
    )
    result = gj.fit_gradient(jax.random.key(0), X, 2, optimizer=FAST_ADAM, num_steps=300, **start)
    assert np.all(np.isfinite(np.asarray(result.lower_bound_history)))
    _assert_valid(result.params)


@pytest.mark.slow
def test_high_dimension_large_learning_rate_stays_finite_for_ten_thousand_steps():
    X, _, _ = O.make_blobs(n=512, d=64, k=4, seed=1, spread=20.0)
    result = gj.fit_gradient(jax.random.key(0), X.astype(np.float32), 4, optimizer=FAST_ADAM, num_steps=10_000)
    history = np.asarray(result.lower_bound_history)
    assert np.all(np.isfinite(history))
    em = gj.fit_em(jax.random.key(0), X.astype(np.float32), 4)
    assert float(result.lower_bound) >= float(em.lower_bound) - 0.01 * abs(float(em.lower_bound))
    _assert_valid(result.params)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(optimizer="adam"), r"optimizer must be an optax GradientTransformation"),
        (dict(num_steps=0), r"num_steps must be an integer >= 1"),
        (dict(batch_size=0), r"batch_size must be an integer >= 1"),
        (dict(tol=-1.0), r"tol must be a non-negative"),
        (dict(reg_covar=-1.0), r"reg_covar must be a non-negative"),
        (dict(covariance_type="banana"), r"covariance_type must be one of"),
        (dict(init_params="banana"), r"init_params must be one of"),
        (dict(means_init=np.zeros((3, 2))), r"means_init must have shape \(2, 2\)"),
        (dict(sample_weight=-np.ones(600)), r"sample_weight must be finite and non-negative"),
    ],
)
def test_invalid_arguments_raise(X, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gj.fit_gradient(jax.random.key(0), X, 2, **kwargs)


def test_invalid_data_and_key_raise(X):
    with pytest.raises(ValueError, match="contains NaN"):
        gj.fit_gradient(jax.random.key(0), np.where(np.arange(600)[:, None] == 3, np.nan, X), 2)
    with pytest.raises(ValueError, match="single jax.random key"):
        gj.fit_gradient(0, X, 2)


# --------------------------------------------------------------------------- the estimator


def test_estimator_gradient_fit_is_fit_gradient(X, fitted, tmp_path):
    grad_fit, _ = fitted
    model = GaussianMixtureModel(2, fit_method="gradient", num_steps=STEPS).fit(X)
    np.testing.assert_array_equal(model.means_, np.asarray(grad_fit.params.means))
    assert model.lower_bound_ == float(grad_fit.lower_bound) and model.n_iter_ == STEPS and not model.converged_
    assert model.lower_bounds_.shape == (STEPS,)
    assert model.get_params()["fit_method"] == "gradient" and model.get_params()["num_steps"] == STEPS
    # an optimizer object survives scikit-learn's clone (static configuration: the copy is equal)
    from sklearn.base import clone

    model.set_params(optimizer=FAST_ADAM)
    assert clone(model).get_params()["optimizer"] == FAST_ADAM
    # save/load: an optimizer object cannot go into the JSON hyperparameters; it is stored as None
    with pytest.warns(UserWarning, match="optimizer object .* is not saved"):
        model.save(tmp_path / "m.npz")
    loaded = GaussianMixtureModel.load(tmp_path / "m.npz")
    assert loaded.optimizer is None
    assert {k: v for k, v in loaded.get_params().items() if k != "optimizer"} == {
        k: v for k, v in model.get_params().items() if k != "optimizer"
    }
    np.testing.assert_array_equal(loaded.means_, model.means_)
    np.testing.assert_array_equal(loaded.score_samples(X), model.score_samples(X))
    # without an optimizer object nothing is lost and nothing is warned about
    model.set_params(optimizer=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.save(tmp_path / "m2.npz")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fit_method="sgd"), r"fit_method must be 'em' or 'gradient', got 'sgd'"),
        (
            dict(num_steps=10),
            r"num_steps=10 given, but optimizer, num_steps and batch_size are used only by "
            r"fit_method='gradient'",
        ),
    ],
)
def test_estimator_validates_fit_method(X, kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixtureModel(2, **kwargs).fit(X)


# --------------------------------------------------------------------------- float64 (subprocess; last, so it
# has run in the background meanwhile)


def test_gradient_through_the_fit_matches_finite_differences_in_float64(x64_check):
    """jax.grad of the fitted lower bound with respect to the data, through five Adam steps."""
    x64_check("fd_fit_gradient")


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_gradient_with_respect_to_sample_weight_through_adam_in_float64(x64_check, covariance_type):
    """Finite (not NaN) and equal to central differences: the optimizer sees no dead coordinates."""
    x64_check(f"fd_fit_gradient_sample_weight_{covariance_type}")
