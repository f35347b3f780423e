"""Exact EM with missing values (``missing="marginalize"``, :mod:`gmmjax._missing`).

Oracles: the NumPy float64 EM of ``_missing_oracle.py`` (row by row, textbook conditional
Gaussians) at 1e-8 in a float64 subprocess (``_missing_x64_script.py``) and at float32
tolerance here; the complete-data fit; mean imputation as the baseline to beat.
"""

from __future__ import annotations

import json
import subprocess
import sys

import _missing_oracle as oracle
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _children import TESTS, child_env, kill_all

import gmmjax as gj
from gmmjax import _missing

N, D, K = 400, 3, 2
SCRIPT = TESTS / "_missing_x64_script.py"


def _run_x64(*arguments):
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *arguments],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def x64_full():
    """The float64 checks of full covariances, started first so that they run beside this module."""
    process = _run_x64("full")
    try:
        yield process
    finally:
        kill_all([process])


@pytest.fixture(scope="module")
def data(x64_full):
    """Two correlated clusters, the complete data and a copy with 20% of entries removed at random."""
    rng = np.random.default_rng(3)
    cov = np.array([[1.0, 0.8, 0.5], [0.8, 1.0, 0.6], [0.5, 0.6, 1.0]])
    X = np.concatenate(
        [rng.multivariate_normal(np.zeros(D), cov, N // 2), rng.multivariate_normal([5.0, 5.0, 0.0], cov, N // 2)]
    ).astype(np.float32)
    X_missing = X.copy()
    X_missing[rng.random(X.shape) < 0.2] = np.nan
    return X, X_missing


@pytest.fixture(scope="module")
def fits(data):
    X, X_missing = data
    key = jax.random.key(0)
    complete = gj.fit_em(key, X, K, tol=1e-6)
    marginal = gj.fit_em(key, X_missing, K, missing="marginalize", tol=1e-6)
    column_means = np.nanmean(X_missing, axis=0)
    imputed = gj.fit_em(key, np.where(np.isnan(X_missing), column_means, X_missing), K, tol=1e-6)
    return complete, marginal, imputed


def _sorted(params):
    order = np.argsort(np.asarray(params.means)[:, 0])
    return np.asarray(params.weights)[order], np.asarray(params.means)[order], np.asarray(params.covariances)[order]


def test_without_nan_the_fit_is_todays(data, fits):
    X, _ = data
    complete = fits[0]
    same = gj.fit_em(jax.random.key(0), X, K, tol=1e-6, missing="marginalize")
    for a, b in zip(jax.tree_util.tree_leaves(complete), jax.tree_util.tree_leaves(same)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_log_likelihood_is_monotone_and_the_fit_converges(fits):
    marginal = fits[1]
    history = np.asarray(marginal.lower_bound_history[0])
    history = history[~np.isnan(history)]
    assert bool(marginal.converged) and len(history) >= 3
    assert np.all(np.diff(history) >= -1e-5 * np.abs(history[1:]))


def test_closer_to_the_full_data_fit_than_mean_imputation(fits):
    complete, marginal, imputed = (_sorted(f.params) for f in fits)
    for part in (1, 2):  # means, covariances
        error_marginal = np.linalg.norm(marginal[part] - complete[part])
        error_imputed = np.linalg.norm(imputed[part] - complete[part])
        assert error_marginal < 0.5 * error_imputed, (part, error_marginal, error_imputed)


def test_the_fit_agrees_with_oracle_em_steps(data, fits):
    """The fitted parameters are a fixed point of the oracle's EM step (float32 tolerance)."""
    _, X_missing = data
    p = fits[1].params
    (w, mu, cov), _ = oracle.em_step(
        np.asarray(p.weights), np.asarray(p.means), np.asarray(p.covariances), "full", X_missing, 1e-6
    )
    np.testing.assert_allclose(w, p.weights, atol=2e-4)
    np.testing.assert_allclose(mu, p.means, atol=2e-3)
    np.testing.assert_allclose(cov, p.covariances, atol=5e-3)


def test_estimator_marginalises_against_the_oracle(data):
    _, X_missing = data
    assert np.isnan(X_missing).all(axis=1).any()  # the data has rows with every feature missing
    with pytest.warns(UserWarning, match="every feature missing"):
        model = gj.GaussianMixtureModel(K, missing="marginalize", tol=1e-6).fit(X_missing)
    X = X_missing[:60].copy()
    X[0] = np.nan
    w, mu, cov = (np.asarray(a, np.float64) for a in (model.weights_, model.means_, model.covariances_))
    log_joint = oracle.log_joint(w, mu, cov, X)
    log_density = np.logaddexp.reduce(log_joint, axis=1)
    np.testing.assert_allclose(model.score_samples(X), log_density, rtol=1e-5, atol=1e-5)
    assert model.score_samples(X)[0] == 0.0
    np.testing.assert_allclose(model.score(X), log_density.mean(), rtol=1e-5)
    proba = np.exp(log_joint - log_density[:, None])
    np.testing.assert_allclose(model.predict_proba(X), proba, atol=1e-5)
    np.testing.assert_array_equal(model.predict(X)[1:], proba.argmax(axis=1)[1:])
    imputed = model.impute(X)
    np.testing.assert_allclose(imputed, oracle.impute(w, mu, cov, "full", X), rtol=1e-4, atol=1e-4)
    observed = ~np.isnan(X)
    np.testing.assert_array_equal(imputed[observed], X[observed])


def test_jit_and_vmap(data, fits):
    X_complete, X_missing = data
    p = fits[1].params
    w, mu, cov = (np.asarray(a, np.float64) for a in (p.weights, p.means, p.covariances))
    X = jnp.asarray(X_missing[:64])
    log_density = jax.jit(gj.marginal_log_prob)(p, X)
    np.testing.assert_allclose(
        log_density, np.logaddexp.reduce(oracle.log_joint(w, mu, cov, X_missing[:64]), axis=1), rtol=1e-5, atol=1e-5
    )
    batched = jax.jit(jax.vmap(gj.impute, in_axes=(None, 0)))(p, jnp.stack([X, X[::-1]]))
    np.testing.assert_allclose(batched[1], oracle.impute(w, mu, cov, "full", X_missing[:64][::-1]), atol=1e-4)
    # on rows without NaN the marginal density is the ordinary one
    complete = jnp.asarray(X_complete[:64])
    np.testing.assert_allclose(jax.jit(gj.marginal_log_prob)(p, complete), gj.log_prob(p, complete), rtol=1e-5)


@pytest.mark.slow
def test_fit_under_jit_and_vmap_over_datasets(data):
    """A traced X (the caller's jit/vmap) takes the tiers up to D: the same fit as the host's."""
    _, X_missing = data
    key = jax.random.key(0)
    batch = jnp.stack([X_missing, X_missing[::-1]])
    fit = jax.jit(jax.vmap(lambda X: gj.fit_em(key, X, K, missing="marginalize", max_iter=20, tol=0.0).params))
    batched = fit(batch)
    for i in range(2):
        one = gj.fit_em(key, np.asarray(batch[i]), K, missing="marginalize", max_iter=20, tol=0.0).params
        np.testing.assert_allclose(batched.means[i], one.means, rtol=1e-4, atol=1e-4)


def test_validation(data):
    X, X_missing = data
    with pytest.raises(ValueError, match="missing must be 'raise'"):
        gj.FitOptions(missing="drop")
    with pytest.raises(ValueError, match="contains NaN"):  # the default stays: NaN is refused
        gj.fit_em(jax.random.key(0), X_missing, K)
    bad = X_missing.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="contains infinity"):
        gj.fit_em(jax.random.key(0), bad, K, missing="marginalize")
    with pytest.raises(ValueError, match="nothing to fit"):
        gj.fit_em(jax.random.key(0), np.full((4, 2), np.nan), 1, missing="marginalize")
    with pytest.raises(ValueError, match="without derivatives"):
        gj.fit_em(jax.random.key(0), X_missing, K, missing="marginalize", differentiation="unrolled")
    with pytest.raises(ValueError, match="fit_method='em'"):
        gj.GaussianMixtureModel(K, missing="marginalize", fit_method="gradient").fit(X_missing)
    with pytest.raises(ValueError, match="fit_em and GaussianMixtureModel.fit"):
        gj.select_num_components(jax.random.key(0), X_missing, [1, 2], missing="marginalize")
    model = gj.GaussianMixtureModel(K).fit(X)
    with pytest.raises(ValueError, match="impute\\(\\) needs missing='marginalize'"):
        model.impute(X_missing)


def _x64_results(process, timeout=600):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _check_x64(results):
    for name, value in results.items():
        if name.endswith("/monotone"):
            assert value >= -1e-12, name
        elif not name.endswith("float64"):
            assert value < 1e-8, (name, value)


def test_float64_em_steps_match_the_oracle(x64_full):
    """Full covariances in float64: EM steps (both forms of the E-step), marginal
    log-densities, imputations at 1e-8."""
    results = _x64_results(x64_full)
    assert {"full/em_steps", "full/log_joint", "full/impute", "full/monotone"} <= set(results)
    _check_x64(results)


@pytest.mark.slow
def test_float64_other_covariance_types_wide_rows_and_a_whole_fit():
    """The other covariance types, rows missing up to 9 of 10 features (the swept systems, a
    chunk in pieces) and a whole fit, in float64 against the oracle."""
    process = _run_x64("tied,diag,spherical", "fit", "wide")
    try:
        results = _x64_results(process)
    finally:
        kill_all([process])
    assert results["fit/history_float64"] == "float64"
    assert len([name for name in results if name.endswith("/em_steps")]) == 3
    assert {"wide/em_steps_expanded", "wide/em_steps_residual", "wide/log_joint"} <= set(results)
    _check_x64(results)


def test_all_missing_rows_get_zero_weight(data, fits):
    """The lower bound is the mean log-likelihood over the rows with an observed entry (the
    oracle's, which gives rows with every entry missing zero weight)."""
    _, X_missing = data
    p = fits[1].params
    _, ll = oracle.em_step(np.asarray(p.weights), np.asarray(p.means), np.asarray(p.covariances), "full", X_missing, 0)
    np.testing.assert_allclose(float(fits[1].lower_bound), ll, rtol=2e-5)
    everything = np.logaddexp.reduce(
        oracle.log_joint(*(np.asarray(a, np.float64) for a in (p.weights, p.means, p.covariances)), X_missing), axis=1
    )
    assert abs(everything.mean() - ll) > 1e-3  # the zero rows would have changed the mean


def test_far_components_take_the_exact_form(data):
    """Clusters 1000 standard deviations apart, float32: the expanded form about the mean of
    the means would cancel ≈1e6 in the squared norms; the step switches to explicit residuals
    and matches the float64 oracle's step (the same data shape as ``data``: no new compile)."""
    _, X_missing = data
    X = X_missing + np.where(np.arange(N) < N // 2, -500.0, 500.0)[:, None].astype(np.float32)
    layout = _missing.MissingLayout(X, None)
    cov = np.array([[1.0, 0.8, 0.5], [0.8, 1.0, 0.6], [0.5, 0.6, 1.0]])
    weights, means, covs = np.array([0.5, 0.5]), np.array([[-500.0] * 3, [505.0, 505.0, 500.0]]), np.stack([cov] * 2)
    p = gj.GMMParams(*(jnp.asarray(a, jnp.float32) for a in (weights, means, covs)))
    new, _, ll = jax.jit(_missing.em_step_missing, static_argnames=("tiers",))(
        p, jnp.asarray(layout.X), layout.sample_weight, 1e-6, tiers=layout.tiers
    )
    (w, mu, c), ll_oracle = oracle.em_step(weights, means, covs, "full", layout.X, 1e-6, layout.sample_weight)
    np.testing.assert_allclose(new.weights, w, atol=1e-5)
    np.testing.assert_allclose(new.means, mu, atol=1e-3)
    np.testing.assert_allclose(new.covariances, c, atol=2e-3)
    np.testing.assert_allclose(float(ll), ll_oracle, rtol=1e-5)
