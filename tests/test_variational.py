"""Variational Bayesian mixtures (:func:`gmmjax.fit_variational`, :class:`gmmjax.BayesianGaussianMixtureModel`).

Oracles: scikit-learn's ``BayesianGaussianMixture`` from the same initial responsibilities in
float64 (``_x64_variational_script.py``, in a subprocess: ``jax_enable_x64`` is global; also
its ``warm_start`` one iteration at a time), the plain loop (for ``vmap``), the eager call (for
``jit``) and one long fit (for a warm start one iteration at a time).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from _children import TESTS, child_env

import gmmjax as gj

# By default: the matrix kinds (full with D = 8: the expanded matrix-product E-step, in chunks;
# tied: the shared Wishart) and one diagonal kind, with both weight priors; every other
# type/prior pair, user-given priors, sample weights and scikit-learn's warm start (by default,
# test_warm_start_one_iteration_at_a_time_is_one_long_fit checks it in float32) run with -m slow.
DEFAULT_CHECKS = [
    "parity_full_d8_chunked",
    "parity_tied_dirichlet_distribution",
    "parity_spherical_dirichlet_process",
]
SLOW_CHECKS = [
    "parity_full_dirichlet_process",
    "parity_full_dirichlet_distribution",
    "parity_tied_dirichlet_process",
    "parity_diag_dirichlet_process",
    "parity_diag_dirichlet_distribution",
    "parity_spherical_dirichlet_distribution",
    "parity_tied_d8",
    "parity_given_priors",
    "parity_given_priors_full",
    "weights_as_repeats",
    "warm_start_full",
    "warm_start_diag_dirichlet_distribution",
]


def _run_x64(names):
    done = subprocess.run(
        [sys.executable, str(TESTS / "_x64_variational_script.py"), *names],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=900,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("X64_VARIATIONAL ")]
    assert lines, done.stderr[-4000:]
    results = json.loads(lines[-1][len("X64_VARIATIONAL ") :])
    assert set(results) == set(names), results
    for name, outcome in results.items():
        assert outcome == "ok", f"{name}:\n{outcome}"


def test_every_float64_check_runs_in_one_of_the_tests():
    import _x64_variational_script as script  # safe to import: float64 is switched on only as a script

    assert sorted(DEFAULT_CHECKS + SLOW_CHECKS) == sorted(script.checks())


def test_float64_parity_with_sklearn():
    """Parameters, lower bound (and its history), n_iter, converged, priors, the estimator's
    attributes, score_samples, predict_proba and predict equal scikit-learn's
    BayesianGaussianMixture to 1e-6 relative from the same initial responsibilities (full with
    chunked passes and the expanded E-step at D = 8, tied, spherical; both weight priors)."""
    _run_x64(DEFAULT_CHECKS)


@pytest.mark.slow
def test_float64_parity_with_sklearn_more():
    """Every other type/prior pair (so all four types with both priors), user-given priors,
    integer sample weights as repeated rows (scikit-learn on the repeated data), and
    scikit-learn's ``warm_start`` one iteration at a time (full, and diag with the Dirichlet
    distribution): each call's bound and ``converged_``, then the posterior."""
    _run_x64(SLOW_CHECKS)


@pytest.fixture(scope="module")
def three_clusters():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    return np.concatenate([rng.normal(size=(100, 2)) + c for c in centers]).astype(np.float32)


K = 8


@pytest.fixture(scope="module")
def dp_fit(three_clusters):
    """The default fit (the estimator's defaults: one restart, key 0): one compiled program
    shared by the tests below."""
    return gj.fit_variational(jax.random.key(0), three_clusters, K)


def test_dirichlet_process_switches_off_unneeded_components(dp_fit):
    """K = 8 on 3 clusters: three components carry almost all the weight (float32)."""
    weights = np.sort(np.asarray(dp_fit.params.weights))[::-1]
    assert weights[:3].sum() > 0.97, weights
    assert np.all(weights[3:] < 0.01), weights
    assert bool(dp_fit.converged)
    assert dp_fit.params.means.dtype == np.float32
    history = np.asarray(dp_fit.lower_bound_history[int(dp_fit.best_restart)])[: int(dp_fit.n_iter)]
    assert np.all(np.isfinite(history)) and history[-1] == pytest.approx(float(dp_fit.lower_bound))
    # the variational bound increases (up to float32 rounding of a ~1e3 number)
    assert np.all(np.diff(history) > -1e-3 * np.abs(history[1:])), history


def test_float32_matches_sklearn_from_the_same_start(three_clusters):
    """float32 sanity: 30 iterations from the same random responsibilities give scikit-learn's
    (float64) bound and posterior to float32 tolerance."""
    from sklearn.mixture import BayesianGaussianMixture

    rng = np.random.default_rng(5)
    resp = rng.uniform(size=(three_clusters.shape[0], K))
    resp /= resp.sum(axis=1, keepdims=True)
    model = BayesianGaussianMixture(n_components=K, init_params="random", max_iter=30, tol=0.0)
    initialize = model._initialize
    model._initialize = lambda X_, _: initialize(X_, resp)
    with pytest.warns(Warning):  # not converged (tol=0)
        model.fit(three_clusters.astype(np.float64))
    result = gj.fit_variational(jax.random.key(0), three_clusters, K, max_iter=30, tol=0.0, _resp_init=resp)
    assert int(result.n_iter) == 30
    assert float(result.lower_bound) == pytest.approx(model.lower_bound_, rel=1e-4)
    np.testing.assert_allclose(result.params.weights, model.weights_, atol=1e-4)
    np.testing.assert_allclose(result.params.means, model.means_, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(result.params.covariances, model.covariances_, rtol=1e-3, atol=1e-3)


def test_jit_of_vmap_over_datasets_equals_eager_loop(three_clusters, dp_fit):
    """``jax.jit(jax.vmap(fit_variational))`` over two datasets equals the eager fits one by one."""
    shifted = three_clusters[::-1] + np.float32(3.0)
    batch = np.stack([three_clusters, shifted])
    results = jax.jit(jax.vmap(lambda X: gj.fit_variational(jax.random.key(0), X, K)))(batch)
    second = gj.fit_variational(jax.random.key(0), shifted, K)  # same shapes: dp_fit's program
    for i, single in enumerate((dp_fit, second)):
        assert float(results.lower_bound[i]) == pytest.approx(float(single.lower_bound), rel=1e-5)
        np.testing.assert_allclose(results.params.weights[i], single.params.weights, atol=1e-5)
        np.testing.assert_allclose(results.params.means[i], single.params.means, rtol=1e-4, atol=1e-4)
        assert int(results.n_iter[i]) == int(single.n_iter)


def test_estimator_attributes_and_methods(three_clusters, dp_fit):
    """The estimator with its defaults stores the default fit's posterior under scikit-learn's names."""
    model = gj.BayesianGaussianMixtureModel(n_components=K, random_state=0)
    labels = model.fit_predict(three_clusters)
    assert model.converged_ and model.n_iter_ == int(dp_fit.n_iter)
    assert model.lower_bound_ == pytest.approx(float(dp_fit.lower_bound), rel=1e-6)
    np.testing.assert_allclose(model.weights_, dp_fit.params.weights, rtol=1e-6)
    a, b = model.weight_concentration_
    assert a.shape == b.shape == (K,)
    np.testing.assert_allclose(a, dp_fit.params.weight_concentration[0], rtol=1e-6)
    assert model.means_.shape == (K, 2) and model.covariances_.shape == (K, 2, 2)
    np.testing.assert_allclose(
        model.precisions_, np.linalg.inv(model.covariances_.astype(np.float64)), rtol=1e-3, atol=1e-4
    )
    assert model.mean_precision_.shape == model.degrees_of_freedom_.shape == (K,)
    np.testing.assert_allclose(model.mean_prior_, three_clusters.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.covariance_prior_, np.cov(three_clusters.T.astype(np.float64)), rtol=1e-4)
    assert model.degrees_of_freedom_prior_ == 2.0 and model.weight_concentration_prior_ == pytest.approx(1 / K)
    assert model.mean_precision_prior_ == 1.0
    assert len(np.unique(labels)) == 3
    proba = model.predict_proba(three_clusters[:5])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert model.score(three_clusters) == pytest.approx(model.score_samples(three_clusters).mean(), rel=1e-6)
    X, y = model.sample(50)
    assert X.shape == (50, 2) and y.shape == (50,)
    assert model.lower_bounds_.shape == (model.n_iter_,)
    assert "n_components=8" in repr(model) and model.get_params()["n_components"] == K


def test_num_components_is_an_alias_of_n_components(three_clusters, dp_fit):
    """``num_components`` (GaussianMixtureModel's name) is the same setting as ``n_components``,
    with GaussianMixtureModel's rules: setting one name alone replaces the other, both given
    must agree. Each fit is the default fit (dp_fit's program: nothing new to compile)."""
    clone = pytest.importorskip("sklearn.base").clone
    model = gj.BayesianGaussianMixtureModel(num_components=K, random_state=0)
    assert model.get_params()["num_components"] == K and model.get_params()["n_components"] is None
    assert repr(model) == f"BayesianGaussianMixtureModel(num_components={K}, random_state=0)"
    model.fit(three_clusters)
    assert model.n_iter_ == int(dp_fit.n_iter) and model.weights_.shape == (K,)
    np.testing.assert_allclose(model.weights_, dp_fit.params.weights, rtol=1e-6)
    # set_params of one name (as GridSearchCV does, on a clone) replaces the other.
    searched = clone(gj.BayesianGaussianMixtureModel(num_components=2, random_state=0)).set_params(n_components=K)
    assert (searched.num_components, searched.n_components) == (None, K)
    np.testing.assert_allclose(searched.fit(three_clusters).weights_, dp_fit.params.weights, rtol=1e-6)
    searched.num_components = 3  # so does an assignment (scikit-learn's checks assign n_components)
    assert (searched.num_components, searched.n_components) == (3, None)
    assert searched._resolved_num_components() == 3
    both = gj.BayesianGaussianMixtureModel(num_components=K, n_components=K, random_state=0)
    assert both.fit(three_clusters).n_iter_ == int(dp_fit.n_iter)  # agreeing: fine
    conflicting = gj.BayesianGaussianMixtureModel(num_components=2, n_components=3)
    assert (conflicting.num_components, conflicting.n_components) == (2, 3)  # kept as given (clone needs it)
    with pytest.raises(ValueError, match="num_components=2 and n_components=3 disagree: give only one of them"):
        conflicting.fit(three_clusters)
    with pytest.raises(ValueError, match=r"num_components \(n_components\) must be an integer >= 1, got 0"):
        gj.BayesianGaussianMixtureModel(num_components=0).fit(three_clusters)


def test_boundary_messages(three_clusters):
    with pytest.raises(ValueError, match="weight_concentration_prior_type must be one of"):
        gj.fit_variational(jax.random.key(0), three_clusters, 2, weight_concentration_prior_type="stick")
    with pytest.raises(ValueError, match="should be greater than 1"):
        gj.fit_variational(jax.random.key(0), three_clusters, 2, degrees_of_freedom_prior=0.5)
    with pytest.raises(ValueError, match="mean_precision_prior must be a positive"):
        gj.fit_variational(jax.random.key(0), three_clusters, 2, mean_precision_prior=-1.0)
    with pytest.raises(ValueError, match="mean_prior must be a"):
        gj.fit_variational(jax.random.key(0), three_clusters, 2, mean_prior=np.zeros(3))
    with pytest.raises(ValueError, match="positive definite"):
        gj.fit_variational(jax.random.key(0), three_clusters, 2, covariance_prior=-np.eye(2))
    with pytest.raises(ValueError, match="diag covariance_prior"):
        gj.fit_variational(jax.random.key(0), three_clusters, 2, covariance_type="diag", covariance_prior=np.ones(3))
    with pytest.raises(ValueError, match="not used by the variational model"):
        gj.fit_variational(jax.random.key(0), three_clusters, 2, means_init=np.zeros((2, 2)))
    with pytest.raises(gj.NotFittedError, match="This BayesianGaussianMixture instance is not fitted yet"):
        gj.BayesianGaussianMixtureModel().predict(three_clusters)
    with pytest.raises(ValueError, match="posterior_init must be a gmmjax.VariationalPosterior"):
        gj.fit_variational(jax.random.key(0), three_clusters, 2, posterior_init=object())


@pytest.mark.filterwarnings("ignore::gmmjax.ConvergenceWarning")  # each one-iteration fit stops at max_iter
def test_warm_start_one_iteration_at_a_time_is_one_long_fit(three_clusters, dp_fit):
    """scikit-learn's warm start: ``max_iter=1`` fits repeated until ``converged_`` run the
    iterations of one fit (the default fit, same key): as many calls as its ``n_iter``, and its
    posterior and bound (float32: two compiled programs, rounding apart)."""
    model = gj.BayesianGaussianMixtureModel(n_components=K, max_iter=1, warm_start=True, random_state=0)
    bounds = []
    for _ in range(int(dp_fit.n_iter) + 5):
        model.fit(three_clusters)
        bounds.append(model.lower_bound_)
        assert model.n_iter_ == 1 and model.lower_bounds_.shape == (1,)
        if model.converged_:
            break
    assert model.converged_ and len(bounds) == int(dp_fit.n_iter)
    history = np.asarray(dp_fit.lower_bound_history[0])[: int(dp_fit.n_iter)]
    np.testing.assert_allclose(bounds, history, rtol=1e-5)
    np.testing.assert_allclose(model.weights_, dp_fit.params.weights, atol=1e-5)
    np.testing.assert_allclose(model.means_, dp_fit.params.means, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"posterior_init has .*warm_start=False"):
        model.set_params(n_components=3).fit(three_clusters)
    model.set_params(n_components=K, warm_start=False).fit(three_clusters)  # afresh: the first iteration again
    assert model.lower_bound_ == pytest.approx(bounds[0], rel=1e-6)


def test_verbose_reports_progress_on_stderr(three_clusters, capsys):
    """``verbose`` shows GaussianMixtureModel's progress lines (stderr is no terminal here): one
    report every ``verbose_interval`` iterations and at the last, with the fit's lower bound."""
    model = gj.BayesianGaussianMixtureModel(n_components=K, random_state=0, verbose=1, verbose_interval=3)
    model.fit(three_clusters)
    out, err = capsys.readouterr()
    assert out == ""
    reported = [int(m) for m in re.findall(r"iteration (\d+)/100", err)]
    expected = [i for i in range(3, model.n_iter_, 3)] + [model.n_iter_]
    assert reported == expected, err
    assert f"lower bound {model.lower_bound_:.6g}, restarts converged 1/1" in err
    history = model.lower_bounds_
    for it in expected:
        assert f"iteration {it}/100, lower bound {history[it - 1]:.6g}," in err


@pytest.mark.slow
def test_many_unused_components_stay_finite(three_clusters):
    """K = 64 with a tiny concentration: the unused components' expected log-weights fall far
    below float32's range (their weights underflow to 0 in the E-step); the bound stays finite and
    the three clusters keep the weight."""
    result = gj.fit_variational(
        jax.random.key(0), three_clusters, 64, covariance_type="diag", weight_concentration_prior=1e-3, max_iter=200
    )
    history = np.asarray(result.lower_bound_history[0])[: int(result.n_iter)]
    assert np.all(np.isfinite(history)) and bool(result.converged)
    assert np.sort(np.asarray(result.params.weights))[-3:].sum() > 0.97
    assert float(np.min(gj._variational.effective_log_weights(result.params))) < -1000  # underflow exercised
