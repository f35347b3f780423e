"""Parity of the functional core with independent oracles.

Oracles: scikit-learn's ``GaussianMixture`` (EM from identical starting parameters, best of
restarts, precision Cholesky factors, BIC/AIC), ``scipy.stats.multivariate_normal`` (mixture
log-densities) and the published R mclust BIC for iris. float32 runs in-process; the
float64 versions (``jax_enable_x64`` is global) run in a subprocess, see
``_x64_parity_script.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_iris, load_wine
from sklearn.mixture import GaussianMixture

import _oracles as O
import gmmjax as gj

COV_TYPES = O.COVARIANCE_TYPES


# --------------------------------------------------------------------------- float32 EM parity


@pytest.fixture(scope="module")
def parity_data():
    X, _, _ = O.make_blobs(n=240, d=3, k=3, seed=1, spread=2.5)
    return X


@pytest.mark.parametrize("reg_covar", [1e-6, 0.1])  # a large reg_covar makes its handling visible
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_em_parity_float32_with_sklearn(parity_data, covariance_type, reg_covar):
    """gmmjax in float32 tracks scikit-learn's float64 EM to 1e-3 over 5 iterations."""
    X, k = parity_data, 3
    w0, m0, c0 = O.initial_parameters(X, k, covariance_type, seed=2)
    sk = O.fit_sklearn_from(X, k, covariance_type, w0, m0, c0, max_iter=5, reg_covar=reg_covar)
    res = gj.fit_em(
        jax.random.key(0),
        X.astype(np.float32),
        k,
        covariance_type=covariance_type,
        tol=0.0,
        max_iter=5,
        reg_covar=reg_covar,
        weights_init=w0,
        means_init=m0,
        precisions_init=O.precisions_from_covariances(c0, covariance_type),
    )
    p = res.params
    assert p.means.dtype == jnp.float32 and p.covariances.dtype == jnp.float32
    assert int(res.n_iter) == sk.n_iter_ == 5
    assert np.max(np.abs(sk.means_ - m0)) > 1e-2  # EM moved: the comparison is not vacuous
    rtol = 1e-3
    O.assert_matches_sklearn_fit(res, sk, rtol)


# --------------------------------------------------------------------------- densities, factors, criteria


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_log_prob_float32_vs_scipy(covariance_type):
    w, m, c = O.random_mixture(covariance_type, 3, 4, seed=11)
    X = np.random.default_rng(12).normal(scale=3.0, size=(64, 4))
    params = gj.GMMParams(
        jnp.asarray(w, jnp.float32), jnp.asarray(m, jnp.float32), jnp.asarray(c, jnp.float32), covariance_type
    )
    lp = gj.log_prob(params, X.astype(np.float32))
    assert lp.shape == (64,) and lp.dtype == jnp.float32
    expected = O.mixture_log_prob(w, m, c, covariance_type, X)
    np.testing.assert_allclose(np.asarray(lp), expected, rtol=2e-5, atol=2e-5 * np.max(np.abs(expected)))
    # component joint log-densities and responsibilities too
    joint = O.component_log_joint(w, m, c, covariance_type, X)
    np.testing.assert_allclose(
        np.asarray(gj.component_log_prob(params, X.astype(np.float32))),
        joint,
        rtol=2e-5,
        atol=2e-5 * np.max(np.abs(joint)),
    )
    np.testing.assert_allclose(
        np.asarray(gj.responsibilities(params, X.astype(np.float32))),
        O.responsibilities(w, m, c, covariance_type, X),
        atol=1e-4,
    )


def test_log_prob_full_mixture_hand_example():
    """A 2-D full-covariance mixture with strong correlation against scipy, point by point."""
    w = np.array([0.3, 0.7])
    m = np.array([[0.0, 0.0], [3.0, -1.0]])
    c = np.array([[[2.0, 1.9], [1.9, 2.0]], [[0.5, -0.2], [-0.2, 0.3]]])
    X = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, -1.0], [3.0, -1.0], [10.0, 10.0]])
    params = gj.GMMParams(jnp.asarray(w, jnp.float32), jnp.asarray(m, jnp.float32), jnp.asarray(c, jnp.float32))
    np.testing.assert_allclose(np.asarray(gj.log_prob(params, X)), O.mixture_log_prob(w, m, c, "full", X), rtol=1e-5)


@pytest.fixture(scope="module")
def sklearn_fits(parity_data):
    """scikit-learn models fitted (float64) on the parity data, one per covariance type."""
    with O.single_threaded():
        return {
            ct: GaussianMixture(3, covariance_type=ct, random_state=0, max_iter=50).fit(parity_data) for ct in COV_TYPES
        }


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_precision_cholesky_vs_sklearn(sklearn_fits, covariance_type):
    sk = sklearn_fits[covariance_type]
    pc = gj.precision_cholesky(jnp.asarray(sk.covariances_, jnp.float32), covariance_type)
    assert pc.shape == sk.precisions_cholesky_.shape and pc.dtype == jnp.float32
    O.assert_rel_close(pc, sk.precisions_cholesky_, 1e-4, "precision_cholesky")


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_bic_aic_vs_sklearn(sklearn_fits, parity_data, covariance_type):
    sk = sklearn_fits[covariance_type]
    X = parity_data.astype(np.float32)
    params = gj.GMMParams(
        jnp.asarray(sk.weights_, jnp.float32),
        jnp.asarray(sk.means_, jnp.float32),
        jnp.asarray(sk.covariances_, jnp.float32),
        covariance_type,
    )
    np.testing.assert_allclose(float(gj.bic(params, X)), sk.bic(parity_data), rtol=1e-5)
    np.testing.assert_allclose(float(gj.aic(params, X)), sk.aic(parity_data), rtol=1e-5)
    assert gj.num_parameters(3, 3, covariance_type) == sk._n_parameters()


# --------------------------------------------------------------------------- best of restarts on real data

GJ_N_INIT = 16
GJ_MAX_ITER = 200


def _oracle_score(params, covariance_type, X):
    """Mean log-likelihood of gmmjax's parameters, evaluated in float64 by scipy."""
    return float(np.mean(O.mixture_log_prob(params.weights, params.means, params.covariances, covariance_type, X)))


_DATASETS = {"iris": load_iris, "wine": load_wine}


@pytest.fixture(scope="module")
def real_data():
    return {name: loader().data.astype(np.float64) for name, loader in _DATASETS.items()}


# Each case compiles a new fit (~1.5 s on a small CPU): K=3 (where restarts matter most)
# runs by default, K=2 is marked slow.
@pytest.mark.parametrize("k", [pytest.param(2, marks=pytest.mark.slow), 3])
@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("dataset", ["iris", "wine"])
def test_best_of_restarts_matches_sklearn(real_data, dataset, covariance_type, k):
    """float32 gmmjax with restarts reaches at least scikit-learn's best (n_init=20) mean
    log-likelihood, both scored in float64 by the same oracle. Wine mixes feature scales
    from ~0.1 to ~1000, which float32 must handle."""
    X = real_data[dataset]
    with O.single_threaded():
        sk = GaussianMixture(k, covariance_type=covariance_type, n_init=20, random_state=0).fit(X)
    res = gj.fit_em(
        jax.random.key(0),
        X.astype(np.float32),
        k,
        covariance_type=covariance_type,
        n_init=GJ_N_INIT,
        tol=1e-4,
        max_iter=GJ_MAX_ITER,
    )
    assert res.params.means.dtype == jnp.float32
    assert res.restart_params.means.shape == (GJ_N_INIT, k, X.shape[1])
    assert np.all(np.isfinite(np.asarray(res.restart_lower_bounds)))
    # the chosen restart is the best one
    assert int(res.best_restart) == int(np.argmax(np.asarray(res.restart_lower_bounds)))
    sk_score = sk.score(X)
    gj_score = _oracle_score(res.params, covariance_type, X)
    assert gj_score >= sk_score - 1e-4 * abs(sk_score), (gj_score, sk_score)
    # gmmjax's own float32 lower bound is consistent with the float64 score of its params
    assert abs(float(res.lower_bound) - gj_score) < 1e-3 * abs(gj_score) + 1e-3


def test_mclust_iris_bic_float32(real_data):
    """R mclust, iris, VVV (full), G=2: BIC 574.0178 (scikit-learn sign: -2 logL + p log n).

    Fitted in float32, the BIC is evaluated in float64 by the oracle."""
    X = real_data["iris"]
    res = gj.fit_em(
        jax.random.key(0),
        X.astype(np.float32),
        2,
        covariance_type="full",
        n_init=GJ_N_INIT,
        tol=1e-6,
        max_iter=GJ_MAX_ITER,
        reg_covar=0.0,
    )
    p = res.params
    oracle_bic = O.bic(p.weights, p.means, p.covariances, "full", X)
    assert abs(oracle_bic - 574.0178) < 0.01, oracle_bic
    assert abs(float(gj.bic(p, X.astype(np.float32))) - 574.0178) < 0.05  # float32 evaluation


# --------------------------------------------------------------------------- monotone lower bound


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_lower_bound_history_non_decreasing(small_data, covariance_type):
    """EM never decreases the likelihood: along lower_bound_history (per restart), up to
    float32 round-off; entries after n_iter are NaN, entries before are finite."""
    max_iter = 40
    # tol=0: every restart runs all iterations, including the flat tail where only
    # round-off moves the likelihood.
    res = gj.fit_em(
        jax.random.key(3),
        small_data,
        4,
        covariance_type=covariance_type,
        n_init=3,
        init_params="random_from_data",
        tol=0.0,
        max_iter=max_iter,
    )
    hist = np.asarray(res.lower_bound_history, np.float64)
    n_iter = np.asarray(res.restart_n_iter)
    assert hist.shape == (3, max_iter)
    assert np.all(n_iter == max_iter)
    for r in range(3):
        h = hist[r, : n_iter[r]]
        assert np.all(np.isfinite(h))
        assert np.all(np.isnan(hist[r, n_iter[r] :]))
        slack = 2e-6 * np.maximum(1.0, np.abs(h[1:]))
        assert np.all(np.diff(h) >= -slack), np.diff(h).min()
        # the reported lower bound is the last history entry
        assert h[-1] == pytest.approx(float(res.restart_lower_bounds[r]), abs=0)
    # sanity: the starting points are worse than the end points (the check is not vacuous)
    assert np.all(hist[:, 0] < np.asarray(res.restart_lower_bounds) - 1e-2)

    # with a tolerance, restarts stop early and the history is NaN-padded after n_iter
    res = gj.fit_em(
        jax.random.key(3),
        small_data,
        4,
        covariance_type=covariance_type,
        n_init=3,
        init_params="random_from_data",
        tol=1e-3,
        max_iter=max_iter,
    )
    hist = np.asarray(res.lower_bound_history, np.float64)
    n_iter = np.asarray(res.restart_n_iter)
    assert np.all(np.asarray(res.restart_converged)) and np.all(n_iter < max_iter)
    for r in range(3):
        assert np.all(np.isfinite(hist[r, : n_iter[r]])) and np.all(np.isnan(hist[r, n_iter[r] :]))
        assert np.all(np.diff(hist[r, : n_iter[r]]) >= -2e-6 * np.abs(hist[r, 1 : n_iter[r]]))
        # stopped because the last change fell below tol, not before
        assert abs(hist[r, n_iter[r] - 1] - hist[r, n_iter[r] - 2]) < 1e-3
        assert np.all(np.abs(np.diff(hist[r, : n_iter[r] - 1])) >= 1e-3)


# --------------------------------------------------------------------------- float64 (subprocess)
# Last in the file: the subprocess starts at collection and runs while the tests above do.


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_em_parity_float64_with_sklearn(x64_check, covariance_type):
    """5 EM iterations (tol=0) from identical weights/means/precisions: weights, means,
    covariances, lower bound and its history agree with scikit-learn to 1e-6 relative;
    precision_cholesky and BIC/AIC agree with scikit-learn in float64."""
    x64_check(f"parity_{covariance_type}")


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_log_prob_float64_vs_scipy(x64_check, covariance_type):
    x64_check(f"log_prob_{covariance_type}")


def test_mclust_iris_bic_float64(x64_check):
    x64_check("mclust_iris_bic")


def test_x64_script_exit_status_reflects_failures(x64_results):
    returncode, results, stderr = x64_results
    all_ok = all(r == "ok" for r in results.values())
    assert (returncode == 0) == all_ok, (returncode, stderr[-2000:])
