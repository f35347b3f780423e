"""Degenerate but valid data: fits stay finite for every covariance type (no silent NaN).

All data sets of the main cases share one shape (30, 2) so that each configuration compiles once.
Where the answer is known in closed form (one component: the sample mean and the maximum-likelihood
covariance plus ``reg_covar``), it is checked too.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from gmmjax import GaussianMixtureModel

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # ConvergenceWarning / collapse warnings

COV_TYPES = ("full", "tied", "diag", "spherical")
N = 30
_rng = np.random.default_rng(0)
_BASE = _rng.normal(size=(N, 2))

CASES = {
    "duplicated rows": np.repeat(_BASE[:10], 3, axis=0),
    "constant feature": np.c_[_BASE[:, 0], np.full(N, 5.0)],
    "all identical": np.full((N, 2), 3.0),
    "one distinct point per component": np.repeat([[0.0, 0.0], [1.0, 1.0]], N // 2, axis=0),
    "collinear features": np.c_[_BASE[:, 0], 2.0 * _BASE[:, 0] + 1.0],
    "offset 1e8": 1e8 + _BASE,
    "scaled 1e8": 1e8 * _BASE,
    "scaled 1e-8": 1e-8 * _BASE,
}
assert all(x.shape == (N, 2) for x in CASES.values())


def assert_finite_fit(m, X):
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_", "lower_bounds_"):
        value = getattr(m, name)
        assert np.all(np.isfinite(value)), f"{name} is not finite: {value}"
    assert np.isfinite(m.lower_bound_)
    assert np.all(m.weights_ >= 0)
    np.testing.assert_allclose(m.weights_.sum(), 1.0, rtol=1e-5)
    cov = np.asarray(m.covariances_, np.float64)
    if m.covariance_type in ("full", "tied"):
        # positive definite: a Cholesky factor exists
        np.linalg.cholesky(cov.reshape(-1, cov.shape[-1], cov.shape[-1]))
    else:
        assert np.all(cov > 0)
    scores = m.score_samples(X)
    assert scores.shape == (len(X),) and np.all(np.isfinite(scores))
    proba = m.predict_proba(X)
    assert np.all(np.isfinite(proba))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-4)


def _params(cases, cov_types, reg_covars, k, slow_types=()):
    out = []
    for case in cases:
        for ct in cov_types:
            for reg in reg_covars:
                marks = []
                if ct in slow_types:
                    marks.append(pytest.mark.slow)
                out.append(pytest.param(case, ct, reg, marks=marks, id=f"{case}-{ct}-reg{reg:g}"))
    return out


@pytest.mark.parametrize("case, ct, reg_covar", _params(CASES, COV_TYPES, (1e-6, 0.0), 2))
def test_two_components_stay_finite(case, ct, reg_covar):
    X = CASES[case]
    m = GaussianMixtureModel(2, 20, covariance_type=ct, reg_covar=reg_covar).fit(X)
    assert_finite_fit(m, X)


@pytest.mark.parametrize(
    "case, ct, reg_covar",
    _params(
        ["one distinct point per component", "all identical"],
        COV_TYPES,
        (1e-6, 0.0),
        3,
        slow_types=("tied", "spherical"),
    ),
)
def test_more_components_than_distinct_points(case, ct, reg_covar):
    X = CASES[case]
    m = GaussianMixtureModel(3, 20, covariance_type=ct, reg_covar=reg_covar).fit(X)
    assert_finite_fit(m, X)


def _ml_covariance(X, ct, reg_covar):
    """Closed form for one component: ML covariance (ddof=0) + reg_covar, in ``ct``'s shape."""
    X = np.asarray(X, np.float64)
    cov = np.cov(X.T, bias=True) + reg_covar * np.eye(X.shape[1])
    return {"full": cov[None], "tied": cov, "diag": np.diag(cov)[None], "spherical": np.array([np.mean(np.diag(cov))])}[
        ct
    ]


@pytest.mark.parametrize("case, ct, reg_covar", _params(CASES, COV_TYPES, (1e-6, 0.0), 1))
def test_one_component_stays_finite_and_is_the_sample_moments(case, ct, reg_covar):
    X = CASES[case]
    m = GaussianMixtureModel(1, 20, covariance_type=ct, reg_covar=reg_covar).fit(X)
    assert_finite_fit(m, X)
    # the data as the model sees it (float32 unless jax_enable_x64)
    Xf = np.asarray(X, np.float64 if jax.config.jax_enable_x64 else np.float32).astype(np.float64)
    np.testing.assert_allclose(m.weights_, [1.0], rtol=1e-6)
    scale = np.abs(Xf).max()
    np.testing.assert_allclose(m.means_[0], Xf.mean(axis=0), rtol=1e-5, atol=1e-5 * scale)
    expected = _ml_covariance(Xf, ct, reg_covar)
    if np.all(np.linalg.eigvalsh(np.atleast_2d(np.cov(Xf.T, bias=True) + reg_covar * np.eye(2))) > 0):
        np.testing.assert_allclose(m.covariances_, expected, rtol=2e-3, atol=1e-5 * np.abs(expected).max())


D1_CASES = {
    "normal": _BASE[:, :1],
    "all identical": np.full((N, 1), -2.0),
    "two distinct values": np.repeat([[0.0], [4.0]], N // 2, axis=0),
    "offset 1e8": 1e8 + _BASE[:, :1],
    "scaled 1e-8": 1e-8 * _BASE[:, :1],
}


# With one feature the four covariance types are the same model; tied/diag run with -m slow.
@pytest.mark.parametrize("case", list(D1_CASES))
@pytest.mark.parametrize(
    "ct",
    ["full", "spherical", pytest.param("tied", marks=pytest.mark.slow), pytest.param("diag", marks=pytest.mark.slow)],
)
def test_one_feature(case, ct):
    X = D1_CASES[case]
    m = GaussianMixtureModel(2, 20, covariance_type=ct).fit(X)
    assert m.means_.shape == (2, 1)
    assert_finite_fit(m, X)


@pytest.mark.parametrize("init_params", ["k-means++", "random", "random_from_data"])
@pytest.mark.parametrize(
    "ct",
    ["full", "diag", pytest.param("tied", marks=pytest.mark.slow), pytest.param("spherical", marks=pytest.mark.slow)],
)
def test_every_init_method_on_degenerate_data(init_params, ct):
    for case, X in CASES.items():
        for reg_covar in (1e-6, 0.0):
            m = GaussianMixtureModel(
                2, 20, covariance_type=ct, reg_covar=reg_covar, init_params=init_params, seed=3
            ).fit(X)
            try:
                assert_finite_fit(m, X)
            except AssertionError as exc:
                raise AssertionError(f"{case}, reg_covar={reg_covar}: {exc}") from None


@pytest.mark.parametrize("ct", ["full", "diag"])
def test_degenerate_restarts_do_not_poison_the_batch(ct):
    # Two distinct points, two components, no regularisation, centres drawn from the data without
    # replacement: about half of the restarts put both centres on the same point (a degenerate,
    # singular start); the best restart must still be a finite, sensible fit.
    X = CASES["one distinct point per component"]
    m = GaussianMixtureModel(
        2, 20, covariance_type=ct, reg_covar=0.0, init_params="random_from_data", n_init=8, seed=0
    ).fit(X)
    result = m.fit_result_
    collapsed = np.asarray(result.collapsed_components).any(axis=1)
    assert collapsed.any(), "the test needs some degenerate restarts"
    bounds = np.asarray(result.restart_lower_bounds)
    assert np.isfinite(bounds).any()
    best = int(result.best_restart)
    assert bounds[best] == np.nanmax(np.where(np.isfinite(bounds), bounds, np.nan))
    assert m.lower_bound_ == pytest.approx(bounds[best])
    assert_finite_fit(m, X)
